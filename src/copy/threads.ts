/**
 * CopyThreads: one copy shared by several threads. When most of what is read is zeroes skipped by the
 * scan, one thread cannot keep the disk busy (reading, scanning, and the kernel's work for the
 * writes: page-cache copies, block allocation, writeback); more threads can. Each thread is a Deno
 * Worker running this same program (main.ts starts {@linkcode serveThread} in it), which opens the
 * source and destination by name with disks of its own and runs the copier's steps for the
 * segments it claims (see {@linkcode CopyThreads}). The plan is made once, by the caller, and sent to every thread.
 *
 * Shared state (a `SharedArrayBuffer`): the next segment to claim, a stop flag, and per thread its
 * state (not started, started, cancelled) and the work it has finished.
 *
 * @example
 * ```ts
 * import { startThreads } from "./threads.ts";
 * import { copy } from "./copier.ts";
 * const threads = startThreads({
 *   worker: new URL("../../main.ts", import.meta.url),
 *   count: 1,
 *   segment: 32 << 20,
 *   job: {
 *     src: { spec: "a.raw", role: "source", kind: "file", format: "raw", storage: [] },
 *     dest: { spec: "b.raw", role: "destination", kind: "file", format: "raw", storage: [] },
 *     open: {},
 *     copy: {},
 *   },
 * });
 * // await copy(src, dst, { ..., threads }); then:
 * threads.close();
 * ```
 *
 * @module
 */

import {
  addCounts,
  CopyAborted,
  type CopyOptions,
  type CopyThreads,
  noCounts,
  runSteps,
  type StepCounts,
} from "./copier.ts";
import { type Disk, DiskError, type DiskOp } from "../core/disk.ts";
import { type ExitCodeValue, SparseDdError } from "../core/errors.ts";
import { ExtentSet } from "../core/extent.ts";
import type { Endpoint } from "../endpoint/endpoint.ts";
import { openDestination, type OpenOptions, openSource } from "../endpoint/open.ts";
import type { Plan } from "./plan.ts";
import { errorText } from "../core/error_text.ts";

/** The name thread Workers are started with; main.ts serves a thread when it runs under it. */
export const THREAD_WORKER_NAME = "sparse_dd-thread";

/** What a thread needs to open the disks itself: plain data, sent to each Worker. */
export interface ThreadJob {
  /** `-src` as resolved (its VHD chain's files included), opened with {@linkcode openSource}. */
  src: Endpoint;
  /** `-dest` as resolved, opened with {@linkcode openDestination} (it exists by now, at its
   * size, claimed by the calling thread). */
  dest: Endpoint;
  /** How the command line opens disks. */
  open: OpenOptions;
  /** The copier's tuning. */
  copy: Pick<CopyOptions, "quantum" | "chunkSize" | "readAhead" | "writeBehind">;
}

/** Options of {@linkcode startThreads}. */
export interface ThreadStart {
  /** The module a thread Worker runs: main.ts (or the bundle or binary made of it). */
  worker: string | URL;
  /** CopyThreads to start besides the calling thread's. */
  count: number;
  /** Bytes per claimed segment. */
  segment: number;
  /** What each thread opens and how it copies. */
  job: ThreadJob;
}

/** {@linkcode CopyThreads} started in Workers; `close` ends the Workers. */
export interface ThreadGroup extends CopyThreads {
  /** Terminates the Workers (after `run` has settled, or when it was never called). */
  close(): void;
}

// The shared words: [NEXT] next segment, [STOP] 1 once stopped, then per thread its state.
const NEXT = 0;
const STOP = 1;
const STATE = 2;
const IDLE = 0;
const STARTED = 1;
const CANCELLED = 2;

/** A plan as plain data (extent sets as `[start, length]` pairs). */
interface PlanWire {
  size: number;
  scan: boolean;
  data: Array<[number, number]>;
  zero: Array<[number, number]>;
  skip: Array<[number, number]>;
  unchanged: Array<[number, number]>;
}

function planToWire(p: Plan): PlanWire {
  return {
    size: p.size,
    scan: p.scan,
    data: p.data.toJSON(),
    zero: p.zero.toJSON(),
    skip: p.skip.toJSON(),
    unchanged: p.unchanged.toJSON(),
  };
}

function planFromWire(w: PlanWire): Plan {
  const set = (pairs: Array<[number, number]>) =>
    ExtentSet.of(pairs.map(([start, length]) => ({ start, length })));
  return {
    size: w.size,
    scan: w.scan,
    data: set(w.data),
    zero: set(w.zero),
    skip: set(w.skip),
    unchanged: set(w.unchanged),
  };
}

/** An error as plain data: what the exit code and the one-line message need. */
interface ErrorWire {
  message: string;
  disk?: { disk: string; op: DiskOp; offset?: number; reason: string; role?: string; nbd: boolean };
  exitCode?: ExitCodeValue;
  aborted?: number;
}

/**
 * An error thrown in a thread as plain data, for the thread that reports it.
 *
 * @example
 * ```ts
 * import { errorFromWire, errorToWire } from "./threads.ts";
 * import { DiskError } from "../core/disk.ts";
 * const e = errorFromWire(errorToWire(new DiskError("b.raw", "write", 4096, "No space left")));
 * e.message; // "cannot write b.raw at offset 4096: No space left"
 * ```
 */
