/**
 * Where the plugin keeps its state, how it reaches xapi and how it runs sparse_dd. xapi runs
 * plugins with `PATH` only, so every default is the real host's; the environment variables exist
 * for tests and unusual installs.
 *
 * @example
 * ```ts
 * import { configFromEnv } from "./config.ts";
 * const c = configFromEnv();
 * c.stateDir; // "/var/run/nonpersistent/sparse_dd" unless SPARSE_DD_PLUGIN_STATE_DIR is set
 * ```
 *
 * @module
 */

import { DEFAULT_CONFIG, loadConfig } from "../src/cli/config.ts";
import { selfCommand } from "./child.ts";
import { ErrorCode, PluginFailure } from "./protocol.ts";
import { DEFAULT_MAX_AGE_MS, DEFAULT_STATE_DIR } from "./ops.ts";
import { DEFAULT_XAPI_SOCKET } from "./xenapi.ts";

/** Everything the plugin's functions need from outside. */
export interface PluginConfig {
  /** Detached operations live here. Env `SPARSE_DD_PLUGIN_STATE_DIR`. */
  stateDir: string;
  /** xapi's unix socket for `task.set_progress`. Env `SPARSE_DD_XAPI_SOCKET`. */
  xapiSocket: string;
  /** The argv prefix that runs this program (see `selfCommand`). */
  self: string[];
  /** Finished operations are removed after this many ms. Env `SPARSE_DD_PLUGIN_MAX_AGE_HOURS`. */
  maxAgeMs: number;
  /** sparse_dd's configuration file (and `.d` directory). Env `SPARSE_DD_PLUGIN_CONFIG`. */
  configFile: string;
  /** Diagnostics (stderr for plugin calls, which xapi keeps; a log file for workers). */
  log: (line: string) => void;
}

/**
 * The configuration from the environment, with the real host's defaults.
 *
 * @example
 * ```ts
 * import { configFromEnv } from "./config.ts";
 * configFromEnv().xapiSocket; // "/var/lib/xcp/xapi"
 * ```
 */
export function configFromEnv(): PluginConfig {
  const env = (name: string) => {
    const v = Deno.env.get(name);
    return v === undefined || v === "" ? undefined : v;
  };
  const hours = Number(env("SPARSE_DD_PLUGIN_MAX_AGE_HOURS"));
  return {
    stateDir: env("SPARSE_DD_PLUGIN_STATE_DIR") ?? DEFAULT_STATE_DIR,
    xapiSocket: env("SPARSE_DD_XAPI_SOCKET") ?? DEFAULT_XAPI_SOCKET,
    self: selfCommand(),
    configFile: env("SPARSE_DD_PLUGIN_CONFIG") ?? DEFAULT_CONFIG,
    maxAgeMs: Number.isFinite(hours) && hours > 0 ? hours * 3600_000 : DEFAULT_MAX_AGE_MS,
    log: (line) => {
      try {
        Deno.stderr.writeSync(new TextEncoder().encode(`sparse_dd plugin: ${line}\n`));
      } catch { /* nowhere to report it */ }
    },
  };
}

/** The configuration key naming where the plugin may read and write regular files. */
export const DEST_DIRS_KEY = "plugin-dest-dirs";

/** `plugin-dest-dirs` when the configuration does not set it: the SR mount directories. */
export const DEFAULT_DEST_DIRS: readonly string[] = Object.freeze([
  "/var/run/sr-mount",
  "/run/sr-mount",
]);

/**
 * Splits a `plugin-dest-dirs` value: absolute directories separated by commas or colons (empty:
 * none, so only block devices are accepted). Throws a message for anything else.
 *
 * @example
 * ```ts
 * import { parseDirList } from "./config.ts";
 * parseDirList("/var/run/sr-mount, /srv/images:/mnt/nfs"); // ["/var/run/sr-mount", "/srv/images", "/mnt/nfs"]
 * ```
 */
export function parseDirList(value: string): string[] {
  const dirs = value.split(/[,:]/).map((d) => d.trim()).filter((d) => d !== "");
  for (const d of dirs) {
    if (!d.startsWith("/")) throw new Error(`'${d}' is not an absolute directory`);
  }
  return dirs;
}

/**
 * The directories regular files must be in (the last `plugin-dest-dirs` of `configFile` and
 * `configFile.d/*`, or {@linkcode DEFAULT_DEST_DIRS}). A configuration that cannot be read or
 * parsed is `SPARSE_DD_BAD_CONFIG [message]`: nothing is copied on a guess.
 *
 * @example
 * ```ts
 * import { loadFileDirs } from "./config.ts";
 * await loadFileDirs("/etc/sparse_dd.conf"); // ["/var/run/sr-mount", "/run/sr-mount"]
 * ```
 */
export async function loadFileDirs(configFile: string): Promise<string[]> {
  let dirs = [...DEFAULT_DEST_DIRS];
  try {
    for (const e of await loadConfig(configFile)) {
      if (e.key !== DEST_DIRS_KEY) continue;
      try {
        dirs = parseDirList(e.value);
      } catch (err) {
        throw new Error(`${e.where}: ${DEST_DIRS_KEY}: ${(err as Error).message}`);
      }
    }
  } catch (err) {
    throw new PluginFailure(ErrorCode.BadConfig, [(err as Error).message]);
  }
  return dirs;
}
