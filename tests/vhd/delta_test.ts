import assert from "node:assert/strict";
import { planBase } from "../../src/vhd/delta.ts";
import { openChain } from "../../src/vhd/chain.ts";
import { ExtentSet } from "../../src/core/extent.ts";
import { VhdDisk } from "../../src/vhd/vhd_disk.ts";
import { runMain, sameBytes, withLoop, withTempDir } from "../_support/helpers.ts";
import { pyvhdiRead, readAll } from "../_support/vhd_tools.ts";
import { blktapLocators, VhdWriter } from "../_support/vhd_writer.ts";
import { Prng } from "../_support/prng.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const BS = MiB;

/**
 * The SXM picture: root C and mid B are shared; the source leaf A and the base snapshot S are
 * siblings on B. Blocks (1 MiB each, 16 of them):
 * - C: 0, 1, 5      B: 1, 2, 9
 * - A: 2, 3         (changes since the snapshot)
 * - S: 5, 6, 9      (base-only: 5 and 9 must revert to C's/B's data, 6 to zero)
 */
async function sxmChains(dir: string, leafSize = 16 * MiB) {
  const fill = (w: VhdWriter, block: number, value: number, at = 0, len = 64 * KiB) =>
    w.write(block * BS + at, new Uint8Array(len).fill(value));
  const c = new VhdWriter({ size: 16 * MiB, blockSize: BS });
  fill(c, 0, 0xc0);
  fill(c, 1, 0xc1, 0, BS);
  fill(c, 5, 0xc5);
  await c.save(`${dir}/c.vhd`);
  const child = (parent: VhdWriter, name: string, size = 16 * MiB) =>
    new VhdWriter({
      size,
      blockSize: BS,
      parent: { uuid: parent.uuid, name, locators: blktapLocators(name) },
    });
  const b = child(c, "c.vhd");
  fill(b, 1, 0xb1, 4 * KiB, 4 * KiB);
  fill(b, 2, 0xb2);
  fill(b, 9, 0xb9);
  await b.save(`${dir}/b.vhd`);
  const a = child(b, "b.vhd", leafSize);
  fill(a, 2, 0xa2, 128 * KiB);
  fill(a, 3, 0xa3);
  await a.save(`${dir}/a.vhd`);
  const s = child(b, "b.vhd");
  fill(s, 5, 0x55, 8 * KiB);
  fill(s, 6, 0x56);
  fill(s, 9, 0x59);
  await s.save(`${dir}/s.vhd`);
  return { a, b, c, s };
}

const blocks = (...bs: number[]) => ExtentSet.fromBlocks(bs, BS);

Deno.test("base planning: symmetric difference of the two chains' layers, keyed by UUID", async () => {
  await withTempDir(async (dir) => {
    const { a, b, c, s } = await sxmChains(dir);
    const src = await openChain(`${dir}/a.vhd`);
    const base = await openChain(`${dir}/s.vhd`);
    try {
      const plan = planBase(src, base);
      assert.deepEqual(plan.sourceOnly, [a.uuidString]);
      assert.deepEqual(plan.baseOnly, [s.uuidString]);
      assert.deepEqual(plan.shared, [b.uuidString, c.uuidString]);
      assert.ok(plan.changed.equals(blocks(2, 3, 5, 6, 9)), JSON.stringify(plan.changed));
      assert.ok(plan.unchanged.equals(plan.changed.complement(16 * MiB)));
      // The same chain as its own base: nothing can differ.
      const self = planBase(src, src);
      assert.equal(self.changed.bytes, 0);
      assert.equal(self.unchanged.bytes, 16 * MiB);
      // The base's parent as base: only the leaf's blocks.
      const mid = await openChain(`${dir}/b.vhd`);
      assert.ok(planBase(src, mid).changed.equals(blocks(2, 3)));
      // Reversed roles: the same set (the difference is symmetric).
      assert.ok(planBase(base, src).changed.equals(plan.changed));
      mid.close();
    } finally {
      src.close();
      base.close();
    }
  });
});

Deno.test("base planning with unrelated chains: everything allocated in either can differ", async () => {
  await withTempDir(async (dir) => {
    await sxmChains(dir);
    const lone = new VhdWriter({ size: 16 * MiB, blockSize: BS });
    lone.write(12 * BS, new Uint8Array(4096).fill(1));
    await lone.save(`${dir}/lone.vhd`);
    const src = await openChain(`${dir}/a.vhd`);
    const base = await openChain(`${dir}/lone.vhd`);
    const plan = planBase(src, base);
    assert.ok(plan.changed.equals(blocks(0, 1, 2, 3, 5, 9, 12)));
    assert.equal(plan.shared.length, 0);
    src.close();
    base.close();
  });
});

