/**
 * scripts/build.sh: the bundle, the offline release (tarball and RPM), and the `deno compile`
 * check. One build of a copy of this checkout serves every test here.
 */

import { deepStrictEqual, match, ok, strictEqual } from "node:assert/strict";
import {
  readMachineStream,
  ROOT,
  sameBytes,
  untilSecondThread,
  withTempDir,
  xapiCommand,
} from "./_support/helpers.ts";
import { bare, type Build, buildCopy, sparseFile } from "./_support/deploy.ts";

/** The glibc Deno's Linux build links with, shipped beside it (dom0's is too old). */
const GLIBC = [
  "libc.so.6",
  "libdl.so.2",
  "libgcc_s.so.1",
  "libm.so.6",
  "libpthread.so.0",
  "librt.so.1",
];

let built: Promise<{ dir: string; build: Build }> | undefined;
let tempDir: string | undefined;
globalThis.addEventListener("unload", () => {
  if (tempDir) Deno.removeSync(tempDir, { recursive: true });
});

function getBuild(): Promise<{ dir: string; build: Build }> {
  built ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "sparse_dd_build_test_" });
    tempDir = dir;
    return { dir, build: await buildCopy(dir) };
  })();
  return built;
}

Deno.test("scripts/build.sh builds a bundle that runs as xapi runs sparse_dd", async () => {
  const { dir, build } = await getBuild();
  const src = `${dir}/src.raw`;
  await sparseFile(src, 16 << 20);
  const out = await xapiCommand(Deno.execPath(), [
    "run",
    "-A",
    "--quiet",
    `${build.dist}/sparse_dd.bundle.js`,
    "-machine",
    "-src",
    src,
    "-dest",
    `${dir}/dst.raw`,
    "-size",
    String(16 << 20),
  ]).output();
  strictEqual(out.code, 0, new TextDecoder().decode(out.stderr));
  ok(readMachineStream(out.stdout).ended);
  ok(await sameBytes(src, `${dir}/dst.raw`));
});

Deno.test("the release tarball holds the runtime named sparse_dd, the bundle and the installer", async () => {
  const { build } = await getBuild();
  const top = `sparse_dd-${build.version}-linux-x86_64`;
  const list = await bare("tar", ["tzvf", build.tarball]);
  strictEqual(list.code, 0, list.stderr);
  const entries = list.text.trim().split("\n").map((l) => {
    const f = l.split(/\s+/);
    return `${f[0]} ${f[1]} ${f.slice(5).join(" ")}`;
  });
  deepStrictEqual(entries.sort(), [
    `-rw-r--r-- 0/0 ${top}/README.md`,
    `-rw-r--r-- 0/0 ${top}/sparse_dd.d/VERSION`,
    ...GLIBC.map((l) => `-rw-r--r-- 0/0 ${top}/sparse_dd.d/lib/${l}`),
    `-rw-r--r-- 0/0 ${top}/sparse_dd.d/sparse_dd.core.js`,
    `-rw-r--r-- 0/0 ${top}/sparse_dd.d/sparse_dd.js`,
    `-rwxr-xr-x 0/0 ${top}/install.sh`,
    `-rwxr-xr-x 0/0 ${top}/sparse_dd.d/deno`,
    `-rwxr-xr-x 0/0 ${top}/sparse_dd.d/sparse_dd`,
    `drwxr-xr-x 0/0 ${top}/`,
    `drwxr-xr-x 0/0 ${top}/sparse_dd.d/`,
    `drwxr-xr-x 0/0 ${top}/sparse_dd.d/lib/`,
  ]);
  // The runtime is this Deno, byte for byte (a copy, not a link into .tools); sparse_dd is the
  // dynamic loader of the glibc in lib/.
  const rt = `${build.dist}/release/sparse_dd.d`;
  ok(await sameBytes(`${rt}/deno`, Deno.realPathSync(Deno.execPath())));
  const loader = await bare(`${rt}/sparse_dd`, [
    "--library-path",
    `${rt}/lib`,
    "--list",
    `${rt}/deno`,
  ]);
  strictEqual(loader.code, 0, loader.stderr);
  for (const l of GLIBC) ok(loader.text.includes(`${rt}/lib/${l}`), loader.text);
});

Deno.test("the release's loader runs the bundle's code, its copy threads (Workers) included", async () => {
  const { dir, build } = await getBuild();
  const rt = `${build.dist}/release/sparse_dd.d`;
  // Every 1 MiB allocated, a 64 KiB run of data in each: mostly zeroes read, so the second
  // thread starts (it needs half of what was read to be skipped zeroes).
  const src = `${dir}/threads-src.raw`;
  const size = 256 << 20;
  const f = await Deno.open(src, { write: true, create: true, truncate: true });
  const block = new Uint8Array(1 << 20);
  for (let at = 0; at < size; at += block.length) {
    block.fill(0);
    block.fill((at >> 20) % 251 + 1, (at >> 20) % 16 * 65536, ((at >> 20) % 16 + 1) * 65536);
    let n = 0;
    while (n < block.length) n += await f.write(block.subarray(n));
  }
  f.close();
  // Every attempt must be exact; one of five must have shared the work (see untilSecondThread).
  const threads = await untilSecondThread(async () => {
    await Deno.remove(`${dir}/threads-dst.raw`).catch(() => {});
    const out = await bare(`${rt}/sparse_dd`, [
      "--library-path",
      `${rt}/lib`,
      `${rt}/deno`,
      "run",
      "-A",
      "--quiet",
      "--no-config",
      "--no-lock",
      `${rt}/sparse_dd.js`,
      "-src",
      src,
      "-dest",
      `${dir}/threads-dst.raw`,
      "-threads",
      "2",
      "-json",
    ], { DENO_DIR: "/dev/null/sparse_dd" });
    strictEqual(out.code, 0, out.stderr);
    ok(await sameBytes(src, `${dir}/threads-dst.raw`));
    return JSON.parse(out.text).threads;
  });
  strictEqual(threads, 2, "a second thread ran");
});

