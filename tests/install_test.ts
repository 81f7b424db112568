/**
 * Installing on a host as xapi sees it: scripts/install.sh into a DESTDIR laid out like dom0,
 * run from a build whose checkout (and .tools) is then taken away; xapi's stray-process check
 * against every process of a running copy; the release tarball installed with only /bin/sh tools.
 * One build (of a copy of this checkout) serves every test here.
 */

import { deepStrictEqual, match, ok, strictEqual } from "node:assert/strict";
import { readMachineStream, ROOT, sameBytes, sh } from "./_support/helpers.ts";
import { bare, type Build, buildCopy, callPlugin, sparseFile } from "./_support/deploy.ts";

const LIBEXEC = "opt/xensource/libexec";
/** The glibc Deno's Linux build links with, shipped beside it (dom0's is too old). */
const GLIBC = [
  "libc.so.6",
  "libdl.so.2",
  "libgcc_s.so.1",
  "libm.so.6",
  "libpthread.so.0",
  "librt.so.1",
];
const CONFIGURED = "/opt/xensource/libexec/sparse_dd";

interface Setup {
  dir: string;
  build: Build;
  /** Where the checkout was built; renamed away once the install is done. */
  checkoutWas: string;
  /** A dom0-like tree the build was installed into. */
  root: string;
  /** For plugin runs: sparse_dd's configuration allowing files in `dir` (plugin-dest-dirs). */
  pluginEnv: Record<string, string>;
}

let setup: Promise<Setup> | undefined;
let tempDir: string | undefined;
globalThis.addEventListener("unload", () => {
  if (tempDir) Deno.removeSync(tempDir, { recursive: true });
});

/** dom0 as far as install.sh is concerned: xapi's own sparse_dd and its configuration. */
async function dom0Tree(root: string): Promise<void> {
  await Deno.mkdir(`${root}/usr/libexec/xapi`, { recursive: true });
  await Deno.mkdir(`${root}/etc/xapi.conf.d`, { recursive: true });
  await Deno.writeTextFile(`${root}/usr/libexec/xapi/sparse_dd`, "#!/bin/sh\n# xapi's own\n", {
    mode: 0o755,
  });
  await Deno.writeTextFile(
    `${root}/etc/xapi.conf`,
    "sparse_dd = /usr/libexec/xapi/sparse_dd\n",
  );
  await Deno.writeTextFile(`${root}/etc/xapi.conf.d/other.conf`, "# someone else's\n");
}

function getSetup(): Promise<Setup> {
  setup ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "sparse_dd_install_test_" });
    tempDir = dir;
    const build = await buildCopy(dir, { SPARSE_DD_RPM: "0" });
    const root = `${dir}/root`;
    await dom0Tree(root);
    const inst = await bare("sh", [`${build.checkout}/scripts/install.sh`], { DESTDIR: root });
    strictEqual(inst.code, 0, inst.stderr);
    // The checkout, its .tools and its dist/ go away: the install must not need them.
    const checkoutWas = build.checkout;
    await Deno.rename(build.checkout, `${dir}/checkout.removed`);
    build.checkout = `${dir}/checkout.removed`;
    build.dist = `${build.checkout}/dist`;
    build.tarball = build.tarball.replace(checkoutWas, build.checkout);
    await Deno.writeTextFile(`${dir}/sparse_dd.conf`, `plugin-dest-dirs = ${dir}\n`);
    const pluginEnv = { SPARSE_DD_PLUGIN_CONFIG: `${dir}/sparse_dd.conf` };
    return { dir, build, checkoutWas, root, pluginEnv };
  })();
  return setup;
}

async function listTree(root: string, rel = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(`${root}/${rel}`)) {
    const path = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory) out.push(`${path}/`, ...await listTree(root, path));
    else out.push(path);
  }
  return out.sort();
}