export function errorToWire(err: unknown): ErrorWire {
  const message = errorText(err);
  if (err instanceof DiskError) {
    const { disk, op, offset, reason, role, nbd } = err;
    return { message, disk: { disk, op, offset, reason, role, nbd } };
  }
  if (err instanceof SparseDdError) return { message, exitCode: err.exitCode };
  if (err instanceof CopyAborted) return { message, aborted: err.offset };
  return { message };
}

/** The error {@linkcode errorToWire} described, rebuilt with its class. */
export function errorFromWire(w: ErrorWire): Error {
  if (w.disk) {
    const e = new DiskError(w.disk.disk, w.disk.op, w.disk.offset, w.disk.reason);
    e.role = w.disk.role as DiskError["role"];
    e.nbd = w.disk.nbd;
    return e;
  }
  if (w.exitCode !== undefined) return new SparseDdError(w.exitCode, w.message);
  if (w.aborted !== undefined) return new CopyAborted(w.aborted, "stopped");
  return new Error(w.message);
}

/** Messages between the caller and a thread: open the disks (ahead of time), and run. */
type ToLane = { kind: "open"; job: ThreadJob; size: number } | ThreadRun;
interface ThreadRun {
  kind: "run";
  job: ThreadJob;
  plan: PlanWire;
  segment: number;
  shared: SharedArrayBuffer;
  /** This thread's index (0 is the caller's), and how many there are. */
  thread: number;
  threads: number;
}
type FromLane =
  | { kind: "done"; counts: StepCounts }
  | { kind: "stopped" }
  | { kind: "error"; error: ErrorWire };

/** Where the per-thread work counts start in the shared state: after the words, 8-aligned. */
function doneOffset(threads: number): number {
  return Math.ceil((STATE + threads) * 4 / 8) * 8;
}

/** Views of the shared state for `threads` threads (index 0 is the calling thread). */
function sharedViews(shared: SharedArrayBuffer, threads: number) {
  const words = new Int32Array(shared, 0, STATE + threads);
  const done = new Float64Array(shared, doneOffset(threads), threads);
  return { words, done };
}

/** Claims the next segment for a thread: `undefined` once stopped. */
function claimer(words: Int32Array): () => number | undefined {
  return () => Atomics.load(words, STOP) !== 0 ? undefined : Atomics.add(words, NEXT, 1);
}

/**
 * CopyThreads in `count` Workers, made when {@linkcode CopyThreads.prepare} or {@linkcode CopyThreads.run} is
 * called. Creating a Worker holds the calling thread for ~20 ms (the new isolate is built before
 * the constructor returns), so the copier calls `run` once its own thread has done `startAfter`
 * bytes of work: the disk starts working that much sooner, and has writes queued while the
 * Workers are made. A Worker that cannot be created is no error: the threads that run claim its
 * share.
 */
export function startThreads(options: ThreadStart): ThreadGroup {
  const threads = options.count + 1;
  const shared = new SharedArrayBuffer(doneOffset(threads) + 8 * threads);
  const { words, done } = sharedViews(shared, threads);
  const workers: Worker[] = [];
  const claim = claimer(words);
  const cancels: Array<() => void> = [];
  let ran = false;
  let prepared = false;
  const prepare = (size: number) => {
    if (prepared) return;
    prepared = true;
    for (let thread = 1; thread < threads; thread++) {
      let w: Worker;
      try {
        w = new Worker(options.worker, { type: "module", name: THREAD_WORKER_NAME });
      } catch {
        // No Workers here (permissions): the threads that run share the copy.
        break;
      }
      workers.push(w);
      const msg: ToLane = { kind: "open", job: options.job, size };
      w.postMessage(msg);
    }
  };
  return {
    segment: options.segment,
    // Creating a Worker holds this thread ~20 ms: first give the disk that much to write.
    startAfter: 16 * 1024 * 1024,
    claim,
    progress(): number {
      let sum = 0;
      for (let i = 1; i < threads; i++) sum += done[i];
      return sum;
    },
    stop(): void {
      Atomics.store(words, STOP, 1);
    },
    started(): number {
      let n = 0;
      for (let i = 1; i < threads; i++) if (Atomics.load(words, STATE + i) === STARTED) n++;
      return n;
    },
    prepare(size: number): void {
      prepare(size);
    },
    run(plan: Plan): Promise<StepCounts> {
      if (ran) throw new Error("threads already ran");
      ran = true;
      // Stopped or drained already: no thread would claim anything.
      if (Atomics.load(words, STOP) === 0) prepare(plan.size);
      const wire = planToWire(plan);
      const results = workers.map((w, k) => {
        const thread = k + 1;
        const result = threadResult(w, thread, words, cancels);
        const msg: ToLane = {
          kind: "run",
          job: options.job,
          plan: wire,
          segment: options.segment,
          shared,
          thread,
          threads,
        };
        w.postMessage(msg);
        return result;
      });
      return Promise.allSettled(results).then((settled) => {
        const sum = noCounts();
        let stopped: Error | undefined;
        for (const s of settled) {
          if (s.status === "fulfilled") addCounts(sum, s.value);
          else if (s.reason instanceof CopyAborted) stopped ??= s.reason;
          else throw s.reason;
        }
        if (stopped) throw stopped;
        return sum;
      });
    },
    drain(): void {
      for (let thread = 1; thread < threads; thread++) {
        Atomics.compareExchange(words, STATE + thread, IDLE, CANCELLED);
      }
      for (const cancel of cancels) cancel();
    },
    close(): void {
      for (const w of workers) w.terminate();
    },
  };
}

