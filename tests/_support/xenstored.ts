/**
 * A real xenstored for tests: Debian's C daemon (Xen 4.17), unpacked by
 * `scripts/setup/xenstored.sh` into `.tools/xen`, preloaded with `tests/fixtures/xs-shim.c` so it runs
 * without a hypervisor, on a private socket in a temp dir. The stock `xenstore-*` clients reach it
 * through `XENSTORED_PATH`. Needs `deno test -A` (Deno refuses LD_PRELOAD for children otherwise).
 *
 * @module
 */

import { ROOT, sh } from "./helpers.ts";

const XEN = `${ROOT}/.tools/xen`;
/** The daemon binary. */
export const XENSTORED = `${XEN}/root/usr/lib/xen-4.17/bin/xenstored`;
/** The preload shim built from tests/fixtures/xs-shim.c. */
export const XS_SHIM = `${XEN}/xs-shim.so`;

async function mtime(path: string): Promise<number | undefined> {
  try {
    return (await Deno.stat(path)).mtime?.getTime();
  } catch {
    return undefined;
  }
}

/** Runs the setup script unless the daemon and an up-to-date shim are already there. */
export async function ensureXenstored(): Promise<void> {
  const daemon = await mtime(XENSTORED);
  const shim = await mtime(XS_SHIM);
  const source = await mtime(`${ROOT}/tests/fixtures/xs-shim.c`);
  if (daemon !== undefined && shim !== undefined && source !== undefined && shim >= source) {
    return;
  }
  await sh("bash", [`${ROOT}/scripts/setup/xenstored.sh`]);
}

/** A running daemon. */
export interface Xenstored {
  /** The environment that points `xenstore-*` clients at this daemon (PATH included). */
  env: Record<string, string>;
  /** Writes keys with the stock `xenstore-write`. */
  write(entries: Record<string, string>): Promise<void>;
  /** Removes a key (and its children) with `xenstore-rm`. */
  rm(key: string): Promise<void>;
  /** Stops the daemon (SIGTERM) and removes its directory. Idempotent. */
  stop(): Promise<void>;
  /** The daemon's pid. */
  pid: number;
}

/** Starts a private xenstored and waits until it answers. */
export async function startXenstored(): Promise<Xenstored> {
  await ensureXenstored();
  const dir = await Deno.makeTempDir({ prefix: "sparse_dd_xenstored_" });
  const env = {
    PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
    XENSTORED_PATH: `${dir}/socket`,
    XENSTORED_RUNDIR: dir,
  };
  const log = await Deno.open(`${dir}/log`, { write: true, create: true });
  const child = new Deno.Command(XENSTORED, {
    args: ["-N", "-F", `${dir}/pid`],
    env: { ...env, LD_PRELOAD: XS_SHIM },
    clearEnv: true,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const stderr = child.stderr.pipeTo(log.writable).catch(() => {});
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    try {
      child.kill("SIGTERM");
    } catch {
      // already gone
    }
    await child.status;
    await stderr;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  try {
    const deadline = Date.now() + 10_000;
    while (true) {
      const ok = await new Deno.Command("xenstore-exists", {
        args: ["/"],
        env,
        clearEnv: true,
        stdout: "null",
        stderr: "null",
      }).output().then((o) => o.success, () => false);
      if (ok) break;
      if (Date.now() > deadline) {
        throw new Error(
          `xenstored did not answer within 10 s: ${await Deno.readTextFile(`${dir}/log`)}`,
        );
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    env,
    pid: child.pid,
    stop,
    async write(entries) {
      const args = Object.entries(entries).flat();
      await sh("xenstore-write", args, { env, clearEnv: true });
    },
    async rm(key) {
      await sh("xenstore-rm", [key], { env, clearEnv: true });
    },
  };
}
