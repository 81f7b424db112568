/**
 * The detached side of `start`: a process of its own (`sparse_dd --xapi-plugin-worker OPDIR`,
 * in a new session so it outlives the plugin call), which runs the sparse_dd CLI, records
 * progress and the outcome in the operation's `state.json`, reports progress to the XenAPI task
 * if one was given, and turns SIGTERM (from `cancel`) into stopping the copy. The request and the
 * caller's session reach it on stdin, from the plugin that validated them: nothing in the state
 * directory can tell it what to copy.
 *
 * @example
 * ```ts
 * import { spawnWorker } from "./detached.ts";
 * await spawnWorker(
 *   ["/opt/xensource/libexec/sparse_dd"],
 *   "/var/run/nonpersistent/sparse_dd/ID",
 *   { request: { src: "/dev/sm/a", dest: "/dev/sm/b", prezeroed: false }, session: "OpaqueRef:s" },
 * );
 * ```
 *
 * @module
 */

import { copyArgv, failureMessage, runCopyChild } from "./child.ts";
import type { PluginConfig } from "./config.ts";
import { basename, dirname, resolve } from "../src/core/path.ts";
import { type OpState, OpStore } from "./ops.ts";
import { privateDirectory, readNoFollow } from "./trust.ts";
import type { CopyRequest } from "./validate.ts";
import { TaskProgress } from "./xenapi.ts";
import { redactSecrets } from "../src/http/url.ts";

/** What `start` hands its worker on stdin. */
export interface WorkerOrder {
  /** The validated request. */
  request: CopyRequest;
  /** The caller's session, for `task.set_progress`. */
  session: string;
}

const ORDER_LIMIT = 1 << 20;
const OP_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** The hidden argv[0] that makes the binary a worker. */
export const WORKER_FLAG = "--xapi-plugin-worker";

function which(paths: string[]): string | undefined {
  for (const p of paths) {
    try {
      if (Deno.statSync(p).isFile) return p;
    } catch { /* not here */ }
  }
  return undefined;
}

/**
 * Starts the worker for `opDir` without waiting for it to finish, and hands it `order` through a
 * pipe. `setsid` puts it in a session of its own, so nothing aimed at the plugin's process group
 * reaches it; without `setsid` it is still left running when the plugin exits.
 *
 * @example
 * ```ts
 * import { spawnWorker } from "./detached.ts";
 * await spawnWorker(["deno", "run", "-A", "main.ts"], "/tmp/state/ID", {
 *   request: { src: "/dev/loop0", dest: "/dev/loop1", prezeroed: false },
 *   session: "",
 * });
 * ```
 */
export async function spawnWorker(
  self: string[],
  opDir: string,
  order: WorkerOrder,
): Promise<void> {
  const setsid = which(["/usr/bin/setsid", "/bin/setsid"]);
  const argv = [...(setsid ? [setsid] : []), ...self, WORKER_FLAG, opDir];
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdin: "piped",
    stdout: "null",
    stderr: "null",
  }).spawn();
  child.unref();
  // Reap it if this process is still around when it ends; never fail because of it.
  child.status.catch(() => {});
  // A few hundred bytes: the pipe takes them whole, whether or not the worker reads yet.
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(JSON.stringify(order)));
  await writer.close();
}

async function readOrder(): Promise<WorkerOrder> {
  let text = "";
  const dec = new TextDecoder();
  for await (const chunk of Deno.stdin.readable) {
    text += dec.decode(chunk, { stream: true });
    if (text.length > ORDER_LIMIT) throw new Error("the order on stdin is too large");
  }
  text += dec.decode();
  const order = JSON.parse(text);
  const r = order?.request;
  if (
    typeof order?.session !== "string" || typeof r?.src !== "string" ||
    typeof r?.dest !== "string" || typeof r?.prezeroed !== "boolean"
  ) {
    throw new Error("no valid order on stdin");
  }
  return order as WorkerOrder;
}

/**
 * Runs one detached operation to its end. Never throws: every outcome is written to the state.
 *
 * @example
 * ```ts
 * import { runWorker } from "./detached.ts";
 * import { configFromEnv } from "./config.ts";
 * await runWorker("/var/run/nonpersistent/sparse_dd/ID", configFromEnv());
 * ```
 */