/**
 * What thread `thread` did. A thread that never started (its Worker failed to load, or it was still
 * loading when every segment had been claimed) did nothing and is cancelled: it resolves with
 * zero counts. Any error after it started is the copy's error, and stops the other threads.
 */
function threadResult(
  w: Worker,
  thread: number,
  words: Int32Array,
  cancels: Array<() => void>,
): Promise<StepCounts> {
  return new Promise((resolve, reject) => {
    // A thread that has not started has claimed nothing: cancelled, the others cover for it.
    const cancel = () => {
      const was = Atomics.compareExchange(words, STATE + thread, IDLE, CANCELLED);
      if (was !== STARTED) resolve(noCounts());
      return was !== STARTED;
    };
    // drain() may have cancelled it before this was set up.
    if (Atomics.load(words, STATE + thread) === CANCELLED) resolve(noCounts());
    cancels.push(cancel);
    w.onmessage = (e: MessageEvent<FromLane>) => {
      const m = e.data;
      if (m.kind === "done") resolve(m.counts);
      else if (m.kind === "stopped") reject(new CopyAborted(0, "stopped"));
      else {
        Atomics.store(words, STOP, 1);
        reject(errorFromWire(m.error));
      }
    };
    w.onerror = (e: ErrorEvent) => {
      e.preventDefault();
      if (cancel()) return;
      Atomics.store(words, STOP, 1);
      reject(new Error(`a copy thread failed: ${e.message}`));
    };
  });
}

/** Marks a disk error as the source's or the destination's, unless it already says. */
function role(err: unknown, which: "source" | "destination"): unknown {
  if (err instanceof DiskError) err.role ??= which;
  return err;
}

/**
 * Serves one thread in this Worker: waits for the job, opens the disks, copies the segments it
 * claims, reports. Run by main.ts when the Worker is named {@linkcode THREAD_WORKER_NAME}.
 */
export function serveThread(): void {
  const scope = globalThis as unknown as {
    onmessage: ((e: MessageEvent<ToLane>) => void) | null;
    postMessage(m: FromLane): void;
  };
  let opened: Promise<[Disk, Disk]> | undefined;
  const open = (job: ThreadJob, size: number) =>
    opened ??= (async (): Promise<[Disk, Disk]> => {
      const src = (await openSource(job.src, job.open).catch((err) => {
        throw role(err, "source");
      })).disk;
      try {
        // The calling thread holds the destination's claim (O_EXCL, lock) for the whole copy.
        return [src, await openDestination(job.dest, size, { ...job.open, claim: false })];
      } catch (err) {
        await src.close().catch(() => {});
        throw role(err, "destination");
      }
    })();
  scope.onmessage = async (e) => {
    if (e.data.kind === "open") {
      // Reported, if it fails, when the thread runs.
      open(e.data.job, e.data.size).catch(() => {});
      return;
    }
    const { job, plan, segment, shared, thread, threads } = e.data;
    const { words, done } = sharedViews(shared, threads);
    let disks: [Disk, Disk] | undefined;
    try {
      // Claim nothing once cancelled (the caller found every segment taken before we got here).
      if (Atomics.compareExchange(words, STATE + thread, IDLE, STARTED) !== IDLE) return;
      const claim = claimer(words);
      const signal = {
        get aborted() {
          return Atomics.load(words, STOP) !== 0;
        },
        reason: "stopped",
      };
      const run = planFromWire(plan);
      disks = await open(job, run.size);
      const [src, dst] = disks;
      let finished = 0;
      const counts = await runSteps(
        src,
        dst,
        run,
        { ...job.copy, signal },
        { segment, claim },
        (n) => {
          finished += n;
          done[thread] = finished;
        },
      );
      // Writeback errors surface here, in the thread that wrote: they are the destination's
      // (exit 4), as is what closing it reports.
      try {
        await dst.flush();
        await dst.close();
      } catch (err) {
        throw role(err, "destination");
      }
      scope.postMessage({ kind: "done", counts });
    } catch (err) {
      if (!(err instanceof CopyAborted)) Atomics.store(words, STOP, 1);
      scope.postMessage(
        err instanceof CopyAborted
          ? { kind: "stopped" }
          : { kind: "error", error: errorToWire(err) },
      );
    } finally {
      const [src, dst] = disks ?? await opened?.catch(() => undefined) ?? [];
      await src?.close().catch(() => {});
      await dst?.close().catch(() => {});
    }
  };
}