Deno.test("install.sh installs a self-contained sparse_dd that runs with the checkout and .tools gone", async () => {
  const { dir, root, checkoutWas, pluginEnv } = await getSetup();
  const files = (await listTree(root)).filter((p) => !p.endsWith("/"));
  deepStrictEqual(files, [
    "etc/xapi.conf",
    "etc/xapi.conf.d/other.conf",
    "etc/xapi.conf.d/sparse_dd.conf",
    "etc/xapi.d/plugins/sparse_dd",
    `${LIBEXEC}/sparse_dd`,
    `${LIBEXEC}/sparse_dd.d/MANIFEST`,
    `${LIBEXEC}/sparse_dd.d/MANIFEST.dirs`,
    `${LIBEXEC}/sparse_dd.d/VERSION`,
    `${LIBEXEC}/sparse_dd.d/deno`,
    `${LIBEXEC}/sparse_dd.d/install.sh`,
    ...GLIBC.map((l) => `${LIBEXEC}/sparse_dd.d/lib/${l}`),
    `${LIBEXEC}/sparse_dd.d/sparse_dd`,
    `${LIBEXEC}/sparse_dd.d/sparse_dd.core.js`,
    `${LIBEXEC}/sparse_dd.d/sparse_dd.js`,
    "usr/libexec/xapi/sparse_dd",
  ]);
  // The runtime is a file of its own, and no installed script names the build or its tools.
  const runtime = await Deno.lstat(`${root}/${LIBEXEC}/sparse_dd.d/deno`);
  ok(runtime.isFile && !runtime.isSymlink);
  const binary = /sparse_dd\.d\/(deno|sparse_dd|lib\/.*)$/;
  for (const f of files.filter((p) => !binary.test(p))) {
    const text = await Deno.readTextFile(`${root}/${f}`);
    for (const bad of [checkoutWas, ROOT, ".tools", Deno.execPath()]) {
      ok(!text.includes(bad), `${f} mentions ${bad}`);
    }
  }

  const src = `${dir}/t1-src.raw`;
  await sparseFile(src, 8 << 20);
  // As xapi runs it: -machine, its argv, PATH only.
  const copy = await bare(`${root}/${LIBEXEC}/sparse_dd`, [
    "-machine",
    "-src",
    src,
    "-dest",
    `${dir}/t1-dst.raw`,
    "-size",
    String(8 << 20),
    "-good-ciphersuites",
    "ECDHE-RSA-AES256-GCM-SHA384",
  ]);
  strictEqual(copy.code, 0, copy.stderr);
  ok(readMachineStream(copy.stdout).ended);
  strictEqual(copy.stderr, "", "under -machine a successful copy says nothing on stderr");
  ok(await sameBytes(src, `${dir}/t1-dst.raw`));

  const plugin = `${root}/etc/xapi.d/plugins/sparse_dd`;
  const version = await callPlugin(plugin, "version", {}, pluginEnv);
  strictEqual(version.code, 0);
  strictEqual(version.value, (await getSetup()).build.version, version.stderr);
  const pcopy = await callPlugin(plugin, "copy", { src, dest: `${dir}/t1-plugin.raw` }, pluginEnv);
  strictEqual(pcopy.status, "Success", JSON.stringify(pcopy.error));
  ok(await sameBytes(src, `${dir}/t1-plugin.raw`));
});

