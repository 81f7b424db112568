import assert from "node:assert/strict";
import { openChain } from "../../src/vhd/chain.ts";
import { FileAccess, readMetadata } from "../../src/vhd/layer.ts";
import {
  footerToDisk,
  headerToDisk,
  Libvhd,
  LIBVHD_ENV,
  libvhdAvailable,
  metadataReader,
} from "../../src/vhd/libvhd.ts";
import { parseFooter, parseHeader, VhdError } from "../../src/vhd/format.ts";
import { ROOT, runMain, sameBytes, sh, withTempDir } from "../_support/helpers.ts";
import { qemuCreateVhd, qemuIo } from "../_support/vhd_tools.ts";
import { blktapLocators, VhdWriter } from "../_support/vhd_writer.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const MISSING = "/nonexistent/libvhd.so.0";

/** Test images: qemu dynamic and fixed, and a 3-layer chain from the writer, all 2 MiB blocks. */
async function images(dir: string): Promise<{ files: string[]; leaf: string; odd: string }> {
  await sh("qemu-img", ["create", "-q", "-f", "vpc", `${dir}/q.vhd`, "40M"]);
  await qemuIo(`${dir}/q.vhd`, ["write -P 1 0 1M", "write -P 2 30M 64k"]);
  await qemuCreateVhd(`${dir}/f.vhd`, "8M", "subformat=fixed");
  const names = ["c0.vhd", "c1.vhd", "c2.vhd"];
  let parent: VhdWriter | undefined;
  for (let i = 0; i < names.length; i++) {
    const w: VhdWriter = new VhdWriter({
      size: 24 * MiB,
      dataAlign: 4096,
      creator: "tap\0",
      parent: parent
        ? { uuid: parent.uuid, name: names[i - 1], locators: blktapLocators(names[i - 1]) }
        : undefined,
    });
    w.write(i * 6 * MiB + 4096, new Uint8Array(8192).fill(i + 1));
    await w.save(`${dir}/${names[i]}`);
    parent = w;
  }
  const odd = new VhdWriter({ size: 8 * MiB, blockSize: 512 * KiB });
  odd.write(5 * MiB, new Uint8Array(4096).fill(9));
  await odd.save(`${dir}/odd.vhd`);
  return {
    files: [`${dir}/q.vhd`, `${dir}/f.vhd`, ...names.map((n) => `${dir}/${n}`)],
    leaf: `${dir}/c2.vhd`,
    odd: `${dir}/odd.vhd`,
  };
}

/** Both backends must give the same footer, header, BAT and chain allocation. */
async function crossCheck(libPath: string | undefined): Promise<void> {
  await withTempDir(async (dir) => {
    const { files, leaf, odd } = await images(dir);
    const ffi = metadataReader("ffi", libPath);
    for (const f of files) {
      const file = await FileAccess.open(f);
      try {
        const ts = await readMetadata(file);
        const viaLib = await ffi(file);
        assert.equal(viaLib.backend, "ffi");
        assert.deepEqual(viaLib.meta.footer, ts.footer, f);
        assert.deepEqual(viaLib.meta.header, ts.header, f);
        assert.deepEqual(viaLib.meta.bat, ts.bat, f);
      } finally {
        file.close();
      }
    }
    const a = await openChain(leaf, { backend: "ffi", libvhdPath: libPath });
    const b = await openChain(leaf, { backend: "ts" });
    assert.deepEqual(a.layers.map((l) => l.backend), ["ffi", "ffi", "ffi"]);
    assert.ok(a.allocation().equals(b.allocation()));
    assert.ok(!a.allocation().isEmpty);
    a.close();
    b.close();

    // Other block sizes: libvhd misreads them, so the binding refuses; auto falls back to TS.
    await assert.rejects(
      openChain(odd, { backend: "ffi", libvhdPath: libPath }),
      (e: unknown) =>
        e instanceof VhdError &&
        /the libvhd backend reads only 2 MiB blocks, this VHD has 524288-byte blocks/.test(
          e.message,
        ),
    );
    const auto = await openChain(odd, { backend: "auto", libvhdPath: libPath });
    assert.equal(auto.leaf.backend, "ts");
    assert.deepEqual(auto.allocation().toJSON(), [[5 * MiB, 512 * KiB]]);
    auto.close();
  });
}

