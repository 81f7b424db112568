import assert from "node:assert/strict";
import { openChain } from "../../src/vhd/chain.ts";
import { MemoryAccess, readMetadata } from "../../src/vhd/layer.ts";
import {
  BAT_UNUSED,
  bitmapBytesFor,
  bitmapHas,
  bitmapRuns,
  checkLayout,
  decodeLocator,
  DiskType,
  hasVhdCookie,
  MAX_TABLE_ENTRIES,
  parentCandidates,
  type ParentLocator,
  parseBat,
  parseFooter,
  parseHeader,
  vhdChecksum,
  VhdError,
} from "../../src/vhd/format.ts";
import { VhdDisk } from "../../src/vhd/vhd_disk.ts";
import { Prng } from "../_support/prng.ts";
import { memFs } from "../_support/vhd_tools.ts";
import { checksumOf, fixChecksum, VhdWriter } from "../_support/vhd_writer.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

function dyn(size = 4 * MiB, blockSize = MiB): { w: VhdWriter; bytes: Uint8Array } {
  const w = new VhdWriter({ size, blockSize });
  w.write(0, new Uint8Array(4096).fill(1));
  w.write(2 * MiB + 512, new Uint8Array(1024).fill(2));
  return { w, bytes: w.build() };
}

function setU32(b: Uint8Array, off: number, v: number): void {
  if (off + 4 > b.length) return; // the fuzz may have cut the file shorter
  new DataView(b.buffer, b.byteOffset).setUint32(off, v >>> 0);
}

function footerOf(bytes: Uint8Array): Uint8Array {
  return bytes.slice(bytes.length - 512);
}

function headerOf(bytes: Uint8Array): Uint8Array {
  return bytes.slice(512, 1536);
}

function throwsVhd(fn: () => unknown, pattern: RegExp, offset?: number): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof VhdError, `expected VhdError, got ${err}`);
    assert.match(err.message, pattern);
    if (offset !== undefined) assert.equal(err.offset, offset);
    assert.ok(!err.message.includes("\n"), "one line");
    return true;
  });
}

Deno.test("checksum matches an independent implementation on random bytes", () => {
  const r = new Prng(7);
  for (let i = 0; i < 200; i++) {
    const b = r.fill(new Uint8Array(i % 2 ? 512 : 1024));
    const at = i % 2 ? 64 : 36;
    assert.equal(vhdChecksum(b, at), checksumOf(b, at));
  }
});

Deno.test("footer fields decode from a written dynamic disk", () => {
  const { w, bytes } = dyn();
  const f = parseFooter(footerOf(bytes), "d.vhd", bytes.length - 512);
  assert.equal(f.cookie, "conectix");
  assert.equal(f.currentSize, 4 * MiB);
  assert.equal(f.diskType, DiskType.Dynamic);
  assert.equal(f.dataOffset, 512);
  assert.equal(f.uuid, w.uuidString);
  assert.equal(f.creatorApp, "win ");
  assert.ok(hasVhdCookie(footerOf(bytes)));
  assert.ok(!hasVhdCookie(new Uint8Array(512)));
});

Deno.test("footer of a fixed disk has no header offset", () => {
  const w = new VhdWriter({ size: MiB, type: "fixed" });
  const f = parseFooter(w.footer(), "f.vhd", MiB);
  assert.equal(f.diskType, DiskType.Fixed);
  assert.equal(f.dataOffset, undefined);
});

Deno.test("footer errors name the file and the offset", () => {
  const { bytes } = dyn();
  const at = bytes.length - 512;
  const bad = footerOf(bytes);
  bad.set(new TextEncoder().encode("notavhd!"), 0);
  throwsVhd(
    () => parseFooter(bad, "x.vhd", at),
    /^cannot open x\.vhd at offset \d+: not a VHD: bad footer cookie "notavhd!"/,
    at,
  );

  const poison = footerOf(bytes);
  poison.set(new TextEncoder().encode("v_poison"), 0);
  throwsVhd(() => parseFooter(poison, "x.vhd", at), /disabled/);

  const sum = footerOf(bytes);
  sum[100] ^= 0xff;
  throwsVhd(
    () => parseFooter(sum, "x.vhd", at),
    /bad footer checksum 0x[0-9a-f]{8} \(computed 0x[0-9a-f]{8}\)/,
    at,
  );

  const type = footerOf(bytes);
  setU32(type, 60, 5);
  fixChecksum(type, 64);
  throwsVhd(() => parseFooter(type, "x.vhd", at), /unsupported VHD disk type 5/);

  const huge = footerOf(bytes);
  setU32(huge, 48, 0x00400000); // current size >= 2^54
  fixChecksum(huge, 64);
  throwsVhd(() => parseFooter(huge, "x.vhd", at), /larger than 2\^53/);

  throwsVhd(() => parseFooter(new Uint8Array(100), "x.vhd", 0), /footer truncated/);
});