export async function runWorker(opDir: string, config: PluginConfig): Promise<void> {
  // Only an operation directory of the configured, private state directory.
  const stateDir = resolve(config.stateDir);
  const id = basename(opDir);
  if (dirname(resolve(opDir)) !== stateDir || !OP_ID.test(id)) return;
  if (!(await privateDirectory(stateDir, false).catch(() => false))) return;
  const store = new OpStore(stateDir);
  if (!(await store.checkOpDir(id).then(() => true, () => false))) return;
  opDir = store.opDir(id);
  const statsFile = `${opDir}/stats.json`;
  let logFile: Deno.FsFile | undefined;
  try {
    logFile = Deno.openSync(`${opDir}/worker.log`, { write: true, createNew: true, mode: 0o600 });
  } catch { /* a second worker for this operation, or the directory is gone: no log */ }
  const log = (line: string) => {
    try {
      // A URL destination's session id and credentials never reach the log.
      const text = redactSecrets(line);
      const bytes = new TextEncoder().encode(`${new Date().toISOString()} ${text}\n`);
      let off = 0;
      while (logFile && off < bytes.length) off += logFile.writeSync(bytes.subarray(off));
    } catch { /* the directory is gone */ }
  };
  const loaded = await store.read(id).catch(() => undefined);
  if (!loaded) return;
  const op: OpState = loaded;

  let writing = Promise.resolve();
  const save = () => {
    const snapshot = { ...op };
    writing = writing.then(() => store.write(snapshot)).catch((e) => log(`state: ${e}`));
    return writing;
  };

  let cancelled = false;
  let childPid: number | null = null;
  const onTerm = () => {
    cancelled = true;
    if (childPid !== null) {
      try {
        Deno.kill(childPid, "SIGTERM");
      } catch { /* already gone */ }
    }
  };
  const listeners: [Deno.Signal, () => void][] = [
    ["SIGTERM", onTerm],
    ["SIGINT", onTerm],
    ["SIGHUP", () => {}],
  ];
  for (const [sig, fn] of listeners) Deno.addSignalListener(sig, fn);

  let progress: TaskProgress | undefined;
  try {
    op.pid = Deno.pid;
    const { request: req, session } = await readOrder();
    op.state = "running";
    await save();
    if (req.taskRef) {
      progress = new TaskProgress(config.xapiSocket, session, req.taskRef, log);
      progress.set(0);
    }
    if (await store.cancelRequested(id)) cancelled = true;
    if (!cancelled) {
      // Made here (O_EXCL, 0600) so the name sparse_dd writes through is a file of the worker's.
      Deno.openSync(statsFile, { write: true, createNew: true, mode: 0o600 }).close();
      const argv = [...config.self, ...copyArgv(req, statsFile)];
      log(`running ${JSON.stringify(argv)}`);
      const result = await runCopyChild(argv, {
        onSpawn: (pid) => {
          childPid = pid;
          op.childPid = pid;
          save();
          if (cancelled) onTerm();
        },
        onProgress: (p) => {
          op.percent = p;
          save();
          progress?.set(p / 100);
        },
      });
      if (result.stderr.trim()) log(`sparse_dd stderr:\n${result.stderr.trimEnd()}`);
      if (!cancelled && result.code === 0 && result.ended) {
        op.state = "success";
        op.percent = 100;
        try {
          op.stats = JSON.parse(await readNoFollow(statsFile));
        } catch (err) {
          log(`stats: ${err}`);
        }
      } else if (cancelled) {
        op.state = "cancelled";
        op.error = "cancelled";
      } else {
        op.state = "failed";
        op.error = failureMessage(result);
      }
    } else {
      op.state = "cancelled";
      op.error = "cancelled";
    }
  } catch (err) {
    op.state = "failed";
    op.error = `worker: ${(err as Error).message ?? err}`;
    log(op.error);
  } finally {
    op.finished = new Date().toISOString();
    await save();
    await writing;
    await progress?.close();
    for (const [sig, fn] of listeners) Deno.removeSignalListener(sig, fn);
    logFile?.close();
  }
}
