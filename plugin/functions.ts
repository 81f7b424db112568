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
import { loadFileDirs, type PluginConfig } from "./config.ts";
import { isFinal, type OpState, OpStore, processAlive } from "./ops.ts";
import { ErrorCode, PluginFailure, type PluginRequest } from "./protocol.ts";
import {
  checkKnown,
  checkPathSyntax,
  type CopyRequest,
  parseOpId,
  required,
  validateCopy,
} from "./validate.ts";
import { spawnWorker } from "./detached.ts";
import { UnsafeDirectory } from "./trust.ts";
import { TaskProgress } from "./xenapi.ts";

/** One plugin function. */
export type PluginFunction = (req: PluginRequest, config: PluginConfig) => Promise<string>;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The copy request, checked against the configured directories (a new dest is created 0600). */
async function copyRequest(req: PluginRequest, config: PluginConfig): Promise<CopyRequest> {
  return validateCopy(req.args, { fileDirs: await loadFileDirs(config.configFile) });
}

/** An unsafe state directory (or entry in it) is reported as such, never used. */
async function guarded<T>(f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (err) {
    if (err instanceof UnsafeDirectory) {
      throw new PluginFailure(ErrorCode.UnsafeStateDir, [err.path, err.reason]);
    }
    throw err;
  }
}

/** The state directory, once known to be root's alone; undefined when it does not exist. */
function openStore(config: PluginConfig, create: boolean): Promise<OpStore | undefined> {
  return guarded(() => OpStore.open(config.stateDir, create));
}

/** `copy`: runs the copy to the end; returns sparse_dd's stats as JSON. */
async function copyFn(req: PluginRequest, config: PluginConfig): Promise<string> {
  const copy = await copyRequest(req, config);
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
  // The state directory first: an unsafe one refuses before anything is created.
  const store = (await openStore(config, true))!;
  const copy = await copyRequest(req, config);
  await store.cleanup(config.maxAgeMs);
  const id = await store.create(copy);
  try {
    await spawnWorker(config.self, store.opDir(id), { request: copy, session: req.session });
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

async function findOp(
  config: PluginConfig,
  args: Record<string, string>,
): Promise<[OpStore, OpState]> {
  checkKnown(args, ["id"]);
  const id = parseOpId("id", required(args, "id"));
  const store = await openStore(config, false);
  if (!store) throw new PluginFailure(ErrorCode.UnknownOperation, [id]);
  await store.cleanup(config.maxAgeMs);
  const op = await guarded(() => store.read(id));
  if (!op) throw new PluginFailure(ErrorCode.UnknownOperation, [id]);
  return [store, await store.reap(op)];
}

async function describe(store: OpStore, op: OpState): Promise<string> {
  return JSON.stringify({ ...op, cancelRequested: await store.cancelRequested(op.id) });
}

/** `status`: the operation's state, percent, and stats or error. */
async function statusFn(req: PluginRequest, config: PluginConfig): Promise<string> {
  const [store, op] = await findOp(config, req.args);
  return describe(store, op);
}

/** `cancel`: stops a running operation; returns its state (cancelled, or already finished). */
async function cancelFn(req: PluginRequest, config: PluginConfig): Promise<string> {
  const [store, found] = await findOp(config, req.args);
  let op = found;
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
