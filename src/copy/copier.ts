/**
 * The copier: executes a {@linkcode Plan} between two {@linkcode Disk}s. It knows nothing about
 * files, VHDs or NBD. Reads run ahead of writes so the source and the destination are busy at
 * the same time.
 *
 * @module
 */

import { asDiskError, type Disk, type DiskOp } from "../core/disk.ts";
import { ExtentSet } from "../core/extent.ts";
import { claimedSteps, type Plan, planCopy, planSteps, planWork, type Step } from "./plan.ts";
import { DEFAULT_QUANTUM, nonZeroRuns } from "./quantum.ts";
import { scanBuffer } from "./zeroscan.ts";

/** Options of {@linkcode copy}. */
export interface CopyOptions {
  /** Bytes to copy, `[0, size)`; at most the size of both disks. */
  size: number;
  /** Where the source may hold data; `undefined` = everywhere. */
  allocation?: ExtentSet;
  /** The destination reads as zero before the copy (or is a fresh sparse file). */
  prezeroed: boolean;
  /** Ranges the destination already holds (`-base`): left alone. */
  unchanged?: ExtentSet;
  /** The destination holds a base's data (`-base`), so it is never assumed zero. */
  holdsBase?: boolean;
  /** Zero-scan quantum in bytes (default 4 KiB). */
  quantum?: number;
  /** Largest read or write in bytes (default 2 MiB). */
  chunkSize?: number;
  /** How many reads may be in flight ahead of the write (default 4). */
  readAhead?: number;
  /** Steps being written at once (default: the destination's `writeQueueDepth`, else 1). */
  writeBehind?: number;
  /** Called after each step with the work done and the total work, in bytes. */
  onProgress?: (done: number, total: number) => void;
  /** Stops the copy between steps (an `AbortSignal`, or anything that reads like one). */
  signal?: Pick<AbortSignal, "aborted" | "reason">;
  /** Other threads that share the copy (see threads.ts); used when there is enough to share. */
  threads?: CopyThreads;
}

/**
 * Threads that copy parts of the same plan alongside the caller's. The work is cut into
 * segments of `segment` bytes, claimed in order from a shared counter by whichever thread is free,
 * so a thread that starts late or runs slow simply takes fewer. The copier knows nothing of how
 * the threads run or open their disks: threads.ts does (Workers, each opening the disks by name).
 */
export interface CopyThreads {
  /** Bytes per segment. */
  readonly segment: number;
  /** Bytes of work the calling thread does before it starts the others (default 0). */
  readonly startAfter?: number;
  /** Claims the next segment's index for the calling thread; `undefined` when none are left or
   * the threads were stopped. */
  claim(): number | undefined;
  /** Gets the other threads ready to run a copy of `size` bytes (optional): the caller is about
   * to wait a while. */
  prepare?(size: number): void;
  /** Starts the other threads on `run`; resolves with what they did once all have finished, or
   * rejects with the first thread's error once all have stopped. Called at most once. */
  run(run: Plan): Promise<StepCounts>;
  /** Work the other threads have finished so far, in bytes (for progress). */
  progress(): number;
  /** How many other threads have started copying. */
  started(): number;
  /** Makes every thread stop claiming (between steps). */
  stop(): void;
  /** The caller's thread found no segment left: threads that have not started yet need not. */
  drain(): void;
}

/** What a copy did. Every byte of `[0, size)` is counted once in `dataBytes`, `zeroedBytes`,
 * `skippedBytes` or `unchangedBytes`. */
export interface CopyStats {
  /** Bytes covered, `[0, size)`. */
  size: number;
  /** Bytes the plan read from the source (its allocated, changed part). */
  allocatedBytes: number;
  /** Read calls on the source. */
  reads: number;
  /** Bytes read from the source. */
  bytesRead: number;
  /** Write calls on the destination (data and zero buffers). */
  writes: number;
  /** Bytes passed to write calls on the destination. */
  bytesWritten: number;
  /** Calls of the destination's fast `zero` operation. */
  zeroCalls: number;
  /** Source data bytes written to the destination. */
  dataBytes: number;
  /** Bytes made zero on the destination (zero buffers or the fast zero operation). */
  zeroedBytes: number;
  /** Bytes not written because they are zero and the destination is already zero there. */
  skippedBytes: number;
  /** Bytes left alone because the destination already holds them (`-base`). */
  unchangedBytes: number;
  /** Threads that copied: 1, plus the other threads that started (`-threads`). */
  threads: number;
  /** Wall time of the copy in seconds. */
  seconds: number;
  /** `size / seconds`, bytes per second. */
  throughput: number;
}

