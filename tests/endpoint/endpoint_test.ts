/**
 * Resolving `-src`/`-dest`/`-base` once, and the safety checks built on it: the destination is
 * never the source or the base by another name, a stats file never overwrites a disk, nothing
 * waits on a FIFO.
 */
import { deepStrictEqual, match, ok, strictEqual } from "node:assert/strict";
import {
  checkDistinct,
  formatByName,
  resolveEndpoint,
} from "../../src/endpoint/endpoint.ts";
import { SparseDdError } from "../../src/core/errors.ts";
import { chainWriters } from "../_support/vhd_writer.ts";
import { runMain, sameBytes, sh, withLoop, withTempDir } from "../_support/helpers.ts";

const NO_CONFIG = ["-config", "/nonexistent/sparse_dd.conf"];
const MiB = 1024 * 1024;

/** A file of `size` bytes with data (a counter pattern) in its first and last MiB. */
async function dataFile(path: string, size: number, seed = 1): Promise<Uint8Array> {
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  await f.truncate(size);
  const buf = new Uint8Array(MiB);
  for (let i = 0; i < buf.length; i++) buf[i] = (i * 7 + seed) & 0xff || 1;
  for (const at of [0, size - MiB]) {
    await f.seek(at, Deno.SeekMode.Start);
    await f.write(buf);
  }
  f.close();
  return await Deno.readFile(path);
}

async function copyOf(path: string): Promise<Uint8Array> {
  return await Deno.readFile(path);
}

Deno.test("the same file under any name is refused before anything is written (exit 1)", async () => {
  await withTempDir(async (dir) => {
    const a = `${dir}/a.raw`;
    const before = await dataFile(a, 4 * MiB);
    await Deno.symlink(a, `${dir}/sym.raw`);
    await Deno.link(a, `${dir}/hard.raw`);
    const names = [a, `${dir}/./a.raw`, `${dir}/sym.raw`, `${dir}/hard.raw`];
    for (const dest of names) {
      const r = await runMain(["-src", a, "-dest", dest, ...NO_CONFIG]);
      strictEqual(r.code, 1, `${dest}: ${r.stderr}`);
      match(r.stderr, /is the same storage as -src .*give a different destination/);
      strictEqual(r.stderr.trim().split("\n").length, 1, r.stderr);
      deepStrictEqual(await copyOf(a), before, `${dest} left a.raw alone`);
    }
    // And the other way round: the hard link as the source.
    const r = await runMain(["-src", `${dir}/hard.raw`, "-dest", a, ...NO_CONFIG]);
    strictEqual(r.code, 1, r.stderr);
    deepStrictEqual(await copyOf(a), before);
  });
});

