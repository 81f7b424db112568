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

/** A line on stderr, prefixed with the program name; session ids and credentials redacted. */
export function note(text: string): void {
  writeAllSync(Deno.stderr, `sparse_dd: ${redactSecrets(text)}\n`);
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