Deno.test("old tapdisk footers with the hidden flag set without re-checksumming are accepted", () => {
  const { bytes } = dyn();
  const f = footerOf(bytes);
  f.set(new TextEncoder().encode("tap\0"), 28);
  setU32(f, 32, 0x00010001);
  fixChecksum(f, 64);
  f[85] = 1; // hidden, checksum not updated, as td-util 1.1 did
  assert.equal(parseFooter(f, "t.vhd", 0).hidden, 1);
  setU32(f, 32, 0x00010003);
  f[85] = 0;
  fixChecksum(f, 64);
  f[85] = 1; // a newer creator must re-checksum
  throwsVhd(() => parseFooter(f, "t.vhd", 0), /bad footer checksum/);
});

Deno.test("a 511-byte footer from old Microsoft tools is accepted", () => {
  const { bytes } = dyn();
  const f = footerOf(bytes);
  assert.equal(f[511], 0);
  assert.equal(parseFooter(f.subarray(0, 511), "m.vhd", 0).currentSize, 4 * MiB);
});

Deno.test("header fields decode, including the UTF-16BE parent name and locators", () => {
  const w = new VhdWriter({
    size: 8 * MiB,
    blockSize: 512 * KiB,
    parent: {
      uuid: "01234567-89ab-cdef-0123-456789abcdef",
      name: "pärent.vhd",
      locators: [{ platform: "MacX", path: "./pärent.vhd" }, {
        platform: "W2ru",
        path: ".\\pärent.vhd",
        spaceInSectors: true,
      }],
    },
  });
  const bytes = w.build();
  const h = parseHeader(headerOf(bytes), "c.vhd", 512);
  assert.equal(h.blockSize, 512 * KiB);
  assert.equal(h.maxTableEntries, 16);
  assert.equal(h.tableOffset, 1536);
  assert.equal(h.parentUuid, "01234567-89ab-cdef-0123-456789abcdef");
  assert.equal(h.parentName, "pärent.vhd");
  assert.deepEqual(h.locators.map((l) => [l.platform, l.dataSpace]), [["MacX", 512], [
    "W2ru",
    512,
  ]]);
  const loc = h.locators[0];
  const data = bytes.subarray(loc.dataOffset, loc.dataOffset + loc.dataLength);
  assert.equal(decodeLocator(loc, data), "./pärent.vhd");
  const loc2 = h.locators[1];
  const data2 = bytes.subarray(loc2.dataOffset, loc2.dataOffset + loc2.dataLength);
  assert.equal(decodeLocator(loc2, data2), "./pärent.vhd");
});

Deno.test("header errors: cookie, checksum, version, block size", () => {
  const { bytes } = dyn();
  const cookie = headerOf(bytes);
  cookie[0] = 0x58;
  throwsVhd(() => parseHeader(cookie, "x.vhd", 512), /bad dynamic header cookie "Xxsparse"/, 512);

  const sum = headerOf(bytes);
  sum[700] ^= 1;
  throwsVhd(() => parseHeader(sum, "x.vhd", 512), /bad dynamic header checksum/, 512);

  const ver = headerOf(bytes);
  setU32(ver, 24, 0x00020000);
  fixChecksum(ver, 36);
  throwsVhd(() => parseHeader(ver, "x.vhd", 512), /unsupported dynamic header version/, 536);

  for (const bs of [3 * MiB, 0, 256, 0xffffffff]) {
    const h = headerOf(bytes);
    setU32(h, 32, bs);
    fixChecksum(h, 36);
    throwsVhd(
      () => parseHeader(h, "x.vhd", 512),
      new RegExp(`block size ${bs} is not a power of two`),
      544,
    );
  }
});

