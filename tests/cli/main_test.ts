import { deepStrictEqual, match, ok, strictEqual } from "node:assert/strict";
import { parse } from "../../src/cli/flags.ts";
import { parseBytes } from "../../src/cli/values.ts";
import { ExitCode, SparseDdError } from "../../src/core/errors.ts";
import {
  mainCommand,
  readMachineStream,
  runMain,
  sameBytes,
  withTempDir,
} from "../_support/helpers.ts";

const NO_CONFIG = ["-config", "/nonexistent/sparse_dd.conf"];
const MiB = 1024 * 1024;

async function makeSparse(path: string, size: number, writes: Array<[number, number]>) {
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  await f.truncate(size);
  for (const [at, len] of writes) {
    await f.seek(at, Deno.SeekMode.Start);
    await f.write(new Uint8Array(len).fill(0x5a));
  }
  f.close();
}

async function parseError(argv: string[]): Promise<SparseDdError> {
  try {
    await parse([...argv, ...NO_CONFIG]);
  } catch (e) {
    if (e instanceof SparseDdError) return e;
    throw e;
  }
  throw new Error(`parse(${argv.join(" ")}) did not fail`);
}

Deno.test("xapi's exact argv parses, single-dash flags and -good-ciphersuites included", async () => {
  const r = await parse([
    "-machine",
    "-src",
    "/dev/sm/a",
    "-dest",
    "/dev/sm/b",
    "-size",
    "4294967296",
    "-good-ciphersuites",
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256",
    "-prezeroed",
    "-base",
    "/dev/sm/c",
    ...NO_CONFIG,
  ]);
  ok(r.action === "copy");
  strictEqual(r.options.size, 4294967296);
  ok(r.options.machine && r.options.prezeroed);
  strictEqual(r.options.base, "/dev/sm/c");
  // Used for https destinations only; a local copy just ignores it, as xapi's tool does.
  ok(!r.options.inert.some((i) => i.startsWith("-good-ciphersuites")));
  strictEqual(r.options.remote, undefined);
});

Deno.test("double-dash spellings and --name=value work too", async () => {
  const r = await parse(["--src=/a", "--dest", "/b", "--size=1M", "--prezeroed", ...NO_CONFIG]);
  ok(r.action === "copy");
  strictEqual(r.options.size, MiB);
  ok(r.options.prezeroed);
});

Deno.test("bad values are usage errors (exit 1) naming the flag and the value", async () => {
  for (const size of ["-5", "abc", "1.5", ""]) {
    const e = await parseError(["-src", "/a", "-dest", "/b", "-size", size]);
    strictEqual(e.exitCode, ExitCode.Usage);
    match(e.message, /-size/);
  }
  strictEqual((await parseError(["-src", "/a"])).message, "missing -dest (see sparse_dd --help)");
  strictEqual((await parseError(["-dest", "/a"])).exitCode, ExitCode.Usage);
  strictEqual(
    (await parseError(["-src", "/a", "-dest", "/b", "-quantum", "1000"])).exitCode,
    ExitCode.Usage,
  );
  strictEqual((await parseError(["-src", "/a", "-dest", "/b", "stray"])).exitCode, ExitCode.Usage);
  strictEqual(
    (await parseError(["-src", "/a", "-dest", "/b", "-verify-dest"])).exitCode,
    ExitCode.Usage,
  );
});

Deno.test("an unknown flag is exit 2", async () => {
  const e = await parseError(["-src", "/a", "-dest", "/b", "-frobnicate"]);
  strictEqual(e.exitCode, ExitCode.UnknownFlag);
  match(e.message, /unknown option '-frobnicate'/);
});

Deno.test("-size -1 means the size of the source, as xapi's 'unset'", async () => {
  const r = await parse(["-src", "/a", "-dest", "/b", "-size", "-1", ...NO_CONFIG]);
  ok(r.action === "copy" && r.options.size === undefined);
  strictEqual(parseBytes("2G", "-size"), 2 * 1024 * MiB);
});

