import { match, ok, rejects, strictEqual } from "node:assert/strict";
import { copy } from "../../src/copy/copier.ts";
import { DiskError, MemoryDisk } from "../../src/core/disk.ts";
import { FileDisk, seekDataExtents, Writeback } from "../../src/file/file_disk.ts";
import {
  type Libc,
  libc,
  O_RDONLY,
  POSIX_FADV_DONTNEED,
  SYNC_FILE_RANGE_WRITE,
} from "../../src/file/libc.ts";
import { ExitCode } from "../../src/core/errors.ts";
import {
  allocatedBytes,
  runMain,
  sameBytes,
  sh,
  withFullThinDevice,
  withLoop,
  withTempDir,
} from "../_support/helpers.ts";
import { Prng } from "../_support/prng.ts";
import { Buffer } from "node:buffer";
import { scanBuffer } from "../../src/copy/zeroscan.ts";
import { DEFAULT_QUANTUM } from "../../src/copy/quantum.ts";

const MiB = 1024 * 1024;
/** The default zero-scan quantum. */
const Q = DEFAULT_QUANTUM;
const GiB = 1024 * MiB;
const NO_CONFIG = ["-config", "/nonexistent/sparse_dd.conf"];
/** st_blocks also counts the filesystem's extent-tree blocks: allow 1 MiB of them per GiB. */
const METADATA_SLACK = MiB;

async function writeAt(path: string, writes: Array<[number, Uint8Array]>) {
  const f = await Deno.open(path, { write: true });
  for (const [at, data] of writes) {
    await f.seek(at, Deno.SeekMode.Start);
    let n = 0;
    while (n < data.length) n += await f.write(data.subarray(n));
  }
  f.close();
}

function json(res: { stdout: Uint8Array }) {
  return JSON.parse(new TextDecoder().decode(res.stdout));
}

Deno.test("SEEK_DATA/SEEK_HOLE lists a sparse file's data extents", async () => {
  await withTempDir(async (dir) => {
    const p = `${dir}/f`;
    await Deno.writeFile(p, new Uint8Array(0));
    await Deno.truncate(p, 64 * MiB);
    await writeAt(p, [[MiB, new Uint8Array(8192).fill(1)], [
      40 * MiB,
      new Uint8Array(4096).fill(2),
    ]]);
    const ext = seekDataExtents(p, 64 * MiB)!;
    ok(ext !== undefined);
    strictEqual(ext.length, 2);
    ok(ext[0].start <= MiB && ext[0].start + ext[0].length >= MiB + 8192);
    ok(ext[1].start <= 40 * MiB && ext[1].start + ext[1].length >= 40 * MiB + 4096);
    const d = await FileDisk.open(p);
    strictEqual(d.size, 64 * MiB);
    strictEqual((await d.allocation())!.count, 2);
    await d.close();
  });
});

Deno.test("a 1 GiB sparse file copies identically to a fresh file no more allocated than its data", async () => {
  await withTempDir(async (dir) => {
    const src = `${dir}/sparse.raw`;
    await Deno.writeFile(src, new Uint8Array(0));
    await Deno.truncate(src, GiB);
    const r = new Prng(11);
    const writes: Array<[number, Uint8Array]> = [];
    for (let i = 0; i < 60; i++) {
      writes.push([r.int(GiB / 4096 - 64) * 4096, r.fill(new Uint8Array(4096 * (1 + r.int(64))))]);
    }
    await writeAt(src, writes);
    const quanta = new Set<number>();
    for (const [at, data] of writes) {
      for (let q = Math.floor(at / Q); q * Q < at + data.length; q++) quanta.add(q);
    }
    const res = await runMain(["-src", src, "-dest", `${dir}/copy.raw`, "--json", ...NO_CONFIG]);
    strictEqual(res.code, 0, res.stderr);
    ok(await sameBytes(src, `${dir}/copy.raw`), "cmp");
    const s = json(res);
    ok(s.bytesRead <= (await allocatedBytes(src)), `read ${s.bytesRead}`);
    const dstAlloc = await allocatedBytes(`${dir}/copy.raw`);
    ok(
      dstAlloc <= quanta.size * Q + METADATA_SLACK,
      `destination allocates ${dstAlloc} > ${quanta.size} non-zero quanta`,
    );
  });
});

