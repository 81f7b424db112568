/**
 * The plugin's functions (`xe host-call-plugin ... plugin=sparse_dd fn=NAME args:k=v ...`).
 * Each takes the parsed request and returns the `Value` string, or throws a
 * {@linkcode PluginFailure}.
 *
 * | fn | args | Value |
 * |---|---|---|
 * | `copy` | src, dest, size?, base?, prezeroed?, task_ref? | the stats (JSON) |
 * | `start` | same as copy | an operation id |
 * | `status` | id | the operation (JSON: state, percent, stats or error) |
 * | `cancel` | id | the operation after cancelling (JSON) |
 * | `discover` | device | the image behind the device and the route (JSON) |
 * | `version` | — | the version |
 *
 * @example
 * ```ts
 * import { FUNCTIONS } from "./functions.ts";
 * import { configFromEnv } from "./config.ts";
 * await FUNCTIONS.version({ fn: "version", session: "", args: {} }, configFromEnv()); // "0.1.0"
 * ```
 *
 * @module
 */

import { VERSION } from "../src/version.ts";
import { discover } from "../src/discovery/discover.ts";
import { copyArgv, failureMessage, runCopyChild } from "./child.ts";
import type { PluginConfig } from "./config.ts";
import { isFinal, type OpState, OpStore, processAlive } from "./ops.ts";
import { ErrorCode, PluginFailure, type PluginRequest } from "./protocol.ts";
import { checkKnown, checkPathSyntax, parseOpId, required, validateCopy } from "./validate.ts";
import { spawnWorker } from "./detached.ts";
import { TaskProgress } from "./xenapi.ts";

/** One plugin function. */
export type PluginFunction = (req: PluginRequest, config: PluginConfig) => Promise<string>;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** `copy`: runs the copy to the end; returns sparse_dd's stats as JSON. */
async function copyFn(req: PluginRequest, config: PluginConfig): Promise<string> {
  const copy = await validateCopy(req.args);
  const statsFile = await Deno.makeTempFile({ prefix: "sparse_dd_plugin_", suffix: ".json" });
  const progress = copy.taskRef
    ? new TaskProgress(config.xapiSocket, req.session, copy.taskRef, config.log)
    : undefined;
  progress?.set(0);
  let childPid: number | null = null;
  // If xapi (or anyone) stops the plugin, stop the copy too rather than leave it running.
  const forward = () => {
    if (childPid !== null) {
      try {
        Deno.kill(childPid, "SIGTERM");
      } catch { /* gone */ }
    }
  };
  Deno.addSignalListener("SIGTERM", forward);
  Deno.addSignalListener("SIGINT", forward);
  try {
    const result = await runCopyChild([...config.self, ...copyArgv(copy, statsFile)], {
      onSpawn: (pid) => (childPid = pid),
      onProgress: (p) => progress?.set(p / 100),
    });
    await progress?.close();
    if (result.code !== 0 || !result.ended) {
      throw new PluginFailure(ErrorCode.CopyFailed, [failureMessage(result)]);
    }
    let stats: unknown;
    try {
      stats = JSON.parse(await Deno.readTextFile(statsFile));
    } catch (err) {
      throw new PluginFailure(ErrorCode.CopyFailed, [
        `sparse_dd succeeded but left no stats: ${(err as Error).message}`,
      ]);
    }
    return JSON.stringify(stats);
  } finally {
    Deno.removeSignalListener("SIGTERM", forward);
    Deno.removeSignalListener("SIGINT", forward);
    await Deno.remove(statsFile).catch(() => {});
  }
}

/** `start`: a detached copy; returns its id at once (after its worker has started). */
async function startFn(req: PluginRequest, config: PluginConfig): Promise<string> {
  const copy = await validateCopy(req.args);
  const store = new OpStore(config.stateDir);
  await store.cleanup(config.maxAgeMs);
  const id = await store.create(copy, req.session);
  try {
    spawnWorker(config.self, store.opDir(id));
  } catch (err) {
    const op = await store.read(id);
    if (op) {
      op.state = "failed";
      op.error = `cannot start the worker: ${(err as Error).message}`;
      op.finished = new Date().toISOString();
      await store.write(op);
    }
    throw new PluginFailure(ErrorCode.CopyFailed, [
      `cannot start the worker: ${(err as Error).message}`,
    ]);
  }
  // Like xapi's Sparse_dd_wrapper.start: return once the worker is known to be running.
  for (let waited = 0; waited < 20_000; waited += 50) {
    const op = await store.read(id);
    if (op && op.state !== "starting") break;
    await sleep(50);
  }
  return id;
}

async function findOp(store: OpStore, args: Record<string, string>): Promise<OpState> {
  checkKnown(args, ["id"]);
  const id = parseOpId("id", required(args, "id"));
  await store.cleanup();
  const op = await store.read(id);
  if (!op) throw new PluginFailure(ErrorCode.UnknownOperation, [id]);
  return await store.reap(op);
}

async function describe(store: OpStore, op: OpState): Promise<string> {
  return JSON.stringify({ ...op, cancelRequested: await store.cancelRequested(op.id) });
}

/** `status`: the operation's state, percent, and stats or error. */
async function statusFn(req: PluginRequest, config: PluginConfig): Promise<string> {
  const store = new OpStore(config.stateDir);
  return describe(store, await findOp(store, req.args));
}

/** `cancel`: stops a running operation; returns its state (cancelled, or already finished). */
async function cancelFn(req: PluginRequest, config: PluginConfig): Promise<string> {
  const store = new OpStore(config.stateDir);
  let op = await findOp(store, req.args);
  if (isFinal(op.state)) return describe(store, op);
  await store.requestCancel(op.id);
  const dir = store.opDir(op.id);
  if (await processAlive(op.pid, dir)) {
    try {
      Deno.kill(op.pid!, "SIGTERM");
    } catch { /* it just ended */ }
  }
  // sparse_dd stops between two I/O steps; wait for the worker to record it, and then to be
  // gone (it exits right after), so that a caller who sees "cancelled" finds no process left.
  let waited = 0;
  for (; waited < 30_000 && !isFinal(op.state); waited += 50) {
    await sleep(50);
    op = await store.reap((await store.read(op.id)) ?? op);
  }
  for (; waited < 30_000 && await processAlive(op.pid, dir); waited += 10) await sleep(10);
  return describe(store, op);
}

/** `discover`: which image is behind a block device, and by which route. */
async function discoverFn(req: PluginRequest): Promise<string> {
  checkKnown(req.args, ["device"]);
  const device = checkPathSyntax("device", required(req.args, "device"));
  try {
    await Deno.stat(device);
  } catch {
    throw new PluginFailure(ErrorCode.InvalidArgument, ["device", device, "does not exist"]);
  }
  return JSON.stringify(await discover(device));
}

/** `version`: this program's version. */
function versionFn(req: PluginRequest): Promise<string> {
  checkKnown(req.args, []);
  return Promise.resolve(VERSION);
}

/**
 * Every function, by name.
 *
 * @example
 * ```ts
 * import { FUNCTIONS } from "./functions.ts";
 * Object.keys(FUNCTIONS); // ["copy", "start", "status", "cancel", "discover", "version"]
 * ```
 */
export const FUNCTIONS: Readonly<Record<string, PluginFunction>> = Object.freeze({
  copy: copyFn,
  start: startFn,
  status: statusFn,
  cancel: cancelFn,
  discover: discoverFn,
  version: versionFn,
});