Deno.test("layout checks: absurd max entries, BAT past end of file, BAT too small", () => {
  const { bytes } = dyn();
  const footer = parseFooter(footerOf(bytes), "x.vhd", 0);
  const header = parseHeader(headerOf(bytes), "x.vhd", 512);
  const layout = checkLayout(footer, header, bytes.length, "x.vhd");
  assert.equal(layout.entries, 4);
  assert.equal(layout.bitmapBytes, 512);
  throwsVhd(
    () => checkLayout(footer, { ...header, maxTableEntries: MAX_TABLE_ENTRIES + 1 }, 1e15, "x.vhd"),
    /absurd max_table_entries 268435457/,
    540,
  );
  throwsVhd(
    () => checkLayout(footer, { ...header, maxTableEntries: 1 << 20 }, bytes.length, "x.vhd"),
    /BAT past end of file: 1048576 entries at offset 1536/,
    1536,
  );
  throwsVhd(
    () => checkLayout(footer, { ...header, maxTableEntries: 3 }, bytes.length, "x.vhd"),
    /BAT has 3 entries but the virtual size 4194304 needs 4 blocks/,
  );
});

Deno.test("BAT entries pointing past the end of the file are refused", () => {
  const { bytes } = dyn();
  const footer = parseFooter(footerOf(bytes), "x.vhd", 0);
  const header = parseHeader(headerOf(bytes), "x.vhd", 512);
  const layout = checkLayout(footer, header, bytes.length, "x.vhd");
  const bat = bytes.slice(1536, 1536 + 16);
  const ok = parseBat(bat, layout, bytes.length - 512, "x.vhd");
  assert.deepEqual([...ok].map((e) => e === BAT_UNUSED), [false, true, false, true]);
  setU32(bat, 4, Math.floor(bytes.length / 512)); // block 1 starts at the footer
  throwsVhd(
    () => parseBat(bat, layout, bytes.length - 512, "x.vhd"),
    /BAT entry 1 points past end of file/,
    1540,
  );
});

Deno.test("bitmap helpers read MSB-first, and runs agree with a bit-by-bit reading", () => {
  assert.equal(bitmapBytesFor(2 * MiB), 512);
  assert.equal(bitmapBytesFor(512), 512);
  assert.equal(bitmapBytesFor(4 * 2 ** 30), 1024 * 1024);
  assert.ok(bitmapHas(new Uint8Array([0x80]), 0));
  assert.ok(bitmapHas(new Uint8Array([0x01]), 7));
  const r = new Prng(11);
  for (let i = 0; i < 500; i++) {
    const bytes = new Uint8Array(16);
    for (let j = 0; j < 16; j++) {
      const k = r.int(4);
      bytes[j] = k === 0 ? 0 : k === 1 ? 0xff : r.int(256);
    }
    const from = r.int(128);
    const to = from + r.int(129 - from);
    const runs = bitmapRuns(bytes, from, to);
    const expanded: boolean[] = [];
    let next = from;
    for (const run of runs) {
      assert.equal(run.start, next);
      assert.ok(run.count > 0);
      for (let s = 0; s < run.count; s++) expanded.push(run.present);
      next = run.start + run.count;
    }
    assert.equal(next, to === from ? from : to);
    for (let s = from; s < to; s++) assert.equal(expanded[s - from], bitmapHas(bytes, s));
    for (let k = 1; k < runs.length; k++) assert.notEqual(runs[k].present, runs[k - 1].present);
  }
});

function loc(platform: string, length: number): ParentLocator {
  return { index: 0, platform, code: 0, dataSpace: 512, dataLength: length, dataOffset: 0 };
}

Deno.test("locators decode MacX URLs and W2ku/W2ru UTF-16LE paths like libvhd", () => {
  const u8 = (s: string) => new TextEncoder().encode(s);
  const u16 = (s: string) => {
    const b = new Uint8Array(s.length * 2);
    for (let i = 0; i < s.length; i++) b[i * 2] = s.charCodeAt(i);
    return b;
  };
  const cases: Array<[string, Uint8Array, string | undefined]> = [
    ["MacX", u8("file://./base.vhd"), "./base.vhd"],
    ["MacX", u8("file:///var/run/sr-mount/x/base.vhd"), "/var/run/sr-mount/x/base.vhd"],
    ["MacX", u8("file:///a%20b.vhd"), "/a b.vhd"],
    ["MacX", u8("file:///100%.vhd"), "/100%.vhd"],
    ["MacX", u8("http://x/base.vhd"), undefined],
    ["MacX", new Uint8Array([0x66, 0xff, 0xfe]), undefined],
    ["W2ku", u16(".\\base.vhd"), "./base.vhd"],
    ["W2ku", u16("C:\\vhds\\base.vhd"), "/vhds/base.vhd"],
    ["W2ru", u16("..\\other\\base.vhd"), "../other/base.vhd"],
    ["Wi2k", u8("C:\\base.vhd"), undefined],
    ["Mac ", u8("alias"), undefined],
  ];
  for (const [platform, data, want] of cases) {
    assert.equal(decodeLocator(loc(platform, data.length), data), want, platform);
  }
});