Deno.test("install.sh points xapi at the launcher, keeps xapi's binary, and --uninstall restores exactly what was there", async () => {
  const { dir, build } = await getSetup();
  const root = `${dir}/t2-root`;
  await dom0Tree(root);
  // Things install.sh must give back: a sparse_dd.conf of the admin's, and (on old hosts) a
  // program already at /opt/xensource/libexec/sparse_dd.
  await Deno.writeTextFile(`${root}/etc/xapi.conf.d/sparse_dd.conf`, "sparse_dd = /mine\n");
  await Deno.mkdir(`${root}/${LIBEXEC}`, { recursive: true });
  await Deno.writeTextFile(`${root}/${LIBEXEC}/sparse_dd`, "old\n", { mode: 0o755 });
  await Deno.writeTextFile(`${root}/${LIBEXEC}/neighbour`, "not ours\n");
  const before = await snapshot(root);

  const installer = `${dir}/t2-release/install.sh`;
  await sh("cp", ["-R", `${build.dist}/release`, `${dir}/t2-release`]);
  for (let i = 0; i < 2; i++) { // a second install (an upgrade) must not lose the backups
    const inst = await bare("sh", [installer], { DESTDIR: root });
    strictEqual(inst.code, 0, inst.stderr);
    match(inst.stderr, /restart xapi/);
  }
  strictEqual(
    (await Deno.readTextFile(`${root}/etc/xapi.conf.d/sparse_dd.conf`)).match(
      /^\s*sparse_dd\s*=.*$/gm,
    )?.join("|"),
    `sparse_dd = ${CONFIGURED}`,
  );
  // xapi's start-up check: the configured program exists and is executable.
  const launcher = await Deno.stat(`${root}${CONFIGURED}`);
  ok(launcher.isFile && (launcher.mode! & 0o111) === 0o111);
  strictEqual(
    await Deno.readTextFile(`${root}/usr/libexec/xapi/sparse_dd`),
    "#!/bin/sh\n# xapi's own\n",
  );
  strictEqual(await Deno.readTextFile(`${root}/etc/xapi.conf`), before.get("etc/xapi.conf"));

  // Uninstall with what was installed (the checkout is gone), PATH only.
  const un = await bare(`${root}/${LIBEXEC}/sparse_dd.d/install.sh`, ["--uninstall"], {
    DESTDIR: root,
  });
  strictEqual(un.code, 0, un.stderr);
  deepStrictEqual(await snapshot(root), before);

  // A file changed after installing is never removed by --uninstall.
  const inst = await bare("sh", [installer], { DESTDIR: root });
  strictEqual(inst.code, 0, inst.stderr);
  await Deno.writeTextFile(`${root}/etc/xapi.d/plugins/sparse_dd`, "#!/bin/sh\n# edited\n");
  const un2 = await bare("sh", [installer, "--uninstall"], { DESTDIR: root });
  strictEqual(un2.code, 1);
  match(un2.stderr, /left \/etc\/xapi\.d\/plugins\/sparse_dd in place: it changed/);
  strictEqual(
    await Deno.readTextFile(`${root}/etc/xapi.d/plugins/sparse_dd`),
    "#!/bin/sh\n# edited\n",
  );
});

/** Every file and directory under `root` with its contents (files) or "dir". */
async function snapshot(root: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const p of await listTree(root)) {
    out.set(p, p.endsWith("/") ? "dir" : await Deno.readTextFile(`${root}/${p}`));
  }
  return out;
}

/** The pids whose parent chain leads to `pid` (and `pid` itself). */
async function tree(pid: number): Promise<number[]> {
  const parents = new Map<number, number>();
  for await (const e of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    const stat = await Deno.readTextFile(`/proc/${e.name}/stat`).catch(() => "");
    const m = /\) \S (\d+)/.exec(stat);
    if (m) parents.set(Number(e.name), Number(m[1]));
  }
  const out = [pid];
  for (let i = 0; i < out.length; i++) {
    for (const [p, pp] of parents) if (pp === out[i] && !out.includes(p)) out.push(p);
  }
  return out;
}

/**
 * xapi's restart cleanup (`Sparse_dd_wrapper.killall`): for each recorded pid, SIGKILL it only if
 * `basename(readlink /proc/PID/exe)` equals the basename of the configured sparse_dd. Returns the
 * pids it would kill, and kills them.
 */
function xapiKillall(pids: number[], configured: string): number[] {
  const killed: number[] = [];
  for (const pid of pids) {
    try {
      const exe = Deno.readLinkSync(`/proc/${pid}/exe`);
      if (exe.split("/").pop() === configured.split("/").pop()) {
        Deno.kill(pid, "SIGKILL");
        killed.push(pid);
      }
    } catch { /* gone */ }
  }
  return killed;
}

