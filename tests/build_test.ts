import { match, ok, strictEqual } from "node:assert/strict";
import {
  readMachineStream,
  ROOT,
  sameBytes,
  withTempDir,
  xapiCommand,
} from "./_support/helpers.ts";

Deno.test("scripts/build.sh always produces a bundle that runs as xapi runs sparse_dd", async () => {
  const build = await new Deno.Command("bash", {
    args: [`${ROOT}/scripts/build.sh`],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const log = new TextDecoder().decode(build.stderr);
  strictEqual(build.code, 0, log);
  const bundle = `${ROOT}/dist/sparse_dd.bundle.js`;
  ok((await Deno.stat(bundle)).size > 0);
  // Either the binary was built or the script said clearly why not.
  const binary = await Deno.stat(`${ROOT}/dist/sparse_dd`).then(() => true, () => false);
  if (!binary) {
    match(log, /deno compile could not build dist\/sparse_dd: it needs the denort runtime/);
  }
  await withTempDir(async (dir) => {
    const src = `${dir}/src.raw`;
    const f = await Deno.open(src, { write: true, create: true });
    await f.truncate(16 << 20);
    await f.seek(5 << 20, Deno.SeekMode.Start);
    await f.write(new Uint8Array(100000).fill(3));
    f.close();
    const [cmd, ...pre] = binary
      ? [`${ROOT}/dist/sparse_dd`]
      : [Deno.execPath(), "run", "-A", "--quiet", bundle];
    const out = await xapiCommand(
      cmd,
      [...pre, "-machine", "-src", src, "-dest", `${dir}/dst.raw`, "-size", String(16 << 20)],
    ).output();
    strictEqual(out.code, 0, new TextDecoder().decode(out.stderr));
    ok(readMachineStream(out.stdout).ended);
    ok(await sameBytes(src, `${dir}/dst.raw`));
  });
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