Deno.test("a 1 GiB dense file with zero runs becomes a sparse copy holding only its non-zero quanta", async () => {
  await withTempDir(async (dir) => {
    const src = `${dir}/dense.raw`;
    const f = await Deno.open(src, { write: true, create: true });
    const r = new Prng(5);
    const block = new Uint8Array(4 * MiB);
    let nonZeroQuanta = 0;
    for (let off = 0; off < GiB; off += block.length) {
      block.fill(0);
      // Mostly zero, with some 64 KiB regions of data: the file itself is fully allocated.
      for (let q = 0; q < block.length; q += 65536) {
        if (r.chance(0.2)) {
          block.fill(1 + r.int(255), q, q + 65536);
          nonZeroQuanta += 65536 / Q;
        }
      }
      await f.write(block);
    }
    f.close();
    ok((await allocatedBytes(src)) >= GiB - MiB, "the source is dense");
    const res = await runMain(["-src", src, "-dest", `${dir}/copy.raw`, "--json", ...NO_CONFIG]);
    strictEqual(res.code, 0, res.stderr);
    ok(await sameBytes(src, `${dir}/copy.raw`), "cmp");
    const s = json(res);
    strictEqual(s.dataBytes, nonZeroQuanta * Q);
    const dstAlloc = await allocatedBytes(`${dir}/copy.raw`);
    ok(
      dstAlloc <= nonZeroQuanta * Q + METADATA_SLACK,
      `destination allocates ${dstAlloc} > ${nonZeroQuanta * Q}`,
    );
  });
});

Deno.test("loop device to loop device, destination full of 0xFF and not prezeroed", async () => {
  await withTempDir(async (dir) => {
    const size = 96 * MiB;
    await Deno.writeFile(`${dir}/a.img`, new Uint8Array(0));
    await Deno.truncate(`${dir}/a.img`, size);
    const r = new Prng(3);
    await writeAt(`${dir}/a.img`, [[0, r.fill(new Uint8Array(MiB))], [
      50 * MiB + 512,
      r.fill(new Uint8Array(3 * MiB)),
    ]]);
    await Deno.writeFile(`${dir}/b.img`, new Uint8Array(size).fill(0xff));
    await withLoop(`${dir}/a.img`, (a) =>
      withLoop(`${dir}/b.img`, async (b) => {
        const res = await runMain([
          "-machine",
          "-src",
          a,
          "-dest",
          b,
          "-size",
          String(size),
          "--json",
          ...NO_CONFIG,
        ]);
        strictEqual(res.code, 0, res.stderr);
        ok(await sameBytes(a, b, size), "cmp of the devices");
      }));
    ok(await sameBytes(`${dir}/a.img`, `${dir}/b.img`), "cmp of the backing files");
  });
});

Deno.test("a prezeroed loop device destination gets only the data", async () => {
  await withTempDir(async (dir) => {
    const size = 32 * MiB;
    await Deno.writeFile(`${dir}/a.img`, new Uint8Array(0));
    await Deno.truncate(`${dir}/a.img`, size);
    await writeAt(`${dir}/a.img`, [[7 * MiB, new Uint8Array(20000).fill(9)]]);
    await Deno.writeFile(`${dir}/b.img`, new Uint8Array(0));
    await Deno.truncate(`${dir}/b.img`, size);
    await withLoop(`${dir}/a.img`, (a) =>
      withLoop(`${dir}/b.img`, async (b) => {
        const res = await runMain(["-src", a, "-dest", b, "-prezeroed", "--json", ...NO_CONFIG]);
        strictEqual(res.code, 0, res.stderr);
        strictEqual(json(res).dataBytes, Math.ceil(20000 / Q) * Q);
      }));
    ok(await sameBytes(`${dir}/a.img`, `${dir}/b.img`));
  });
});

