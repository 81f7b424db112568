import assert from "node:assert/strict";
import { copy } from "../../src/copy/copier.ts";
import { DiskError } from "../../src/core/disk.ts";
import { ExtentSet } from "../../src/core/extent.ts";
import { FileDisk } from "../../src/file/file_disk.ts";
import { MemoryAccess, type RandomAccess } from "../../src/vhd/layer.ts";
import { VhdDisk } from "../../src/vhd/vhd_disk.ts";
import { formatByName } from "../../src/endpoint/endpoint.ts";
import { runMain, sameBytes, sh, withLoop, withTempDir } from "../_support/helpers.ts";
import { Prng } from "../_support/prng.ts";
import {
  qemuCreateVhd,
  qemuIo,
  qemuMap,
  qemuVirtualSize,
  readAll,
  sameSparseFiles,
} from "../_support/vhd_tools.ts";
import { blktapLocators, fixChecksum, VhdWriter } from "../_support/vhd_writer.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** Writes made with qemu-io into every qemu-made image: odd sizes, block edges, the last sector. */
function writesFor(size: number): string[] {
  const last = Math.floor(size / 512) * 512 - 512;
  return [
    "write -P 0x11 0 1M",
    "write -P 0x22 2047k 2k", // across the first block boundary
    "write -P 0x33 5M 512",
    "write -P 0x00 9M 64k", // zeroes written: allocated but zero
    `write -P 0x44 ${17 * MiB + 4096} 12k`,
    `write -P 0x55 ${last} 512`,
  ];
}

for (const subformat of ["dynamic", "fixed"] as const) {
  for (const forceSize of [false, true]) {
    Deno.test(`qemu ${subformat} VHD (force_size ${forceSize ? "on" : "off"}) reads as qemu-img convert does`, async () => {
      await withTempDir(async (dir) => {
        const vhd = `${dir}/q.vhd`;
        await qemuCreateVhd(
          vhd,
          "30M",
          `subformat=${subformat},force_size=${forceSize ? "on" : "off"}`,
        );
        const size = await qemuVirtualSize(vhd);
        // force_size off rounds up to CHS geometry (qemu writes creator "qemu"); on keeps 30M.
        if (forceSize) assert.equal(size, 30 * MiB);
        else assert.notEqual(size, 30 * MiB);
        await qemuIo(vhd, writesFor(size));
        await sh("qemu-img", ["convert", "-f", "vpc", "-O", "raw", vhd, `${dir}/qemu.raw`]);

        const disk = await VhdDisk.open(vhd);
        try {
          assert.equal(disk.size, size);
          assert.equal(disk.chain.leaf.kind, subformat);
          await Deno.writeFile(`${dir}/ours.raw`, await readAll(disk));
          assert.ok(await sameBytes(`${dir}/ours.raw`, `${dir}/qemu.raw`));
          const alloc = (await disk.allocation())!;
          if (subformat === "dynamic") {
            assert.ok(alloc.equals((await qemuMap(vhd)).clip(size)), JSON.stringify(alloc));
            assert.ok(alloc.bytes < size / 2);
          } else {
            assert.ok(alloc.equals(ExtentSet.range(0, size)));
          }
        } finally {
          await disk.close();
        }

        // The same through the program: the VHD is detected by its footer cookie.
        const r = await runMain(["-src", vhd, "-dest", `${dir}/out.raw`, "-json"]);
        assert.equal(r.code, 0, r.stderr);
        assert.equal(JSON.parse(new TextDecoder().decode(r.stdout)).allocation, "vhd");
        assert.ok(await sameBytes(`${dir}/out.raw`, `${dir}/qemu.raw`));
      });
    });
  }
}

