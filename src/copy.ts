/**
 * The copier: executes a {@linkcode Plan} between two {@linkcode Disk}s. It knows nothing about
 * files, VHDs or NBD. Reads run ahead of writes so the source and the destination are busy at
 * the same time.
 *
 * @module
 */

import { asDiskError, type Disk, type DiskOp } from "./disk.ts";
import { ExtentSet } from "./extent.ts";
import { type Plan, planCopy, planSteps, planWork, type Step } from "./plan.ts";
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
  /** Zero-scan quantum in bytes (default 16 KiB). */
  quantum?: number;
  /** Largest read or write in bytes (default 2 MiB). */
  chunkSize?: number;
  /** How many reads may be in flight ahead of the write (default 4). */
  readAhead?: number;
  /** Steps being written at once (default: the destination's `writeQueueDepth`, else 1). */
  writeBehind?: number;
  /** Called after each step with the work done and the total work, in bytes. */
  onProgress?: (done: number, total: number) => void;
  /** Stops the copy between steps. */
  signal?: AbortSignal;
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
 * import { MemoryDisk } from "./disk.ts";
 * import { ExtentSet } from "./extent.ts";
 * import { copy } from "./copy.ts";
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

/**
 * Optional hints a disk may give the copier (FileDisk does; an NBD disk may).
 *
 * - `zeroIsCheap`: one `zero(0, size)` costs far less than writing `size` bytes (hole punching on
 *   a file, offloaded BLKZEROOUT on a device, an NBD server's fast zero). The copier then
 *   overwrites the disk by zeroing all of `[0, size)` in one call and writing only the non-zero
 *   quanta, instead of writing every byte.
 * - `writeQueueDepth`: how many steps may be written at once to keep the disk busy (O_DIRECT
 *   writes, NBD requests). Without it, one at a time.
 */
export interface DiskHints extends Disk {
  /** True when zeroing the whole disk is far cheaper than writing it. */
  readonly zeroIsCheap?: boolean;
  /** How many writes to keep in flight. */
  readonly writeQueueDepth?: number;
}

/** Executes an existing plan (see {@linkcode copy}). */
export async function executePlan(
  src: Disk,
  dst: Disk,
  plan: Plan,
  options: Omit<CopyOptions, "size" | "allocation" | "prezeroed" | "unchanged"> = {},
): Promise<CopyStats> {
  const started = performance.now();
  const quantum = options.quantum ?? DEFAULT_QUANTUM;
  const chunk = options.chunkSize ?? 2 * MiB;
  const depth = Math.max(1, options.readAhead ?? 4);
  const writeDepth = Math.max(1, options.writeBehind ?? (dst as DiskHints).writeQueueDepth ?? 1);
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
    reads: 0,
    bytesRead: 0,
    writes: 0,
    bytesWritten: 0,
    zeroCalls: 0,
    dataBytes: 0,
    zeroedBytes: 0,
    skippedBytes: plan.skip.bytes,
    unchangedBytes: plan.unchanged.bytes,
    seconds: 0,
    throughput: 0,
  };

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
      zeroBuffer ??= new Uint8Array(Math.min(chunk, step.length));
      for (let off = step.start; off < step.start + step.length; off += zeroBuffer.length) {
        const n = Math.min(zeroBuffer.length, step.start + step.length - off);
        await write(off, zeroBuffer.subarray(0, n));
      }
    }
    stats.zeroedBytes += step.length;
  };

  let done = 0;
  options.onProgress?.(0, total);

  // Overwriting a destination that zeroes cheaply: zero it all at once, then copy as onto a
  // prezeroed one (holes skipped, zero quanta in the data skipped). One call instead of writing
  // every zero byte, and a file destination stays as sparse as its data.
  let run = plan;
  let preZeroed = false;
  if (
    !plan.scan && plan.unchanged.isEmpty && plan.size > 0 && dst.zero &&
    (dst as DiskHints).zeroIsCheap === true
  ) {
    if (options.signal?.aborted) throw new CopyAborted(0, options.signal.reason);
    await zeroRange(0, plan.size);
    preZeroed = true;
    run = { ...plan, scan: true, zero: ExtentSet.empty(), skip: plan.zero.union(plan.skip) };
    done += plan.zero.bytes;
    options.onProgress?.(done, total);
  }

  // Buffers live in WebAssembly memory (page aligned: fit for O_DIRECT, scanned in place by
  // SIMD) and cycle through a pool: `depth` being read, up to `writeDepth` being written.
  const pool: Uint8Array[] = [];
  const take = () => pool.pop() ?? scanBuffer(chunk);
  interface Pending {
    step: Step;
    buf?: Uint8Array;
    read?: Promise<void>;
  }
  const queue: Pending[] = [];
  // Data steps queued (being read, or read and waiting): each holds a buffer, so this bounds
  // memory to (depth + writeDepth + 1) buffers whatever the disk size.
  let readsQueued = 0;
  const steps = planSteps(run, chunk, Math.max(chunk, 64 * MiB));
  let exhausted = false;
  const refill = () => {
    while (!exhausted && queue.length < depth + 16 && readsQueued < depth) {
      const next = steps.next();
      if (next.done) {
        exhausted = true;
        break;
      }
      const step = next.value;
      if (step.kind === "data") {
        const buf = take();
        const view = buf.subarray(0, step.length);
        readsQueued++;
        const read = src.read(step.start, view).catch((err) => {
          throw fail(err, src, "source", "read", step.start);
        });
        // Avoid an unhandled rejection while earlier steps are still being written.
        read.catch(() => {});
        queue.push({ step, buf, read });
      } else {
        queue.push({ step });
      }
    }
  };

  // Writes in flight, oldest first; each settles after its step is fully written and counted.
  const writing: Promise<void>[] = [];
  const finish = (step: Step) => {
    done += step.length;
    options.onProgress?.(done, total);
  };
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
        await item.read;
        // Checked again after the wait: the step may not start writing once stopped.
        if (options.signal?.aborted) {
          queue.unshift(item);
          throw new CopyAborted(step.start, options.signal.reason);
        }
        const buf = item.buf!;
        const view = buf.subarray(0, step.length);
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
            : Promise.all(
              runs.map((r) =>
                write(step.start + r.start, view.subarray(r.start, r.start + r.length))
              ),
            ).then(() => {});
        } else {
          stats.dataBytes += step.length;
          work = write(step.start, view);
        }
        work = work.then(() => {
          pool.push(buf);
          finish(step);
        });
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
    // Let reads and writes still in flight settle before the caller closes the disks.
    await Promise.allSettled([...queue.map((p) => p.read), ...writing]);
  }
  if (preZeroed) {
    // Everything not written as data was made zero by the first call.
    stats.zeroedBytes += plan.zero.bytes + stats.skippedBytes - plan.skip.bytes;
    stats.skippedBytes = plan.skip.bytes;
  }
  stats.seconds = (performance.now() - started) / 1000;
  stats.throughput = stats.seconds > 0 ? plan.size / stats.seconds : 0;
  return stats;
}