Deno.test("configuration files win over argv; fragments are read in sorted order", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(
      `${dir}/sparse_dd.conf`,
      '# admin\nprezeroed = false\nnice = "5"\nbogus = 1\n',
    );
    await Deno.mkdir(`${dir}/sparse_dd.conf.d`);
    await Deno.writeTextFile(`${dir}/sparse_dd.conf.d/20-b`, "quantum = 65536\n");
    await Deno.writeTextFile(
      `${dir}/sparse_dd.conf.d/10-a`,
      "quantum = 4096\nunbuffered = false\n",
    );
    const r = await parse([
      "-src",
      "/a",
      "-dest",
      "/b",
      "-prezeroed",
      "-quantum",
      "512",
      "-config",
      `${dir}/sparse_dd.conf`,
    ]);
    ok(r.action === "copy");
    strictEqual(r.options.prezeroed, false);
    strictEqual(r.options.nice, 5);
    strictEqual(r.options.quantum, 65536);
    strictEqual(r.options.unbuffered, false);
    deepStrictEqual(r.configNotes, [`${dir}/sparse_dd.conf:4: ignoring unknown key 'bogus'`]);
  });
});

Deno.test("-machine under xapi's environment: only framed Progress records, then the end record", async () => {
  await withTempDir(async (dir) => {
    await makeSparse(`${dir}/src`, 64 * MiB, [[0, MiB], [10 * MiB, 3 * MiB], [60 * MiB, 4096]]);
    const res = await runMain([
      "-machine",
      "-src",
      `${dir}/src`,
      "-dest",
      `${dir}/dst`,
      "-size",
      String(64 * MiB),
      "-good-ciphersuites",
      "ECDHE-RSA-AES256-GCM-SHA384",
      ...NO_CONFIG,
    ]);
    strictEqual(res.code, 0, res.stderr);
    const stream = readMachineStream(res.stdout);
    ok(stream.ended, "end record");
    strictEqual(stream.trailing, 0, "nothing after the end record");
    strictEqual(stream.percents[0], 0);
    strictEqual(stream.percents[stream.percents.length - 1], 100);
    for (let i = 1; i < stream.percents.length; i++) {
      ok(stream.percents[i] > stream.percents[i - 1]);
    }
    ok(await sameBytes(`${dir}/src`, `${dir}/dst`));
  });
});

Deno.test("--json prints stats whose byte counts add up", async () => {
  await withTempDir(async (dir) => {
    await makeSparse(`${dir}/src`, 8 * MiB, [[MiB, 100000]]);
    const res = await runMain([
      "-src",
      `${dir}/src`,
      "-dest",
      `${dir}/dst`,
      "--json",
      ...NO_CONFIG,
    ]);
    strictEqual(res.code, 0, res.stderr);
    const s = JSON.parse(new TextDecoder().decode(res.stdout));
    strictEqual(s.size, 8 * MiB);
    strictEqual(s.allocation, "seek-data");
    strictEqual(s.dataBytes + s.zeroedBytes + s.skippedBytes + s.unchangedBytes, s.size);
    ok(s.bytesRead <= MiB, `read ${s.bytesRead}`);
    ok(s.prezeroed, "a new file is known zero");
  });
});