Deno.test("a destination device smaller than -size is refused and left untouched", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeFile(`${dir}/a.img`, new Uint8Array(16 * MiB).fill(1));
    await Deno.writeFile(`${dir}/b.img`, new Uint8Array(8 * MiB).fill(0xee));
    await withLoop(`${dir}/a.img`, (a) =>
      withLoop(`${dir}/b.img`, async (b) => {
        const res = await runMain(["-src", a, "-dest", b, "-size", String(16 * MiB), ...NO_CONFIG]);
        strictEqual(res.code, ExitCode.Destination, res.stderr);
        match(
          res.stderr.trim(),
          new RegExp(
            `^sparse_dd: destination ${b} is smaller \\(8388608 bytes\\) than -size 16777216$`,
          ),
        );
      }));
    const b = await Deno.readFile(`${dir}/b.img`);
    ok(b.every((x) => x === 0xee), "destination untouched");
  });
});

Deno.test("an existing larger destination file keeps its bytes past -size", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeFile(`${dir}/src`, new Uint8Array(MiB).fill(4));
    await Deno.writeFile(`${dir}/dst`, new Uint8Array(2 * MiB).fill(0xab));
    const res = await runMain(["-src", `${dir}/src`, "-dest", `${dir}/dst`, ...NO_CONFIG]);
    strictEqual(res.code, 0, res.stderr);
    const d = await Deno.readFile(`${dir}/dst`);
    strictEqual(d.length, 2 * MiB);
    ok(d.subarray(0, MiB).every((x) => x === 4));
    ok(d.subarray(MiB).every((x) => x === 0xab), "bytes past -size untouched");
  });
});

Deno.test("a full destination filesystem is a destination error naming the file and offset", async () => {
  // A 4 MiB tmpfs runs out of space at a known offset: a real ENOSPC from the kernel.
  await withTempDir(async (dir) => {
    await Deno.writeFile(`${dir}/src`, new Prng(9).fill(new Uint8Array(8 * MiB)));
    await Deno.mkdir(`${dir}/small`);
    await sh("mount", ["-t", "tmpfs", "-o", "size=4m", "tmpfs", `${dir}/small`]);
    try {
      const res = await runMain(["-src", `${dir}/src`, "-dest", `${dir}/small/out`, ...NO_CONFIG]);
      strictEqual(res.code, ExitCode.Destination, res.stderr);
      match(
        res.stderr.trim(),
        new RegExp(
          `^sparse_dd: cannot write ${dir}/small/out at offset \\d+: No space left on device`,
        ),
      );
      strictEqual((await Deno.stat(`${dir}/small/out`)).size, 8 * MiB, "never grown past -size");
    } finally {
      await sh("umount", [`${dir}/small`]).catch(() => undefined);
    }
  });
});

Deno.test("a loop device over a full file system fails its flush: exit 4, never 0 with other bytes", async () => {
  // The loop device accepts every write into the page cache; the backing file's tmpfs is full
  // half way, so the error surfaces only at writeback (the kernel reports it once: a second
  // fdatasync or sync_file_range returns 0).
  await withTempDir(async (dir) => {
    await Deno.writeFile(`${dir}/src`, new Prng(21).fill(new Uint8Array(8 * MiB)));
    await Deno.mkdir(`${dir}/small`);
    await sh("mount", ["-t", "tmpfs", "-o", "size=4m", "tmpfs", `${dir}/small`]);
    try {
      for (const extra of [["-unbuffered", "false"], ["-unbuffered", "false", "-threads", "2"]]) {
        await Deno.remove(`${dir}/small/back`).catch(() => undefined);
        await Deno.writeFile(`${dir}/small/back`, new Uint8Array(0));
        await Deno.truncate(`${dir}/small/back`, 16 * MiB);
        await withLoop(`${dir}/small/back`, async (dev) => {
          const res = await runMain(["-src", `${dir}/src`, "-dest", dev, ...extra, ...NO_CONFIG]);
          strictEqual(res.code, ExitCode.Destination, `${extra}: ${res.stderr}`);
          match(res.stderr.trim(), new RegExp(`^sparse_dd: cannot (write|flush) ${dev}`));
          strictEqual(res.stderr.trim().split("\n").length, 1, res.stderr);
        });
      }
    } finally {
      await sh("umount", [`${dir}/small`]).catch(() => undefined);
    }
  });
});

