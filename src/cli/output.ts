/**
 * What the command line prints: notes on stderr, the summary, the stats report (JSON).
 *
 * @module
 */

import { resolve } from "../core/path.ts";
import type { CopyStats } from "../copy/copier.ts";
import type { DiscoverySummary } from "../discovery/source_allocation.ts";
import { VERSION } from "../version.ts";
import { endProgressLine, formatBytes } from "./progress.ts";
import { redactSecrets } from "../http/url.ts";

const encoder = new TextEncoder();
export function writeAllSync(fd: { writeSync(p: Uint8Array): number }, text: string): void {
  const bytes = encoder.encode(text);
  let off = 0;
  while (off < bytes.length) off += fd.writeSync(bytes.subarray(off));
}

let held: string[] | undefined;

/**
 * From now on, {@linkcode note}s go to the system log (at {@linkcode flushNotes}) instead of
 * stderr, which is left to {@linkcode failure}s. For `-machine`: xapi shows the whole of stderr
 * to the user when a copy fails (`VDI_COPY_FAILED`), and xapi's own sparse_dd logs its notes to
 * syslog.
 *
 * @example
 * ```ts
 * import { failure, flushNotes, holdNotes, note } from "./output.ts";
 * holdNotes();
 * note("auto-detect src vhd: None"); // kept for the system log
 * failure("cannot open /dev/sm/x"); // on stderr at once
 * await flushNotes();
 * ```
 */
export function holdNotes(): void {
  held ??= [];
}

/**
 * Something worth saying that is not a failure: stderr, or the system log under -machine. On
 * stderr it ends the progress bar's line first.
 */
export function note(text: string): void {
  if (held) held.push(redactSecrets(text));
  else failure(text);
}

/**
 * Why the run failed: always on stderr, prefixed with the program name; secrets redacted. It
 * ends the progress bar's line first.
 */
export function failure(text: string): void {
  endProgressLine();
  writeAllSync(Deno.stderr, `sparse_dd: ${redactSecrets(text)}\n`);
}

/**
 * Sends the held notes to syslog with `logger` (facility daemon, as xapi's tools log), if there
 * are any. Best effort: without a logger or a syslog daemon the notes are dropped, never printed.
 */
export async function flushNotes(): Promise<void> {
  const lines = held ?? [];
  if (held) held = [];
  if (lines.length === 0) return;
  try {
    const child = new Deno.Command("logger", {
      args: ["-t", "sparse_dd", `--id=${Deno.pid}`, "-p", "daemon.info"],
      stdin: "piped",
      stdout: "null",
      stderr: "null",
      signal: AbortSignal.timeout(2000),
    }).spawn();
    const w = child.stdin.getWriter();
    await w.write(encoder.encode(lines.join("\n") + "\n")).catch(() => {});
    await w.close().catch(() => {});
    await child.status;
  } catch { /* no logger here */ }
}

/** What every stats report carries, whether the copy succeeded or not. */
export interface ReportHead {
  /** sparse_dd's version. */
  version: string;
  /** The process's exit code (0: the copy finished). */
  exitCode: number;
  /** The error line on stderr (without `sparse_dd: `); `null` on success. */
  error: string | null;
  /** Absolute paths, or the URIs as given. */
  src: string;
  dest: string;
  base: string | null;
  /** Wall time in seconds, rounded to milliseconds. */
  seconds: number;
}

/** The stats of a finished copy as JSON (`-json`, `-stats-file`; README's table). */
export interface Report extends ReportHead, CopyStats {
  exitCode: 0;
  error: null;
  /** `-prezeroed` (or `--destination-is-zero`) was given. */
  prezeroed: boolean;
  /** The destination was known to read as zero: `-prezeroed`, or a file sparse_dd created. */
  destinationKnownZero: boolean;
  /** `bytesRead / seconds`, whole bytes per second. */
  readRate: number;
  /** `bytesWritten / seconds`, whole bytes per second. */
  writeRate: number;
  allocation: string;
  allocatedExtents: number | null;
  /** What device discovery found behind a block-device source (null: it did not run). */
  discovery: DiscoverySummary | null;
}

/** A failed or stopped copy (`-stats-file` and, without `-machine`, `-json`). */
export type FailureReport = ReportHead;

/**
 * A `-src`/`-dest`/`-base` as the report shows it: paths made absolute, URIs as given but with
 * session ids and credentials redacted.
 *
 * @example
 * ```ts
 * import { absoluteSpec } from "./output.ts";
 * absoluteSpec("nbd://h/e"); // "nbd://h/e"
 * ```
 */
export function absoluteSpec(spec: string): string {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(spec) ? redactSecrets(spec) : resolve(spec);
}

