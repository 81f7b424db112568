import { Buffer } from "node:buffer";
import { ok, rejects, strictEqual } from "node:assert/strict";
import { libc, O_RDONLY } from "../../src/file/libc.ts";
import { MappedFile } from "../../src/file/mapping.ts";
import { FileDisk } from "../../src/file/file_disk.ts";
import { copy } from "../../src/copy/copier.ts";
import { DiskError, MemoryDisk } from "../../src/core/disk.ts";
import { isZero } from "../../src/copy/quantum.ts";
import { mainCommand, withTempDir } from "../_support/helpers.ts";
import { Prng } from "../_support/prng.ts";

const MiB = 1024 * 1024;
const c = libc()!;

/** A file of `size` bytes: random runs and zero runs. */
async function mixedFile(path: string, r: Prng, size: number): Promise<Uint8Array> {
  const data = new Uint8Array(size);
  for (let at = 0; at < size;) {
    const run = 1 + r.int(200000);
    if (r.chance(0.5)) r.fill(data.subarray(at, Math.min(size, at + run)));
    at += run;
  }
  await Deno.writeFile(path, data);
  return data;
}

/** Runs `fn` on `path` mapped as a MappedFile (with its constructor's tuning), then closes both. */
async function withMapped(
  path: string,
  size: number,
  tuning: number[],
  fn: (file: MappedFile) => Promise<void>,
): Promise<void> {
  const fd = c.open(path, O_RDONLY);
  try {
    const file = new MappedFile(c, fd, size, ...tuning);
    try {
      await fn(file);
    } finally {
      file.close();
    }
  } finally {
    c.close(fd);
  }
}

function rssFileKiB(): number {
  const m = Deno.readTextFileSync("/proc/self/status").match(/RssFile:\s+(\d+)/);
  return m ? Number(m[1]) : 0;
}

Deno.test("lent views hold the file's bytes at any offset and length, across windows", async () => {
  await withTempDir(async (dir) => {
    const r = new Prng(5);
    const size = 24 * MiB + 12345;
    const data = await mixedFile(`${dir}/f`, r, size);
    // Small windows, overlap and batches, so views cross windows, get mappings of their own,
    // and released pages are dropped while others are lent.
    await withMapped(`${dir}/f`, size, [2 * MiB, 256 * 1024, 512 * 1024, MiB], async (file) => {
      const held: Array<{ release(): void }> = [];
      for (let i = 0; i < 400; i++) {
        const offset = r.int(size);
        const length = 1 + r.int(Math.min(size - offset, r.chance(0.1) ? 3 * MiB : 300000));
        const v = await file.view(offset, length);
        ok(v, `view ${offset}+${length}`);
        ok(
          Buffer.from(v.bytes).equals(Buffer.from(data.subarray(offset, offset + length))),
          `bytes of ${offset}+${length}`,
        );
        // The mapping's zero test agrees with the copier's own.
        const a = r.int(length);
        const b = a + r.int(length - a + 1);
        strictEqual(v.isZero!(v.bytes, a, b), isZero(data.subarray(offset, offset + length), a, b));
        held.push(v);
        // Release some now, some later, out of order.
        while (held.length > r.int(6)) held.splice(r.int(held.length), 1)[0].release();
      }
      for (const v of held) v.release();
      // A long view starting at a window's start has a mapping of its own; a later short view
      // there must get the window, not that mapping.
      const long = await file.view(4 * MiB, 3 * MiB);
      const short = await file.view(4 * MiB + 1000, 2 * MiB);
      ok(long && short);
      ok(
        Buffer.from(short.bytes).equals(Buffer.from(data.subarray(4 * MiB + 1000, 6 * MiB + 1000))),
      );
      strictEqual(short.bytes.length, 2 * MiB);
      long.release();
      short.release();
    });
  });
});

Deno.test("nothing past the end of the file is lent, nor a file cut short after opening", async () => {
  await withTempDir(async (dir) => {
    const p = `${dir}/f`;
    await Deno.writeFile(p, new Uint8Array(4 * MiB).fill(9));
    await withMapped(p, 4 * MiB, [], async (file) => {
      strictEqual(await file.view(4 * MiB - 10, 20), undefined);
      strictEqual(await file.view(-1, 20), undefined);
      // Pages past the new end would raise SIGBUS if touched: they must not be lent.
      await Deno.truncate(p, MiB);
      strictEqual(await file.view(2 * MiB, 65536), undefined);
      const v = await file.view(0, 65536);
      ok(v && v.bytes.every((b) => b === 9));
      v.release();
    });
  });
});

Deno.test("a source cut short during a copy is reported as a read error at its offset", async () => {
  await withTempDir(async (dir) => {
    const p = `${dir}/src`;
    await Deno.writeFile(p, new Uint8Array(8 * MiB).fill(3));
    const src = await FileDisk.open(p);
    ok(src.view, "a regular file read through the page cache lends its pages");
    await Deno.truncate(p, 3 * MiB);
    try {
      await rejects(
        copy(src, new MemoryDisk(8 * MiB), { size: 8 * MiB, prezeroed: true }),
        (e) =>
          e instanceof DiskError && e.op === "read" && e.role === "source" &&
          e.offset !== undefined && e.offset >= 2 * MiB && e.offset <= 3 * MiB &&
          e.message.includes(p),
      );
    } finally {
      await src.close();
    }
  });
});

Deno.test("pages lent and released leave the mapping: the process's RSS stays bounded", async () => {
  await withTempDir(async (dir) => {
    const size = 256 * MiB;
    const p = `${dir}/f`;
    const f = await Deno.open(p, { write: true, create: true });
    const block = new Uint8Array(MiB).fill(1);
    for (let i = 0; i < size / MiB; i++) await f.write(block);
    f.close();
    await withMapped(p, size, [], async (file) => {
      const before = rssFileKiB();
      let peak = before;
      const lent: Array<{ release(): void }> = [];
      for (let at = 0; at < size; at += 2 * MiB) {
        const v = await file.view(at, 2 * MiB);
        ok(v && v.bytes[0] === 1 && v.bytes[2 * MiB - 1] === 1);
        lent.push(v);
        if (lent.length > 4) lent.shift()!.release();
        peak = Math.max(peak, rssFileKiB());
      }
      for (const v of lent) v.release();
      // The copier's read-ahead (4 views) plus a drop batch and a populate batch, not 256 MiB.
      ok((peak - before) * 1024 < 48 * MiB, `RssFile grew by ${peak - before} KiB`);
    });
  });
});

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
 * the path, or by opening it for writing and `ftruncate(2)`. Either waits while the copy holds a
 * lease on the file (coreutils' truncate opens with O_NONBLOCK and would fail instead).
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

/** True when a lease on inode `ino` is being broken (a process waits on it), by /proc/locks. */
async function leaseBreaking(ino: number | null): Promise<boolean> {
  const locks = await Deno.readTextFile("/proc/locks");
  return locks.split("\n").some((l) => / LEASE +BREAKING /.test(l) && l.includes(`:${ino} `));
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
        // Stopped while the truncation begins: it then either waits on the copy's lease or
        // is done before the copy goes on, with views read ahead of the cut either way.
        Deno.kill(child.pid, "SIGSTOP");
        cutTo = cut(Number(m[1]));
        t.cut(cutTo);
        const { ino } = await Deno.stat(src);
        while ((await Deno.stat(src)).size > cutTo && !(await leaseBreaking(ino))) {
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
    ["onto a file (written from the mapping)", []],
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