/** Thrown when the copy is stopped through its signal. */
export class CopyAborted extends Error {
  constructor(readonly offset: number, readonly reason: unknown) {
    super(`copy stopped at offset ${offset}`);
    this.name = "CopyAborted";
  }
}

const MiB = 1024 * 1024;

function fail(err: unknown, disk: Disk, role: "source" | "destination", op: DiskOp, at: number) {
  const e = asDiskError(err, disk.name, op, at);
  e.role ??= role;
  return e;
}

/**
 * Copies `size` bytes from `src` to `dst`, touching as little as possible.
 *
 * @example
 * ```ts
 * import { MemoryDisk } from "../core/disk.ts";
 * import { ExtentSet } from "../core/extent.ts";
 * import { copy } from "./copier.ts";
 * const src = MemoryDisk.filled(1 << 20, 1);
 * const dst = new MemoryDisk(1 << 20);
 * const stats = await copy(src, dst, {
 *   size: 1 << 20,
 *   allocation: ExtentSet.range(0, 65536),
 *   prezeroed: false,
 * });
 * stats.dataBytes;   // 65536
 * stats.zeroedBytes; // 983040
 * ```
 */
export async function copy(src: Disk, dst: Disk, options: CopyOptions): Promise<CopyStats> {
  const plan = planCopy(options);
  return await executePlan(src, dst, plan, options);
}

/** Runs `then` once `work` has settled either way; keeps `work`'s outcome. */
function settleThen(work: Promise<void>, then: () => void): Promise<void> {
  return work.then(then, (err) => {
    then();
    throw err;
  });
}

/** Executes an existing plan (see {@linkcode copy}). */
export async function executePlan(
  src: Disk,
  dst: Disk,
  plan: Plan,
  options: Omit<CopyOptions, "size" | "allocation" | "prezeroed" | "unchanged" | "holdsBase"> = {},
): Promise<CopyStats> {
  const started = performance.now();
  // Checked before anything is written: no write may land outside either disk.
  if (plan.size > src.size) {
    throw fail(
      `${plan.size} bytes requested but the disk holds ${src.size}`,
      src,
      "source",
      "read",
      0,
    );
  }
  if (plan.size > dst.size) {
    throw fail(
      `${plan.size} bytes requested but the disk holds ${dst.size}`,
      dst,
      "destination",
      "write",
      0,
    );
  }
  const total = planWork(plan);
  const stats: CopyStats = {
    size: plan.size,
    allocatedBytes: plan.data.bytes,
    ...noCounts(),
    skippedBytes: plan.skip.bytes,
    unchangedBytes: plan.unchanged.bytes,
    threads: 1,
    seconds: 0,
    throughput: 0,
  };
  let done = 0;
  let threads: CopyThreads | undefined;
  const report = () => options.onProgress?.(done + (threads?.progress() ?? 0), total);
  options.onProgress?.(0, total);

  // Overwriting a destination that zeroes cheaply: zero it all at once, then copy as onto a
  // prezeroed one (holes skipped, zero quanta in the data skipped). One call instead of writing
  // every zero byte, and a file destination stays as sparse as its data.
  const preZeroed = !plan.scan && plan.unchanged.isEmpty && plan.size > 0 &&
    dst.zero !== undefined && dst.zeroIsCheap === true;
  const run = preZeroed
    ? { ...plan, scan: true, zero: ExtentSet.empty(), skip: plan.zero.union(plan.skip) }
    : plan;
  // Other threads share the work when there is enough of it to pay for their start, and when
  // it is the kind of work they speed up (see `worthSharing`). They are started once this thread
  // has done `startAfter` bytes of work: starting them may hold this thread a while (a Worker:
  // ~20 ms), and the disk should have that much to write meanwhile.
  if (options.threads && planWork(run) >= 2 * options.threads.segment) threads = options.threads;
  if (preZeroed) {
    if (options.signal?.aborted) throw new CopyAborted(0, options.signal.reason);
    const zeroing = dst.zero!(0, plan.size);
    zeroing.catch(() => {});
    // Zeroing a whole disk takes a while (a file system discards every block): the other threads
    // get ready meanwhile.
    threads?.prepare?.(plan.size);
    try {
      await zeroing;
    } catch (err) {
      throw fail(err, dst, "destination", "zero", 0);
    }
    stats.zeroCalls++;
    done += plan.zero.bytes;
    report();
  }

  let others: Promise<StepCounts> | undefined;
  const startAfter = done + (threads?.startAfter ?? 0);
  try {
    const own = await runSteps(src, dst, run, options, threads, (n, counts) => {
      done += n;
      if (threads && !others && done >= startAfter && worthSharing(counts)) {
        others = threads.run(run);
        others.catch(() => {});
      }
      report();
    });
    addCounts(stats, own);
    threads?.drain();
    if (others) {
      // The bar keeps moving while the other threads finish.
      const timer = setInterval(() => {
        if (options.signal?.aborted) threads?.stop();
        report();
      }, 200);
      try {
        addCounts(stats, await others);
      } finally {
        clearInterval(timer);
      }
      report();
    }
  } catch (err) {
    // One thread failed or was stopped: stop the others between steps and let them settle, so
    // nothing is still writing when the caller reports the error and closes the disks.
    threads?.stop();
    await others?.catch(() => {});
    throw err;
  }
  if (preZeroed) {
    // Everything not written as data was made zero by the first call.
    stats.zeroedBytes += plan.zero.bytes + stats.skippedBytes - plan.skip.bytes;
    stats.skippedBytes = plan.skip.bytes;
  }
  if (others) stats.threads += threads?.started() ?? 0;
  stats.seconds = (performance.now() - started) / 1000;
  stats.throughput = stats.seconds > 0 ? plan.size / stats.seconds : 0;
  return stats;
}