/** The open descriptors of this process on `path`, with their open flags (octal, /proc fdinfo). */
async function openFlags(path: string): Promise<number[]> {
  const out: number[] = [];
  for await (const e of Deno.readDir("/proc/self/fd")) {
    let target: string;
    try {
      target = await Deno.readLink(`/proc/self/fd/${e.name}`);
    } catch {
      continue;
    }
    if (target !== path) continue;
    const info = await Deno.readTextFile(`/proc/self/fdinfo/${e.name}`);
    out.push(parseInt(/flags:\s*([0-7]+)/.exec(info)![1], 8));
  }
  return out;
}

const O_DIRECT_FLAG = 0o40000;

Deno.test("-unbuffered true reads and writes aligned blocks with O_DIRECT, and odd ones without", async () => {
  await withTempDir(async (dir) => {
    const p = `${dir}/d.raw`;
    const disk = await FileDisk.open(p, { write: true, createSize: 4 * MiB, unbuffered: true });
    try {
      ok((await openFlags(p)).some((f) => (f & O_DIRECT_FLAG) !== 0), "an O_DIRECT descriptor");
      const r = new Prng(9);
      const aligned = scanBuffer(MiB);
      r.fill(aligned);
      await disk.write(MiB, aligned);
      // Unaligned offset, length and address: served by the buffered descriptor.
      const odd = r.fill(new Uint8Array(1000));
      await disk.write(12345, odd.subarray(1));
      await disk.flush();
      const back = scanBuffer(MiB);
      await disk.read(MiB, back);
      ok(Buffer.from(back).equals(Buffer.from(aligned)));
      const small = new Uint8Array(999);
      await disk.read(12345, small);
      ok(Buffer.from(small).equals(Buffer.from(odd.subarray(1))));
    } finally {
      await disk.close();
    }
    strictEqual((await openFlags(p)).length, 0, "both descriptors closed");
  });
});

Deno.test("by default nothing is O_DIRECT, and the copy does not fill the page cache with the destination", async () => {
  await withTempDir(async (dir) => {
    const size = 256 * MiB;
    const src = `${dir}/s.raw`;
    const f = await Deno.open(src, { write: true, create: true });
    const block = new Prng(4).fill(new Uint8Array(MiB));
    for (let off = 0; off < size; off += MiB) await f.write(block);
    f.close();
    const s = await FileDisk.open(src);
    const d = await FileDisk.open(`${dir}/d.raw`, { write: true, createSize: MiB });
    const off = await FileDisk.open(`${dir}/o.raw`, {
      write: true,
      createSize: MiB,
      unbuffered: false,
    });
    try {
      for (const p of ["s.raw", "d.raw", "o.raw"]) {
        ok((await openFlags(`${dir}/${p}`)).every((fl) => (fl & O_DIRECT_FLAG) === 0), p);
      }
    } finally {
      await Promise.all([s.close(), d.close(), off.close()]);
    }
    const res = await runMain(["-src", src, "-dest", `${dir}/d.raw`, ...NO_CONFIG]);
    strictEqual(res.code, 0, res.stderr);
    // fincore: bytes of the file in the page cache; written ranges are dropped once on disk.
    // (Before cmp, which reads the file back in.)
    const cached = Number((await sh("fincore", ["-bno", "RES", `${dir}/d.raw`])).trim());
    ok(cached <= 64 * MiB, `${cached} bytes of the destination left in the page cache`);
    ok(await sameBytes(src, `${dir}/d.raw`));
  });
});

Deno.test("zeroing a file range punches a hole, and so does zeroing a loop device", async () => {
  await withTempDir(async (dir) => {
    const p = `${dir}/f.raw`;
    await Deno.writeFile(p, new Uint8Array(8 * MiB).fill(0xaa));
    const f = await FileDisk.open(p, { write: true, createSize: 8 * MiB });
    strictEqual(f.knownZero, false);
    strictEqual(f.zeroIsCheap, true);
    await f.zero!(MiB, 3 * MiB + 100);
    await f.flush();
    await f.close();
    const data = await Deno.readFile(p);
    ok(data.subarray(MiB, 4 * MiB + 100).every((b) => b === 0));
    strictEqual(data[MiB - 1], 0xaa);
    strictEqual(data[4 * MiB + 100], 0xaa);
    ok((await allocatedBytes(p)) <= 5 * MiB + 4096, "the zeroed range is a hole");

    const img = `${dir}/img`;
    await Deno.writeFile(img, new Uint8Array(8 * MiB).fill(0x55));
    await withLoop(img, async (dev) => {
      const d = await FileDisk.open(dev, { write: true, createSize: 8 * MiB });
      strictEqual(d.isBlockDevice, true);
      strictEqual(d.zeroIsCheap, true, "loop devices offload write-zeroes");
      // Unaligned edges are written, the aligned middle zeroed by the ioctl.
      await d.zero!(1000, 2 * MiB);
      await d.flush();
      await d.close();
    });
    const back = await Deno.readFile(img);
    ok(back.subarray(1000, 1000 + 2 * MiB).every((b) => b === 0));
    // The device punched a hole: the backing file gave the space back.
    ok((await allocatedBytes(img)) <= 6 * MiB + 8192, "the zeroed range is unmapped");
    strictEqual(back[999], 0x55);
    strictEqual(back[1000 + 2 * MiB], 0x55);
  });
});

