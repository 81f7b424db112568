import assert from "node:assert/strict";
import { openChain } from "../../src/vhd/chain.ts";
import { ExtentSet } from "../../src/core/extent.ts";
import { VhdError } from "../../src/vhd/format.ts";
import { VhdDisk } from "../../src/vhd/vhd_disk.ts";
import { runMain, sameBytes, withTempDir } from "../_support/helpers.ts";
import { Prng } from "../_support/prng.ts";
import { pyvhdiRead, qemuMap, readAll } from "../_support/vhd_tools.ts";
import { blktapLocators, type LocatorSpec, VhdWriter } from "../_support/vhd_writer.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

/**
 * Writes a chain of `depth` layers into `dir` (root first in the returned list) with random
 * 4 KiB-aligned writes. 4 KiB alignment keeps every bitmap byte all-set or all-clear: libvhdi
 * 20210425 misreads clear bits that follow a set bit in the same byte (it returns the child's
 * zeroes instead of the parent's data), so pyvhdi is only a valid oracle for such bitmaps.
 */
async function writeChain(
  dir: string,
  depth: number,
  blockSize: number,
  seed: number,
  size = 24 * MiB,
): Promise<{ paths: string[]; writers: VhdWriter[] }> {
  const r = new Prng(seed);
  const writers: VhdWriter[] = [];
  const paths: string[] = [];
  for (let i = 0; i < depth; i++) {
    const name = `layer${i}.vhd`;
    const parent = writers[i - 1];
    const w = new VhdWriter({
      size,
      blockSize,
      dataAlign: i % 2 ? 4096 : 512, // blktap and qemu placements
      parent: parent
        ? {
          uuid: parent.uuid,
          name: `layer${i - 1}.vhd`,
          locators: blktapLocators(`layer${i - 1}.vhd`),
        }
        : undefined,
    });
    for (let k = 0; k < 12; k++) {
      const len = (1 + r.int(16)) * 4 * KiB;
      const at = r.int((size - len) / (4 * KiB)) * 4 * KiB;
      w.write(at, r.fill(new Uint8Array(len)));
    }
    await w.save(`${dir}/${name}`);
    writers.push(w);
    paths.push(`${dir}/${name}`);
  }
  return { paths, writers };
}

for (
  const [depth, blockSize] of [[2, 2 * MiB], [3, 512 * KiB], [4, 4 * MiB], [4, 64 * KiB]] as const
) {
  Deno.test(`a ${depth}-layer chain with ${blockSize / KiB} KiB blocks reads as pyvhdi reads it`, async () => {
    await withTempDir(async (dir) => {
      const { paths } = await writeChain(dir, depth, blockSize, depth * 1000 + blockSize);
      const leafFirst = [...paths].reverse();
      const disk = await VhdDisk.open(leafFirst[0]);
      try {
        assert.deepEqual(disk.chain.layers.map((l) => l.path), leafFirst);
        await Deno.writeFile(`${dir}/ours.raw`, await readAll(disk));
        await pyvhdiRead(leafFirst, `${dir}/pyvhdi.raw`);
        assert.ok(await sameBytes(`${dir}/ours.raw`, `${dir}/pyvhdi.raw`), "content differs");

        // Allocation: the union of every layer's own BAT, which qemu reports per file (it
        // ignores parents, so each map is one layer).
        let expected = ExtentSet.empty();
        for (const p of paths) expected = expected.union(await qemuMap(p));
        assert.ok(
          (await disk.allocation())!.equals(expected.clip(disk.size)),
          `allocation ${JSON.stringify(await disk.allocation())} != ${JSON.stringify(expected)}`,
        );
      } finally {
        await disk.close();
      }
    });
  });
}

Deno.test("sparse_dd converts a 4-layer chain to raw, as pyvhdi reads it", async () => {
  await withTempDir(async (dir) => {
    const { paths } = await writeChain(dir, 4, 2 * MiB, 77);
    const leafFirst = [...paths].reverse();
    await pyvhdiRead(leafFirst, `${dir}/pyvhdi.raw`);
    const r = await runMain(["-src", leafFirst[0], "-dest", `${dir}/out.raw`, "-json"]);
    assert.equal(r.code, 0, r.stderr);
    const stats = JSON.parse(new TextDecoder().decode(r.stdout));
    assert.equal(stats.allocation, "vhd");
    assert.ok(await sameBytes(`${dir}/out.raw`, `${dir}/pyvhdi.raw`));
  });
});

