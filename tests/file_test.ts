import { match, ok, strictEqual } from "node:assert/strict";
import { FileDisk, seekDataExtents } from "../src/file.ts";
import { ExitCode } from "../src/errors.ts";
import { allocatedBytes, runMain, sameBytes, sh, withLoop, withTempDir } from "./helpers.ts";
import { Prng } from "./prng.ts";

const MiB = 1024 * 1024;
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
      for (let q = Math.floor(at / 16384); q * 16384 < at + data.length; q++) quanta.add(q);
    }
    const res = await runMain(["-src", src, "-dest", `${dir}/copy.raw`, "--json", ...NO_CONFIG]);
    strictEqual(res.code, 0, res.stderr);
    ok(await sameBytes(src, `${dir}/copy.raw`), "cmp");
    const s = json(res);
    ok(s.bytesRead <= (await allocatedBytes(src)), `read ${s.bytesRead}`);
    const dstAlloc = await allocatedBytes(`${dir}/copy.raw`);
    ok(
      dstAlloc <= quanta.size * 16384 + METADATA_SLACK,
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
          nonZeroQuanta += 65536 / 16384;
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
    strictEqual(s.dataBytes, nonZeroQuanta * 16384);
    const dstAlloc = await allocatedBytes(`${dir}/copy.raw`);
    ok(
      dstAlloc <= nonZeroQuanta * 16384 + METADATA_SLACK,
      `destination allocates ${dstAlloc} > ${nonZeroQuanta * 16384}`,
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
        strictEqual(json(res).dataBytes, 2 * 16384);
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
