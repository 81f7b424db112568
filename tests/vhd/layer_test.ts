import assert from "node:assert/strict";
import { DiskError } from "../../src/core/disk.ts";
import { ExtentSet } from "../../src/core/extent.ts";
import {
  FileAccess,
  isVhdFile,
  MemoryAccess,
  readMetadata,
  VhdLayer,
} from "../../src/vhd/layer.ts";
import { VhdError } from "../../src/vhd/format.ts";
import { withTempDir } from "../_support/helpers.ts";
import { Prng } from "../_support/prng.ts";
import { VhdWriter } from "../_support/vhd_writer.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

function sample(): VhdWriter {
  const w = new VhdWriter({ size: 6 * MiB, blockSize: MiB });
  w.write(0, new Uint8Array(8 * KiB).fill(0x11));
  w.write(3 * MiB + 4 * KiB, new Uint8Array(4 * KiB).fill(0x33));
  w.write(5 * MiB, new Uint8Array(MiB).fill(0x55));
  return w;
}

Deno.test("a layer reports its allocated blocks as byte ranges", async () => {
  const w = sample();
  const layer = await VhdLayer.open("s.vhd", {
    access: () => Promise.resolve(new MemoryAccess("s.vhd", w.build())),
  });
  assert.equal(layer.kind, "dynamic");
  assert.equal(layer.size, 6 * MiB);
  assert.equal(layer.blockSize, MiB);
  assert.deepEqual(layer.allocatedBlocks(), [0, 3, 5]);
  assert.ok(
    layer.allocation().equals(
      ExtentSet.of([{ start: 0, length: MiB }, { start: 3 * MiB, length: MiB }, {
        start: 5 * MiB,
        length: MiB,
      }]),
    ),
  );
  // Runs inside block 3: absent, present (4 KiB at +4 KiB), absent.
  const runs = await layer.runs(3 * MiB, 3 * MiB + 16 * KiB);
  assert.deepEqual(runs.map((r) => [r.start - 3 * MiB, r.length, r.fileOffset !== undefined]), [
    [0, 4 * KiB, false],
    [4 * KiB, 4 * KiB, true],
    [8 * KiB, 8 * KiB, false],
  ]);
  layer.close();
});

Deno.test("the allocation of a disk whose size is not a block multiple is clipped", async () => {
  const w = new VhdWriter({ size: 3 * MiB + 512, blockSize: 2 * MiB });
  w.write(3 * MiB, new Uint8Array(512).fill(1));
  const layer = await VhdLayer.open("c.vhd", {
    access: () => Promise.resolve(new MemoryAccess("c.vhd", w.build())),
  });
  assert.deepEqual(layer.allocation().toJSON(), [[2 * MiB, MiB + 512]]);
  layer.close();
});

Deno.test("a damaged trailing footer falls back to the copy at offset 0", async () => {
  const bytes = sample().build();
  bytes[bytes.length - 512 + 70] ^= 0xff; // breaks the trailing footer's checksum
  const meta = await readMetadata(new MemoryAccess("f.vhd", bytes));
  assert.equal(meta.footerOffset, 0);
  assert.equal(meta.footer.currentSize, 6 * MiB);
  assert.equal(meta.bat?.length, 6);
});

Deno.test("with both footers damaged the trailing footer's error is reported", async () => {
  const bytes = sample().build();
  bytes[bytes.length - 512 + 70] ^= 0xff;
  bytes[70] ^= 0xff;
  await assert.rejects(
    readMetadata(new MemoryAccess("f.vhd", bytes)),
    (e: unknown) =>
      e instanceof VhdError &&
      e.message.startsWith(
        `cannot open f.vhd at offset ${bytes.length - 512}: bad footer checksum`,
      ),
  );
});

Deno.test("a file cut in the middle of a block is refused, naming the BAT entry", async () => {
  const bytes = sample().build();
  const cut = bytes.slice(0, bytes.length - 512 - 100 * KiB);
  await assert.rejects(
    readMetadata(new MemoryAccess("t.vhd", cut)),
    VhdError,
    "BAT entry 5 points past end of file",
  );
  await assert.rejects(
    readMetadata(new MemoryAccess("t.vhd", bytes.slice(0, 1000))),
    VhdError,
    "dynamic header past end of file",
  );
  await assert.rejects(
    readMetadata(new MemoryAccess("t.vhd", bytes.slice(0, 100))),
    VhdError,
    "smaller than a 512-byte footer",
  );
});

Deno.test("a truncated fixed disk is refused", async () => {
  const w = new VhdWriter({ size: MiB, type: "fixed" });
  const bytes = w.build();
  const cut = new Uint8Array(MiB / 2 + 512);
  cut.set(bytes.subarray(bytes.length - 512), MiB / 2); // footer kept, data cut
  await assert.rejects(
    readMetadata(new MemoryAccess("fx.vhd", cut)),
    VhdError,
    "fixed VHD truncated",
  );
});

Deno.test("a missing file is a VhdError naming it", async () => {
  await assert.rejects(
    VhdLayer.open("/nonexistent/dir/x.vhd"),
    (e: unknown) =>
      e instanceof VhdError && e.message.startsWith("cannot open /nonexistent/dir/x.vhd"),
  );
});