Deno.test("a source grown past the base's size copies the new tail in full", async () => {
  await withTempDir(async (dir) => {
    await sxmChains(dir, 20 * MiB);
    const src = await openChain(`${dir}/a.vhd`);
    const base = await openChain(`${dir}/s.vhd`);
    const plan = planBase(src, base);
    assert.ok(plan.changed.equals(blocks(2, 3, 5, 6, 9).union(ExtentSet.range(16 * MiB, 4 * MiB))));
    src.close();
    base.close();
  });
});

/** The logical content of a chain, by pyvhdi (leaf first). */
async function contentOf(dir: string, chain: string[], out: string): Promise<Uint8Array> {
  await pyvhdiRead(chain.map((n) => `${dir}/${n}`), `${dir}/${out}`);
  return await Deno.readFile(`${dir}/${out}`);
}

for (const prezeroed of [false, true]) {
  Deno.test(`-base copies only differing blocks and leaves the rest alone${prezeroed ? " (-prezeroed)" : ""}`, async () => {
    await withTempDir(async (dir) => {
      await sxmChains(dir);
      const want = await contentOf(dir, ["a.vhd", "b.vhd", "c.vhd"], "want.raw");
      const dest = await contentOf(dir, ["s.vhd", "b.vhd", "c.vhd"], "dest.raw");
      // Mark an unchanged block (4) and part of an unchanged allocated block (1) on the
      // destination: a copy that leaves unchanged blocks alone keeps the marks.
      dest.fill(0xee, 4 * BS, 5 * BS);
      dest.fill(0xee, 1 * BS + 100 * KiB, 1 * BS + 104 * KiB);
      await Deno.writeFile(`${dir}/dest.raw`, dest);
      const args = ["-src", `${dir}/a.vhd`, "-dest", `${dir}/dest.raw`, "-base", `${dir}/s.vhd`];
      const r = await runMain([...args, "-json", ...(prezeroed ? ["-prezeroed"] : [])]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stderr, "");
      const stats = JSON.parse(new TextDecoder().decode(r.stdout));
      assert.equal(stats.unchangedBytes, 11 * BS); // 16 blocks minus 2, 3, 5, 6, 9
      assert.equal(stats.base, `${dir}/s.vhd`);
      // Read only what is allocated in the source among the changed blocks (2, 3, 5, 9).
      assert.equal(stats.bytesRead, 4 * BS);
      const got = await Deno.readFile(`${dir}/dest.raw`);
      const expected = want.slice();
      expected.fill(0xee, 4 * BS, 5 * BS);
      expected.fill(0xee, 1 * BS + 100 * KiB, 1 * BS + 104 * KiB);
      assert.equal(got.length, expected.length);
      for (let blk = 0; blk < 16; blk++) {
        assert.deepEqual(
          got.subarray(blk * BS, (blk + 1) * BS),
          expected.subarray(blk * BS, (blk + 1) * BS),
          `block ${blk}`,
        );
      }
    });
  });
}

