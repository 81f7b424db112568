/**
 * What the command line prints: notes on stderr, the summary, the stats report.
 *
 * @module
 */

import type { CopyStats } from "../copy/copier.ts";
import type { DiscoverySummary } from "../discovery/source_allocation.ts";
import { formatBytes } from "./progress.ts";
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

/** Something worth saying that is not a failure: stderr, or the system log under -machine. */
export function note(text: string): void {
  if (held) held.push(redactSecrets(text));
  else writeAllSync(Deno.stderr, `sparse_dd: ${redactSecrets(text)}\n`);
}

/** Why the run failed: always on stderr, prefixed with the program name; secrets redacted. */
export function failure(text: string): void {
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

/** The stats as JSON, with what the copy was. */
export interface Report extends CopyStats {
  src: string;
  dest: string;
  prezeroed: boolean;
  base: string | null;
  allocation: string;
  allocatedExtents: number | null;
  /** What device discovery found behind a block-device source (null: it did not run). */
  discovery: DiscoverySummary | null;
}

export function summary(r: Report): string {
  const rate = `${formatBytes(r.throughput)}/s`;
  return [
    `copied ${formatBytes(r.size)} from ${r.src} to ${r.dest} in ${
      r.seconds.toFixed(2)
    } s (${rate}, ${r.threads} thread${r.threads === 1 ? "" : "s"})`,
    `  allocation: ${r.allocation}${
      r.allocatedExtents === null ? "" : ` (${r.allocatedExtents} extents)`
    }, ${formatBytes(r.allocatedBytes)} to read`,
    `  read ${formatBytes(r.bytesRead)}; wrote ${
      formatBytes(r.bytesWritten)
    } in ${r.writes} writes`,
    `  data ${formatBytes(r.dataBytes)}, zeroed ${formatBytes(r.zeroedBytes)}, skipped zeroes ${
      formatBytes(r.skippedBytes)
    }, unchanged ${formatBytes(r.unchangedBytes)}`,
  ].join("\n") + "\n";
}
