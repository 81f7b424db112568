import { match, ok, strictEqual } from "node:assert/strict";
import { parse, usage } from "../../src/cli/flags.ts";
import { ExitCode, SparseDdError } from "../../src/core/errors.ts";

const NO_CONFIG = ["-config", "/nonexistent/sparse_dd.conf"];
const BASE = ["-src", "/a", "-dest", "/b"];

async function options(argv: string[]) {
  const r = await parse([...argv, ...NO_CONFIG]);
  if (r.action !== "copy") throw new Error(`parse(${argv.join(" ")}) did not copy`);
  return r.options;
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

Deno.test("-p and a bare --progress turn the bar on; a following accepted value is taken", async () => {
  strictEqual((await options([...BASE, "-p"])).progress, "bar");
  strictEqual((await options(["-p", ...BASE])).progress, "bar");
  strictEqual((await options(["--progress", ...BASE])).progress, "bar");
  strictEqual((await options([...BASE, "-progress"])).progress, "bar");
  strictEqual((await options([...BASE, "-progress", "none"])).progress, "none");
  strictEqual((await options([...BASE, "--progress=auto"])).progress, "auto");
  strictEqual((await options(BASE)).progress, "auto");
  const e = await parseError([...BASE, "--progress=sometimes"]);
  match(e.message, /-progress value 'sometimes'/);
});

Deno.test("--destination-is-zero is -prezeroed (nbdcopy's name)", async () => {
  ok((await options([...BASE, "--destination-is-zero"])).prezeroed);
  ok((await options([...BASE, "-destination-is-zero"])).prezeroed);
  ok(!(await options(BASE)).prezeroed);
});

Deno.test("a value-taking flag followed by another flag is an error naming the first", async () => {
  for (const flag of ["-size", "--base", "-nbd-export", "-stats-file"]) {
    const e = await parseError([flag, "-src", "/a", "-dest", "/b"]);
    strictEqual(e.exitCode, ExitCode.Usage);
    match(
      e.message,
      new RegExp(
        `^option ${flag.replace(/^--/, "-")} needs a value .* followed by the option -src`,
      ),
    );
  }
  // Negative numbers are values (xapi passes -size -1); so is anything after --name=.
  strictEqual((await options([...BASE, "-size", "-1"])).size, undefined);
  strictEqual((await options([...BASE, "-nbd-export=-odd"])).nbdExport, "-odd");
});

Deno.test("an out-of-range -threads is refused with the range, not clamped", async () => {
  const cases: Array<[string, string, RegExp]> = [
    ["-threads", "0", /from 1 to 16/],
    ["-threads", "99", /from 1 to 16/],
    ["-threads", "-1", /from 1 to 16/],
  ];
  for (const [flag, value, range] of cases) {
    const e = await parseError([...BASE, flag, value]);
    strictEqual(e.exitCode, ExitCode.Usage, `${flag} ${value}`);
    match(e.message, new RegExp(`invalid ${flag} value '${value}'`));
    match(e.message, range);
  }
  strictEqual((await options([...BASE, "-threads", "16"])).threads, 16);
});

Deno.test("byte counts take suffixes, and a bad one says which are accepted", async () => {
  strictEqual((await options([...BASE, "-size", "4G"])).size, 4 * 1024 ** 3);
  strictEqual((await options([...BASE, "--size=512KiB"])).size, 512 * 1024);
  const e = await parseError([...BASE, "-size", "4X"]);
  match(e.message, /suffix K, M, G or T/);
});

Deno.test("--help: main flags first, then xapi's flags without effect, then diagnostics", () => {
  const text = usage();
  const at = (s: string) => {
    const i = text.indexOf(s);
    ok(i >= 0, `--help lacks ${s}`);
    return i;
  };
  ok(at("\n  -src ") < at("\nAccepted for compatibility"));
  ok(at("\nAccepted for compatibility") < at("\n  -legacy-ciphersuites "));
  ok(at("\n  -ssl-legacy ") < at("\nFor tests, diagnosis"));
  ok(at("\nFor tests, diagnosis") < at("\n  -tap-ctl "));
  ok(at("\nFor tests, diagnosis") < at("\n  -quantum "));
  ok(at("\n  -threads ") < at("\nAccepted for compatibility"));
  // Every accepted source and destination form, and the size suffixes.
  for (const form of ["VHD", "nbd://", "nbd+unix://", "http://", "https://", "block device"]) {
    at(form);
  }
  match(text, /4G = 4294967296/);
  match(text, /--destination-is-zero/);
  match(text, /-p/);
  for (const line of text.split("\n")) ok(line.length <= 100, `too long: ${line}`);
});