Deno.test("-base that is not a VHD: a warning and a full copy", async () => {
  await withTempDir(async (dir) => {
    await sxmChains(dir);
    await Deno.writeFile(`${dir}/base.raw`, new Uint8Array(16 * MiB).fill(7));
    await Deno.writeFile(`${dir}/dest.raw`, new Uint8Array(16 * MiB).fill(7));
    const want = await contentOf(dir, ["a.vhd", "b.vhd", "c.vhd"], "want.raw");
    const r = await runMain([
      "-src",
      `${dir}/a.vhd`,
      "-dest",
      `${dir}/dest.raw`,
      "-base",
      `${dir}/base.raw`,
      "-json",
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /warning: -base .*base\.raw is not a VHD chain .*doing a full copy/);
    assert.equal(JSON.parse(new TextDecoder().decode(r.stdout)).unchangedBytes, 0);
    assert.deepEqual(await Deno.readFile(`${dir}/dest.raw`), want);
  });
});

Deno.test("-base with a source that is not a VHD: a warning and a full copy", async () => {
  await withTempDir(async (dir) => {
    await sxmChains(dir);
    const data = new Uint8Array(16 * MiB).fill(3);
    await Deno.writeFile(`${dir}/src.raw`, data);
    const r = await runMain([
      "-src",
      `${dir}/src.raw`,
      "-dest",
      `${dir}/dest.raw`,
      "-base",
      `${dir}/s.vhd`,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /warning: -base .* ignored: the source .*src\.raw is not a VHD chain/);
    assert.ok(await sameBytes(`${dir}/dest.raw`, `${dir}/src.raw`));
  });
});

Deno.test("-base-vhd names the VHD behind devices on both sides", async () => {
  await withTempDir(async (dir) => {
    await sxmChains(dir);
    const want = await contentOf(dir, ["a.vhd", "b.vhd", "c.vhd"], "want.raw");
    const dest = await contentOf(dir, ["s.vhd", "b.vhd", "c.vhd"], "dest.raw");
    dest.fill(0xee, 4 * BS, 5 * BS); // unchanged: must survive
    await Deno.writeFile(`${dir}/dest.raw`, dest);
    // The source as a device serving the leaf's content, as tapdisk would.
    await Deno.writeFile(`${dir}/dev.img`, want);
    await withLoop(`${dir}/dev.img`, async (dev) => {
      const r = await runMain([
        "-src",
        dev,
        "-src-vhd",
        `${dir}/a.vhd`,
        "-dest",
        `${dir}/dest.raw`,
        "-base",
        "/dev/null",
        "-base-vhd",
        `${dir}/s.vhd`,
        "-json",
      ]);
      assert.equal(r.code, 0, r.stderr);
      const stats = JSON.parse(new TextDecoder().decode(r.stdout));
      assert.equal(stats.allocation, "vhd");
      assert.equal(stats.unchangedBytes, 11 * BS);
    });
    const expected = want.slice();
    expected.fill(0xee, 4 * BS, 5 * BS);
    assert.deepEqual(await Deno.readFile(`${dir}/dest.raw`), expected);
  });
});

Deno.test("-base-vhd alone is enough to plan a delta copy", async () => {
  await withTempDir(async (dir) => {
    await sxmChains(dir);
    const dest = await contentOf(dir, ["s.vhd", "b.vhd", "c.vhd"], "dest.raw");
    await Deno.writeFile(`${dir}/dest.raw`, dest);
    const r = await runMain([
      "-src",
      `${dir}/a.vhd`,
      "-dest",
      `${dir}/dest.raw`,
      "-base-vhd",
      `${dir}/s.vhd`,
      "-json",
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(new TextDecoder().decode(r.stdout)).unchangedBytes, 11 * BS);
    const src = await VhdDisk.open(`${dir}/a.vhd`);
    assert.deepEqual(await Deno.readFile(`${dir}/dest.raw`), await readAll(src));
    await src.close();
  });
});

Deno.test("a broken VHD base is an error, not a silent full copy; nothing is written", async () => {
  await withTempDir(async (dir) => {
    await sxmChains(dir);
    await Deno.remove(`${dir}/b.vhd`); // the base's parent is gone
    await new VhdWriter({ size: 16 * MiB, blockSize: BS }).save(`${dir}/lonely.vhd`);
    await Deno.writeFile(`${dir}/dest.raw`, new Uint8Array(MiB).fill(9));
    const r = await runMain([
      "-src",
      `${dir}/lonely.vhd`,
      "-dest",
      `${dir}/dest.raw`,
      "-base",
      `${dir}/s.vhd`,
    ]);
    assert.equal(r.code, 3, r.stderr);
    assert.match(
      r.stderr,
      /^sparse_dd: cannot open .*s\.vhd at offset 512: parent "b\.vhd" .*not found/,
    );
    assert.deepEqual(await Deno.readFile(`${dir}/dest.raw`), new Uint8Array(MiB).fill(9));
  });
});

/**
 * xapi's VDI.copy with a base: the destination holds the base `b` (64 MiB, 8 MiB of random data
 * at the start); the source is `b` with its first 4 MiB zeroed.
 */
async function overBase(dir: string): Promise<{ b: string; s: string; d: string }> {
  const data = new Prng(13).fill(new Uint8Array(8 * MiB));
  const b = `${dir}/b.img`;
  const s = `${dir}/s.img`;
  const d = `${dir}/d.img`;
  for (const path of [b, s, d]) {
    await Deno.writeFile(path, data);
    await Deno.truncate(path, 64 * MiB);
  }
  const f = await Deno.open(s, { write: true });
  await f.write(new Uint8Array(4 * MiB));
  f.close();
  return { b, s, d };
}

for (const devices of [true, false]) {
  for (const threads of ["1", "2"]) {
    Deno.test(`-prezeroed -base B that is not a VHD chain: zeroes over B's data are written (${devices ? "loop devices" : "files"}, -threads ${threads})`, async () => {
      await withTempDir(async (dir) => {
        const { b, s, d } = await overBase(dir);
        const run = async (src: string, dest: string, base: string) => {
          const r = await runMain([
            "-machine",
            "-src",
            src,
            "-dest",
            dest,
            "-size",
            String(64 * MiB),
            "-prezeroed",
            "-base",
            base,
            "-threads",
            threads,
          ]);
          // (With -machine the full-copy warning goes to syslog, not stderr.)
          assert.equal(r.code, 0, r.stderr);
          assert.ok(await sameBytes(src, dest), `${dest} differs from ${src}`);
        };
        if (!devices) return await run(s, d, b);
        await withLoop(s, (sd) => withLoop(d, (dd) => withLoop(b, (bd) => run(sd, dd, bd))));
      });
    });
  }
}

/**
 * A chain pair whose changed blocks hold zeroes over the base's data: root R (16 MiB, blocks 0,
 * 1); base leaf S: 1, 2, 5; source leaf A (20 MiB: grown past the base): zeroes written in 1
 * and 5, data in 3 and 18.
 */
async function zeroingChains(dir: string) {
  const fill = (w: VhdWriter, block: number, value: number) =>
    w.write(block * BS, new Uint8Array(64 * KiB).fill(value));
  const r = new VhdWriter({ size: 16 * MiB, blockSize: BS });
  fill(r, 0, 0x70);
  fill(r, 1, 0x71);
  await r.save(`${dir}/r.vhd`);
  const child = (size: number) =>
    new VhdWriter({
      size,
      blockSize: BS,
      parent: { uuid: r.uuid, name: "r.vhd", locators: blktapLocators("r.vhd") },
    });
  const s = child(16 * MiB);
  fill(s, 1, 0x51);
  fill(s, 2, 0x52);
  fill(s, 5, 0x55);
  await s.save(`${dir}/s.vhd`);
  const a = child(20 * MiB);
  fill(a, 1, 0);
  fill(a, 3, 0xa3);
  fill(a, 5, 0);
  fill(a, 18, 0xa8);
  await a.save(`${dir}/a.vhd`);
  // The two chains' contents, by hand (pyvhdi cannot read a leaf larger than its parent).
  const content = (size: number, blocks: Array<[number, number]>) => {
    const out = new Uint8Array(size);
    for (const [block, value] of blocks) out.fill(value, block * BS, block * BS + 64 * KiB);
    return out;
  };
  return {
    source: content(20 * MiB, [[0, 0x70], [3, 0xa3], [18, 0xa8]]),
    base: content(16 * MiB, [[0, 0x70], [1, 0x51], [2, 0x52], [5, 0x55]]),
  };
}

for (const size of [20 * MiB, 18 * MiB + 4096]) {
  Deno.test(`-prezeroed with a usable VHD base: changed blocks are written in full, zeroes included (-size ${size})`, async () => {
    await withTempDir(async (dir) => {
      const { source: want, base } = await zeroingChains(dir);
      // The destination holds the base, and garbage past the base's end.
      const dest = new Uint8Array(20 * MiB).fill(0xdd);
      dest.set(base);
      await Deno.writeFile(`${dir}/dest.raw`, dest);
      await withLoop(`${dir}/dest.raw`, async (dev) => {
        const r = await runMain([
          "-src",
          `${dir}/a.vhd`,
          "-dest",
          dev,
          "-size",
          String(size),
          "-prezeroed",
          "-base",
          `${dir}/s.vhd`,
          "-json",
        ]);
        assert.equal(r.code, 0, r.stderr);
        // Blocks 1, 2, 3, 5 differ, and everything past the base's 16 MiB.
        const stats = JSON.parse(new TextDecoder().decode(r.stdout));
        assert.equal(stats.unchangedBytes, 12 * BS);
      });
      const got = await Deno.readFile(`${dir}/dest.raw`);
      const expected = dest.slice();
      expected.set(want.subarray(0, size));
      for (let blk = 0; blk < 20; blk++) {
        assert.deepEqual(
          got.subarray(blk * BS, (blk + 1) * BS),
          expected.subarray(blk * BS, (blk + 1) * BS),
          `block ${blk}`,
        );
      }
    });
  });
}

Deno.test("-base with a destination that does not exist yet: it cannot hold the base, a full copy", async () => {
  await withTempDir(async (dir) => {
    const { source: want } = await zeroingChains(dir);
    const r = await runMain([
      "-src",
      `${dir}/a.vhd`,
      "-dest",
      `${dir}/new.raw`,
      "-base",
      `${dir}/s.vhd`,
      "-json",
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /new\.raw is new or empty, so it does not hold -base .*s\.vhd/);
    assert.equal(JSON.parse(new TextDecoder().decode(r.stdout)).unchangedBytes, 0);
    assert.deepEqual(await Deno.readFile(`${dir}/new.raw`), want);
  });
});
