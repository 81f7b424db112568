/**
 * Test helpers: run sparse_dd as a subprocess the way the binary runs, temporary directories,
 * external commands, loop devices.
 *
 * @module
 */

import { RecordDecoder } from "../../src/cli/progress.ts";

/** The repository root. */
export const ROOT: string = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");
/** The program's entry point. */
export const MAIN: string = `${ROOT}/main.ts`;
/** xapi's environment for sparse_dd and plugins: PATH only. */
export const XAPI_PATH = "/sbin:/usr/sbin:/bin:/usr/bin";

/** What a finished process left. */
export interface RunResult {
  code: number;
  signal: Deno.Signal | null;
  stdout: Uint8Array;
  stderr: string;
}

/** Options of {@linkcode runMain}. */
export interface RunOptions {
  /** Run with only `PATH` in the environment, as xapi does (default true). */
  xapiEnv?: boolean;
  /** Extra environment variables. */
  env?: Record<string, string>;
  /** Kill the process after this many ms (default 10 minutes). */
  timeoutMs?: number;
}

/**
 * A command for `program` run as xapi runs its helpers: only `PATH` in the environment (unless
 * `xapiEnv` is false), no stdin, output collected.
 */
export function xapiCommand(
  program: string,
  args: string[],
  options: RunOptions = {},
): Deno.Command {
  const xapiEnv = options.xapiEnv ?? true;
  return new Deno.Command(program, {
    args,
    clearEnv: xapiEnv,
    env: { ...(xapiEnv ? { PATH: XAPI_PATH } : {}), ...options.env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(options.timeoutMs ?? 600_000),
  });
}

/**
 * The argv that runs sparse_dd from source (`deno run -A main.ts`), as the compiled binary would
 * run: same permissions, no HOME, no stdin.
 */
export function mainCommand(args: string[], options: RunOptions = {}): Deno.Command {
  return xapiCommand(
    Deno.execPath(),
    ["run", "-A", "--quiet", "--no-lock", MAIN, ...args],
    options,
  );
}

/** Runs sparse_dd with `args` and collects its output. */
export async function runMain(args: string[], options: RunOptions = {}): Promise<RunResult> {
  const out = await mainCommand(args, options).output();
  return {
    code: out.code,
    signal: out.signal,
    stdout: out.stdout,
    stderr: new TextDecoder().decode(out.stderr),
  };
}

/** Runs an external command; throws with its stderr when it fails. Returns stdout as text. */
export async function sh(
  cmd: string,
  args: string[],
  options: Deno.CommandOptions = {},
): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped", ...options })
    .output();
  const stdout = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(
      `${cmd} ${args.join(" ")} failed (${out.code}): ${new TextDecoder().decode(out.stderr)}`,
    );
  }
  return stdout;
}

/** Whether a command exists on PATH. */
export async function have(cmd: string): Promise<boolean> {
  try {
    const out = await new Deno.Command("sh", {
      args: ["-c", `command -v ${cmd}`],
      stdout: "null",
      stderr: "null",
    }).output();
    return out.success;
  } catch {
    return false;
  }
}

/** Runs `fn` with a fresh temporary directory, removed afterwards. */
export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "sparse_dd_test_" });
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** Attaches `file` to a free loop device for the duration of `fn`, then detaches it. */
export async function withLoop<T>(file: string, fn: (dev: string) => Promise<T>): Promise<T> {
  const dev = (await sh("losetup", ["-f", "--show", file])).trim();
  try {
    return await fn(dev);
  } finally {
    await sh("losetup", ["-d", dev]).catch(() => {});
  }
}

/**
 * Runs `fn` with a loop device over a thin 128 MiB file on a 6 MiB tmpfs that is full: every
 * write that reaches the backing file fails (ENOSPC), also writeback of the device's page cache,
 * which the kernel reports only to a later sync.
 */
export async function withFullThinDevice(fn: (dev: string) => Promise<void>): Promise<void> {
  await withTempDir(async (dir) => {
    const mnt = `${dir}/mnt`;
    await Deno.mkdir(mnt);
    await sh("mount", ["-t", "tmpfs", "-o", "size=6m", "tmpfs", mnt]);
    try {
      const f = await Deno.open(`${mnt}/thin.img`, { write: true, create: true });
      await f.truncate(128 << 20);
      f.close();
      // Fill the tmpfs to the last page.
      await new Deno.Command("dd", {
        args: ["if=/dev/zero", `of=${mnt}/fill`, "bs=1M", "count=8"],
        stdout: "null",
        stderr: "null",
      }).output();
      await withLoop(`${mnt}/thin.img`, fn);
    } finally {
      await sh("umount", [mnt]).catch(() => undefined);
    }
  });
}

/**
 * Runs `copy` (a copy asked for two threads, which checks its own result and returns the stats'
 * `threads`) up to five times, until a second thread ran; the last count. The second thread runs
 * only if its Worker is ready (50-200 ms here) before the first has claimed every segment, and a
 * small copy from the page cache is sometimes done first (correctly: the copier does not wait).
 *
 * @example
 * ```ts
 * import { runMain, untilSecondThread } from "./helpers.ts";
 * const threads = await untilSecondThread(async () => {
 *   const res = await runMain(["-src", "/tmp/a.raw", "-dest", "/tmp/b.raw", "-threads", "2", "-json"]);
 *   return JSON.parse(new TextDecoder().decode(res.stdout)).threads;
 * });
 * ```
 */
export async function untilSecondThread(copy: () => Promise<number>): Promise<number> {
  let threads = 0;
  for (let attempt = 0; attempt < 5 && threads !== 2; attempt++) threads = await copy();
  return threads;
}

/** True when two files have the same bytes (`cmp -s`). */
export async function sameBytes(a: string, b: string, bytes?: number): Promise<boolean> {
  const args = ["-s", ...(bytes === undefined ? [] : ["-n", String(bytes)]), a, b];
  const out = await new Deno.Command("cmp", { args, stdout: "null", stderr: "null" }).output();
  return out.success;
}

/** Allocated bytes of a file (st_blocks × 512). */
export async function allocatedBytes(path: string): Promise<number> {
  const info = await Deno.stat(path);
  return (info.blocks ?? 0) * 512;
}

/**
 * Parses a whole `-machine` stdout as xapi does (`RecordDecoder`): throws on anything but
 * `Progress: %d` records, an end record with an offset, or a stream that stops inside a record.
 */
export function readMachineStream(
  bytes: Uint8Array,
): { percents: number[]; ended: boolean; trailing: number } {
  const decoder = new RecordDecoder();
  const percents = decoder.push(bytes);
  decoder.finish();
  return { percents, ended: decoder.ended, trailing: decoder.trailing };
}