/**
 * The report of a finished copy, from what the copy was and its counts.
 *
 * @example
 * ```ts ignore
 * const r = successReport({ src: "a", dest: "b", base: null, prezeroed: false,
 *   destinationKnownZero: true, allocation: "seek-data", allocatedExtents: 1, discovery: null },
 *   stats);
 * ```
 */
export function successReport(
  what: {
    src: string;
    dest: string;
    base: string | null;
    prezeroed: boolean;
    destinationKnownZero: boolean;
    allocation: string;
    allocatedExtents: number | null;
    discovery: DiscoverySummary | null;
  },
  stats: CopyStats,
): Report {
  const per = (n: number) => stats.seconds > 0 ? Math.round(n / stats.seconds) : 0;
  return {
    version: VERSION,
    exitCode: 0,
    error: null,
    ...what,
    src: absoluteSpec(what.src),
    dest: absoluteSpec(what.dest),
    base: what.base === null ? null : absoluteSpec(what.base),
    ...stats,
    seconds: Math.round(stats.seconds * 1000) / 1000,
    throughput: per(stats.size),
    readRate: per(stats.bytesRead),
    writeRate: per(stats.bytesWritten),
  };
}

/**
 * The report of a copy that failed or was stopped.
 *
 * @example
 * ```ts
 * import { failureReport } from "./output.ts";
 * failureReport({ src: "a", dest: "b" }, 4, "cannot write b", 0.5).exitCode; // 4
 * ```
 */
export function failureReport(
  o: { src: string; dest: string; base?: string },
  exitCode: number,
  error: string,
  seconds: number,
): FailureReport {
  return {
    version: VERSION,
    exitCode,
    error: redactSecrets(error),
    src: absoluteSpec(o.src),
    dest: absoluteSpec(o.dest),
    base: o.base ? absoluteSpec(o.base) : null,
    seconds: Math.round(seconds * 1000) / 1000,
  };
}

/**
 * `n` and the noun, plural unless `n` is 1.
 *
 * @example
 * ```ts
 * import { plural } from "./output.ts";
 * plural(1, "write"); // "1 write"
 * plural(3, "extent"); // "3 extents"
 * ```
 */
export function plural(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

/** What the copy read, by where the source's allocation came from. */
function whatWasRead(r: Report): string {
  const extents = r.allocatedExtents === null ? "" : `, ${plural(r.allocatedExtents, "extent")}`;
  if (r.allocatedExtents === 0) return "nothing: the source holds no data in [0, size)";
  switch (r.allocation) {
    case "vhd":
      return `the blocks allocated in the VHD chain${extents}`;
    case "raw-seek-data":
      return `the data of the raw image behind the device${extents}`;
    case "seek-data":
      return `the file's data${extents}${
        r.allocatedBytes < r.size ? "; its holes were not read" : ""
      }`;
    case "nbd-block-status":
      return `what the NBD server reports as data${extents}`;
    case "none":
      return "every byte: the source's allocation is not known";
    case "ignored":
      return "every byte (-ignore-allocation)";
    default:
      return `the source's allocated data${extents}`;
  }
}

/** `at 1.20 GiB/s`, or nothing when the time is too short to say. */
function rateText(rate: number, bytes: number, seconds: number): string {
  return bytes > 0 && seconds >= 0.01 ? ` at ${formatBytes(rate)}/s` : "";
}

/**
 * The human summary on stdout: what was copied, what was read and written (with the rates of
 * the bytes actually moved), and what was left alone.
 *
 * @example
 * ```ts ignore
 * Deno.stdout.writeSync(new TextEncoder().encode(summary(report)));
 * ```
 */
export function summary(r: Report): string {
  const lines = [
    `copied ${formatBytes(r.size)} from ${r.src} to ${r.dest} in ${r.seconds.toFixed(2)} s (${
      plural(r.threads, "thread")
    })`,
    `  read ${formatBytes(r.bytesRead)}${rateText(r.readRate, r.bytesRead, r.seconds)}: ${
      whatWasRead(r)
    }`,
    `  wrote ${formatBytes(r.bytesWritten)}${rateText(r.writeRate, r.bytesWritten, r.seconds)} in ${
      plural(r.writes, "write")
    }${
      r.zeroedBytes > 0
        ? `; made ${formatBytes(r.zeroedBytes)} of the destination read as zero`
        : ""
    }`,
  ];
  const alone = [];
  if (r.skippedBytes > 0) {
    alone.push(`${formatBytes(r.skippedBytes)} of zeroes, the destination being zero already`);
  }
  if (r.unchangedBytes > 0) {
    alone.push(`${formatBytes(r.unchangedBytes)} the destination holds already (-base)`);
  }
  if (alone.length > 0) lines.push(`  not written: ${alone.join("; ")}`);
  return lines.join("\n") + "\n";
}
