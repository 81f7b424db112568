import { deepStrictEqual, match, rejects, strictEqual, throws } from "node:assert/strict";
import { loadConfig, parseConfig } from "../../src/cli/config.ts";
import { ExitCode, SparseDdError } from "../../src/core/errors.ts";
import { runMain, sh, withTempDir } from "../_support/helpers.ts";

Deno.test("key = value lines with comments, quotes and dashes are parsed with their line", () => {
  deepStrictEqual(parseConfig("# c\n\n-nice = 3 # why\nsni='h'\n", "f"), [
    { key: "nice", value: "3", where: "f:3" },
    { key: "sni", value: "h", where: "f:4" },
  ]);
});

Deno.test("a line without '=' is an error naming the file and line", () => {
  throws(
    () => parseConfig("ok = 1\nbroken\n", "/etc/sparse_dd.conf"),
    (e) => e instanceof SparseDdError && e.message.startsWith("/etc/sparse_dd.conf:2:"),
  );
});

Deno.test("missing files are fine; fragments follow the main file in sorted order", async () => {
  deepStrictEqual(await loadConfig("/nonexistent/x.conf"), []);
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/c`, "a = 1\n");
    await Deno.mkdir(`${dir}/c.d`);
    await Deno.writeTextFile(`${dir}/c.d/2`, "a = 3\n");
    await Deno.writeTextFile(`${dir}/c.d/1`, "a = 2\n");
    const keys = (await loadConfig(`${dir}/c`)).map((e) => e.value);
    deepStrictEqual(keys, ["1", "2", "3"]);
    await Deno.writeTextFile(`${dir}/bad`, "nonsense\n");
    await rejects(loadConfig(`${dir}/bad`), SparseDdError);
    // Missing beside files that exist; a directory named with a trailing slash, or relatively.
    deepStrictEqual(await loadConfig(`${dir}/none.conf`), []);
    deepStrictEqual((await loadConfig(`${dir}/none.conf`, `${dir}/c.d/`)).map((e) => e.value), [
      "2",
      "3",
    ]);
    const cwd = Deno.cwd();
    Deno.chdir(dir);
    try {
      deepStrictEqual((await loadConfig("c")).map((e) => e.value), ["1", "2", "3"]);
    } finally {
      Deno.chdir(cwd);
    }
  });
});

Deno.test("a configuration that is a never-ending character device or a FIFO is refused at once", async () => {
  await withTempDir(async (dir) => {
    await sh("mkfifo", [`${dir}/fifo`]);
    for (const config of ["/dev/zero", "/dev/urandom", `${dir}/fifo`]) {
      const res = await runMain(
        ["-src", "/dev/null", "-dest", `${dir}/out`, "-config", config],
        { timeoutMs: 30_000 },
      );
      strictEqual(res.code, ExitCode.Usage, `${config}: ${res.stderr}`);
      match(res.stderr, new RegExp(`^sparse_dd: cannot read configuration ${config}: it is a`));
    }
    // /dev/null stays the way to say "no configuration".
    const ok = await runMain(["-src", "/dev/null", "-dest", `${dir}/out`, "-config", "/dev/null"]);
    strictEqual(ok.code, 0, ok.stderr);
  });
});

Deno.test("a configured value that overrides a different one on the command line is noted on stderr", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeFile(`${dir}/src`, new Uint8Array(8192).fill(1));
    await Deno.writeTextFile(`${dir}/conf`, "size = 4096\nunbuffered = false\n");
    const res = await runMain([
      "-src",
      `${dir}/src`,
      "-dest",
      `${dir}/out`,
      "-size",
      "8192",
      "-unbuffered",
      "false",
      "-config",
      `${dir}/conf`,
    ]);
    strictEqual(res.code, 0, res.stderr);
    match(
      res.stderr,
      new RegExp(`${dir}/conf:1: size = 4096 overrides -size 8192 of the command line`),
    );
    // The same value twice is no override.
    strictEqual(/unbuffered = false overrides/.test(res.stderr), false, res.stderr);
    strictEqual((await Deno.stat(`${dir}/out`)).size, 4096, "the configuration wins, as in xapi");
  });
});
