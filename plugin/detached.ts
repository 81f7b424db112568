/**
 * The detached side of `start`: a process of its own (`sparse_dd --xapi-plugin-worker OPDIR`,
 * in a new session so it outlives the plugin call), which runs the sparse_dd CLI, records
 * progress and the outcome in the operation's `state.json`, reports progress to the XenAPI task
 * if one was given, and turns SIGTERM (from `cancel`) into stopping the copy.
 *
 * @example
 * ```ts
 * import { spawnWorker } from "./detached.ts";
 * spawnWorker(["/opt/xensource/libexec/sparse_dd"], "/var/run/nonpersistent/sparse_dd/ID");
 * ```
 *
 * @module
 */

import { copyArgv, failureMessage, runCopyChild } from "./child.ts";
import type { PluginConfig } from "./config.ts";
import { type OpState, OpStore } from "./ops.ts";
import { TaskProgress } from "./xenapi.ts";
import { redactSecrets } from "../src/http/url.ts";

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
 * Starts the worker for `opDir` without waiting for it. `setsid` puts it in a session of its
 * own, so nothing aimed at the plugin's process group reaches it; without `setsid` it is still
 * left running when the plugin exits.
 *
 * @example
 * ```ts
 * import { spawnWorker } from "./detached.ts";
 * spawnWorker(["deno", "run", "-A", "main.ts"], "/tmp/state/ID");
 * ```
 */
export function spawnWorker(self: string[], opDir: string): void {
  const setsid = which(["/usr/bin/setsid", "/bin/setsid"]);
  const argv = [...(setsid ? [setsid] : []), ...self, WORKER_FLAG, opDir];
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  child.unref();
  // Reap it if this process is still around when it ends; never fail because of it.
  child.status.catch(() => {});
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
  const slash = opDir.lastIndexOf("/");
  const store = new OpStore(opDir.slice(0, slash) || "/");
  const id = opDir.slice(slash + 1);
  const logFile = `${opDir}/worker.log`;
  const log = (line: string) => {
    try {
      // A URL destination's session id and credentials never reach the log.
      const text = redactSecrets(line);
      Deno.writeTextFileSync(logFile, `${new Date().toISOString()} ${text}\n`, { append: true });
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
    const req = await store.request(id);
    op.pid = Deno.pid;
    op.state = "running";
    await save();
    if (req.taskRef) {
      const session = (await store.session(id)) ?? "";
      progress = new TaskProgress(config.xapiSocket, session, req.taskRef, log);
      progress.set(0);
    }
    if (await store.cancelRequested(id)) cancelled = true;
    if (!cancelled) {
      const argv = [...config.self, ...copyArgv(req, `${opDir}/stats.json`)];
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
          op.stats = JSON.parse(await Deno.readTextFile(`${opDir}/stats.json`));
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
    await store.dropSession(id);
    for (const [sig, fn] of listeners) Deno.removeSignalListener(sig, fn);
  }
}
