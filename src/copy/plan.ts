/**
 * Planning a copy: which bytes are read, which are scanned for zeroes, which are made zero on the
 * destination, and which are left alone. Pure: the copier executes a plan, tests check plans.
 *
 * @module
 */

import { cutExtent, type Extent, ExtentSet } from "../core/extent.ts";

/** What the planner needs to know. */
export interface PlanInput {
  /** Bytes to copy: `[0, size)`. */
  size: number;
  /** Where the source may hold non-zero data; `undefined` = everywhere. */
  allocation?: ExtentSet;
  /** The destination reads as zero everywhere before the copy. */
  prezeroed: boolean;
  /**
   * Ranges the destination already holds with the right content (`-base`): neither read nor
   * written. When given, the destination is not zero elsewhere either (it holds the base).
   */
  unchanged?: ExtentSet;
  /**
   * The destination holds a base disk's data (`-base` was given), whether or not the base could
   * be compared with the source: it reads as the base, never as zero, whatever `prezeroed` says.
   */
  holdsBase?: boolean;
}

/** The plan: every byte of `[0, size)` is in exactly one of `data`, `zero`, `skip`, `unchanged`. */
export interface Plan {
  size: number;
  /** Read from the source and written (or zero-skipped when `scan`). */
  data: ExtentSet;
  /** Scan `data` for zero quanta and skip them (only when the destination is known zero). */
  scan: boolean;
  /** Unallocated ranges that must be made zero on the destination. */
  zero: ExtentSet;
  /** Unallocated ranges left alone because the destination is already zero there. */
  skip: ExtentSet;
  /** Ranges left alone because the destination already holds them (`-base`). */
  unchanged: ExtentSet;
}

/**
 * Plans a copy.
 *
 * @example A prezeroed destination gets only allocated data, scanned for zeroes
 * ```ts
 * import { ExtentSet } from "../core/extent.ts";
 * import { planCopy } from "./plan.ts";
 * const p = planCopy({ size: 1 << 20, allocation: ExtentSet.range(0, 4096), prezeroed: true });
 * p.data.bytes; // 4096
 * p.scan;       // true
 * p.zero.bytes; // 0
 * p.skip.bytes; // 1044480
 * ```
 */
export function planCopy(input: PlanInput): Plan {
  const { size } = input;
  const full = ExtentSet.range(0, size);
  const unchanged = (input.unchanged ?? ExtentSet.empty()).clip(size);
  const allocated = (input.allocation ?? full).clip(size);
  const data = allocated.difference(unchanged);
  const holes = full.difference(allocated).difference(unchanged);
  // With a base the destination holds the base's data, not zeroes: nothing outside `unchanged`
  // may be assumed zero, whatever -prezeroed says (also when the base was of no use).
  const destZero = input.prezeroed && input.unchanged === undefined && input.holdsBase !== true;
  return {
    size,
    data,
    scan: destZero,
    zero: destZero ? ExtentSet.empty() : holes,
    skip: destZero ? holes : ExtentSet.empty(),
    unchanged,
  };
}

/** Bytes of work a plan does, for progress: data read plus zeroes made. */
export function planWork(plan: Plan): number {
  return plan.data.bytes + plan.zero.bytes;
}

/** One step of a plan: read-and-write `data`, or make `zero`. */
export interface Step extends Extent {
  kind: "data" | "zero";
}

/**
 * The plan's steps in ascending offset order, data cut into pieces of at most `chunk` bytes and
 * zero ranges into pieces of at most `zeroChunk` bytes, so the destination is written front to
 * back in one pass (the seed wiped first and copied second: two passes over the disk).
 */
export function* planSteps(plan: Plan, chunk: number, zeroChunk: number = chunk): Generator<Step> {
  const data = dataSteps(plan.data, chunk);
  const zero = plan.zero.chunks(zeroChunk);
  let d = data.next();
  let z = zero.next();
  while (!d.done || !z.done) {
    if (z.done || (!d.done && d.value.start < z.value.start)) {
      yield d.value;
      d = data.next();
    } else {
      yield { kind: "zero", start: z.value.start, length: z.value.length };
      z = zero.next();
    }
  }
}

/** The data steps: the chunks of `data`. */
function* dataSteps(data: ExtentSet, chunk: number): Generator<Step> {
  for (const e of data.extents) {
    for (const c of cutExtent(e, chunk)) yield { kind: "data", ...c };
  }
}

/**
 * The steps of the segments this thread claims: `segment` bytes each, step `s` belonging to
 * segment `floor(s.start / segment)`. `claim` hands out segment indices in increasing order
 * (a counter shared by several threads); every thread walks all steps and keeps those of its
 * segments, so each step is done by exactly one thread.
 *
 * @example
 * ```ts
 * import { claimedSteps, planCopy, planSteps } from "./plan.ts";
 * let next = 0;
 * const claim = () => (next < 4 ? next++ : undefined);
 * const plan = planCopy({ size: 4 << 20, prezeroed: false });
 * [...claimedSteps(planSteps(plan, 1 << 20), 2 << 20, claim)].length; // 4: this thread took all
 * ```
 */
export function* claimedSteps(
  steps: Iterable<Step>,
  segment: number,
  claim: () => number | undefined,
): Generator<Step> {
  let mine = claim();
  if (mine === undefined) return;
  for (const step of steps) {
    const at = Math.floor(step.start / segment);
    while (at > mine) {
      mine = claim();
      if (mine === undefined) return;
    }
    if (at === mine) yield step;
  }
}
