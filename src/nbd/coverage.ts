/**
 * Which bytes of a read the server's chunks have filled. A structured reply may come in many
 * data and hole chunks, in any order, but they must cover the request exactly once: a duplicate
 * or overlapping chunk would let a missing range pass for a complete read, leaving stale bytes
 * in the caller's buffer. Pure: no I/O.
 *
 * @module
 */

import { NbdProtocolError } from "./protocol.ts";

/** Disjoint ranges kept before a reply counts as too fragmented to track. */
const MAX_FRAGMENTS = 4096;

/**
 * The covered part of one request `[start, end)`: sorted, merged, disjoint ranges.
 *
 * @example
 * ```ts
 * import { Coverage } from "./coverage.ts";
 * const c = new Coverage(0, 4096);
 * c.add(2048, 4096);
 * c.add(0, 2048);
 * c.complete; // true
 * c.add(0, 512); // throws NbdProtocolError: overlaps bytes already received
 * ```
 */
export class Coverage {
  /** Flat [start0, end0, start1, end1, ...], sorted, with gaps between neighbours. */
  #ranges: number[] = [];
  #bytes = 0;

  constructor(readonly start: number, readonly end: number) {}

  /** Bytes covered so far. */
  get bytes(): number {
    return this.#bytes;
  }

  /** True when every byte of the request is covered. */
  get complete(): boolean {
    return this.#bytes === this.end - this.start;
  }

  /** Marks `[from, to)` covered; throws if it leaves the request or overlaps earlier chunks. */
  add(from: number, to: number): void {
    if (!(from >= this.start && to <= this.end && from < to)) {
      throw new NbdProtocolError(
        `chunk [${from}, ${to}) outside the request [${this.start}, ${this.end})`,
      );
    }
    const r = this.#ranges;
    // First range whose end is beyond `from` (binary search over the ends).
    let lo = 0;
    let hi = r.length / 2;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (r[2 * mid + 1] <= from) lo = mid + 1;
      else hi = mid;
    }
    if (lo < r.length / 2 && r[2 * lo] < to) {
      throw new NbdProtocolError(`chunk [${from}, ${to}) overlaps bytes already received`);
    }
    const joinsLeft = lo > 0 && r[2 * lo - 1] === from;
    const joinsRight = lo < r.length / 2 && r[2 * lo] === to;
    if (joinsLeft && joinsRight) {
      r[2 * lo - 1] = r[2 * lo + 1];
      r.splice(2 * lo, 2);
    } else if (joinsLeft) {
      r[2 * lo - 1] = to;
    } else if (joinsRight) {
      r[2 * lo] = from;
    } else {
      if (r.length / 2 >= MAX_FRAGMENTS) {
        throw new NbdProtocolError(`a reply in more than ${MAX_FRAGMENTS} disjoint pieces`);
      }
      r.splice(2 * lo, 0, from, to);
    }
    this.#bytes += to - from;
  }
}