Deno.test({
  name: "libvhd and the TypeScript reader agree on footer, header, BAT and chain allocation",
  ignore: !libvhdAvailable(),
  fn: () => crossCheck(undefined),
});

Deno.test("auto falls back to the TypeScript reader when libvhd cannot be loaded", async () => {
  assert.equal(libvhdAvailable(MISSING), false);
  await withTempDir(async (dir) => {
    const { leaf } = await images(dir);
    const chain = await openChain(leaf, { backend: "auto", libvhdPath: MISSING });
    assert.deepEqual(chain.layers.map((l) => l.backend), ["ts", "ts", "ts"]);
    assert.equal(chain.allocation().bytes, 3 * 2 * MiB);
    chain.close();
    // Through the program, with the library pointed at nothing.
    const r = await runMain(["-src", leaf, "-dest", `${dir}/out.raw`, "-vhd-backend", "auto"], {
      env: { [LIBVHD_ENV]: MISSING },
    });
    assert.equal(r.code, 0, r.stderr);
  });
});

Deno.test("forcing the FFI backend without libvhd is a clear error", async () => {
  assert.throws(
    () => Libvhd.load(MISSING),
    /cannot load libvhd \(set SPARSE_DD_LIBVHD or use -vhd-backend ts\): \/nonexistent\/libvhd\.so\.0: /,
  );
  await withTempDir(async (dir) => {
    const { leaf } = await images(dir);
    await assert.rejects(
      openChain(leaf, { backend: "ffi", libvhdPath: MISSING }),
      VhdError,
      `cannot open ${leaf}: -vhd-backend ffi: cannot load libvhd`,
    );
    const r = await runMain(["-src", leaf, "-dest", `${dir}/out.raw`, "-vhd-backend", "ffi"], {
      env: { [LIBVHD_ENV]: MISSING },
    });
    assert.equal(r.code, 3);
    assert.match(
      r.stderr.trim(),
      /^sparse_dd: cannot open \S+c2\.vhd: -vhd-backend ffi: cannot load libvhd .*\/nonexistent\/libvhd\.so\.0/,
    );
    assert.equal(r.stderr.trim().split("\n").length, 1);
    await assert.rejects(Deno.stat(`${dir}/out.raw`), Deno.errors.NotFound);
    const bad = await runMain(["-src", leaf, "-dest", `${dir}/out.raw`, "-vhd-backend", "c"]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /invalid -vhd-backend value 'c': expected auto, ts or ffi/);
  });
});

Deno.test("host-order libvhd structs convert back to the on-disk bytes", async () => {
  await withTempDir(async (dir) => {
    const w = new VhdWriter({
      size: 24 * MiB + 512,
      parent: {
        uuid: "0123456789abcdef0123456789abcdef",
        name: "p.vhd",
        locators: blktapLocators("p.vhd"),
      },
    });
    w.write(3 * MiB, new Uint8Array(4096).fill(3));
    const disk = await w.save(`${dir}/d.vhd`);
    const foot = disk.slice(disk.length - 512);
    const head = disk.slice(512, 1536);
    const f = parseFooter(foot, "d.vhd", 0);
    const h = parseHeader(head, "d.vhd", 512);
    // Build the host-order (little-endian) structs field by field, as vhd_footer_in and
    // vhd_header_in leave them, independently of the conversion under test.
    const sf = foot.slice();
    const fv = new DataView(sf.buffer);
    fv.setUint32(8, f.features, true);
    fv.setUint32(12, f.formatVersion, true);
    fv.setBigUint64(16, 512n, true);
    fv.setUint32(24, f.timestamp, true);
    fv.setUint32(32, f.creatorVersion, true);
    fv.setUint32(36, f.creatorOs, true);
    fv.setBigUint64(40, BigInt(f.originalSize), true);
    fv.setBigUint64(48, BigInt(f.currentSize), true);
    fv.setUint32(
      56,
      (f.geometry.cylinders << 16 | f.geometry.heads << 8 | f.geometry.sectorsPerTrack) >>> 0,
      true,
    );
    fv.setUint32(60, f.diskType, true);
    fv.setUint32(64, f.checksum, true);
    assert.deepEqual(footerToDisk(sf), foot);
    const sh_ = head.slice();
    const hv = new DataView(sh_.buffer);
    hv.setBigUint64(8, 0xffffffffffffffffn, true);
    hv.setBigUint64(16, BigInt(h.tableOffset), true);
    hv.setUint32(24, h.headerVersion, true);
    hv.setUint32(28, h.maxTableEntries, true);
    hv.setUint32(32, h.blockSize, true);
    hv.setUint32(36, h.checksum, true);
    hv.setUint32(56, h.parentTimestamp, true);
    for (const l of h.locators) {
      const at = 576 + 24 * l.index;
      hv.setUint32(at, l.code, true);
      hv.setUint32(at + 4, l.dataSpace, true);
      hv.setUint32(at + 8, l.dataLength, true);
      hv.setBigUint64(at + 16, BigInt(l.dataOffset), true);
    }
    assert.deepEqual(headerToDisk(sh_), head);
  });
});

