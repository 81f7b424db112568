/**
 * Detached copies (`start`/`status`/`cancel`) keep their state in a directory that outlives the
 * plugin process: by default `/var/run/nonpersistent/sparse_dd/` (a tmpfs on XenServer, so a
 * reboot, which kills every copy, also forgets them). The directory is root's alone (created 0700,
 * refused if it is a symlink, not root's, group/world-writable or below a directory others can
 * write: see `trust.ts`), and so is one directory per operation (0700):
 *
 * - `state.json`: written only by the operation's worker process, atomically (rename), except
 *   when the worker is gone, when `status`/`cancel` record how it ended;
 * - `cancel`: created by `cancel`; the worker checks it before it starts the copy;
 * - `worker.log`: the worker's diagnostics;
 * - `stats.json`: sparse_dd's stats, on success.
 *
 * The request and the caller's session are not kept here: `start` hands them to the worker over
 * a pipe, so a worker never runs a request it did not receive from the plugin itself. Files are
 * read without following symlinks and written through new (`O_EXCL`) temporary files.
 *
 * @example
 * ```ts
 * import { OpStore } from "./ops.ts";
 * const store = await OpStore.open("/var/run/nonpersistent/sparse_dd", false);
 * const op = await store?.read("0b6f2c1e-8a9d-4c3b-b1a2-3f4e5d6c7b8a");
 * op?.state; // "running", "success", "failed" or "cancelled"
 * ```
 *
 * @module
 */

import { othersMayWrite, privateDirectory, readNoFollow, UnsafeDirectory } from "./trust.ts";
import type { CopyRequest } from "./validate.ts";
import { redactSecrets } from "../src/http/url.ts";

/** The default state directory. */
export const DEFAULT_STATE_DIR = "/var/run/nonpersistent/sparse_dd";

/** Finished operations are forgotten after this long (ms): 24 hours. */
export const DEFAULT_MAX_AGE_MS = 24 * 3600 * 1000;

/** Where an operation is. */
export type OpStateName = "starting" | "running" | "success" | "failed" | "cancelled";

/** What `status` reports (as JSON). */
export interface OpState {
  /** The operation id (a UUID, also its directory name). */
  id: string;
  /** Where it is. */
  state: OpStateName;
  /** 0..100, from sparse_dd's progress records. */
  percent: number;
  /** The request: source. */
  src: string;
  /** The request: destination. */
  dest: string;
  /** The request: bytes to copy (null: the source's size). */
  size: number | null;
  /** The request: base disk. */
  base: string | null;
  /** The request: destination known to be zero. */
  prezeroed: boolean;
  /** When `start` created it (ISO time). */
  created: string;
  /** When the state was last written (ISO time). */
  updated: string;
  /** When it ended (ISO time), null while it runs. */
  finished: string | null;
  /** The worker process. */
  pid: number | null;
  /** The sparse_dd process the worker runs. */
  childPid: number | null;
  /** sparse_dd's stats (on success). */
  stats: unknown;
  /** One line (on failure). */
  error: string | null;
}

/**
 * True for the states an operation never leaves.
 *
 * @example
 * ```ts
 * import { isFinal } from "./ops.ts";
 * isFinal("cancelled"); // true
 * ```
 */
export function isFinal(s: OpStateName): boolean {
  return s === "success" || s === "failed" || s === "cancelled";
}

/**
 * True when `pid` is a live process whose command line mentions `marker` — so a recycled pid
 * that now belongs to something else is never signalled. Zombies have an empty command line.
 *
 * @example
 * ```ts
 * import { processAlive } from "./ops.ts";
 * await processAlive(Deno.pid, ""); // true
 * ```
 */
export async function processAlive(pid: number | null, marker: string): Promise<boolean> {
  if (!pid || pid <= 0) return false;
  try {
    const cmdline = await Deno.readTextFile(`/proc/${pid}/cmdline`);
    return cmdline !== "" && cmdline.includes(marker);
  } catch {
    return false;
  }
}

/**
 * Writes `text` to `path` atomically: a temporary file, then rename, so a reader sees the old
 * or the new content, never a mix.
 *
 * @example
 * ```ts
 * import { writeAtomic } from "./ops.ts";
 * await writeAtomic("/tmp/state.json", "{}\n");
 * ```
 */
