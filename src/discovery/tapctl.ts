/**
 * blktap's `tap-ctl list`: which tapdisk serves which minor, and from which image.
 *
 * When its stdout is not a terminal, `tap-ctl list` prints one line per tapdisk/minor pair:
 * `pid=%d minor=%d state=%#x args=%s:%s`, separated by single spaces. A field is left out when
 * unknown (a tapdisk with no VBD prints only `pid=...`, an orphan minor only `minor=...`), `state`
 * is `0` or `0x..`, and `args` is `TYPE:PATH` where the path may contain spaces (it is always the
 * last field). The parser here is pure; {@linkcode tapCtlList} runs the tool.
 *
 * @module
 */

import { CommandError, firstLine, runCommand, toolEnv } from "./command.ts";

/** One tapdisk serving one minor, as `tap-ctl list` reports it. */
export interface TapdiskEntry {
  /** The tapdisk process id, when printed. */
  pid?: number;
  /** The blktap minor (the tapdev device's minor, or the `<minor>` in `nbd<pid>.<minor>`). */
  minor: number;
  /** The VBD state bits (`TD_VBD_*`; 0x2a while paused), when printed. */
  state?: number;
  /** The tapdisk driver: `vhd` (a VHD file), `aio` (a raw file) or another driver name. */
  driver: string;
  /** The image path (everything after the first `:` of `args`). */
  path: string;
}

/** What {@linkcode parseTapCtlList} made of `tap-ctl list` output. */
export interface TapCtlList {
  /** Lines with a minor and an image, in output order. */
  entries: TapdiskEntry[];
  /** Non-empty lines that were not entries (no minor, no image, or not in the format). */
  ignored: string[];
}

const DECIMAL = /^(0|[1-9][0-9]*)$/;
const STATE = /^(0|0x[0-9a-fA-F]+)$/;
const DRIVER = /^[A-Za-z0-9_.-]+$/;

function parseLine(line: string): TapdiskEntry | undefined {
  // `args` is last and its path may contain anything, spaces and "key=" included.
  let head = line;
  let args: string | undefined;
  const at = line.startsWith("args=") ? 0 : line.indexOf(" args=");
  if (at >= 0) {
    head = line.slice(0, at);
    args = line.slice(at === 0 ? 5 : at + 6);
  }
  const fields: Record<string, string> = {};
  for (const token of head.split(" ")) {
    if (token === "") continue;
    const eq = token.indexOf("=");
    if (eq <= 0) return undefined;
    const key = token.slice(0, eq);
    const value = token.slice(eq + 1);
    if (key !== "pid" && key !== "minor" && key !== "state") return undefined;
    if (key in fields) return undefined;
    if (!(key === "state" ? STATE : DECIMAL).test(value)) return undefined;
    fields[key] = value;
  }
  if (fields.minor === undefined || args === undefined) return undefined;
  const colon = args.indexOf(":");
  if (colon <= 0 || colon === args.length - 1) return undefined;
  const driver = args.slice(0, colon);
  if (!DRIVER.test(driver)) return undefined;
  const minor = Number(fields.minor);
  if (!Number.isSafeInteger(minor)) return undefined;
  const entry: TapdiskEntry = { minor, driver, path: args.slice(colon + 1) };
  if (fields.pid !== undefined) entry.pid = Number(fields.pid);
  if (fields.state !== undefined) entry.state = Number.parseInt(fields.state, 16);
  return entry;
}

/**
 * Parses the non-terminal output of `tap-ctl list`. Lines without a minor or without
 * `args=TYPE:PATH` (idle tapdisks, orphan minors) and lines not in the format are returned in
 * `ignored`; they never become entries.
 *
 * @example
 * ```ts
 * import { parseTapCtlList } from "./tapctl.ts";
 * const { entries } = parseTapCtlList(
 *   "pid=4242 minor=3 state=0 args=vhd:/var/run/sr-mount/SR/My Disk.vhd\npid=99\n",
 * );
 * entries[0]; // { minor: 3, driver: "vhd", path: "/var/run/sr-mount/SR/My Disk.vhd", pid: 4242, state: 0 }
 * ```
 */
export function parseTapCtlList(text: string): TapCtlList {
  const entries: TapdiskEntry[] = [];
  const ignored: string[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    if (line.trim() === "") continue;
    const entry = parseLine(line);
    if (entry) entries.push(entry);
    else ignored.push(line);
  }
  return { entries, ignored };
}

/** A `tap-ctl list` row; every field optional, as tap-ctl itself may leave any out. */
export interface TapCtlRow {
  /** Process id (left out when undefined or -1). */
  pid?: number;
  /** Minor (left out when undefined or -1). */
  minor?: number;
  /** State bits (left out when undefined or -1). */
  state?: number;
  /** Driver; `args` is printed only when both driver and path are set. */
  driver?: string;
  /** Image path. */
  path?: string;
}

/** How to run tap-ctl. */
export interface TapCtlOptions {
  /** Command name or path; default `tap-ctl` (looked up on PATH plus the sbin directories). */
  command?: string;
  /** Kill it after this many milliseconds; default 15000 (tap-ctl waits 10 s per tapdisk). */
  timeoutMs?: number;
  /** The child's whole environment; default only PATH (as xapi runs it). */
  env?: Record<string, string>;
}

/** tap-ctl could not be run, timed out or failed; the message names the command and why. */
export class TapCtlError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "TapCtlError";
  }
}

/** Default timeout for one `tap-ctl list`. */
export const TAP_CTL_TIMEOUT_MS = 15_000;

/**
 * Runs `tap-ctl list` (with `-p PID -m MINOR` when given, to ask one tapdisk about one minor) and
 * parses its output. Throws {@linkcode TapCtlError} when it cannot run, times out, or exits
 * non-zero.
 *
 * @example
 * ```ts ignore
 * import { tapCtlList } from "./tapctl.ts";
 * const { entries } = await tapCtlList({ command: "/usr/sbin/tap-ctl" }, { pid: 4242, minor: 3 });
 * ```
 */
export async function tapCtlList(
  options: TapCtlOptions = {},
  filter: { pid?: number; minor?: number } = {},
): Promise<TapCtlList> {
  const command = options.command ?? "tap-ctl";
  const args = ["list"];
  if (filter.pid !== undefined) args.push("-p", String(filter.pid));
  if (filter.minor !== undefined) args.push("-m", String(filter.minor));
  const shown = [command, ...args].join(" ");
  let out;
  try {
    out = await runCommand(command, args, {
      timeoutMs: options.timeoutMs ?? TAP_CTL_TIMEOUT_MS,
      env: options.env ?? toolEnv(),
    });
  } catch (err) {
    if (err instanceof CommandError) throw new TapCtlError(err.message, { cause: err });
    throw err;
  }
  if (out.code !== 0) {
    const why = firstLine(out.stderr) || firstLine(out.stdout) || "no message";
    throw new TapCtlError(`${shown} failed with exit code ${out.code}: ${why}`);
  }
  return parseTapCtlList(out.stdout);
}
