/**
 * Reading xenstore keys with the stock `xenstore-read` client. Running the client (rather than
 * speaking the wire protocol over xenstored's Unix socket) keeps discovery working in a guest
 * domain, where the store is reached through `/dev/xen/xenbus` rather than a socket; libxenstore
 * picks the right transport, honouring `XENSTORED_PATH`.
 *
 * Relative keys resolve under this domain's home, `/local/domain/<domid>`.
 *
 * @module
 */

import { CommandError, firstLine, runCommand, toolEnv } from "./command.ts";

/** How to run `xenstore-read`. */
export interface XenstoreOptions {
  /** Command name or path; default `xenstore-read`. */
  command?: string;
  /** Kill it after this many milliseconds; default 5000. */
  timeoutMs?: number;
  /**
   * The child's whole environment; default PATH plus `XENSTORED_PATH` / `XENSTORED_RUNDIR`
   * when set (they point libxenstore at a non-default daemon).
   */
  env?: Record<string, string>;
}

/** Why a key could not be read: `missing` (no such key) or `failed` (no daemon, timeout, ...). */
export class XenstoreError extends Error {
  constructor(
    /** The key asked for. */
    readonly key: string,
    /** `missing` when the store answered that the key does not exist. */
    readonly kind: "missing" | "failed",
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = "XenstoreError";
  }
}

/** Default timeout for one `xenstore-read`. */
export const XENSTORE_TIMEOUT_MS = 5_000;

/**
 * Reads one key. `-R` asks for the raw value, so what comes back is exactly what is stored (no
 * escaping, no newline). Throws {@linkcode XenstoreError}.
 *
 * @example
 * ```ts ignore
 * import { xenstoreRead } from "./xenstore.ts";
 * const domid = await xenstoreRead("domid");
 * const backend = await xenstoreRead("device/vbd/51712/backend");
 * ```
 */
export async function xenstoreRead(key: string, options: XenstoreOptions = {}): Promise<string> {
  const command = options.command ?? "xenstore-read";
  let out;
  try {
    out = await runCommand(command, ["-R", key], {
      timeoutMs: options.timeoutMs ?? XENSTORE_TIMEOUT_MS,
      env: options.env ?? toolEnv(["XENSTORED_PATH", "XENSTORED_RUNDIR"]),
    });
  } catch (err) {
    if (err instanceof CommandError) {
      throw new XenstoreError(key, "failed", `xenstore key ${key}: ${err.message}`, {
        cause: err,
      });
    }
    throw err;
  }
  if (out.code !== 0) {
    const why = firstLine(out.stderr) || `exit code ${out.code}`;
    // The client says "couldn't read path KEY" for ENOENT (and EACCES) alike.
    const missing = /couldn't read path/.test(out.stderr);
    throw new XenstoreError(
      key,
      missing ? "missing" : "failed",
      missing ? `xenstore key ${key} does not exist` : `xenstore key ${key}: ${why}`,
    );
  }
  return out.stdout;
}
