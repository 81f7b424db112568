/**
 * Sets of byte ranges: what is allocated, what must be copied, what must be zeroed.
 *
 * The seed called this the `Bat` (an extent-list set over int64). Here every set is kept
 * normalised — sorted, disjoint, and coalesced (touching ranges merge) — so two sets with the
 * same bytes are always equal extent by extent, and every operation is a linear merge.
 *
 * Offsets are JavaScript numbers: exact up to 2^53 bytes (8 PiB), far above any VDI.
 *
 * @module
 */

/** A half-open byte range `[start, start + length)`. */
export interface Extent {
  /** First byte of the range. */
  readonly start: number;
  /** Number of bytes; always positive inside an {@linkcode ExtentSet}. */
  readonly length: number;
}

/** The exclusive end of an extent. */
export function extentEnd(e: Extent): number {
  return e.start + e.length;
}

/**
 * One extent in pieces of at most `max` bytes, cut at multiples of `max` (see
 * {@linkcode ExtentSet.chunks}).
 *
 * @example
 * ```ts
 * import { cutExtent } from "./extent.ts";
 * [...cutExtent({ start: 3, length: 10 }, 4)]; // 3+1, 4+4, 8+4, 12+1
 * ```
 */
export function* cutExtent(e: Extent, max: number): Generator<Extent> {
  if (!(max > 0)) throw new RangeError(`chunk size must be positive: ${max}`);
  const end = extentEnd(e);
  for (let offset = e.start; offset < end;) {
    const next = Math.min(end, (Math.floor(offset / max) + 1) * max);
    yield { start: offset, length: next - offset };
    offset = next;
  }
}

function checkExtent(e: Extent): void {
  if (
    !Number.isSafeInteger(e.start) || !Number.isSafeInteger(e.length) || e.start < 0 ||
    e.length < 0 || !Number.isSafeInteger(e.start + e.length)
  ) {
    throw new RangeError(`invalid extent: start=${e.start} length=${e.length}`);
  }
}

/**
 * An immutable, normalised set of byte ranges.
 *
 * @example Allocation minus what a base already holds
 * ```ts
 * import { ExtentSet } from "./extent.ts";
 * const allocated = ExtentSet.of([{ start: 0, length: 4096 }, { start: 8192, length: 4096 }]);
 * const base = ExtentSet.range(0, 4096);
 * allocated.difference(base).extents; // [{ start: 8192, length: 4096 }]
 * allocated.complement(16384).bytes;  // 8192
 * ```
 */
export class ExtentSet {
  readonly #extents: readonly Extent[];
  static readonly #empty: ExtentSet = new ExtentSet([]);

  private constructor(normalised: readonly Extent[]) {
    this.#extents = normalised;
  }

  /** The empty set. */
  static empty(): ExtentSet {
    return ExtentSet.#empty;
  }

  /** The single range `[start, start + length)` (empty when `length` is 0). */
  static range(start: number, length: number): ExtentSet {
    checkExtent({ start, length });
    return length === 0 ? ExtentSet.#empty : new ExtentSet([{ start, length }]);
  }

  /** Normalises any list of extents: sorts, drops empty ones, merges overlapping and touching. */
  static of(extents: Iterable<Extent>): ExtentSet {
    const list: Extent[] = [];
    for (const e of extents) {
      checkExtent(e);
      if (e.length > 0) list.push({ start: e.start, length: e.length });
    }
    list.sort((a, b) => a.start - b.start);
    const out: Extent[] = [];
    let curStart = -1;
    let curEnd = -1;
    for (const e of list) {
      const end = e.start + e.length;
      if (curEnd >= e.start) {
        if (end > curEnd) curEnd = end;
      } else {
        if (curEnd > curStart) out.push({ start: curStart, length: curEnd - curStart });
        curStart = e.start;
        curEnd = end;
      }
    }
    if (curEnd > curStart) out.push({ start: curStart, length: curEnd - curStart });
    return out.length === 0 ? ExtentSet.#empty : new ExtentSet(out);
  }

  /**
   * Builds a set from fixed-size blocks: block `i` covers `[i * blockSize, (i + 1) * blockSize)`.
   * Used for VHD BATs and NBD block status at block granularity.
   */
  static fromBlocks(blocks: Iterable<number>, blockSize: number): ExtentSet {
    const list: Extent[] = [];
    for (const b of blocks) list.push({ start: b * blockSize, length: blockSize });
    return ExtentSet.of(list);
  }