Deno.test("bad input: one clear stderr line naming the path, the documented exit code, nothing written", async () => {
  await withTempDir(async (dir) => {
    await makeSparse(`${dir}/src`, MiB, [[0, 4096]]);
    const cases: Array<[string[], number, RegExp]> = [
      [
        ["-src", `${dir}/missing`, "-dest", `${dir}/d1`],
        ExitCode.Source,
        /cannot open .*missing: No such file or directory/,
      ],
      [["-src", dir, "-dest", `${dir}/d2`], ExitCode.Source, /Is a directory/],
      [
        ["-src", `${dir}/src`, "-dest", `${dir}/d4`, "-size", "-7"],
        ExitCode.Usage,
        /invalid -size value '-7'/,
      ],
      [
        ["-src", `${dir}/src`, "-dest", `${dir}/d5`, "-size", "lots"],
        ExitCode.Usage,
        /invalid -size value 'lots'/,
      ],
      [
        ["-src", `${dir}/src`, "-dest", `${dir}/nodir/d6`],
        ExitCode.Destination,
        /cannot open .*nodir\/d6/,
      ],
      [
        ["-src", `${dir}/src`, "-dest", `${dir}/d7`, "-bogus"],
        ExitCode.UnknownFlag,
        /unknown option '-bogus'/,
      ],
      [["-dest", `${dir}/d8`], ExitCode.Usage, /missing -src/],
    ];
    for (const [args, code, pattern] of cases) {
      const res = await runMain([...args, ...NO_CONFIG]);
      strictEqual(res.code, code, `${args.join(" ")}: ${res.stderr}`);
      const lines = res.stderr.trim().split("\n");
      strictEqual(lines.length, 1, `one line: ${res.stderr}`);
      match(lines[0], /^sparse_dd: /);
      match(lines[0], pattern);
      strictEqual(res.stdout.length, 0);
    }
    for (const d of ["d1", "d2", "d4", "d5", "d7", "d8"]) {
      ok(
        !(await Deno.stat(`${dir}/${d}`).then(() => true, () => false)),
        `${d} must not be created`,
      );
    }
  });
});

Deno.test("-size larger than the source copies the source's size, as xapi's sparse_dd (storage migration rounds up)", async () => {
  await withTempDir(async (dir) => {
    await makeSparse(`${dir}/src`, MiB, [[0, 4096], [MiB - 4096, 4096]]);
    // The destination is the remote VDI, rounded up: its bytes past the source's size stay.
    await Deno.writeFile(`${dir}/dst`, new Uint8Array(2 * MiB).fill(7));
    const res = await runMain([
      "-machine",
      "-src",
      `${dir}/src`,
      "-dest",
      `${dir}/dst`,
      "-size",
      String(2 * MiB),
      ...NO_CONFIG,
    ]);
    strictEqual(res.code, 0, res.stderr);
    ok(readMachineStream(res.stdout).ended);
    strictEqual(res.stderr, "", "under -machine the note goes to the system log");
    ok(await sameBytes(`${dir}/src`, `${dir}/dst`, MiB));
    const tail = (await Deno.readFile(`${dir}/dst`)).subarray(MiB);
    strictEqual(tail.length, MiB);
    ok(tail.every((b) => b === 7), "nothing written past the source's size");
    const human = await runMain([
      "-src",
      `${dir}/src`,
      "-dest",
      `${dir}/dst2`,
      "-size",
      String(2 * MiB),
      ...NO_CONFIG,
    ]);
    strictEqual(human.code, 0, human.stderr);
    match(human.stderr, /-size 2097152 is larger than the source .*src: copying its 1048576 bytes/);
    strictEqual((await Deno.stat(`${dir}/dst2`)).size, MiB);
  });
});

Deno.test("an invalid nice or ionice value in the configuration is noted and ignored, never a failure", async () => {
  await withTempDir(async (dir) => {
    await makeSparse(`${dir}/src`, MiB, [[0, 4096]]);
    await Deno.writeTextFile(
      `${dir}/sparse_dd.conf`,
      "nice = ten\nionice_class = 9\nionice_class_data = x\n",
    );
    const conf = ["-config", `${dir}/sparse_dd.conf`];
    const r = await parse(["-src", "/a", "-dest", "/b", ...conf]);
    ok(r.action === "copy");
    deepStrictEqual(
      [r.options.nice, r.options.ioniceClass, r.options.ioniceClassData],
      [undefined, undefined, undefined],
    );
    deepStrictEqual(r.configNotes, [
      "ignoring ionice_class 9: the classes are 0 to 3",
      "ignoring invalid value for nice: 'ten' (expected an integer)",
      "ignoring invalid value for ionice_class_data: 'x' (expected an integer)",
    ]);
    const res = await runMain(["-src", `${dir}/src`, "-dest", `${dir}/dst`, ...conf]);
    strictEqual(res.code, 0, res.stderr);
    match(res.stderr, /ignoring invalid value for nice: 'ten'/);
    ok(await sameBytes(`${dir}/src`, `${dir}/dst`));
  });
});