async function twoLayers(
  dir: string,
  childDir: string,
  locators: LocatorSpec[],
  name = "",
): Promise<{ base: VhdWriter; child: VhdWriter }> {
  const base = new VhdWriter({ size: 4 * MiB });
  base.write(0, new Uint8Array(4096).fill(0xb0));
  await base.save(`${dir}/base.vhd`);
  const child = new VhdWriter({ size: 4 * MiB, parent: { uuid: base.uuid, name, locators } });
  child.write(4096, new Uint8Array(4096).fill(0xc1));
  await Deno.mkdir(childDir, { recursive: true });
  await child.save(`${childDir}/child.vhd`);
  return { base, child };
}

async function firstBytes(path: string): Promise<number[]> {
  const disk = await VhdDisk.open(path);
  try {
    const buf = new Uint8Array(8192);
    await disk.read(0, buf);
    return [buf[0], buf[4096]];
  } finally {
    await disk.close();
  }
}

Deno.test("parents are found through MacX, W2ku and W2ru locators and the header name", async () => {
  await withTempDir(async (dir) => {
    // Relative MacX to another directory.
    await twoLayers(dir, `${dir}/sub`, [{ platform: "MacX", path: "../base.vhd" }]);
    assert.deepEqual(await firstBytes(`${dir}/sub/child.vhd`), [0xb0, 0xc1]);
    // Absolute W2ku only.
    await twoLayers(dir, `${dir}/w2ku`, [{ platform: "W2ku", path: `${dir}/base.vhd` }]);
    assert.deepEqual(await firstBytes(`${dir}/w2ku/child.vhd`), [0xb0, 0xc1]);
    // Relative W2ru with backslashes.
    await twoLayers(dir, `${dir}/w2ru`, [{ platform: "W2ru", path: "..\\base.vhd" }]);
    assert.deepEqual(await firstBytes(`${dir}/w2ru/child.vhd`), [0xb0, 0xc1]);
    // No locators at all: the header's parent name beside the child.
    await twoLayers(dir, dir, [], "base.vhd");
    assert.deepEqual(await firstBytes(`${dir}/child.vhd`), [0xb0, 0xc1]);
  });
});

Deno.test("a relative locator wins over a stale absolute one pointing at another disk", async () => {
  await withTempDir(async (dir) => {
    // A copy of the chain moved elsewhere: the absolute path still names the old parent, which
    // exists but is a different disk (another UUID); the relative one finds the right parent.
    const other = new VhdWriter({ size: 4 * MiB });
    await Deno.mkdir(`${dir}/old`);
    await other.save(`${dir}/old/base.vhd`);
    await twoLayers(dir, dir, [
      { platform: "W2ku", path: `${dir}/old/base.vhd` },
      { platform: "MacX", path: "./base.vhd" },
    ]);
    assert.deepEqual(await firstBytes(`${dir}/child.vhd`), [0xb0, 0xc1]);
  });
});

Deno.test("a child reached through a symlink finds its parent beside the real file", async () => {
  await withTempDir(async (dir) => {
    await twoLayers(dir, `${dir}/real`, [{ platform: "MacX", path: "./base.vhd" }]);
    await Deno.rename(`${dir}/base.vhd`, `${dir}/real/base.vhd`);
    await Deno.mkdir(`${dir}/links`);
    await Deno.symlink(`${dir}/real/child.vhd`, `${dir}/links/child.vhd`);
    assert.deepEqual(await firstBytes(`${dir}/links/child.vhd`), [0xb0, 0xc1]);
  });
});

Deno.test("a missing parent is a clear error listing where it was looked for", async () => {
  await withTempDir(async (dir) => {
    await twoLayers(dir, `${dir}/sub`, blktapLocators("gone.vhd"), "gone.vhd");
    await assert.rejects(openChain(`${dir}/sub/child.vhd`), (e: unknown) => {
      assert.ok(e instanceof VhdError);
      assert.match(
        e.message,
        new RegExp(
          `^cannot open ${dir}/sub/child\\.vhd at offset 512: parent "gone\\.vhd" \\(uuid [0-9a-f-]{36}\\) not found; tried ${dir}/sub/gone\\.vhd$`,
        ),
      );
      return true;
    });
  });
});