/**
 * True when more threads are worth starting, judging by the work so far: when at least half of
 * what was read turned out to be zeroes and was skipped. Then each byte that reaches the disk
 * costs several bytes of reading and scanning, and one thread cannot keep the disk busy: on a
 * 2 GiB file of 70% zeroes a second thread measured 5-10% faster. When what is read is mostly
 * written, the disk is the limit, and a second stream of writeback measured ~10% slower (a 4 GiB
 * sparse file whose data is all non-zero).
 */
function worthSharing(c: Readonly<StepCounts>): boolean {
  return c.skippedBytes >= c.dataBytes;
}

/** What one thread did: the per-step part of {@linkcode CopyStats}. */
export type StepCounts = Pick<
  CopyStats,
  | "reads"
  | "bytesRead"
  | "writes"
  | "bytesWritten"
  | "zeroCalls"
  | "dataBytes"
  | "zeroedBytes"
  | "skippedBytes"
>;

/** Counts of a thread that did nothing. */
export function noCounts(): StepCounts {
  return {
    reads: 0,
    bytesRead: 0,
    writes: 0,
    bytesWritten: 0,
    zeroCalls: 0,
    dataBytes: 0,
    zeroedBytes: 0,
    skippedBytes: 0,
  };
}

/** Adds `b` into `a`. */
export function addCounts(a: StepCounts, b: StepCounts): void {
  a.reads += b.reads;
  a.bytesRead += b.bytesRead;
  a.writes += b.writes;
  a.bytesWritten += b.bytesWritten;
  a.zeroCalls += b.zeroCalls;
  a.dataBytes += b.dataBytes;
  a.zeroedBytes += b.zeroedBytes;
  a.skippedBytes += b.skippedBytes;
}

/**
 * Runs the steps of `run` (all of them, or the segments this thread claims from `threads`) with
 * reads ahead of writes; `onDone` gets each finished step's work in bytes, and the counts so far.
 *
 * A thread in another thread calls this on the plan {@linkcode CopyThreads.run} handed it, with disks
 * of its own (see threads.ts).
 */