export async function writeAtomic(path: string, text: string, mode = 0o600): Promise<void> {
  const tmp = `${path}.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
  // createNew (O_EXCL) never follows a symlink planted under the temporary name.
  await Deno.writeTextFile(tmp, text, { mode, createNew: true });
  try {
    await Deno.rename(tmp, path);
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    throw err;
  }
}

/**
 * The state directory.
 *
 * @example
 * ```ts
 * import { OpStore } from "./ops.ts";
 * const store = (await OpStore.open("/tmp/ops", true))!;
 * const id = await store.create({ src: "/a", dest: "/b", prezeroed: false });
 * ```
 */
export class OpStore {
  /** The state directory (created on first use, mode 0700). */
  readonly dir: string;

  /** Uses `dir` as the state directory, unchecked: use {@linkcode OpStore.open}. */
  constructor(dir: string) {
    this.dir = dir;
  }

  /**
   * The store in `dir` once it is known to be root's alone (created when `create` is set);
   * undefined when it does not exist. Throws {@linkcode UnsafeDirectory} otherwise.
   */
  static async open(dir: string, create: boolean): Promise<OpStore | undefined> {
    return (await privateDirectory(dir, create)) ? new OpStore(dir) : undefined;
  }

  /** The directory of operation `id`. */
  opDir(id: string): string {
    return `${this.dir}/${id}`;
  }

  /** Creates a new operation in state `starting`; returns its id. */
  async create(req: CopyRequest): Promise<string> {
    const id = crypto.randomUUID();
    // Never an existing directory: a fresh name, and mkdir fails rather than reuse one.
    await Deno.mkdir(this.opDir(id), { mode: 0o700 });
    const now = new Date().toISOString();
    await this.write({
      id,
      state: "starting",
      percent: 0,
      src: req.src,
      // A URL's session id and credentials stay in request.json (mode 0700) only.
      dest: redactSecrets(req.dest),
      size: req.size ?? null,
      base: req.base ?? null,
      prezeroed: req.prezeroed,
      created: now,
      updated: now,
      finished: null,
      pid: null,
      childPid: null,
      stats: null,
      error: null,
    });
    return id;
  }

  /**
   * Refuses an operation directory that is not the plugin's own: a symlink, someone else's, or
   * writable by others.
   */
  async checkOpDir(id: string): Promise<void> {
    const dir = this.opDir(id);
    const info = await Deno.lstat(dir);
    if (
      info.isSymlink || !info.isDirectory || info.uid !== Deno.uid() || othersMayWrite(info.mode)
    ) {
      throw new UnsafeDirectory(dir, "is not a private directory of the plugin's");
    }
  }

  /** The state of `id`, or undefined when there is no such operation. */
  async read(id: string): Promise<OpState | undefined> {
    try {
      await this.checkOpDir(id);
      return JSON.parse(await readNoFollow(`${this.opDir(id)}/state.json`));
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return undefined;
      if (err instanceof SyntaxError) return undefined;
      throw err;
    }
  }

  /** Replaces the state of `state.id` atomically. */
  async write(state: OpState): Promise<void> {
    state.updated = new Date().toISOString();
    await writeAtomic(`${this.opDir(state.id)}/state.json`, JSON.stringify(state) + "\n");
  }

  /** Marks `id` as to be cancelled (seen by a worker that has not started the copy yet). */
  async requestCancel(id: string): Promise<void> {
    await writeAtomic(`${this.opDir(id)}/cancel`, new Date().toISOString());
  }

  /** True once `cancel` was asked for. */
  async cancelRequested(id: string): Promise<boolean> {
    try {
      await Deno.lstat(`${this.opDir(id)}/cancel`);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Settles operations whose worker died (state `failed`, or `cancelled` if a cancel was asked
   * for) and returns the state. Only called when the worker is gone, so nothing else writes.
   */
  async reap(op: OpState): Promise<OpState> {
    if (isFinal(op.state)) return op;
    const dir = this.opDir(op.id);
    if (await processAlive(op.pid, dir)) return op;
    // The worker writes its outcome and then exits: `op` may have been read just before that
    // write. Read again now that the worker is known to be gone, so a result is never replaced.
    const latest = await this.read(op.id);
    if (latest) {
      if (isFinal(latest.state)) return latest;
      op = latest;
    }
    // A worker still starting has a moment's grace: its pid is not recorded yet.
    if (op.state === "starting" && Date.now() - Date.parse(op.created) < 30_000) return op;
    const cancelled = await this.cancelRequested(op.id);
    if (await processAlive(op.childPid, dir)) {
      // The worker died but its sparse_dd lives on: only a cancel may stop it.
      if (!cancelled) return op;
      Deno.kill(op.childPid!, "SIGTERM");
    }
    op.state = cancelled ? "cancelled" : "failed";
    op.error = cancelled ? "cancelled" : "the worker process exited without recording a result";
    op.finished = new Date().toISOString();
    await this.write(op);
    return op;
  }

  /**
   * Removes finished operations older than `maxAgeMs`, directories without a readable state
   * older than an hour, and settles operations whose worker is gone. Returns the ids removed.
   */
  async cleanup(maxAgeMs = DEFAULT_MAX_AGE_MS, now = Date.now()): Promise<string[]> {
    const removed: string[] = [];
    let entries: Deno.DirEntry[];
    try {
      entries = await Array.fromAsync(Deno.readDir(this.dir));
    } catch {
      return removed;
    }
    for (const e of entries) {
      if (!e.isDirectory || !/^[0-9a-f-]{36}$/.test(e.name)) continue;
      const dir = this.opDir(e.name);
      try {
        let op = await this.read(e.name);
        if (!op) {
          const info = await Deno.stat(dir);
          if (now - (info.mtime?.getTime() ?? now) > 3600_000) {
            await Deno.remove(dir, { recursive: true });
            removed.push(e.name);
          }
          continue;
        }
        op = await this.reap(op);
        const end = op.finished ? Date.parse(op.finished) : NaN;
        if (isFinal(op.state) && now - end > maxAgeMs) {
          await Deno.remove(dir, { recursive: true });
          removed.push(e.name);
        }
      } catch {
        // Another plugin call may be cleaning up the same directory: skip it this time.
      }
    }
    return removed;
  }
}