Deno.test("block devices use O_DIRECT by default, and not with -unbuffered false", async () => {
  await withTempDir(async (dir) => {
    const img = `${dir}/img`;
    await Deno.writeFile(img, new Uint8Array(4 * MiB).fill(3));
    await withLoop(img, async (dev) => {
      for (const [unbuffered, direct] of [[undefined, true], [false, false], [true, true]]) {
        const d = await FileDisk.open(dev, {
          write: true,
          createSize: 4 * MiB,
          unbuffered: unbuffered as boolean | undefined,
        });
        try {
          const flags = await openFlags(dev);
          strictEqual(flags.some((f) => (f & O_DIRECT_FLAG) !== 0), direct, `${unbuffered}`);
          strictEqual(d.writeQueueDepth, direct ? 4 : 1);
          const buf = scanBuffer(MiB);
          await d.read(MiB, buf);
          ok(buf.every((b) => b === 3));
        } finally {
          await d.close();
        }
      }
    });
  });
});

Deno.test("a read-only source offers no zero operation", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeFile(`${dir}/s.raw`, new Uint8Array(4096));
    const d = await FileDisk.open(`${dir}/s.raw`);
    strictEqual(d.zero, undefined);
    strictEqual(d.zeroIsCheap, false);
    await d.close();
  });
});

Deno.test("overwriting a non-zero file leaves it as sparse as its data, for every -unbuffered", async () => {
  await withTempDir(async (dir) => {
    const size = 64 * MiB;
    const src = `${dir}/src.raw`;
    const f = await Deno.open(src, { write: true, create: true });
    const r = new Prng(21);
    const block = new Uint8Array(MiB);
    let nonZero = 0;
    for (let off = 0; off < size; off += block.length) {
      block.fill(0);
      for (let q = 0; q < block.length; q += 65536) {
        if (r.chance(0.3)) {
          r.fill(block.subarray(q, q + 65536));
          nonZero += 65536;
        }
      }
      await f.write(block);
    }
    f.close();
    for (const unbuffered of [[], ["-unbuffered", "true"], ["-unbuffered", "false"]]) {
      const dst = `${dir}/dst.raw`;
      await Deno.writeFile(dst, new Uint8Array(size).fill(0xff));
      const res = await runMain(["-src", src, "-dest", dst, "--json", ...unbuffered, ...NO_CONFIG]);
      strictEqual(res.code, 0, res.stderr);
      ok(await sameBytes(src, dst), `cmp ${unbuffered.join(" ")}`);
      const alloc = await allocatedBytes(dst);
      ok(alloc <= nonZero + METADATA_SLACK, `${unbuffered.join(" ")}: ${alloc} > ${nonZero}`);
      const s = json(res);
      strictEqual(s.dataBytes, nonZero);
      strictEqual(s.zeroedBytes, size - nonZero);
      strictEqual(s.zeroCalls, 1, "one call zeroed the whole destination");
    }
  });
});

/** A stand-in for the two libc calls {@linkcode Writeback} makes, recording what it was asked. */
class RecordingLibc {
  readonly calls: Array<{ start: number; length: number; flags: number; handedOut: number }> = [];
  readonly dropped: number[] = [];
  /** Ranges whose WRITE call has returned. */
  readonly handedOut = new Set<number>();
  inFlight = 0;
  maxInFlight = 0;
  constructor(readonly r: Prng) {}

