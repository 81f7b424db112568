import { deepStrictEqual, match, ok, strictEqual } from "node:assert/strict";
import { DiskError } from "../../src/core/disk.ts";
import { ExitCode, SparseDdError } from "../../src/core/errors.ts";
import { errorFromWire, errorToWire } from "../../src/copy/threads.ts";
import { CopyAborted } from "../../src/copy/copier.ts";
import {
  runMain,
  sameBytes,
  sh,
  untilSecondThread,
  withLoop,
  withTempDir,
} from "../_support/helpers.ts";
import { qemuRawToVhd } from "../_support/vhd_tools.ts";
import { Prng } from "../_support/prng.ts";

const MiB = 1024 * 1024;
const NO_CONFIG = ["-config", "/nonexistent/sparse_dd.conf"];

/**
 * A sparse file of `size` bytes: 1 MiB blocks allocated at random, each holding a few random
 * 64 KiB runs of data and zeroes elsewhere (mostly zeroes read: the copy shares its work).
 */
async function sparseRandom(path: string, size: number, seed: number): Promise<void> {
  const r = new Prng(seed);
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  await f.truncate(size);
  for (let at = 0; at < size; at += MiB) {
    if (!r.chance(0.6)) continue;
    const block = new Uint8Array(MiB);
    for (let k = 1 + r.int(4); k > 0; k--) {
      const run = r.int(16) * 65536;
      r.fill(block.subarray(run, run + 65536));
    }
    await f.seek(at, Deno.SeekMode.Start);
    let n = 0;
    while (n < block.length) n += await f.write(block.subarray(n));
  }
  f.close();
}

/** Copies `src` to `dest` with `-json` and the extra flags; the stats. */
async function copyJson(src: string, dest: string, flags: string[]) {
  const res = await runMain(["-src", src, "-dest", dest, "-json", ...flags, ...NO_CONFIG]);
  strictEqual(res.code, 0, res.stderr);
  return JSON.parse(new TextDecoder().decode(res.stdout));
}

/** Stats that must not differ between two copies of the same source. */
function sameAcrossRuns(s: Record<string, unknown>) {
  // Times, rates, threads and the destination's name differ; everything else must not.
  const {
    seconds: _s,
    throughput: _t,
    readRate: _r,
    writeRate: _w,
    threads: _n,
    dest: _d,
    ...rest
  } = s;
  return rest;
}

// Sizes: enough work that the second thread has started long before the first is done. From
// source (`deno run main.ts`), a Worker takes 0.15-0.3 s to be ready here.

Deno.test("two threads copy a file exactly as one does, with the same stats", async () => {
  await withTempDir(async (dir) => {
    const size = 512 * MiB;
    await sparseRandom(`${dir}/src`, size, 1);
    // O_DIRECT: from the page cache one thread copies this in ~0.16 s, often before a second is
    // ready (one copy in three here, and every copy in one full test run); from the device,
    // 0.37-0.43 s. Every attempt must be exact; one must have shared the work.
    const direct = ["-unbuffered", "true"];
    const one = await copyJson(`${dir}/src`, `${dir}/one`, ["-threads", "1", ...direct]);
    strictEqual(one.threads, 1);
    const threads = await untilSecondThread(async () => {
      await Deno.remove(`${dir}/two`).catch(() => {});
      const two = await copyJson(`${dir}/src`, `${dir}/two`, ["-threads", "2", ...direct]);
      ok(await sameBytes(`${dir}/src`, `${dir}/two`), "the copy holds the source's bytes");
      deepStrictEqual(sameAcrossRuns(two), sameAcrossRuns(one));
      return two.threads;
    });
    strictEqual(threads, 2, "a second thread ran");
    // Onto the existing, non-zero copy (not prezeroed): zeroes must land, in every thread.
    await Deno.writeFile(`${dir}/two`, new Uint8Array(size).fill(0xee));
    const again = await runMain([
      "-src",
      `${dir}/src`,
      "-dest",
      `${dir}/two`,
      "-threads",
      "3",
      ...NO_CONFIG,
    ]);
    strictEqual(again.code, 0, again.stderr);
    ok(await sameBytes(`${dir}/src`, `${dir}/two`), "every 0xee overwritten");
  });
});

