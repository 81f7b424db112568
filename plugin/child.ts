/**
 * Running the sparse_dd CLI as a child process: the plugin never copies in its own process, so
 * a copy behaves exactly as when xapi runs `sparse_dd -machine ...` (same argv, same config file,
 * same progress records), and a detached copy can be stopped with a signal.
 *
 * @example
 * ```ts
 * import { copyArgv, runCopyChild, selfCommand } from "./child.ts";
 * const r = await runCopyChild(
 *   [...selfCommand(), ...copyArgv({ src: "/a", dest: "/b", prezeroed: false }, "/tmp/s.json")],
 *   { onProgress: (p) => console.error(p) },
 * );
 * r.code; // 0 on success
 * ```
 *
 * @module
 */

import { formatByName } from "../src/endpoint/endpoint.ts";
import type { CopyRequest } from "./validate.ts";
import { RecordDecoder } from "../src/cli/progress.ts";

/** Deno's flags for running the program's entry module, as the installed launcher runs it. */
export const RUN_FLAGS = ["run", "-A", "--quiet", "--no-config", "--no-lock"];

/**
 * How to run this program again: the installed launcher (`SPARSE_DD_LAUNCHER`, which it sets), so
 * an installed copy's children run as it does (named sparse_dd for xapi's stray-process check, no
 * cache writes); else the compiled binary itself, or the runtime running the entry module
 * (main.ts, or the bundle) with the launcher's flags.
 *
 * @example
 * ```ts
 * import { selfCommand } from "./child.ts";
 * selfCommand(); // ["/opt/xensource/libexec/sparse_dd"] when run by the installed launcher
 * ```
 */
export function selfCommand(): string[] {
  // The installed launcher says where it is: there the executable is glibc's loader running
  // deno, which `Deno.execPath()` cannot start again by itself.
  const launcher = Deno.env.get("SPARSE_DD_LAUNCHER");
  if (launcher?.startsWith("/")) return [launcher];
  if (Deno.build.standalone) return [Deno.execPath()];
  const main = new URL(Deno.mainModule);
  const entry = main.protocol === "file:" ? decodeURIComponent(main.pathname) : main.href;
  return [Deno.execPath(), ...RUN_FLAGS, entry];
}

/**
 * The sparse_dd argv for a validated request: xapi's `-machine` records on stdout, the stats as
 * JSON in `statsFile`. Every value is passed as its own argv element after its flag.
 *
 * @example
 * ```ts
 * import { copyArgv } from "./child.ts";
 * copyArgv({ src: "/a", dest: "/b", size: 512, prezeroed: true }, "/run/s.json");
 * // ["-machine", "-src", "/a", "-src-format", "raw", "-dest", "/b", "-size", "512", "-prezeroed",
 * //  "-stats-file", "/run/s.json"]
 * ```
 */
export function copyArgv(req: CopyRequest, statsFile: string): string[] {
  // The format is always explicit (vhd only for a name ending in .vhd): never left to content.
  const argv = ["-machine", "-src", req.src, "-src-format", formatByName(req.src, "auto")];
  argv.push("-dest", req.dest);
  if (req.size !== undefined) argv.push("-size", String(req.size));
  if (req.prezeroed) argv.push("-prezeroed");
  if (req.base !== undefined) {
    argv.push("-base", req.base, "-base-format", formatByName(req.base, "auto"));
  }
  if (req.destProto !== undefined) argv.push("-dest-proto", req.destProto);
  if (req.nbdExport !== undefined) argv.push("-nbd-export", req.nbdExport);
  argv.push("-stats-file", statsFile);
  return argv;
}

/** What a finished copy child left. */
export interface ChildResult {
  /** Exit code (128 + n when killed by signal n). */
  code: number;
  /** The signal that killed it, if one did. */
  signal: Deno.Signal | null;
  /** True when the end record arrived (sparse_dd's success marker on stdout). */
  ended: boolean;
  /** The last percent reported. */
  percent: number;
  /** The tail of stderr (at most 64 KiB). */
  stderr: string;
}

/** Options of {@linkcode runCopyChild}. */
export interface ChildOptions {
  /** Called with each new `Progress: N` percent. */
  onProgress?: (percent: number) => void;
  /** Called once the child exists, with its pid. */
  onSpawn?: (pid: number) => void;
  /** Environment; default: inherit (xapi gives plugins PATH only, and so do we). */
  env?: Record<string, string>;
}

const STDERR_TAIL = 64 * 1024;

/**
 * Runs `argv` (the first element is the program), reading its progress records as they come.
 *
 * @example
 * ```ts
 * import { runCopyChild } from "./child.ts";
 * const r = await runCopyChild(["/opt/xensource/libexec/sparse_dd", "-machine", "-src", "/a", "-dest", "/b"]);
 * ```
 */
export async function runCopyChild(
  argv: string[],
  options: ChildOptions = {},
): Promise<ChildResult> {
  const [cmd, ...args] = argv;
  const child = new Deno.Command(cmd, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    ...(options.env ? { env: options.env, clearEnv: true } : {}),
  }).spawn();
  options.onSpawn?.(child.pid);
  const reader = new RecordDecoder();
  let percent = 0;
  const readStdout = (async () => {
    for await (const chunk of child.stdout) {
      let got: number[] = [];
      try {
        got = reader.push(chunk);
      } catch {
        // Garbage on stdout: keep draining so the child never blocks, report nothing more.
      }
      for (const p of got) {
        percent = Math.max(0, Math.min(100, p));
        options.onProgress?.(percent);
      }
    }
  })();
  let stderr = "";
  const readStderr = (async () => {
    const dec = new TextDecoder();
    for await (const chunk of child.stderr) {
      stderr += dec.decode(chunk, { stream: true });
      if (stderr.length > 2 * STDERR_TAIL) stderr = stderr.slice(-STDERR_TAIL);
    }
    stderr += dec.decode();
  })();
  const status = await child.status;
  await Promise.all([readStdout, readStderr]);
  return {
    code: status.code,
    signal: status.signal,
    ended: reader.ended,
    percent,
    stderr: stderr.slice(-STDERR_TAIL),
  };
}

/**
 * One line saying why a copy failed: sparse_dd's last line on stderr, else how it exited.
 *
 * @example
 * ```ts
 * import { failureMessage } from "./child.ts";
 * failureMessage({ code: 3, signal: null, ended: false, percent: 0, stderr: "sparse_dd: cannot open /a\n" });
 * // "sparse_dd: cannot open /a"
 * ```
 */
export function failureMessage(r: ChildResult): string {
  const lines = r.stderr.split("\n").map((l) => l.trim()).filter((l) => l !== "");
  const last = lines.at(-1);
  if (last) return last;
  if (r.signal) return `sparse_dd was killed by ${r.signal}`;
  if (r.code === 0) return "sparse_dd exited without its end record";
  return `sparse_dd exited with code ${r.code}`;
}