  async syncFileRangeAsync(_fd: number, start: number, length: number, flags: number) {
    const writeOnly = flags === SYNC_FILE_RANGE_WRITE;
    this.calls.push({ start, length, flags, handedOut: this.handedOut.size });
    if (writeOnly) this.maxInFlight = Math.max(this.maxInFlight, ++this.inFlight);
    // A device that is sometimes slow to take the range.
    await new Promise((resolve) => setTimeout(resolve, this.r.int(3)));
    if (writeOnly) {
      this.inFlight--;
      this.handedOut.add(start);
    } else {
      ok(this.handedOut.has(start), `range at ${start} waited for before it was handed out`);
    }
  }

  fadvise(_fd: number, offset: number) {
    this.dropped.push(offset);
  }
}

Deno.test("writeback hands ranges to the device one call at a time, in the order they were written", async () => {
  for (const seed of [1, 2, 3, 4, 5]) {
    const r = new Prng(seed);
    const c = new RecordingLibc(r);
    const wb = new Writeback(c as unknown as Libc, 99);
    // Runs of data and holes, front to back as the copier writes them, sometimes far apart.
    let at = 0;
    const written: Array<[number, number]> = [];
    for (let i = 0; i < 300; i++) {
      at += r.chance(0.2) ? (4 + r.int(20)) * MiB : 0;
      const length = (1 + r.int(16)) * 64 * 1024;
      await wb.written(at, length);
      written.push([at, at + length]);
      at += length;
    }
    await wb.settle();
    const writes = c.calls.filter((k) => k.flags === SYNC_FILE_RANGE_WRITE);
    // Two calls at once would let the file system allocate their blocks in interleaved order.
    strictEqual(c.maxInFlight, 1, `seed ${seed}: WRITE calls at once`);
    for (let i = 1; i < writes.length; i++) {
      ok(writes[i].start >= writes[i - 1].start + writes[i - 1].length, `seed ${seed}: in order`);
    }
    // Everything written was handed out, and what was waited for was dropped from the cache.
    for (const [from, to] of written) {
      ok(
        writes.some((k) => k.start <= from && to <= k.start + k.length),
        `seed ${seed}: [${from}, ${to}) handed out`,
      );
    }
    ok(c.dropped.length > 0, `seed ${seed}: retired ranges dropped`);
  }
});

Deno.test("writeback hands out ranges by the data written in them, however sparse: 8 MiB each, at most 64 MiB in flight", async () => {
  for (const seed of [1, 2, 3]) {
    const r = new Prng(seed);
    const c = new RecordingLibc(r);
    const wb = new Writeback(c as unknown as Libc, 99);
    // 128 MiB of 64 KiB writes, each 1-4 MiB after the last: a span of 3-4 GiB.
    let at = 0;
    let unretired = 0;
    let maxUnretired = 0;
    for (let i = 0; i < 2048; i++) {
      at += (1 + r.int(4)) * MiB;
      await wb.written(at, 64 * 1024);
      at += 64 * 1024;
      const waited = c.calls.filter((k) => k.flags !== SYNC_FILE_RANGE_WRITE).length;
      const handed = c.calls.filter((k) => k.flags === SYNC_FILE_RANGE_WRITE).length;
      unretired = handed - waited;
      maxUnretired = Math.max(maxUnretired, unretired);
    }
    await wb.settle();
    const writes = c.calls.filter((k) => k.flags === SYNC_FILE_RANGE_WRITE);
    strictEqual(writes.length, 16, `seed ${seed}: 128 MiB of data in 8 MiB hand-outs`);
    // 64 MiB in flight: at most 8 ranges of 8 MiB (+1 just handed out) not yet waited for.
    ok(maxUnretired <= 9, `seed ${seed}: ${maxUnretired} ranges in flight`);
    ok(writes.every((k) => k.length > 8 * MiB), `seed ${seed}: each spans its sparse writes`);
  }
});

/**
 * A source of `size` bytes, dense: each 1 MiB holds 64 KiB of random data and zeroes (mostly
 * zeroes read, so a second thread joins the copy), and the last bytes are random.
 */