export async function runSteps(
  src: Disk,
  dst: Disk,
  run: Plan,
  options: Omit<
    CopyOptions,
    "size" | "allocation" | "prezeroed" | "unchanged" | "holdsBase" | "threads"
  >,
  threads: Pick<CopyThreads, "segment" | "claim"> | undefined,
  onDone: (bytes: number, counts: Readonly<StepCounts>) => void,
): Promise<StepCounts> {
  const quantum = options.quantum ?? DEFAULT_QUANTUM;
  const chunk = options.chunkSize ?? 2 * MiB;
  const depth = Math.max(1, options.readAhead ?? 4);
  // Reads ahead pay off while they wait for a device; asked before every read.
  const readDepth = () =>
    options.readAhead === undefined
      ? Math.max(1, Math.min(depth, src.readQueueDepth ?? depth))
      : depth;
  const writeDepth = Math.max(1, options.writeBehind ?? dst.writeQueueDepth ?? 1);
  const stats = noCounts();
  const write = async (offset: number, buf: Uint8Array) => {
    try {
      await dst.write(offset, buf);
    } catch (err) {
      throw fail(err, dst, "destination", "write", offset);
    }
    stats.writes++;
    stats.bytesWritten += buf.length;
  };
  const zeroRange = async (start: number, length: number) => {
    try {
      await dst.zero!(start, length);
    } catch (err) {
      throw fail(err, dst, "destination", "zero", start);
    }
    stats.zeroCalls++;
  };
  let zeroBuffer: Uint8Array | undefined;
  const makeZero = async (step: Step) => {
    if (dst.zero) {
      await zeroRange(step.start, step.length);
    } else {
      // One chunk long, whichever step comes first, so that a step makes as many writes in
      // any thread.
      zeroBuffer ??= new Uint8Array(chunk);
      for (let off = step.start; off < step.start + step.length; off += zeroBuffer.length) {
        const n = Math.min(zeroBuffer.length, step.start + step.length - off);
        await write(off, zeroBuffer.subarray(0, n));
      }
    }
    stats.zeroedBytes += step.length;
  };

  // Buffers live in WebAssembly memory (page aligned: fit for O_DIRECT, scanned in place by
  // SIMD) and cycle through a pool: `depth` being read, up to `writeDepth` being written.
  const pool: Uint8Array[] = [];
  const take = () => pool.pop() ?? scanBuffer(chunk);
  interface Loaded {
    bytes: Uint8Array;
    /** Returns the buffer to the pool. */
    done(): void;
  }
  const load = async (step: Step): Promise<Loaded> => {
    const buf = take();
    try {
      await src.read(step.start, buf.subarray(0, step.length));
    } catch (err) {
      pool.push(buf);
      throw fail(err, src, "source", "read", step.start);
    }
    return { bytes: buf.subarray(0, step.length), done: () => pool.push(buf) };
  };
  interface Pending {
    step: Step;
    read?: Promise<Loaded>;
  }
  const queue: Pending[] = [];
  // Data steps queued (being read, or read and waiting): each holds a buffer, so this bounds
  // memory to (depth + writeDepth + 1) chunks whatever the disk size.
  let readsQueued = 0;
  const all = planSteps(run, chunk, Math.max(chunk, 64 * MiB));
  const steps = threads ? claimedSteps(all, threads.segment, () => threads.claim()) : all;
  let exhausted = false;
  const refill = () => {
    while (!exhausted && queue.length < depth + 16 && readsQueued < readDepth()) {
      const next = steps.next();
      if (next.done) {
        exhausted = true;
        break;
      }
      const step = next.value;
      if (step.kind === "data") {
        readsQueued++;
        const read = load(step);
        // Avoid an unhandled rejection while earlier steps are still being written.
        read.catch(() => {});
        queue.push({ step, read });
      } else {
        queue.push({ step });
      }
    }
  };

  // Writes in flight, oldest first; each settles after its step is fully written and counted.
  const writing: Promise<void>[] = [];
  const finish = (step: Step) => onDone(step.length, stats);
  try {
    refill();
    while (queue.length > 0) {
      const item = queue[0];
      if (options.signal?.aborted) throw new CopyAborted(item.step.start, options.signal.reason);
      queue.shift();
      const { step } = item;
      let work: Promise<void>;
      if (item.read) {
        readsQueued--;
        const loaded = await item.read;
        // Checked again after the wait: the step may not start writing once stopped.
        if (options.signal?.aborted) {
          loaded.done();
          throw new CopyAborted(step.start, options.signal.reason);
        }
        const view = loaded.bytes;
        stats.reads++;
        stats.bytesRead += step.length;
        refill();
        if (run.scan) {
          const runs = nonZeroRuns(view, quantum, step.start);
          let covered = 0;
          for (const r of runs) covered += r.length;
          stats.dataBytes += covered;
          stats.skippedBytes += step.length - covered;
          work = runs.length === 1
            ? write(
              step.start + runs[0].start,
              view.subarray(runs[0].start, runs[0].start + runs[0].length),
            )
            : Promise.allSettled(
              runs.map((r) =>
                write(step.start + r.start, view.subarray(r.start, r.start + r.length))
              ),
            ).then((results) => {
              for (const r of results) if (r.status === "rejected") throw r.reason;
            });
        } else {
          stats.dataBytes += step.length;
          work = write(step.start, view);
        }
        // Every write of the step has settled (or the first failed and the others are still
        // settling): only then may the bytes go back.
        work = settleThen(work, () => loaded.done()).then(() => finish(step));
      } else {
        refill();
        work = makeZero(step).then(() => finish(step));
      }
      work.catch(() => {});
      writing.push(work);
      // Keep at most `writeDepth` steps being written; the oldest must finish first.
      while (writing.length >= writeDepth) await writing.shift();
      refill();
    }
    while (writing.length > 0) await writing.shift();
  } finally {
    // Let reads and writes still in flight settle before the caller closes the disks, and give
    // back what was read but never written.
    await Promise.allSettled(writing);
    const reads = await Promise.allSettled(queue.map((p) => p.read));
    for (const r of reads) if (r.status === "fulfilled" && r.value) r.value.done();
  }
  return stats;
}
