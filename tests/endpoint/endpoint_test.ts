/**
 * Resolving `-src`/`-dest`/`-base` once, and the safety checks built on it: the destination is
 * never the source or the base by another name, a stats file never overwrites a disk, nothing
 * waits on a FIFO.
 */
import { deepStrictEqual, match, ok, strictEqual } from "node:assert/strict";
import { checkDistinct, formatByName, resolveEndpoint } from "../../src/endpoint/endpoint.ts";
import { SparseDdError } from "../../src/core/errors.ts";
import { chainWriters } from "../_support/vhd_writer.ts";
import { ROOT, runMain, sameBytes, sh, withLoop, withTempDir } from "../_support/helpers.ts";
import { copyArgv } from "../../plugin/child.ts";
import { discover } from "../../src/discovery/discover.ts";

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

/** Byte equality without assert's (very slow) diff of megabytes. */
function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
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
      ok(equalBytes(await copyOf(a), before), `${dest} left a.raw alone`);
    }
    // And the other way round: the hard link as the source.
    const r = await runMain(["-src", `${dir}/hard.raw`, "-dest", a, ...NO_CONFIG]);
    strictEqual(r.code, 1, r.stderr);
    ok(equalBytes(await copyOf(a), before));
  });
});

Deno.test("a destination that is this program's own stdout or stderr is refused (exit 1)", async () => {
  // `sparse_dd -src a -dest /dev/stdout > copy.raw` (or `-dest copy.raw 2> copy.raw`) would write
  // the summary or a message over the copy and exit 0.
  await withTempDir(async (dir) => {
    const src = `${dir}/src.raw`;
    await Deno.writeFile(src, new Uint8Array(64 * 1024).fill(7));
    const cases: Array<[string, string]> = [
      ["/dev/stdout", `> ${dir}/copy.raw`],
      [`/proc/self/fd/1`, `> ${dir}/copy.raw`],
      [`${dir}/copy.raw`, `> ${dir}/copy.raw`],
      [`${dir}/copy.raw`, `2> ${dir}/copy.raw`],
      [`${dir}/copy.raw`, `-machine > ${dir}/copy.raw`],
    ];
    for (const [dest, redirect] of cases) {
      const machine = redirect.startsWith("-machine");
      const out = machine ? redirect.slice("-machine ".length) : redirect;
      const script = `"$0" run -A --quiet --no-lock "$1" ${machine ? "-machine " : ""}` +
        `-src "$2" -dest "$3" -config /dev/null ${out}; echo "exit $?" >&3`;
      const res = await new Deno.Command("sh", {
        args: ["-c", `exec 3>&2; ${script}`, Deno.execPath(), `${ROOT}/main.ts`, src, dest],
        stdout: "null",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(res.stderr);
      const err = redirect.startsWith("2>")
        ? await Deno.readTextFile(`${dir}/copy.raw`).catch(() => "")
        : text;
      match(text, /exit 1\n$/, `${dest} ${redirect}: ${text}`);
      match(err, /is this program's standard (output|error)/, `${dest} ${redirect}: ${err}`);
    }
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
    ok(equalBytes(await copyOf(img), before), "the disk was never written");
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
      ok(equalBytes(await copyOf(`${dir}/${names[i]}`), saved[i]), `${names[i]} untouched`);
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
    ok(equalBytes(await copyOf(src), srcBytes));
    ok(equalBytes(await copyOf(dst), dstBytes), "refused before the copy");
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
      [
        ["-src", src, "-dest", `${dir}/d4`, "-config", fifo],
        1,
        /configuration .*pipe: it is a FIFO/,
      ],
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

Deno.test("a character device with no size (/dev/zero, /dev/urandom) is refused as -src; /dev/null is empty", async () => {
  await withTempDir(async (dir) => {
    for (const dev of ["/dev/zero", "/dev/urandom"]) {
      const r = await runMain(["-src", dev, "-dest", `${dir}/d`, "-size", "1M", ...NO_CONFIG]);
      strictEqual(r.code, 3, `${dev}: ${r.stderr}`);
      match(r.stderr, new RegExp(`^sparse_dd: cannot open ${dev}: is a character device`));
      ok(!(await Deno.stat(`${dir}/d`).catch(() => undefined)), "nothing was created");
    }
    const empty = await runMain(["-src", "/dev/null", "-dest", `${dir}/d`, ...NO_CONFIG]);
    strictEqual(empty.code, 0, empty.stderr);
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

Deno.test("a raw disk whose content is a VHD (a guest can write one) is copied as its bytes", async () => {
  await withTempDir(async (dir) => {
    // A host file the guest would like to read, and a "VHD" in the guest's disk naming it.
    const [secret, guest] = chainWriters(["secret.vhd", "guest.img"], {
      size: 4 * MiB,
      blockSize: MiB,
    });
    secret.write(0, new Uint8Array(MiB).fill(0x5e));
    await secret.save(`${dir}/secret.vhd`);
    guest.options.parent!.locators = [{ platform: "MacX", path: `${dir}/secret.vhd` }];
    const disk = await guest.save(`${dir}/guest.img`);
    const r = await runMain(["-src", `${dir}/guest.img`, "-dest", `${dir}/out.raw`, ...NO_CONFIG]);
    strictEqual(r.code, 0, r.stderr);
    ok(equalBytes(await copyOf(`${dir}/out.raw`), disk), "the disk's own bytes, nothing else");
    // The same with a VHD footer only in the last sector of a raw disk, and as -base.
    const raw = new Uint8Array(2 * MiB).fill(0x11);
    raw.set(disk.subarray(disk.length - 512), raw.length - 512);
    await Deno.writeFile(`${dir}/tail.img`, raw);
    const t = await runMain(["-src", `${dir}/tail.img`, "-dest", `${dir}/t.raw`, ...NO_CONFIG]);
    strictEqual(t.code, 0, t.stderr);
    ok(equalBytes(await copyOf(`${dir}/t.raw`), raw));
    // Told so, it is read as the VHD it claims to be.
    const v = await runMain([
      "-src",
      `${dir}/guest.img`,
      "-src-format",
      "vhd",
      "-dest",
      `${dir}/v.raw`,
      ...NO_CONFIG,
    ]);
    strictEqual(v.code, 0, v.stderr);
    strictEqual((await Deno.stat(`${dir}/v.raw`)).size, 4 * MiB);
  });
});

Deno.test("broken or disabled VHDs are refused before the destination is opened (exit 3)", async () => {
  await withTempDir(async (dir) => {
    const w = chainWriters(["x.vhd"], { size: 4 * MiB, blockSize: MiB })[0];
    w.write(0, new Uint8Array(2 * MiB).fill(0x42));
    const good = w.build();
    const poisoned = good.slice();
    const poison = new TextEncoder().encode("v_poison");
    poisoned.set(poison, 0);
    poisoned.set(poison, poisoned.length - 512);
    const selfPointing = good.slice();
    new DataView(selfPointing.buffer).setUint32(1536 + 4, 0, false); // block 1 at sector 0
    const cases: Array<[string, Uint8Array, RegExp]> = [
      ["poisoned", poisoned, /disabled \(footer cookie "v_poison"/],
      ["self-pointing", selfPointing, /BAT entry 1 points into the file's own metadata/],
    ];
    for (const [name, bytes, why] of cases) {
      await Deno.writeFile(`${dir}/${name}.vhd`, bytes);
      for (const backend of ["ts", "auto"]) {
        const dest = `${dir}/${name}-${backend}.raw`;
        const r = await runMain([
          "-src",
          `${dir}/${name}.vhd`,
          "-dest",
          dest,
          "-vhd-backend",
          backend,
          ...NO_CONFIG,
        ]);
        strictEqual(r.code, 3, `${name} ${backend}: ${r.stderr}`);
        match(r.stderr, why);
        ok(!(await Deno.stat(dest).catch(() => undefined)), `${name}: no destination created`);
      }
    }
  });
});

Deno.test("an image tap-ctl reports that is a FIFO is not waited on: the copy reads every byte", async () => {
  await withTempDir(async (dir) => {
    const img = `${dir}/disk.img`;
    const bytes = await dataFile(img, 4 * MiB);
    await sh("mkfifo", [`${dir}/image.vhd`]);
    await withLoop(img, async (dev) => {
      const rdev = (await Deno.stat(dev)).rdev!;
      const major = (rdev >> 8) & 0xfff;
      const minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
      await Deno.mkdir(`${dir}/proc`);
      await Deno.mkdir(`${dir}/bin`);
      await Deno.writeTextFile(`${dir}/proc/devices`, `${major} tapdev\n`);
      const tapCtl = `${dir}/bin/tap-ctl`;
      await Deno.symlink(`${ROOT}/tests/fixtures/fake-tap-ctl`, tapCtl);
      await Deno.writeTextFile(`${tapCtl}.table`, `tapdisk 1 ${minor} 0 vhd:${dir}/image.vhd\n`);
      const r = await runMain([
        "-src",
        dev,
        "-dest",
        `${dir}/out.raw`,
        "-procfs-root",
        `${dir}/proc`,
        "-tap-ctl",
        tapCtl,
        ...NO_CONFIG,
      ], { timeoutMs: 60_000 });
      strictEqual(r.code, 0, r.stderr);
      match(r.stderr, /cannot read VHD .*image\.vhd: .*is a FIFO, not a VHD file/);
      ok(equalBytes(await copyOf(`${dir}/out.raw`), bytes));
      // Required, it is an error instead, still at once.
      const q = await runMain([
        "-src",
        dev,
        "-dest",
        `${dir}/q.raw`,
        "-require-vhd",
        "-procfs-root",
        `${dir}/proc`,
        "-tap-ctl",
        tapCtl,
        ...NO_CONFIG,
      ], { timeoutMs: 60_000 });
      strictEqual(q.code, 3, q.stderr);
    });
  });
});

Deno.test("the plugin passes the format explicitly: vhd only for a name ending in .vhd", () => {
  const argv = copyArgv({ src: "/sr/a.img", dest: "/sr/c.raw", prezeroed: false }, "/s.json");
  deepStrictEqual(argv.slice(argv.indexOf("-src"), argv.indexOf("-src") + 4), [
    "-src",
    "/sr/a.img",
    "-src-format",
    "raw",
  ]);
  const vhd = copyArgv({ src: "/sr/a.vhd", dest: "/d", base: "/sr/b.vhd", prezeroed: false }, "");
  ok(vhd.join(" ").includes("-src /sr/a.vhd -src-format vhd"), vhd.join(" "));
  ok(vhd.join(" ").includes("-base /sr/b.vhd -base-format vhd"), vhd.join(" "));
});

Deno.test("-base-format vhd reads a base whose name says nothing as a VHD; without it, raw", async () => {
  await withTempDir(async (dir) => {
    const [a, b] = chainWriters(["a.vhd", "b.vhd"], { size: 4 * MiB, blockSize: MiB });
    a.write(0, new Uint8Array(2 * MiB).fill(0xa1));
    b.write(3 * MiB, new Uint8Array(MiB).fill(0xb2));
    await a.save(`${dir}/a.vhd`);
    await b.save(`${dir}/b.vhd`);
    await Deno.copyFile(`${dir}/a.vhd`, `${dir}/base.img`); // the same layer (footer UUID)
    // The destination holds the base already (a new, empty one could not: that is a full copy).
    const held = new Uint8Array(4 * MiB);
    held.fill(0xa1, 0, 2 * MiB);
    await Deno.writeFile(`${dir}/d.raw`, held);
    const run = (extra: string[]) =>
      runMain([
        "-src",
        `${dir}/b.vhd`,
        "-dest",
        `${dir}/d.raw`,
        "-base",
        `${dir}/base.img`,
        ...extra,
        "-json",
        ...NO_CONFIG,
      ]);
    let r = await run(["-base-format", "vhd"]);
    strictEqual(r.code, 0, r.stderr);
    strictEqual(JSON.parse(new TextDecoder().decode(r.stdout)).unchangedBytes, 3 * MiB);
    r = await run([]);
    strictEqual(r.code, 0, r.stderr);
    match(r.stderr, /-base .*base\.img is not a VHD chain .*-base-format vhd/);
    strictEqual(JSON.parse(new TextDecoder().decode(r.stdout)).unchangedBytes, 0);
    r = await run(["-base-format", "qcow2"]);
    strictEqual(r.code, 1);
    match(r.stderr, /invalid -base-format value 'qcow2'/);
  });
});

Deno.test("discovery reads no FIFO either: an NBD connection record that is one is a reason", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(`${dir}/run/nonpersistent/nbd`, { recursive: true });
    await sh("mkfifo", [`${dir}/run/nonpersistent/nbd/0`]);
    await sh("mknod", [`${dir}/nbd0`, "b", "43", "0"]);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const hung = new Promise<"hung">((r) => timer = setTimeout(() => r("hung"), 20_000));
    try {
      const d = await Promise.race([discover(`${dir}/nbd0`, { runRoot: `${dir}/run` }), hung]);
      ok(d !== "hung", "discovery waited on the FIFO");
      match(d.reason ?? "", /no NBD connection record .*nbd\/0 \(not a regular file\)/);
    } finally {
      clearTimeout(timer);
    }
  });
});