async function mostlyZeroes(path: string, size: number): Promise<void> {
  const r = new Prng(size);
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  for (let at = 0; at < size; at += MiB) {
    const block = new Uint8Array(Math.min(MiB, size - at));
    r.fill(block.subarray(0, 65536));
    r.fill(block.subarray(Math.max(0, block.length - 1000)));
    let n = 0;
    while (n < block.length) n += await f.write(block.subarray(n));
  }
  f.close();
}

for (const unbuffered of ["true", "false", undefined]) {
  for (const aligned of [true, false]) {
    for (const threads of ["1", "2"]) {
      const size = 128 * MiB - (aligned ? 0 : 1000);
      Deno.test(`a failed flush is a failed copy: exit 4 naming the device (-unbuffered ${unbuffered ?? "unset"}, -size ${size}, -threads ${threads})`, async () => {
        await withTempDir(async (dir) => {
          await mostlyZeroes(`${dir}/src`, size);
          await withFullThinDevice(async (dev) => {
            const res = await runMain([
              "-src",
              `${dir}/src`,
              "-dest",
              dev,
              "-size",
              String(size),
              "-threads",
              threads,
              ...(unbuffered === undefined ? [] : ["-unbuffered", unbuffered]),
              ...NO_CONFIG,
            ]);
            strictEqual(res.code, ExitCode.Destination, res.stderr);
            match(
              res.stderr.trim(),
              new RegExp(
                `^sparse_dd: cannot (write|flush|zero) ${dev}\\b.*: (Input/output error|No space left on device)`,
              ),
            );
          });
        });
      });
    }
  }
}

Deno.test("a failed flush of an unaligned tail written through the page cache is a failed copy", async () => {
  // By default a device is written with O_DIRECT, except a tail shorter than a block: here the
  // only data, so the only write, and its failure shows only when it is flushed.
  await withTempDir(async (dir) => {
    const size = 64 * MiB - 1000;
    await Deno.writeFile(`${dir}/src`, new Uint8Array());
    await Deno.truncate(`${dir}/src`, size);
    await writeAt(`${dir}/src`, [[size - 3000, new Prng(5).fill(new Uint8Array(3000))]]);
    await withFullThinDevice(async (dev) => {
      const res = await runMain(["-src", `${dir}/src`, "-dest", dev, ...NO_CONFIG]);
      strictEqual(res.code, ExitCode.Destination, res.stderr);
      match(res.stderr.trim(), new RegExp(`^sparse_dd: cannot flush ${dev}: Input/output error`));
    });
  });
});

/** Runs `fn` in a new directory on disk (the test's temporary directory) and one on tmpfs. */
async function onDiskAndInMemory(fn: (dir: string) => Promise<void>): Promise<void> {
  await withTempDir(fn);
  const dir = await Deno.makeTempDir({ dir: "/dev/shm", prefix: "sparse_dd_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

Deno.test("a source cut short during a copy is reported as a read error at its offset", async () => {
  await onDiskAndInMemory(async (dir) => {
    const p = `${dir}/src`;
    await Deno.writeFile(p, new Uint8Array(8 * MiB).fill(3));
    const src = await FileDisk.open(p);
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

Deno.test("a source partly in the page cache reads whole: cached bytes in place, the rest from the disk", async () => {
  await onDiskAndInMemory(async (dir) => {
    const c = libc()!;
    const r = new Prng(18);
    for (let round = 0; round < 4; round++) {
      const p = `${dir}/src${round}`;
      const data = r.fill(new Uint8Array(8 * MiB));
      await Deno.writeFile(p, data);
      // Drop random pieces from the page cache (clean pages go; tmpfs keeps them all).
      const fd = c.open(p, O_RDONLY);
      await c.fdatasync(fd);
      for (let i = 0; i < 16; i++) {
        c.fadvise(fd, r.int(8 * MiB), r.int(MiB), POSIX_FADV_DONTNEED);
      }
      c.close(fd);
      const src = await FileDisk.open(p);
      try {
        const buf = scanBuffer(8 * MiB);
        for (let at = 0; at < 8 * MiB;) {
          const n = Math.min(8 * MiB - at, 1 + r.int(3 * MiB));
          await src.read(at, buf.subarray(at, at + n));
          at += n;
        }
        ok(Buffer.from(buf).equals(Buffer.from(data)), `round ${round}`);
      } finally {
        await src.close();
      }
    }
  });
});