  /** The normalised extents, in ascending order. */
  get extents(): readonly Extent[] {
    return this.#extents;
  }

  /** Number of disjoint extents. */
  get count(): number {
    return this.#extents.length;
  }

  /** Total number of bytes covered. */
  get bytes(): number {
    let n = 0;
    for (const e of this.#extents) n += e.length;
    return n;
  }

  /** True when no byte is covered. */
  get isEmpty(): boolean {
    return this.#extents.length === 0;
  }

  /** True when `offset` lies inside one of the extents. */
  has(offset: number): boolean {
    const xs = this.#extents;
    let lo = 0;
    let hi = xs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const e = xs[mid];
      if (offset < e.start) hi = mid - 1;
      else if (offset >= e.start + e.length) lo = mid + 1;
      else return true;
    }
    return false;
  }

  /** Bytes in either set. */
  union(other: ExtentSet): ExtentSet {
    if (other.isEmpty) return this;
    if (this.isEmpty) return other;
    return ExtentSet.of([...this.#extents, ...other.#extents]);
  }

  /** Bytes in both sets. */
  intersection(other: ExtentSet): ExtentSet {
    const a = this.#extents;
    const b = other.#extents;
    const out: Extent[] = [];
    let i = 0;
    let j = 0;
    while (i < a.length && j < b.length) {
      const aEnd = a[i].start + a[i].length;
      const bEnd = b[j].start + b[j].length;
      const start = Math.max(a[i].start, b[j].start);
      const end = Math.min(aEnd, bEnd);
      if (end > start) out.push({ start, length: end - start });
      if (aEnd < bEnd) i++;
      else j++;
    }
    return out.length === 0 ? ExtentSet.#empty : new ExtentSet(out);
  }

  /** Bytes in this set and not in `other`. */
  difference(other: ExtentSet): ExtentSet {
    const b = other.#extents;
    if (b.length === 0 || this.isEmpty) return this;
    const out: Extent[] = [];
    let j = 0;
    for (const e of this.#extents) {
      let start = e.start;
      const end = e.start + e.length;
      while (j < b.length && b[j].start + b[j].length <= start) j++;
      let k = j;
      while (k < b.length && b[k].start < end) {
        if (b[k].start > start) out.push({ start, length: b[k].start - start });
        start = Math.max(start, b[k].start + b[k].length);
        if (start >= end) break;
        k++;
      }
      if (start < end) out.push({ start, length: end - start });
    }
    return out.length === 0 ? ExtentSet.#empty : new ExtentSet(out);
  }

  /** Bytes of `[0, size)` not in this set: the unallocated part of a disk of `size` bytes. */
  complement(size: number): ExtentSet {
    return ExtentSet.range(0, size).difference(this);
  }

  /** This set restricted to `[0, size)`. */
  clip(size: number): ExtentSet {
    const last = this.#extents[this.#extents.length - 1];
    if (last === undefined || last.start + last.length <= size) return this;
    return this.intersection(ExtentSet.range(0, size));
  }

  /**
   * Widens every extent outwards to multiples of `granularity` (then re-normalises). Used to turn
   * byte-precise allocation into whole VHD blocks or zero-scan quanta.
   */
  roundOut(granularity: number): ExtentSet {
    if (granularity <= 1) return this;
    return ExtentSet.of(this.#extents.map((e) => {
      const start = Math.floor(e.start / granularity) * granularity;
      const end = Math.ceil((e.start + e.length) / granularity) * granularity;
      return { start, length: end - start };
    }));
  }

  /**
   * Walks the set in pieces of at most `max` bytes, never crossing the gap between two extents
   * (the seed's `fold_over_blocks`). Pieces are cut at multiples of `max` so that a piece never
   * straddles an aligned `max`-sized boundary: reads stay aligned when extents are.
   */
  *chunks(max: number): Generator<Extent> {
    for (const e of this.#extents) yield* cutExtent(e, max);
  }

  /** True when both sets cover exactly the same bytes. */
  equals(other: ExtentSet): boolean {
    const a = this.#extents;
    const b = other.#extents;
    if (a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) {
      if (a[i].start !== b[i].start || a[i].length !== b[i].length) return false;
    }
    return true;
  }

  /** `[[start, length], ...]`, for JSON output and test messages. */
  toJSON(): Array<[number, number]> {
    return this.#extents.map((e) => [e.start, e.length]);
  }
}