/**
 * The FFI plumbing (dlopen, opaque context, out-structs, reading the malloc'd BAT through a
 * pointer and freeing it with libc) exercised against a stand-in with libvhd's ABI, built from
 * tests/fixtures/fake-libvhd.c. This is not the cross-check with the real libvhd (above, ignored when it
 * is absent); it proves the binding itself works.
 */
Deno.test("the FFI binding works against a stand-in with libvhd's ABI (tests/fixtures/fake-libvhd.c)", async () => {
  await withTempDir(async (dir) => {
    const so = `${dir}/libvhd-standin.so`;
    await sh("gcc", [
      "-shared",
      "-fPIC",
      "-O2",
      "-Wall",
      "-Werror",
      "-o",
      so,
      `${ROOT}/tests/fixtures/fake-libvhd.c`,
    ]);
    assert.ok(libvhdAvailable(so));
    await crossCheck(so);

    // And the program picks it up from the environment variable.
    const { leaf } = await images(dir);
    const ts = await runMain(["-src", leaf, "-dest", `${dir}/ts.raw`, "-vhd-backend", "ts"]);
    assert.equal(ts.code, 0, ts.stderr);
    const r = await runMain(["-src", leaf, "-dest", `${dir}/ffi.raw`, "-vhd-backend", "ffi"], {
      env: { [LIBVHD_ENV]: so },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.ok(await sameBytes(`${dir}/ffi.raw`, `${dir}/ts.raw`));
  });
});

Deno.test("with libvhd too, a truncated fixed VHD is refused before the destination is written", async () => {
  await withTempDir(async (dir) => {
    const so = `${dir}/libvhd-standin.so`;
    await sh("gcc", ["-shared", "-fPIC", "-O2", "-o", so, `${ROOT}/tests/fixtures/fake-libvhd.c`]);
    // A fixed VHD of 8 MiB cut to its first 2 MiB of data (and its footer).
    const w = new VhdWriter({ size: 8 * 1024 * 1024, type: "fixed" });
    w.write(0, new Uint8Array(2 * 1024 * 1024).fill(0x61));
    const whole = w.build();
    const cut = new Uint8Array(2 * 1024 * 1024 + 512);
    cut.set(whole.subarray(0, 2 * 1024 * 1024));
    cut.set(whole.subarray(whole.length - 512), 2 * 1024 * 1024);
    await Deno.writeFile(`${dir}/cut.vhd`, cut);
    const before = new Uint8Array(8 * 1024 * 1024).fill(0xee);
    await Deno.writeFile(`${dir}/dest.raw`, before);
    for (const backend of ["ffi", "auto"]) {
      const r = await runMain(
        ["-src", `${dir}/cut.vhd`, "-dest", `${dir}/dest.raw`, "-vhd-backend", backend],
        { env: { [LIBVHD_ENV]: so } },
      );
      assert.equal(r.code, 3, `${backend}: ${r.stderr}`);
      assert.match(r.stderr, /fixed VHD truncated: virtual size 8388608 needs 8389120 bytes/);
      assert.ok(
        equalBytes(await Deno.readFile(`${dir}/dest.raw`), before),
        `${backend}: untouched`,
      );
    }
  });
});

/** Byte equality without assert's (very slow) diff of megabytes. */
function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
