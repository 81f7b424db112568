/**
 * A source file cut short while it is being copied: exit 3 naming the source and the offset,
 * never a signal death and never an error blamed on the destination.
 */

import { ok, strictEqual } from "node:assert/strict";
import { mainCommand, withTempDir } from "../_support/helpers.ts";
import { Prng } from "../_support/prng.ts";

const MiB = 1024 * 1024;

/**
 * A source of `size` bytes in which every MiB holds 512 KiB of random data (so a truncation
 * anywhere is met by a later read, and the copy takes a while) and zeroes elsewhere.
 */
async function dataEveryMiB(path: string, size: number, seed: number): Promise<void> {
  const r = new Prng(seed);
  const pool = r.fill(new Uint8Array(2 * MiB));
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  await f.truncate(size);
  for (let at = 0; at < size; at += MiB) {
    await f.seek(at + r.int(8) * 65536, Deno.SeekMode.Start);
    const from = r.int(MiB);
    const block = pool.subarray(from, from + 512 * 1024);
    let n = 0;
    while (n < block.length) n += await f.write(block.subarray(n));
  }
  f.close();
}

/**
 * A process that truncates `path` once told how far (a line on its stdin): by `truncate(2)` on
 * the path, or by opening it for writing and `ftruncate(2)`.
 */
function truncater(path: string, byPath: boolean) {
  const script = byPath
    ? "import os, sys\nn = int(sys.stdin.readline())\nos.truncate(sys.argv[1], n)"
    : "import os, sys\nn = int(sys.stdin.readline())\nfd = os.open(sys.argv[1], os.O_WRONLY)\n" +
      "os.ftruncate(fd, n)";
  const child = new Deno.Command("python3", {
    args: ["-c", script, path],
    stdin: "piped",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  let told = false;
  return {
    cut: (bytes: number) => {
      told = true;
      writer.write(new TextEncoder().encode(`${bytes}\n`)).then(() => writer.close());
    },
    done: async () => {
      if (!told) await writer.close();
      const out = await child.output();
      if (told && !out.success) throw new Error(new TextDecoder().decode(out.stderr));
    },
  };
}

/**
 * Runs a -machine copy and, once it reports `atPercent`, has another process truncate the
 * source to `cut(percent)` bytes while the copy is stopped; the exit code, the signal and
 * stderr.
 */
async function copyWhileTruncating(
  args: string[],
  src: string,
  atPercent: number,
  cut: (percent: number) => number,
  byPath: boolean,
): Promise<{ code: number; signal: Deno.Signal | null; stderr: string; cutTo?: number }> {
  // Started first: ready when the copy reaches the point.
  const t = truncater(src, byPath);
  const child = mainCommand(["-machine", ...args]).spawn();
  const stderr = new Response(child.stderr).text();
  let cutTo: number | undefined;
  let buf = new Uint8Array(0);
  for await (const chunk of child.stdout) {
    const joined = new Uint8Array(buf.length + chunk.length);
    joined.set(buf);
    joined.set(chunk, buf.length);
    buf = joined;
    // Frames: 12-byte header (u64 offset, u32 length), then "Progress: N".
    while (buf.length >= 12) {
      const len = new DataView(buf.buffer, buf.byteOffset + 8, 4).getUint32(0, true);
      if (buf.length < 12 + len) break;
      const m = /Progress: (\d+)/.exec(new TextDecoder().decode(buf.subarray(12, 12 + len)));
      buf = buf.subarray(12 + len);
      if (m && cutTo === undefined && Number(m[1]) >= atPercent) {
        // Stopped while the file is cut, with reads ahead of the cut already done.
        Deno.kill(child.pid, "SIGSTOP");
        cutTo = cut(Number(m[1]));
        t.cut(cutTo);
        while ((await Deno.stat(src)).size > cutTo) {
          await new Promise((ok) => setTimeout(ok, 2));
        }
        Deno.kill(child.pid, "SIGCONT");
      }
    }
  }
  const status = await child.status;
  await t.done();
  return { code: status.code, signal: status.signal, stderr: await stderr, cutTo };
}

for (
  const [name, flags] of [
    ["onto a prezeroed file (scanned)", ["-prezeroed"]],
    ["onto a file", []],
    ["buffered, one fdatasync", ["-unbuffered", "false"]],
    ["with two threads", ["-prezeroed", "-threads", "2"]],
  ] as const
) {
  Deno.test(`a source truncated during the copy is a source error at its offset, never SIGBUS (${name})`, async () => {
    // In memory: the copy is not held up by a disk, nor the runs by flushing.
    const dir = await Deno.makeTempDir({ dir: "/dev/shm", prefix: "sparse_dd_test_" });
    try {
      const size = 256 * MiB;
      const src = `${dir}/src`;
      let hits = 0;
      // Until the truncation has met the copy several times (it may also come too late).
      for (let seed = 1; hits < 6; seed++) {
        ok(seed <= 12, `the truncation met the copy only ${hits} times in 12 runs`);
        const r = new Prng(seed);
        await dataEveryMiB(src, size, seed);
        await Deno.remove(`${dir}/dest`).catch(() => {});
        const atPercent = 1 + r.int(60);
        // Near the copy's position (racing with pages being scanned and written), or further on;
        // any byte offset.
        const res = await copyWhileTruncating(
          ["-src", src, "-dest", `${dir}/dest`, "-size", String(size), ...flags],
          src,
          atPercent,
          (p) => Math.floor(size * p / 100) + r.int(r.chance(0.5) ? 4 * MiB : 32 * MiB),
          r.chance(0.5),
        );
        strictEqual(res.signal, null, `seed ${seed}: killed by ${res.signal}: ${res.stderr}`);
        if (res.code === 0) continue; // the copy had read everything before the cut
        hits++;
        strictEqual(res.code, 3, `seed ${seed}: ${res.stderr}`);
        const m = new RegExp(`^sparse_dd: cannot read ${src} at offset (\\d+): .+$`).exec(
          res.stderr.trim(),
        );
        ok(m, `seed ${seed}: ${res.stderr}`);
        // The read that failed reaches past the cut (a step is at most 2 MiB).
        const at = Number(m[1]);
        ok(at < size && at + 2 * MiB > res.cutTo!, `seed ${seed}: offset ${at}, cut ${res.cutTo}`);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("a source cut short in a hole it ends with is a source error too, though no read fails", async () => {
  await withTempDir(async (dir) => {
    const size = 256 * MiB;
    const src = `${dir}/src`;
    // Data in the first half only: the second half is a hole the copy never reads.
    await dataEveryMiB(src, size / 2, 7);
    await Deno.truncate(src, size);
    const cut = size * 3 / 4;
    const res = await copyWhileTruncating(
      ["-src", src, "-dest", `${dir}/dest`, "-size", String(size)],
      src,
      20,
      () => cut,
      true,
    );
    strictEqual(res.code, 3, res.stderr);
    strictEqual(
      res.stderr.trim(),
      `sparse_dd: cannot read ${src} at offset ${cut}: the file was cut to ${cut} bytes during the copy`,
    );
  });
});