Deno.test("parent candidates: relative to the child first, then absolute, then search dirs", () => {
  assert.deepEqual(
    parentCandidates("/sr/leaf.vhd", ["./base.vhd", "/old/sr/base.vhd", "../x/p.vhd"], "base.vhd", [
      "/dev/mapper",
    ]),
    ["/sr/base.vhd", "/x/p.vhd", "/old/sr/base.vhd", "/dev/mapper/base.vhd"],
  );
  assert.deepEqual(parentCandidates("leaf.vhd", [], "p.vhd"), ["p.vhd"]);
  assert.deepEqual(parentCandidates("/a/leaf.vhd", [], ""), []);
});

// ---- mutation fuzz -------------------------------------------------------------------------

/** Field offsets worth hitting with interesting values (footer copy, header, locators). */
const FIELDS = [
  16,
  20,
  44,
  48,
  52,
  60, // footer copy: data offset, sizes, type
  512 + 16,
  512 + 20,
  512 + 24,
  512 + 28,
  512 + 32, // header: table offset, version, max entries, block size
  512 + 576,
  512 + 580,
  512 + 584,
  512 + 592,
  512 + 596, // locator 0
];
const INTERESTING = [0, 1, 0x1ff, 0x200, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff, 0x10000];

function mutate(r: Prng, original: Uint8Array, metaEnd: number): Uint8Array {
  let b = original.slice();
  const n = 1 + r.int(4);
  for (let i = 0; i < n; i++) {
    const what = r.int(10);
    if (what < 4) {
      b[r.int(metaEnd)] = r.int(256); // a random metadata byte
    } else if (what < 7) {
      const at = FIELDS[r.int(FIELDS.length)];
      setU32(b, at, r.chance(0.5) ? INTERESTING[r.int(INTERESTING.length)] : r.int(2 ** 32));
    } else if (what < 8) {
      setU32(b, 1536 + 4 * r.int(8), r.chance(0.5) ? r.int(b.length / 512 + 64) : r.int(2 ** 32));
    } else if (what < 9) {
      b = b.slice(0, r.int(b.length + 1)); // truncated file
    } else {
      b[metaEnd + r.int(Math.max(1, b.length - metaEnd))] ^= 1 << r.int(8); // data / bitmap / footer
    }
  }
  // Fix the checksums most of the time, so mutations get past them into the deeper checks.
  if (r.chance(0.7) && b.length >= 1536) {
    const header = b.subarray(512, 1536);
    fixChecksum(header, 36);
    const copy = b.subarray(0, 512);
    fixChecksum(copy, 64);
    if (r.chance(0.8) && b.length >= 2048) b.set(copy, b.length - 512);
  }
  return b;
}