Deno.test("the RPM installs the same files for rpm, runs, and rpm -e removes them", async () => {
  const { dir, build } = await getBuild();
  const rpm = `${build.dist}/sparse_dd-${build.version}-1.x86_64.rpm`;
  const files = await bare("rpm", ["-qpl", rpm]);
  strictEqual(files.code, 0, files.stderr);
  deepStrictEqual(files.text.trim().split("\n"), [
    "/etc/xapi.conf.d/sparse_dd.conf",
    "/etc/xapi.d/plugins/sparse_dd",
    "/opt/xensource/libexec/sparse_dd",
    "/opt/xensource/libexec/sparse_dd.d",
    "/opt/xensource/libexec/sparse_dd.d/VERSION",
    "/opt/xensource/libexec/sparse_dd.d/deno",
    "/opt/xensource/libexec/sparse_dd.d/lib",
    ...GLIBC.map((l) => `/opt/xensource/libexec/sparse_dd.d/lib/${l}`),
    "/opt/xensource/libexec/sparse_dd.d/sparse_dd",
    "/opt/xensource/libexec/sparse_dd.d/sparse_dd.core.js",
    "/opt/xensource/libexec/sparse_dd.d/sparse_dd.js",
  ]);
  const config = await bare("rpm", ["-qpc", rpm]);
  strictEqual(config.text.trim(), "/etc/xapi.conf.d/sparse_dd.conf");
  const scripts = await bare("rpm", ["-qp", "--scripts", rpm]);
  match(scripts.text, /preinstall scriptlet[\s\S]*rpm-backup/);
  match(scripts.text, /postuninstall scriptlet[\s\S]*rpm-backup/);
  // Installed into a root of its own (scriptlets need dom0's paths: not run here).
  const root = `${dir}/rpmroot`;
  await Deno.mkdir(root);
  for (const args of [["--initdb"], ["-i", "--nodeps", "--noscripts", rpm]]) {
    const r = await bare("rpm", ["--root", root, ...args]);
    strictEqual(r.code, 0, r.stderr);
  }
  const version = await bare(`${root}/opt/xensource/libexec/sparse_dd`, ["--version"]);
  match(version.text, new RegExp(`^sparse_dd ${build.version.replace(/\./g, "\\.")} `));
  match(
    await Deno.readTextFile(`${root}/etc/xapi.conf.d/sparse_dd.conf`),
    /^sparse_dd = \/opt\/xensource\/libexec\/sparse_dd$/m,
  );
  const erase = await bare("rpm", ["--root", root, "-e", "--noscripts", "sparse_dd"]);
  strictEqual(erase.code, 0, erase.stderr);
  for (const p of ["opt/xensource/libexec/sparse_dd", "etc/xapi.d/plugins/sparse_dd"]) {
    ok(!(await Deno.stat(`${root}/${p}`).then(() => true, () => false)), `${p} left`);
  }
});

Deno.test("build.sh runs what deno compile built and refuses plain Deno given as DENORT_BIN", async () => {
  const { build } = await getBuild();
  const out = await bare("bash", [`${build.checkout}/scripts/build.sh`], {
    PATH: `${build.checkout}/.tools/bin:/usr/bin:/bin`,
    DENO_DIR: Deno.env.get("DENO_DIR") ?? `${build.checkout}/.tools/deno-dir`,
    DENORT_BIN: Deno.realPathSync(Deno.execPath()),
    DIST: `${build.checkout}/dist-denort`,
  });
  strictEqual(out.code, 1, out.stderr);
  match(out.stderr, /refusing the compiled binary: .*--version' printed 'deno \d/);
  match(out.stderr, /denort/);
  ok(!(await Deno.stat(`${build.checkout}/dist-denort/sparse_dd`).then(() => true, () => false)));
});

Deno.test("the program imports no node: module up front (Deno's Node layer costs every run 15-20 ms)", async () => {
  await withTempDir(async (dir) => {
    const out = `${dir}/bundle.js`;
    const b = await new Deno.Command(Deno.execPath(), {
      args: ["bundle", "--quiet", "--platform=deno", "-o", out, `${ROOT}/main.ts`],
      stderr: "piped",
    }).output();
    strictEqual(b.code, 0, new TextDecoder().decode(b.stderr));
    const text = await Deno.readTextFile(out);
    // Static imports load with the program; `import("node:…")` only where it is used.
    const nodeImports = [...text.matchAll(/\bfrom\s*["'](node:[^"']+)["']/g)].map((m) => m[1]);
    strictEqual(nodeImports.length, 0, `the bundle imports ${nodeImports.join(", ")}`);
  });
});
