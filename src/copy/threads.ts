/**
 * Lanes: one copy shared by several threads. When most of what is read is zeroes skipped by the
 * scan, one thread cannot keep the disk busy (reading, scanning, and the kernel's work for the
 * writes: page-cache copies, block allocation, writeback); more threads can. Each lane is a Deno
 * Worker running this same program (main.ts starts {@linkcode serveLane} in it), which opens the
 * source and destination by name with disks of its own and runs the copier's steps for the
 * segments it claims (see {@linkcode Lanes}). The plan is made once, by the caller, and sent to every lane.
 *
 * Shared state (a `SharedArrayBuffer`): the next segment to claim, a stop flag, and per lane its
 * state (not started, started, cancelled) and the work it has finished.
 *
 * @example
 * ```ts
 * import { startLanes } from "./threads.ts";
 * import { copy } from "./copier.ts";
 * const lanes = startLanes({
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
 * // await copy(src, dst, { ..., lanes }); then:
 * lanes.close();
 * ```
 *
 * @module
 */

import {
  addCounts,
  CopyAborted,
  type CopyOptions,
  type Lanes,
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

/** The name lane Workers are started with; main.ts serves a lane when it runs under it. */
export const LANE_WORKER_NAME = "sparse_dd-lane";

/** What a lane needs to open the disks itself: plain data, sent to each Worker. */
export interface LaneJob {
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

/** Options of {@linkcode startLanes}. */
export interface LaneStart {
  /** The module a lane Worker runs: main.ts (or the bundle or binary made of it). */
  worker: string | URL;
  /** Lanes to start besides the calling thread's. */
  count: number;
  /** Bytes per claimed segment. */
  segment: number;
  /** What each lane opens and how it copies. */
  job: LaneJob;
}

/** {@linkcode Lanes} started in Workers; `close` ends the Workers. */
export interface LaneGroup extends Lanes {
  /** Terminates the Workers (after `run` has settled, or when it was never called). */
  close(): void;
}

// The shared words: [NEXT] next segment, [STOP] 1 once stopped, then per lane its state.
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
 * An error thrown in a lane as plain data, for the thread that reports it.
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

/** Messages between the caller and a lane: open the disks (ahead of time), and run. */
type ToLane = { kind: "open"; job: LaneJob; size: number } | LaneRun;
interface LaneRun {
  kind: "run";
  job: LaneJob;
  plan: PlanWire;
  segment: number;
  shared: SharedArrayBuffer;
  /** This lane's index (0 is the caller's), and how many there are. */
  lane: number;
  lanes: number;
}
type FromLane =
  | { kind: "done"; counts: StepCounts }
  | { kind: "stopped" }
  | { kind: "error"; error: ErrorWire };

/** Where the per-lane work counts start in the shared state: after the words, 8-aligned. */
function doneOffset(lanes: number): number {
  return Math.ceil((STATE + lanes) * 4 / 8) * 8;
}

/** Views of the shared state for `lanes` lanes (index 0 is the calling thread). */
function sharedViews(shared: SharedArrayBuffer, lanes: number) {
  const words = new Int32Array(shared, 0, STATE + lanes);
  const done = new Float64Array(shared, doneOffset(lanes), lanes);
  return { words, done };
}

/** Claims the next segment for a lane: `undefined` once stopped. */
function claimer(words: Int32Array): () => number | undefined {
  return () => Atomics.load(words, STOP) !== 0 ? undefined : Atomics.add(words, NEXT, 1);
}

/**
 * Lanes in `count` Workers, made when {@linkcode Lanes.prepare} or {@linkcode Lanes.run} is
 * called. Creating a Worker holds the calling thread for ~20 ms (the new isolate is built before
 * the constructor returns), so the copier calls `run` once its own lane has done `startAfter`
 * bytes of work: the disk starts working that much sooner, and has writes queued while the
 * Workers are made. A Worker that cannot be created is no error: the lanes that run claim its
 * share.
 */
export function startLanes(options: LaneStart): LaneGroup {
  const lanes = options.count + 1;
  const shared = new SharedArrayBuffer(doneOffset(lanes) + 8 * lanes);
  const { words, done } = sharedViews(shared, lanes);
  const workers: Worker[] = [];
  const claim = claimer(words);
  const cancels: Array<() => void> = [];
  let ran = false;
  let prepared = false;
  const prepare = (size: number) => {
    if (prepared) return;
    prepared = true;
    for (let lane = 1; lane < lanes; lane++) {
      let w: Worker;
      try {
        w = new Worker(options.worker, { type: "module", name: LANE_WORKER_NAME });
      } catch {
        // No Workers here (permissions): the lanes that run share the copy.
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
      for (let i = 1; i < lanes; i++) sum += done[i];
      return sum;
    },
    stop(): void {
      Atomics.store(words, STOP, 1);
    },
    started(): number {
      let n = 0;
      for (let i = 1; i < lanes; i++) if (Atomics.load(words, STATE + i) === STARTED) n++;
      return n;
    },
    prepare(size: number): void {
      prepare(size);
    },
    run(plan: Plan): Promise<StepCounts> {
      if (ran) throw new Error("lanes already ran");
      ran = true;
      // Stopped or drained already: no lane would claim anything.
      if (Atomics.load(words, STOP) === 0) prepare(plan.size);
      const wire = planToWire(plan);
      const results = workers.map((w, k) => {
        const lane = k + 1;
        const result = laneResult(w, lane, words, cancels);
        const msg: ToLane = {
          kind: "run",
          job: options.job,
          plan: wire,
          segment: options.segment,
          shared,
          lane,
          lanes,
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
      for (let lane = 1; lane < lanes; lane++) {
        Atomics.compareExchange(words, STATE + lane, IDLE, CANCELLED);
      }
      for (const cancel of cancels) cancel();
    },
    close(): void {
      for (const w of workers) w.terminate();
    },
  };
}

/**
 * What lane `lane` did. A lane that never started (its Worker failed to load, or it was still
 * loading when every segment had been claimed) did nothing and is cancelled: it resolves with
 * zero counts. Any error after it started is the copy's error, and stops the other lanes.
 */
function laneResult(
  w: Worker,
  lane: number,
  words: Int32Array,
  cancels: Array<() => void>,
): Promise<StepCounts> {
  return new Promise((resolve, reject) => {
    // A lane that has not started has claimed nothing: cancelled, the others cover for it.
    const cancel = () => {
      const was = Atomics.compareExchange(words, STATE + lane, IDLE, CANCELLED);
      if (was !== STARTED) resolve(noCounts());
      return was !== STARTED;
    };
    // drain() may have cancelled it before this was set up.
    if (Atomics.load(words, STATE + lane) === CANCELLED) resolve(noCounts());
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

/**
 * Serves one lane in this Worker: waits for the job, opens the disks, copies the segments it
 * claims, reports. Run by main.ts when the Worker is named {@linkcode LANE_WORKER_NAME}.
 */
export function serveLane(): void {
  const scope = globalThis as unknown as {
    onmessage: ((e: MessageEvent<ToLane>) => void) | null;
    postMessage(m: FromLane): void;
  };
  let opened: Promise<[Disk, Disk]> | undefined;
  const open = (job: LaneJob, size: number) =>
    opened ??= (async (): Promise<[Disk, Disk]> => {
      const src = (await openSource(job.src, job.open)).disk;
      try {
        // The calling thread holds the destination's claim (O_EXCL, lock) for the whole copy.
        return [src, await openDestination(job.dest, size, { ...job.open, claim: false })];
      } catch (err) {
        await src.close().catch(() => {});
        throw err;
      }
    })();
  scope.onmessage = async (e) => {
    if (e.data.kind === "open") {
      // Reported, if it fails, when the lane runs.
      open(e.data.job, e.data.size).catch(() => {});
      return;
    }
    const { job, plan, segment, shared, lane, lanes } = e.data;
    const { words, done } = sharedViews(shared, lanes);
    let disks: [Disk, Disk] | undefined;
    try {
      // Claim nothing once cancelled (the caller found every segment taken before we got here).
      if (Atomics.compareExchange(words, STATE + lane, IDLE, STARTED) !== IDLE) return;
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
          done[lane] = finished;
        },
      );
      // Writeback errors surface here, in the lane that wrote.
      await dst.flush();
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