Deno.test("seeded mutation fuzz: 10,000 damaged headers and BATs only ever give VhdError", async () => {
  const r = new Prng(20240601);
  // A parent and a child with small blocks, so every structure is exercised cheaply.
  const parent = new VhdWriter({ size: 256 * KiB, blockSize: 4 * KiB });
  for (let i = 0; i < 20; i++) parent.write(r.int(512) * 512, r.fill(new Uint8Array(512)));
  const child = new VhdWriter({
    size: 256 * KiB,
    blockSize: 4 * KiB,
    parent: {
      uuid: parent.uuid,
      name: "p.vhd",
      locators: [{ platform: "MacX", path: "./p.vhd" }, { platform: "W2ru", path: ".\\p.vhd" }],
    },
  });
  for (let i = 0; i < 20; i++) child.write(r.int(512) * 512, r.fill(new Uint8Array(512)));
  const parentBytes = parent.build();
  const childBytes = child.build();
  const metaEnd = 1536 + 512 + 2 * 512; // footer copy, header, BAT, locators
  const iterations = 10_000;
  let errors = 0;
  let opened = 0;
  for (let i = 0; i < iterations; i++) {
    const mutateChild = r.chance(0.5);
    const files: Record<string, Uint8Array> = {
      "/m/p.vhd": mutateChild ? parentBytes : mutate(r, parentBytes, metaEnd),
      "/m/c.vhd": mutateChild ? mutate(r, childBytes, metaEnd) : childBytes,
    };
    try {
      const disk = await VhdDisk.open("/m/c.vhd", { fs: memFs(files) });
      opened++;
      try {
        const alloc = (await disk.allocation())!;
        assert.ok(alloc.bytes <= disk.size);
        const buf = new Uint8Array(Math.min(disk.size, 64 * KiB));
        await disk.read(0, buf);
        for (let k = 0; k < 4 && disk.size > 0; k++) {
          const len = Math.min(disk.size, 1 + r.int(16 * KiB));
          await disk.read(r.int(disk.size - len + 1), new Uint8Array(len));
        }
      } finally {
        await disk.close();
      }
    } catch (err) {
      errors++;
      if (!(err instanceof VhdError)) {
        throw new Error(`iteration ${i} (seed ${r.seed}): ${err} is not a VhdError`, {
          cause: err,
        });
      }
      assert.ok(!err.message.includes("\n"));
    }
  }
  // Both outcomes must really happen, or the fuzz is not reaching anything.
  assert.ok(errors > iterations / 10, `errors: ${errors}`);
  assert.ok(opened > iterations / 10, `opened: ${opened}`);
});

Deno.test("fuzz of the metadata reader alone over random single layers", async () => {
  const r = new Prng(99);
  const w = new VhdWriter({ size: 64 * KiB, blockSize: 512 });
  for (let i = 0; i < 30; i++) w.write(r.int(128) * 512, r.fill(new Uint8Array(512)));
  const bytes = w.build();
  for (let i = 0; i < 2000; i++) {
    const b = mutate(r, bytes, 1536 + 512);
    try {
      const meta = await readMetadata(new MemoryAccess("f.vhd", b));
      assert.ok(meta.footer.currentSize >= 0);
    } catch (err) {
      if (!(err instanceof VhdError)) throw err;
    }
  }
});

Deno.test("a chain opened from memory reads as the writer's model, sector by sector", async () => {
  const r = new Prng(5);
  const base = new VhdWriter({ size: 96 * KiB, blockSize: 8 * KiB });
  const mid = new VhdWriter({
    size: 96 * KiB,
    blockSize: 8 * KiB,
    parent: { uuid: base.uuid, locators: [{ platform: "MacX", path: "./a.vhd" }] },
  });
  const leaf = new VhdWriter({
    size: 128 * KiB, // grown after the snapshot: the tail has no parent
    blockSize: 16 * KiB,
    parent: { uuid: mid.uuid, locators: [{ platform: "W2ku", path: "/m/b.vhd" }] },
  });
  for (const w of [base, mid, leaf]) {
    for (let i = 0; i < 40; i++) {
      const sectors = 1 + r.int(4);
      const at = r.int(w.size / 512 - sectors) * 512;
      w.write(at, r.fill(new Uint8Array(sectors * 512)));
    }
  }
  mid.allocate(11); // allocated, no sector present: the parent must show through
  const fs = memFs({ "/m/a.vhd": base.build(), "/m/b.vhd": mid.build(), "/m/c.vhd": leaf.build() });
  const chain = await openChain("/m/c.vhd", { fs });
  assert.deepEqual(chain.layers.map((l) => l.path), ["/m/c.vhd", "/m/b.vhd", "/m/a.vhd"]);
  const disk = new VhdDisk(chain);
  const got = new Uint8Array(disk.size);
  await disk.read(0, got);
  for (let off = 0; off < disk.size; off += 512) {
    const want = leaf.sectorAt(off) ??
      (off < mid.size ? mid.sectorAt(off) ?? base.sectorAt(off) : undefined) ??
      new Uint8Array(512);
    assert.deepEqual(got.subarray(off, off + 512), want, `sector at ${off}`);
  }
  // Unaligned reads agree with the whole.
  for (let i = 0; i < 200; i++) {
    const len = 1 + r.int(20000);
    const at = r.int(disk.size - len);
    const part = new Uint8Array(len);
    await disk.read(at, part);
    assert.deepEqual(part, got.subarray(at, at + len));
  }
  await disk.close();
});
