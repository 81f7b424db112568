/**
 * Zero scanning at a quantum. Writing to a prezeroed destination costs a seek and a write per
 * run, so once a quantum holds any non-zero byte the whole quantum is written (the seed's
 * "tunable quantum of non-zero'ness"). 4 KiB by default: the granularity of `cp --sparse`,
 * `qemu-img convert` and nbdcopy, and of file system blocks. With 16 KiB (the seed's first
 * default), a VM-shaped disk, whose data extents hold zero runs of a few KiB, copied 10% more
 * data than those tools allocate (BENCHMARKS.md, VM).
 *
 * @module
 */

import type { Extent } from "../core/extent.ts";
import { firstDataQuantum, firstNonZero, firstZeroQuantum } from "./zeroscan.ts";

/** The default quantum: 4 KiB (see the module documentation). */
export const DEFAULT_QUANTUM = 4 * 1024;

/**
 * True when `buf[start, end)` holds only zero bytes. Buffers from `scanBuffer` (zeroscan.ts) are
 * scanned in place by WebAssembly SIMD; others by a word loop.
 *
 * @example
 * ```ts
 * import { isZero } from "./quantum.ts";
 * isZero(new Uint8Array(4096)); // true
 * isZero(new Uint8Array([0, 0, 1]), 0, 2); // true: only bytes 0 and 1 are looked at
 * ```
 */
export function isZero(buf: Uint8Array, start = 0, end: number = buf.length): boolean {
  return firstNonZero(buf, start, end) === end;
}

/**
 * The runs of `buf` that hold non-zero data, as extents relative to the start of `buf`, widened to
 * whole quanta and clipped to the buffer. Quanta are aligned to absolute disk offsets: `buf[0]` is
 * at disk offset `diskOffset`, so a run always starts and ends on a multiple of `quantum` on the
 * disk unless it touches the buffer's edge.
 *
 * @example
 * ```ts
 * import { nonZeroRuns } from "./quantum.ts";
 * const buf = new Uint8Array(64 * 1024);
 * buf[20000] = 1;
 * nonZeroRuns(buf, 16384); // [{ start: 16384, length: 16384 }]
 * ```
 */
export function nonZeroRuns(
  buf: Uint8Array,
  quantum: number = DEFAULT_QUANTUM,
  diskOffset = 0,
): Extent[] {
  const runs: Extent[] = [];
  const len = buf.length;
  // The first quantum may be cut by the buffer's start; from `head` on, quanta are whole.
  const head = Math.min(len, (quantum - (diskOffset % quantum)) % quantum);
  let pos = 0;
  if (head > 0) {
    if (firstNonZero(buf, 0, head) < head) {
      const end = firstZeroQuantum(buf, quantum, head, len);
      runs.push({ start: 0, length: end });
      pos = end;
    } else {
      pos = head;
    }
  }
  // Jump from data to the next all-zero quantum and back: one call per run, not per quantum.
  while (pos < len) {
    const start = firstDataQuantum(buf, quantum, pos, len);
    if (start >= len) break;
    const end = firstZeroQuantum(buf, quantum, start, len);
    runs.push({ start, length: end - start });
    pos = end;
  }
  return runs;
}