Deno.test("under -machine stderr holds only the failure: notes (inert flags, config, discovery) go to syslog", async () => {
  await withTempDir(async (dir) => {
    await makeSparse(`${dir}/src`, MiB, [[0, 4096]]);
    await Deno.writeTextFile(`${dir}/sparse_dd.conf`, "bogus = 1\nnice = x\n");
    const xapiArgv = (dest: string) => [
      "-machine",
      "-src",
      `${dir}/src`,
      "-dest",
      dest,
      "-size",
      String(MiB),
      "-good-ciphersuites",
      "ECDHE-RSA-AES256-GCM-SHA384",
      "-ssl-legacy",
      "-config",
      `${dir}/sparse_dd.conf`,
    ];
    const ok0 = await runMain(xapiArgv(`${dir}/dst`));
    strictEqual(ok0.code, 0, ok0.stderr);
    strictEqual(ok0.stderr, "");
    const bad = await runMain(xapiArgv(`${dir}/nodir/dst`));
    strictEqual(bad.code, ExitCode.Destination);
    strictEqual(bad.stderr.trim().split("\n").length, 1, bad.stderr);
    match(bad.stderr, /^sparse_dd: cannot open .*nodir\/dst/);
    // Without -machine, people see the notes.
    const human = await runMain(xapiArgv(`${dir}/dst3`).slice(1));
    match(human.stderr, /not applicable here: -ssl-legacy/);
    match(human.stderr, /ignoring unknown key 'bogus'/);
  });
});

Deno.test("an unwritable destination is a destination error naming it", async () => {
  await withTempDir(async (dir) => {
    await makeSparse(`${dir}/src`, MiB, [[0, 4096]]);
    // Root ignores file modes, so use a file no one may write: /proc/version.
    const res = await runMain(["-src", `${dir}/src`, "-dest", `/proc/version`, ...NO_CONFIG]);
    strictEqual(res.code, ExitCode.Destination, res.stderr);
    match(res.stderr, /^sparse_dd: cannot (open|write) \/proc\/version/);
  });
});

Deno.test("SIGTERM stops a copy promptly: non-zero exit, no end record", async () => {
  await withTempDir(async (dir) => {
    const size = 512 * MiB;
    await makeSparse(`${dir}/src`, size, []);
    const f = await Deno.open(`${dir}/src`, { write: true });
    const block = new Uint8Array(4 * MiB).fill(7);
    for (let off = 0; off < size; off += block.length) await f.write(block);
    f.close();
    const child = mainCommand([
      "-machine",
      "-src",
      `${dir}/src`,
      "-dest",
      `${dir}/dst`,
      ...NO_CONFIG,
    ]).spawn();
    const reader = child.stdout.getReader();
    const chunks: Uint8Array[] = [];
    // Wait for the first record, then ask it to stop.
    const first = await reader.read();
    if (first.value) chunks.push(first.value);
    child.kill("SIGTERM");
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      chunks.push(value);
    }
    const status = await child.status;
    const stderr = new TextDecoder().decode(await new Response(child.stderr).arrayBuffer());
    strictEqual(status.code, ExitCode.Terminated, stderr);
    const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
    let o = 0;
    for (const c of chunks) {
      all.set(c, o);
      o += c.length;
    }
    const stream = readMachineStream(all);
    ok(!stream.ended, "no end record after SIGTERM");
    match(stderr, /stopped by SIGTERM/);
  });
});

Deno.test("--help documents exit codes and worked examples; --version prints a version", async () => {
  const help = await runMain(["--help"]);
  strictEqual(help.code, 0);
  const text = new TextDecoder().decode(help.stdout);
  match(text, /Exit codes: 0 done; 1 missing/);
  match(text, /Examples:/);
  const v = await runMain(["-version"]);
  match(new TextDecoder().decode(v.stdout), /^sparse_dd \d+\.\d+\.\d+/);
});
