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

import { selfCommand } from "./child.ts";
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
    maxAgeMs: Number.isFinite(hours) && hours > 0 ? hours * 3600_000 : DEFAULT_MAX_AGE_MS,
    log: (line) => {
      try {
        Deno.stderr.writeSync(new TextEncoder().encode(`sparse_dd plugin: ${line}\n`));
      } catch { /* nowhere to report it */ }
    },
  };
}