async function waitFor<T>(what: string, f: () => Promise<T | undefined>): Promise<T> {
  for (let i = 0; i < 300; i++) {
    const v = await f();
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function exeName(pid: number): Promise<string | undefined> {
  try {
    return (await Deno.readLink(`/proc/${pid}/exe`)).split("/").pop();
  } catch {
    return undefined;
  }
}

Deno.test("every process of an installed copy, run by xapi or by the plugin, passes xapi's stray-process check", async () => {
  const { dir, root, pluginEnv } = await getSetup();
  const src = `${dir}/t3-src.raw`;
  await sparseFile(src, 4 << 20);
  // Copies into a frozen file system stay blocked, alive, until it is thawed.
  const img = `${dir}/t3-fs.img`;
  const mnt = `${dir}/t3-mnt`;
  const state = `${dir}/t3-state`;
  await Deno.mkdir(mnt);
  await Deno.mkdir(state);
  const f = await Deno.open(img, { write: true, create: true });
  await f.truncate(32 << 20);
  f.close();
  await sh("mkfs.ext4", ["-q", "-F", img]);
  await sh("mount", ["-o", "loop", img, mnt]);
  let frozen = false;
  const started: Deno.ChildProcess[] = [];
  const watched: number[] = [];
  // Whatever happens, the file system thaws: a process blocked on it cannot even be killed.
  const watchdog = setTimeout(() => {
    new Deno.Command("fsfreeze", { args: ["-u", mnt] }).output().catch(() => {});
  }, 60_000);
  try {
    // The plugin creates a new destination itself (which would block); give it existing ones.
    for (const name of ["b.raw", "c.raw"]) await Deno.writeFile(`${mnt}/${name}`, new Uint8Array());
    await sh("fsfreeze", ["-f", mnt]);
    frozen = true;
    const env = { PATH: "/usr/bin:/bin", SPARSE_DD_PLUGIN_STATE_DIR: state, ...pluginEnv };
    const spawn = (cmd: string, args: string[]) => {
      const c = new Deno.Command(cmd, {
        args,
        clearEnv: true,
        env,
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).spawn();
      started.push(c);
      return c;
    };
    // 1. As xapi runs it: the pid xapi records is the one it spawned.
    const launcher = `${root}/${CONFIGURED}`;
    const direct = spawn(launcher, ["-machine", "-src", src, "-dest", `${mnt}/a.raw`]);
    // 2. The plugin's copy (plugin process + its copy child).
    const plugin = `${root}/etc/xapi.d/plugins/sparse_dd`;
    const call = (fn: string, args: Record<string, string>) =>
      `<methodCall><methodName>${fn}</methodName><params><param><value>OpaqueRef:t</value>` +
      `</param><param><value><struct>${
        Object.entries(args).map(([k, v]) =>
          `<member><name>${k}</name><value>${v}</value></member>`
        )
          .join("")
      }</struct></value></param></params></methodCall>`;
    const pluginCopy = spawn(plugin, [call("copy", { src, dest: `${mnt}/b.raw` })]);
    // 3. A detached copy: its worker (a session of its own) and the worker's copy child.
    const answer = await callPlugin(plugin, "start", { src, dest: `${mnt}/c.raw` }, {
      SPARSE_DD_PLUGIN_STATE_DIR: state,
      ...pluginEnv,
    });
    strictEqual(answer.status, "Success", JSON.stringify(answer.error) + answer.stderr);
    const id = answer.value!;

    const directPids = await waitFor("the copy to exec the runtime", async () => {
      const t = await tree(direct.pid);
      return (await exeName(direct.pid)) === "sparse_dd" ? t : undefined;
    });
    const pluginPids = await waitFor("the plugin's copy child", async () => {
      const t = await tree(pluginCopy.pid);
      return t.length >= 2 ? t : undefined;
    });
    const worker = await waitFor("the detached worker's copy child", async () => {
      const s = JSON.parse(await Deno.readTextFile(`${state}/${id}/state.json`).catch(() => "{}"));
      return s.pid && s.childPid ? [s.pid as number, s.childPid as number] : undefined;
    });
    const all = [...directPids, ...pluginPids, ...worker];
    watched.push(...all);
    for (const pid of all) strictEqual(await exeName(pid), "sparse_dd", `pid ${pid}`);
    // The copy threads are Workers of the same process, not processes.
    strictEqual(directPids.length, 1, `the direct copy is one process: ${directPids}`);
    // It runs on the glibc installed with it, not the host's.
    const maps = await Deno.readTextFile(`/proc/${direct.pid}/maps`);
    ok(maps.includes(`${LIBEXEC}/sparse_dd.d/lib/libc.so.6`), "the shipped libc is mapped");

    // xapi restarted: it kills what it recorded (the direct copy's pid); the plugin's processes
    // would pass the same check.
    deepStrictEqual(xapiKillall(all, CONFIGURED), all);
    await sh("fsfreeze", ["-u", mnt]);
    frozen = false;
    strictEqual((await direct.status).signal, "SIGKILL");
  } finally {
    clearTimeout(watchdog);
    if (frozen) await sh("fsfreeze", ["-u", mnt]).catch(() => {});
    for (const c of started) {
      try {
        c.kill("SIGKILL");
      } catch { /* already gone */ }
      await c.status;
    }
    // The detached worker is no child of ours: wait until it is gone before unmounting.
    for (const pid of watched) {
      for (let i = 0; i < 200 && (await exeName(pid)) !== undefined; i++) {
        if (i === 0) {
          try {
            Deno.kill(pid, "SIGKILL");
          } catch { /* gone meanwhile */ }
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    await sh("umount", [mnt]).catch(() => sh("umount", ["-l", mnt]));
  }
});

Deno.test("an installed copy opens nothing of the build and creates nothing but its destination (no Deno cache, no HOME)", async () => {
  const { dir, root, build, checkoutWas } = await getSetup();
  const src = `${dir}/t4-src.raw`;
  const dest = `${dir}/t4-dst.raw`;
  await sparseFile(src, 4 << 20);
  const prefix = `${dir}/t4-trace`;
  const run = await bare("strace", [
    "-f",
    "-ff",
    "-qq",
    "-o",
    prefix,
    "-e",
    "trace=open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,link," +
    "linkat,symlink,symlinkat,truncate,execve",
    `${root}/${CONFIGURED}`,
    "-machine",
    "-src",
    src,
    "-dest",
    dest,
    "-good-ciphersuites",
    "X",
  ]);
  strictEqual(run.code, 0, run.stderr);
  ok(await sameBytes(src, dest));
  const lines: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.name.startsWith("t4-trace.")) {
      lines.push(...(await Deno.readTextFile(`${dir}/${e.name}`)).split("\n"));
    }
  }
  ok(lines.length > 10, "strace recorded the run");
  const forbidden = [checkoutWas, build.checkout, ROOT, Deno.execPath(), "/root/.cache", "/.tools"];
  for (const line of lines) {
    for (const path of line.match(/"[^"]*"/g) ?? []) {
      for (const bad of forbidden) ok(!path.includes(bad), `touched ${bad}: ${line}`);
    }
    const writes = /O_CREAT|O_WRONLY|O_RDWR|O_TRUNC/.test(line) ||
      /^(creat|mkdir|rename|unlink|link|symlink|truncate)/.test(line);
    if (!writes) continue;
    const path = /"([^"]*)"/.exec(line)?.[1] ?? "";
    ok(
      path === dest || path === "/dev/null" || path.startsWith("/dev/null/"),
      `wrote outside the destination: ${line}`,
    );
  }
});

Deno.test("the release tarball installs and works with only /bin/sh tools, no node, npm or Deno", async () => {
  const { dir, build, pluginEnv } = await getSetup();
  const host = `${dir}/t5-host`;
  const root = `${dir}/t5-root`;
  await Deno.mkdir(host);
  await dom0Tree(root);
  const tar = await bare("tar", ["xzf", build.tarball], {}, host);
  strictEqual(tar.code, 0, tar.stderr);
  const top = `sparse_dd-${build.version}-linux-x86_64`;
  const inst = await bare("sh", [`${top}/install.sh`], { DESTDIR: root }, host);
  strictEqual(inst.code, 0, inst.stderr);
  const src = `${dir}/t5-src.raw`;
  await sparseFile(src, 4 << 20, 5);
  const copy = await bare(`${root}${CONFIGURED}`, ["-src", src, "-dest", `${dir}/t5-dst.raw`]);
  strictEqual(copy.code, 0, copy.stderr);
  ok(await sameBytes(src, `${dir}/t5-dst.raw`));
  const answer = await callPlugin(`${root}/etc/xapi.d/plugins/sparse_dd`, "copy", {
    src,
    dest: `${dir}/t5-plugin.raw`,
  }, pluginEnv);
  strictEqual(answer.status, "Success", JSON.stringify(answer.error));
  ok(await sameBytes(src, `${dir}/t5-plugin.raw`));
});