Deno.test("a second device node, and a loop device over the other operand, are the same disk", async () => {
  await withTempDir(async (dir) => {
    const img = `${dir}/disk.img`;
    const before = await dataFile(img, 8 * MiB);
    const other = `${dir}/other.img`;
    await dataFile(other, 8 * MiB, 9);
    await withLoop(img, async (dev) => {
      const st = await Deno.stat(dev);
      const rdev = st.rdev!;
      const major = (rdev >> 8) & 0xfff;
      const minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
      const alias = `${dir}/alias`;
      await sh("mknod", [alias, "b", String(major), String(minor)]);
      const cases: Array<[string, string, RegExp]> = [
        [dev, alias, /-dest .*alias is the same storage as -src \/dev\/loop/],
        [img, dev, /backing file of \/dev\/loop/],
        [dev, img, /-dest .*disk\.img is the same storage as -src \/dev\/loop\d+ \(.*backing file/],
      ];
      for (const [src, dest, why] of cases) {
        const r = await runMain(["-src", src, "-dest", dest, ...NO_CONFIG]);
        strictEqual(r.code, 1, `${src} -> ${dest}: ${r.stderr}`);
        match(r.stderr, why);
      }
      // A base that is the destination, by another node.
      const r = await runMain(["-src", other, "-dest", dev, "-base", alias, ...NO_CONFIG]);
      strictEqual(r.code, 1, r.stderr);
      match(r.stderr, /is the same storage as -base .*alias/);
    });
    deepStrictEqual(await copyOf(img), before, "the disk was never written");
  });
});

Deno.test("a destination that is any file of the source's or the base's VHD chain is refused", async () => {
  await withTempDir(async (dir) => {
    const names = ["A.vhd", "B.vhd", "C.vhd"];
    const ws = chainWriters(names, { size: 4 * MiB, blockSize: MiB });
    ws[0].write(0, new Uint8Array(MiB).fill(0xa1));
    ws[1].write(MiB, new Uint8Array(MiB).fill(0xb2));
    ws[2].write(2 * MiB, new Uint8Array(MiB).fill(0xc3));
    for (let i = 0; i < names.length; i++) await ws[i].save(`${dir}/${names[i]}`);
    const saved = await Promise.all(names.map((n) => copyOf(`${dir}/${n}`)));
    for (const victim of ["A.vhd", "B.vhd"]) {
      const r = await runMain(["-src", `${dir}/C.vhd`, "-dest", `${dir}/${victim}`, ...NO_CONFIG]);
      strictEqual(r.code, 1, r.stderr);
      match(r.stderr, new RegExp(`${victim}, (layer \\d|the leaf) .*of the source's VHD chain`));
    }
    // A layer of the base's chain as the destination.
    await dataFile(`${dir}/src.raw`, 4 * MiB);
    const r = await runMain([
      "-src",
      `${dir}/src.raw`,
      "-dest",
      `${dir}/A.vhd`,
      "-base",
      `${dir}/B.vhd`,
      ...NO_CONFIG,
    ]);
    strictEqual(r.code, 1, r.stderr);
    match(r.stderr, /of the base's VHD chain/);
    for (let i = 0; i < names.length; i++) {
      deepStrictEqual(await copyOf(`${dir}/${names[i]}`), saved[i], `${names[i]} untouched`);
    }
  });
});

Deno.test("-stats-file may not be the source, the destination or the base", async () => {
  await withTempDir(async (dir) => {
    const src = `${dir}/s.raw`;
    const dst = `${dir}/d.raw`;
    const srcBytes = await dataFile(src, 2 * MiB);
    const dstBytes = await dataFile(dst, 2 * MiB, 5);
    await Deno.link(dst, `${dir}/stats.json`);
    for (const stats of [src, dst, `${dir}/stats.json`]) {
      const r = await runMain(["-src", src, "-dest", dst, "-stats-file", stats, ...NO_CONFIG]);
      strictEqual(r.code, 1, r.stderr);
      match(r.stderr, /-stats-file .* is the file .*: writing the stats would overwrite it/);
    }
    deepStrictEqual(await copyOf(src), srcBytes);
    deepStrictEqual(await copyOf(dst), dstBytes, "refused before the copy");
  });
});

Deno.test("a stats file that cannot be written after a complete copy is reported as such", async () => {
  await withTempDir(async (dir) => {
    const src = `${dir}/s.raw`;
    await dataFile(src, 2 * MiB);
    const stats = `${dir}/no/such/dir/stats.json`;
    const r = await runMain(["-src", src, "-dest", `${dir}/d.raw`, "-stats-file", stats]);
    strictEqual(r.code, 1, r.stderr);
    match(r.stderr, /the copy to .*d\.raw is complete, but the stats file .* cannot be written/);
    ok(await sameBytes(src, `${dir}/d.raw`), "the copy itself is done");
  });
});

Deno.test("FIFOs as -src, -base, -config or -stats-file are refused at once, never waited on", async () => {
  await withTempDir(async (dir) => {
    const fifo = `${dir}/pipe`;
    await sh("mkfifo", [fifo]);
    const src = `${dir}/s.raw`;
    await dataFile(src, 2 * MiB);
    const cases: Array<[string[], number, RegExp]> = [
      [["-src", fifo, "-dest", `${dir}/d1`], 3, /cannot open .*pipe: is a FIFO/],
      [["-src", `${dir}/pipe.vhd`, "-dest", `${dir}/d2`], 3, /pipe\.vhd: is a FIFO/],
      [["-src", fifo, "-src-format", "vhd", "-dest", `${dir}/d6`], 3, /pipe: is a FIFO/],
      [["-src", src, "-dest", `${dir}/d3`, "-base", fifo], 3, /pipe: is a FIFO/],
      [["-src", src, "-dest", `${dir}/d4`, "-config", fifo], 1, /configuration .*pipe: it is a FIFO/],
      [["-src", src, "-dest", `${dir}/d5`, "-stats-file", fifo], 1, /-stats-file .*not a regular/],
    ];
    await Deno.symlink(fifo, `${dir}/pipe.vhd`);
    for (const [argv, code, why] of cases) {
      const r = await runMain([...argv, ...(argv.includes("-config") ? [] : NO_CONFIG)], {
        timeoutMs: 30_000,
      });
      strictEqual(r.code, code, `${argv.join(" ")}: ${r.stderr}`);
      match(r.stderr, why);
    }
    for (const d of ["d1", "d2", "d3", "d4", "d5", "d6"]) {
      ok(!(await Deno.stat(`${dir}/${d}`).catch(() => undefined)), `${d} was not created`);
    }
  });
});

Deno.test("resolving: format by name only, kinds, and the checks as a library", async () => {
  await withTempDir(async (dir) => {
    strictEqual(formatByName("/x/disk.vhd", "auto"), "vhd");
    strictEqual(formatByName("/x/disk.vhd.raw", "auto"), "raw");
    strictEqual(formatByName("/x/disk", "vhd"), "vhd");
    await dataFile(`${dir}/a.raw`, 2 * MiB);
    const src = await resolveEndpoint(`${dir}/a.raw`, "source");
    strictEqual(src.kind, "file");
    strictEqual(src.format, "raw");
    const fresh = await resolveEndpoint(`${dir}/new.raw`, "destination");
    strictEqual(fresh.kind, "file");
    strictEqual(fresh.stat, undefined);
    checkDistinct(src, fresh);
    const nbd = await resolveEndpoint("nbd+unix:///x?socket=/tmp/s", "source");
    strictEqual(nbd.kind, "nbd");
    const same = await resolveEndpoint(`${dir}/../${dir.split("/").pop()}/a.raw`, "destination");
    let thrown: unknown;
    try {
      checkDistinct(src, same);
    } catch (err) {
      thrown = err;
    }
    ok(thrown instanceof SparseDdError && thrown.exitCode === 1);
  });
});