Deno.test("file access serialises overlapping reads and counts bytes", async () => {
  await withTempDir(async (dir) => {
    const data = new Prng(3).fill(new Uint8Array(256 * KiB));
    await Deno.writeFile(`${dir}/f`, data);
    const f = await FileAccess.open(`${dir}/f`);
    assert.equal(f.size, data.length);
    const r = new Prng(4);
    const jobs = [];
    for (let i = 0; i < 64; i++) {
      const len = 1 + r.int(8 * KiB);
      const at = r.int(data.length - len);
      const buf = new Uint8Array(len);
      jobs.push(f.readAt(at, buf).then(() => assert.deepEqual(buf, data.subarray(at, at + len))));
    }
    await Promise.all(jobs);
    await assert.rejects(f.readAt(data.length - 10, new Uint8Array(20)), DiskError, "past end");
    assert.ok(f.bytesRead > 0);
    f.close();
    f.close();
    await assert.rejects(f.readAt(0, new Uint8Array(1)), DiskError, "closed");
  });
});

Deno.test("VHD detection looks at the footer and its copy, not at names", async () => {
  await withTempDir(async (dir) => {
    const bytes = sample().build();
    await Deno.writeFile(`${dir}/disk.raw`, bytes);
    assert.ok(await isVhdFile(`${dir}/disk.raw`));
    const noTail = bytes.slice(0, bytes.length - 512);
    await Deno.writeFile(`${dir}/cut.vhd`, noTail);
    assert.ok(await isVhdFile(`${dir}/cut.vhd`)); // the copy at 0 still says VHD
    await Deno.writeFile(`${dir}/zero.vhd`, new Uint8Array(4096));
    assert.ok(!(await isVhdFile(`${dir}/zero.vhd`)));
    await Deno.writeFile(`${dir}/tiny`, new Uint8Array(10));
    assert.ok(!(await isVhdFile(`${dir}/tiny`)));
    assert.ok(!(await isVhdFile(`${dir}/missing`)));
  });
});

Deno.test("a small bitmap cache still reads every block right", async () => {
  const r = new Prng(8);
  const w = new VhdWriter({ size: 64 * KiB, blockSize: 4 * KiB });
  for (let i = 0; i < 60; i++) w.write(r.int(128) * 512, r.fill(new Uint8Array(512)));
  const layer = await VhdLayer.open("b.vhd", {
    access: () => Promise.resolve(new MemoryAccess("b.vhd", w.build())),
    bitmapCache: 2,
  });
  for (let pass = 0; pass < 2; pass++) {
    for (let off = 0; off < layer.size; off += 512) {
      const runs = await layer.runs(off, off + 512);
      assert.equal(runs.length, 1);
      assert.equal(runs[0].fileOffset !== undefined, w.sectorAt(off) !== undefined, `at ${off}`);
    }
  }
  layer.close();
});

/** `sample()` with BAT entry `i` set to `sector` (the BAT is at 1536, big-endian u32s). */
function withBatEntry(edits: Array<[number, number | "same-as-0"]>): Uint8Array {
  const b = sample().build();
  const view = new DataView(b.buffer);
  for (const [i, sector] of edits) {
    view.setUint32(1536 + i * 4, sector === "same-as-0" ? view.getUint32(1536) : sector, false);
  }
  return b;
}

Deno.test("BAT entries pointing into the file's own metadata, or sharing a block, are refused", async () => {
  const cases: Array<[string, Array<[number, number | "same-as-0"]>, RegExp]> = [
    ["sector 0 (the footer copy)", [[1, 0]], /BAT entry 1 points into the file's own metadata/],
    ["inside the header", [[1, 2]], /BAT entry 1 points into .*overlaps \[512, 1536\)/],
    ["inside the BAT", [[1, 3]], /BAT entry 1 points into .*overlaps \[1536, 1560\)/],
    ["the same block twice", [[1, "same-as-0"]], /BAT entries 0 and 1 share file space/],
    ["overlapping blocks", [[1, 1536 / 512 + 1 + 8]], /BAT entries \d and \d share file space/],
  ];
  for (const [name, edits, why] of cases) {
    const bytes = withBatEntry(edits);
    await assert.rejects(
      readMetadata(new MemoryAccess("bad.vhd", bytes)),
      (err: unknown) =>
        err instanceof VhdError && why.test(err.message) || assert.fail(`${name}: ${err}`),
      name,
    );
  }
  // The untouched file is fine.
  await readMetadata(new MemoryAccess("good.vhd", sample().build()));
});

Deno.test("a VHD disabled by blktap (v_poison) is refused, even with an intact footer copy", async () => {
  const poison = new TextEncoder().encode("v_poison");
  const tailOnly = sample().build();
  tailOnly.set(poison, tailOnly.length - 512);
  const both = tailOnly.slice();
  both.set(poison, 0);
  for (const [name, bytes] of [["tail only", tailOnly], ["both", both]] as const) {
    await assert.rejects(
      readMetadata(new MemoryAccess("off.vhd", bytes)),
      /VHD is marked disabled \(footer cookie "v_poison", left by an interrupted vhd-util resize\)/,
      name,
    );
  }
});