Deno.test("-src-format raw copies a VHD file's own bytes; vhd forces the VHD reading", async () => {
  await withTempDir(async (dir) => {
    const vhd = `${dir}/q.vhd`;
    await sh("qemu-img", ["create", "-q", "-f", "vpc", vhd, "8M"]);
    await qemuIo(vhd, ["write -P 0x61 1M 4k"]);
    const fileSize = (await Deno.stat(vhd)).size;
    let r = await runMain(["-src", vhd, "-dest", `${dir}/bytes`, "-src-format", "raw"]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(await sameBytes(`${dir}/bytes`, vhd));
    assert.equal((await Deno.stat(`${dir}/bytes`)).size, fileSize);

    // A VHD under a name that says nothing is raw unless forced: content never picks the format.
    await Deno.copyFile(vhd, `${dir}/disk.img`);
    assert.equal(formatByName(`${dir}/disk.img`, "auto"), "raw");
    assert.equal(formatByName(`${dir}/disk.img`, "vhd"), "vhd");
    assert.equal(formatByName(`${dir}/q.vhd`, "raw"), "raw");
    assert.equal(formatByName(`${dir}/Q.VHD`, "auto"), "vhd");
    await sh("qemu-img", ["convert", "-f", "vpc", "-O", "raw", vhd, `${dir}/qemu.raw`]);
    r = await runMain(["-src", `${dir}/disk.img`, "-dest", `${dir}/out`, "-src-format", "vhd"]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(await sameBytes(`${dir}/out`, `${dir}/qemu.raw`));

    r = await runMain(["-src", vhd, "-dest", `${dir}/x`, "-src-format", "qcow2"]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /invalid -src-format value 'qcow2'/);
  });
});

Deno.test("a VHD disk is read-only and refuses reads outside its size", async () => {
  await withTempDir(async (dir) => {
    await new VhdWriter({ size: MiB }).save(`${dir}/a.vhd`);
    const disk = await VhdDisk.open(`${dir}/a.vhd`);
    await assert.rejects(disk.write(0, new Uint8Array(512)), DiskError, "read-only");
    await assert.rejects(disk.read(MiB - 100, new Uint8Array(512)), DiskError, "outside");
    const buf = new Uint8Array(512).fill(9);
    await disk.read(MiB - 512, buf);
    assert.deepEqual(buf, new Uint8Array(512));
    await disk.close();
    await assert.rejects(disk.read(0, buf), DiskError, "closed");
  });
});

Deno.test("-src-vhd gives the allocation of a device from the VHD behind it", async () => {
  await withTempDir(async (dir) => {
    const vhd = `${dir}/q.vhd`;
    await sh("qemu-img", ["create", "-q", "-f", "vpc", "-o", "force_size=on", vhd, "32M"]);
    await qemuIo(vhd, ["write -P 0x71 4M 8k", "write -P 0x72 20M 1M"]);
    await sh("qemu-img", ["convert", "-f", "vpc", "-O", "raw", vhd, `${dir}/dev.raw`]);
    // Make the device's raw image fully allocated, so only the VHD can say what to read.
    await sh("dd", [
      `if=${dir}/dev.raw`,
      `of=${dir}/dev.img`,
      "bs=1M",
      "conv=notrunc",
      "status=none",
    ]);
    await withLoop(`${dir}/dev.img`, async (dev) => {
      const r = await runMain([
        "-src",
        dev,
        "-src-vhd",
        vhd,
        "-dest",
        `${dir}/out.raw`,
        "-json",
      ]);
      assert.equal(r.code, 0, r.stderr);
      const stats = JSON.parse(new TextDecoder().decode(r.stdout));
      assert.equal(stats.allocation, "vhd");
      assert.equal(stats.allocatedBytes, 4 * MiB); // blocks 2 and 10, of 2 MiB each
      assert.ok(await sameBytes(`${dir}/out.raw`, `${dir}/dev.raw`));

      // The VHD of another disk (another size) is refused before anything is written.
      const other = `${dir}/other.vhd`;
      await sh("qemu-img", ["create", "-q", "-f", "vpc", "-o", "force_size=on", other, "16M"]);
      const bad = await runMain(["-src", dev, "-src-vhd", other, "-dest", `${dir}/never.raw`]);
      assert.equal(bad.code, 3);
      assert.match(bad.stderr, /-src-vhd .*other\.vhd describes a disk of 16777216 bytes/);
      await assert.rejects(Deno.stat(`${dir}/never.raw`), Deno.errors.NotFound);
    });
  });
});

// ---- broken VHDs through the program: one clear line, exit 3, nothing written ---------------

interface Broken {
  name: string;
  /** Builds the damaged files in `dir`; returns the -src and extra flags. */
  make(dir: string): Promise<{ src: string; flags?: string[] }>;
  message: RegExp;
}

function put32(b: Uint8Array, off: number, v: number): void {
  new DataView(b.buffer, b.byteOffset).setUint32(off, v >>> 0);
}

/** A 4 MiB dynamic VHD with 1 MiB blocks, damaged by `damage` (checksums fixed after). */
async function damaged(
  path: string,
  damage: (b: Uint8Array) => void,
  fix = true,
): Promise<void> {
  const w = new VhdWriter({ size: 4 * MiB, blockSize: MiB });
  w.write(0, new Uint8Array(MiB).fill(1));
  w.write(3 * MiB, new Uint8Array(4096).fill(2));
  const b = w.build();
  damage(b);
  if (fix) {
    fixChecksum(b.subarray(512, 1536), 36);
    fixChecksum(b.subarray(0, 512), 64);
    b.set(b.subarray(0, 512), b.length - 512);
  }
  await Deno.writeFile(path, b);
}

const BROKEN: Broken[] = [
  {
    name: "bad footer cookie (forced VHD)",
    make: async (dir) => {
      await damaged(`${dir}/x.vhd`, (b) => b.set(new TextEncoder().encode("garbage!"), 0));
      return { src: `${dir}/x.vhd`, flags: ["-src-format", "vhd"] };
    },
    message: /at offset \d+: not a VHD: bad footer cookie "garbage!"/,
  },
  {
    name: "bad dynamic header cookie",
    make: async (dir) => {
      await damaged(`${dir}/x.vhd`, (b) => b.set(new TextEncoder().encode("cxsparsX"), 512));
      return { src: `${dir}/x.vhd` };
    },
    message: /at offset 512: bad dynamic header cookie "cxsparsX"/,
  },
  {
    name: "bad footer checksum",
    make: async (dir) => {
      await damaged(`${dir}/x.vhd`, (b) => {
        b[b.length - 512 + 40] ^= 1;
        b[40] ^= 1;
      }, false);
      return { src: `${dir}/x.vhd` };
    },
    message: /at offset \d+: bad footer checksum/,
  },
  {
    name: "bad header checksum",
    make: async (dir) => {
      await damaged(`${dir}/x.vhd`, (b) => b[512 + 600]++, false);
      return { src: `${dir}/x.vhd` };
    },
    message: /at offset 512: bad dynamic header checksum/,
  },
  {
    name: "BAT past end of file",
    make: async (dir) => {
      await damaged(`${dir}/x.vhd`, (b) => put32(b, 512 + 28, 1 << 24));
      return { src: `${dir}/x.vhd` };
    },
    message: /at offset 1536: BAT past end of file: 16777216 entries/,
  },
  {
    name: "block size not a power of two",
    make: async (dir) => {
      await damaged(`${dir}/x.vhd`, (b) => put32(b, 512 + 32, 3 * MiB));
      return { src: `${dir}/x.vhd` };
    },
    message: /at offset 544: block size 3145728 is not a power of two/,
  },
  {
    name: "absurd max table entries",
    make: async (dir) => {
      await damaged(`${dir}/x.vhd`, (b) => put32(b, 512 + 28, 0xfffffff0));
      return { src: `${dir}/x.vhd` };
    },
    message: /at offset 540: absurd max_table_entries 4294967280/,
  },
  {
    name: "truncated file",
    make: async (dir) => {
      await damaged(`${dir}/x.vhd`, () => {});
      const b = await Deno.readFile(`${dir}/x.vhd`);
      await Deno.writeFile(`${dir}/x.vhd`, b.subarray(0, b.length - 600 * KiB));
      return { src: `${dir}/x.vhd` };
    },
    message: /at offset 1548: BAT entry 3 points past end of file/,
  },
  {
    name: "missing parent",
    make: async (dir) => {
      const w = new VhdWriter({
        size: MiB,
        parent: {
          uuid: "12345678-1234-1234-1234-123456789abc",
          name: "gone.vhd",
          locators: blktapLocators("gone.vhd"),
        },
      });
      await w.save(`${dir}/x.vhd`);
      return { src: `${dir}/x.vhd` };
    },
    message:
      /at offset 512: parent "gone\.vhd" \(uuid 12345678-1234-1234-1234-123456789abc\) not found; tried .*gone\.vhd/,
  },
  {
    name: "parent loop",
    make: async (dir) => {
      const a = "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa";
      const b = "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb";
      await new VhdWriter({
        size: MiB,
        uuid: a,
        parent: { uuid: b, locators: blktapLocators("b.vhd") },
      })
        .save(`${dir}/a.vhd`);
      await new VhdWriter({
        size: MiB,
        uuid: b,
        parent: { uuid: a, locators: blktapLocators("a.vhd") },
      })
        .save(`${dir}/b.vhd`);
      return { src: `${dir}/a.vhd` };
    },
    message: /at offset 512: VHD chain loop: parent .*a\.vhd/,
  },
];

Deno.test("broken VHDs give one clear line, exit code 3, and leave the destination alone", async (t) => {
  for (const c of BROKEN) {
    await t.step(c.name, async () => {
      await withTempDir(async (dir) => {
        const { src, flags = [] } = await c.make(dir);
        const before = new Prng(1).fill(new Uint8Array(64 * KiB));
        await Deno.writeFile(`${dir}/dest.raw`, before);
        const r = await runMain(["-src", src, "-dest", `${dir}/dest.raw`, ...flags]);
        assert.equal(r.code, 3, r.stderr);
        const lines = r.stderr.trimEnd().split("\n");
        assert.equal(lines.length, 1, r.stderr);
        assert.match(lines[0], /^sparse_dd: cannot open \S+\.vhd at offset \d+: /);
        assert.match(lines[0], c.message);
        assert.deepEqual(await Deno.readFile(`${dir}/dest.raw`), before);
        // And a new destination is not even created.
        const r2 = await runMain(["-src", src, "-dest", `${dir}/new.raw`, ...flags]);
        assert.equal(r2.code, 3);
        await assert.rejects(Deno.stat(`${dir}/new.raw`), Deno.errors.NotFound);
      });
    });
  }
});

// ---- the point of it all: a big sparse VHD costs only its allocated blocks ---------------------

Deno.test("a 4 GiB dynamic VHD with 10% of blocks written copies reading under 11% of 4 GiB", async () => {
  await withTempDir(async (dir) => {
    const vhd = `${dir}/big.vhd`;
    await sh("qemu-img", ["create", "-q", "-f", "vpc", "-o", "force_size=on", vhd, "4G"]);
    const blocks = (4 * GiB) / (2 * MiB);
    const r = new Prng(4096);
    const chosen = new Set<number>();
    while (chosen.size < Math.round(blocks / 10)) chosen.add(r.int(blocks));
    await qemuIo(vhd, [...chosen].map((b) => `write -P ${1 + (b % 250)} ${b * 2 * MiB} 2M`));

    // In-process, counting every byte read from the VHD file: metadata, bitmaps and data.
    const src = await VhdDisk.open(vhd);
    const dst = await FileDisk.open(`${dir}/out.raw`, { write: true, createSize: src.size });
    try {
      const stats = await copy(src, dst, {
        size: src.size,
        allocation: await src.allocation(),
        prezeroed: true,
      });
      assert.equal(stats.bytesRead, chosen.size * 2 * MiB);
      const fraction = src.bytesRead / (4 * GiB);
      assert.ok(fraction <= 0.11, `read ${src.bytesRead} bytes (${(fraction * 100).toFixed(2)}%)`);
      assert.ok(fraction >= 0.09, "the copy must still read the written blocks");
    } finally {
      await src.close();
      await dst.close();
    }
    await sh("qemu-img", ["convert", "-f", "vpc", "-O", "raw", vhd, `${dir}/qemu.raw`]);
    assert.ok(await sameSparseFiles(`${dir}/out.raw`, `${dir}/qemu.raw`));
    await Deno.remove(`${dir}/out.raw`);

    // Through the program, its stats say the same.
    const run = await runMain(["-src", vhd, "-dest", `${dir}/out2.raw`, "-json"]);
    assert.equal(run.code, 0, run.stderr);
    const stats = JSON.parse(new TextDecoder().decode(run.stdout));
    assert.equal(stats.allocation, "vhd");
    assert.equal(stats.bytesRead, chosen.size * 2 * MiB);
    assert.ok(stats.bytesRead <= 0.11 * 4 * GiB);
    assert.ok(await sameSparseFiles(`${dir}/out2.raw`, `${dir}/qemu.raw`));
  });
});

Deno.test("stored runs are read in one piece each, not sector by sector", async () => {
  const w = new VhdWriter({ size: 8 * MiB, blockSize: 2 * MiB });
  w.write(0, new Uint8Array(2 * MiB).fill(1)); // block 0: fully present
  for (let s = 0; s < 64; s += 16) w.write(2 * MiB + s * 512, new Uint8Array(8 * 512).fill(2));
  const bytes = w.build();
  const calls: Array<[number, number]> = [];
  const access = new MemoryAccess("c.vhd", bytes);
  const counting: RandomAccess = {
    name: "c.vhd",
    size: bytes.length,
    get bytesRead() {
      return access.bytesRead;
    },
    readAt(offset, buf) {
      calls.push([offset, buf.length]);
      return access.readAt(offset, buf);
    },
    close() {},
  };
  const disk = await VhdDisk.open("c.vhd", {
    fs: { open: () => Promise.resolve(counting), realPath: (p) => Promise.resolve(p) },
  });
  calls.length = 0;
  await disk.read(0, new Uint8Array(2 * MiB));
  assert.deepEqual(calls.map(([, len]) => len), [512, 2 * MiB]); // bitmap, then all the data
  calls.length = 0;
  await disk.read(2 * MiB, new Uint8Array(64 * 512));
  // Block 1: bitmap, then four runs of 8 present sectors (absent runs read as zero, no I/O).
  assert.deepEqual(calls.map(([, len]) => len), [512, 4096, 4096, 4096, 4096]);
  calls.length = 0;
  await disk.read(4 * MiB, new Uint8Array(4 * MiB)); // unallocated: no I/O at all
  assert.equal(calls.length, 0);
  await disk.close();
});