Deno.test("threads share a VHD source too", async () => {
  await withTempDir(async (dir) => {
    const size = 384 * MiB;
    await sparseRandom(`${dir}/raw`, size, 2);
    await qemuRawToVhd(`${dir}/raw`, `${dir}/src.vhd`);
    const res = await copyJson(`${dir}/src.vhd`, `${dir}/out`, ["-threads", "2"]);
    strictEqual(res.threads, 2);
    ok(await sameBytes(`${dir}/raw`, `${dir}/out`, size));
  });
});

Deno.test("a full destination in any thread is one error line naming the file and offset", async () => {
  await withTempDir(async (dir) => {
    // About 30 MiB of data spread over 320 MiB, for a 16 MiB tmpfs: it fills half way, long
    // after the second thread has started.
    await sparseRandom(`${dir}/src`, 320 * MiB, 3);
    await Deno.mkdir(`${dir}/small`);
    await sh("mount", ["-t", "tmpfs", "-o", "size=16m", "tmpfs", `${dir}/small`]);
    try {
      const res = await runMain([
        "-src",
        `${dir}/src`,
        "-dest",
        `${dir}/small/out`,
        "-threads",
        "2",
        ...NO_CONFIG,
      ]);
      strictEqual(res.code, ExitCode.Destination, res.stderr);
      const lines = res.stderr.trim().split("\n");
      strictEqual(lines.length, 1, res.stderr);
      match(
        lines[0],
        new RegExp(`^sparse_dd: cannot write ${dir}/small/out at offset \\d+: No space left`),
      );
      strictEqual((await Deno.stat(`${dir}/small/out`)).size, 320 * MiB, "never grown");
    } finally {
      await sh("umount", [`${dir}/small`]).catch(() => undefined);
    }
  });
});

Deno.test("-threads takes a whole number from 1 to 16; one outside is refused, not clamped", async () => {
  for (const bad of ["two", "1.5", "", "0", "99"]) {
    const res = await runMain(["-src", "/dev/null", "-dest", "/dev/null", "-threads", bad]);
    strictEqual(res.code, ExitCode.Usage, `${bad}: ${res.stderr}`);
    match(res.stderr, /invalid -threads value/);
  }
  await withTempDir(async (dir) => {
    await sparseRandom(`${dir}/src`, 80 * MiB, 4);
    for (const n of ["1", "16"]) {
      const res = await runMain(["-src", `${dir}/src`, "-dest", `${dir}/out${n}`, "-threads", n]);
      strictEqual(res.code, 0, res.stderr);
      ok(await sameBytes(`${dir}/src`, `${dir}/out${n}`));
    }
    const res = await runMain(["-src", `${dir}/src`, "-dest", `${dir}/out99`, "-threads", "99"]);
    match(res.stderr, /expected an integer from 1 to 16/);
    ok(!(await Deno.stat(`${dir}/out99`).then(() => true, () => false)), "nothing written");
  });
});

Deno.test("errors cross from a thread with their class, disk, offset and exit code", () => {
  const d = new DiskError("/dev/sdb", "read", 4096, "Input/output error");
  d.role = "source";
  const back = errorFromWire(errorToWire(d));
  ok(back instanceof DiskError);
  strictEqual(back.message, d.message);
  strictEqual(back.role, "source");
  strictEqual(back.offset, 4096);
  const n = new DiskError("nbd://x", "write", 0, "server error ENOSPC");
  n.nbd = true;
  ok((errorFromWire(errorToWire(n)) as DiskError).nbd);
  const u = errorFromWire(errorToWire(new SparseDdError(ExitCode.Usage, "bad")));
  ok(u instanceof SparseDdError && u.exitCode === ExitCode.Usage && u.message === "bad");
  ok(errorFromWire(errorToWire(new CopyAborted(5, "x"))) instanceof CopyAborted);
  strictEqual(errorFromWire(errorToWire(new Error("other"))).message, "other");
});

Deno.test("by default a file gets one thread and a block device two", async () => {
  await withTempDir(async (dir) => {
    const size = 512 * MiB;
    await sparseRandom(`${dir}/src`, size, 5);
    strictEqual((await copyJson(`${dir}/src`, `${dir}/out`, [])).threads, 1);
    await Deno.writeFile(`${dir}/backing`, new Uint8Array(0));
    await Deno.truncate(`${dir}/backing`, size);
    await withLoop(`${dir}/backing`, async (dev) => {
      strictEqual((await copyJson(`${dir}/src`, dev, [])).threads, 2);
      ok(await sameBytes(`${dir}/src`, dev, size), "the device holds the source's bytes");
    });
  });
});