Deno.test("a parent whose UUID differs from the child's header is refused", async () => {
  await withTempDir(async (dir) => {
    const { base } = await twoLayers(dir, dir, blktapLocators("base.vhd"));
    const impostor = new VhdWriter({ size: 4 * MiB });
    await impostor.save(`${dir}/base.vhd`);
    await assert.rejects(
      openChain(`${dir}/child.vhd`),
      VhdError,
      `UUID mismatch: the header wants ${base.uuidString}, but ${dir}/base.vhd has ${impostor.uuidString}`,
    );
  });
});

Deno.test("parent loops are detected, including a disk that is its own parent", async () => {
  await withTempDir(async (dir) => {
    const a = new VhdWriter({ size: MiB, uuid: "aaaaaaaa-0000-0000-0000-000000000001" });
    const b = new VhdWriter({ size: MiB, uuid: "bbbbbbbb-0000-0000-0000-000000000002" });
    const aa = new VhdWriter({
      size: MiB,
      uuid: a.uuid,
      parent: { uuid: b.uuid, locators: blktapLocators("b.vhd") },
    });
    const bb = new VhdWriter({
      size: MiB,
      uuid: b.uuid,
      parent: { uuid: a.uuid, locators: blktapLocators("a.vhd") },
    });
    await aa.save(`${dir}/a.vhd`);
    await bb.save(`${dir}/b.vhd`);
    await assert.rejects(openChain(`${dir}/a.vhd`), VhdError, "VHD chain loop");
    const self = new VhdWriter({
      size: MiB,
      uuid: "cccccccc-0000-0000-0000-000000000003",
      parent: { uuid: "cccccccc-0000-0000-0000-000000000003", locators: blktapLocators("s.vhd") },
    });
    await self.save(`${dir}/s.vhd`);
    await assert.rejects(openChain(`${dir}/s.vhd`), VhdError, "VHD chain loop");
    // Two files with the same UUID (a copied file) also make a loop.
    const c1 = new VhdWriter({
      size: MiB,
      uuid: "dddddddd-0000-0000-0000-000000000004",
      parent: { uuid: "dddddddd-0000-0000-0000-000000000004", locators: blktapLocators("c2.vhd") },
    });
    await c1.save(`${dir}/c1.vhd`);
    await Deno.copyFile(`${dir}/c1.vhd`, `${dir}/c2.vhd`);
    await assert.rejects(openChain(`${dir}/c1.vhd`), VhdError, "VHD chain loop");
  });
});

Deno.test("chains deeper than the limit, and raw parents, are refused", async () => {
  await withTempDir(async (dir) => {
    const { paths } = await writeChain(dir, 4, MiB, 5, 4 * MiB);
    await assert.rejects(openChain(paths[3], { maxDepth: 3 }), VhdError, "deeper than 3");
    const chain = await openChain(paths[3], { maxDepth: 4 });
    assert.equal(chain.layers.length, 4);
    chain.close();
    const raw = new VhdWriter({
      size: MiB,
      parent: { uuid: new Uint8Array(16), locators: blktapLocators("raw.img") },
    });
    await raw.save(`${dir}/r.vhd`);
    await assert.rejects(openChain(`${dir}/r.vhd`), VhdError, "raw parent");
  });
});

Deno.test("a broken parent fails the chain with the parent's own error", async () => {
  await withTempDir(async (dir) => {
    await twoLayers(dir, dir, blktapLocators("base.vhd"));
    const bytes = await Deno.readFile(`${dir}/base.vhd`);
    bytes[512] = 0x58; // header cookie
    await Deno.writeFile(`${dir}/base.vhd`, bytes);
    await assert.rejects(
      openChain(`${dir}/child.vhd`),
      VhdError,
      `cannot open ${dir}/base.vhd at offset 512: bad dynamic header cookie`,
    );
  });
});
