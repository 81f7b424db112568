import { deepStrictEqual, match, strictEqual, throws } from "node:assert/strict";
import { coreScript, LOADER } from "../../scripts/eval_bundle.ts";
import { withTempDir } from "../_support/helpers.ts";

type Run = (meta: { main: boolean; url: string }) => Promise<unknown>;

/** Evaluates `coreScript(bundle)` as the loader does; the function it gives. */
function evaluate(bundle: string): Run {
  return (0, eval)(coreScript(bundle)) as Run;
}

Deno.test("the evaluated bundle sees the loader's import.meta.main and .url, and awaits at its top level", async () => {
  const seen: unknown[] = [];
  (globalThis as Record<string, unknown>).__seen = seen;
  try {
    const run = evaluate(
      "// src/x.ts\nconst t = await Promise.resolve(7);\n" +
        "globalThis.__seen.push(import.meta.main, import.meta.url, t);\n" +
        'if (import.meta.main) globalThis.__seen.push("main");\n',
    );
    await run({ main: true, url: "file:///opt/sparse_dd.js" });
    await run({ main: false, url: "file:///w.js" });
    deepStrictEqual(seen, [true, "file:///opt/sparse_dd.js", 7, "main", false, "file:///w.js", 7]);
  } finally {
    delete (globalThis as Record<string, unknown>).__seen;
  }
});

Deno.test("the evaluated bundle is strict code, as a module is, and its declarations stay its own", async () => {
  const run = evaluate("undeclared = 1;\n");
  await run({ main: true, url: "file:///x.js" }).then(
    () => {
      throw new Error("sloppy: an assignment to an undeclared name passed");
    },
    (err) => match(String(err), /ReferenceError/),
  );
  await evaluate("var local_to_the_bundle = 1; function f() {}\n")({ main: true, url: "" });
  strictEqual("local_to_the_bundle" in globalThis, false);
  strictEqual("f" in globalThis, false);
});

Deno.test("a bundle with a static import or export, or other import.meta uses, is refused with its line", () => {
  for (
    const [bundle, why] of [
      ['// a\nimport { x } from "./x.js";\n', /static import or export at line 2/],
      ['import "./side.js";\n', /static import or export at line 1/],
      ["const a = 1;\nexport { a };\n", /static import or export at line 2/],
      ["\n\nconst r = import.meta.resolve('./x');\n", /import\.meta other than .* line 3/],
      ["const m = import.meta;\n", /import\.meta other than/],
    ] as const
  ) {
    throws(() => coreScript(bundle), why, bundle);
  }
  // Dynamic imports are expressions, and fine.
  coreScript('const tls = await import("node:tls");\n  import("node:net");\n');
});

Deno.test("the loader runs the core beside it as the main module; without the core, one line and exit 1", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/sparse_dd.js`, LOADER);
    await Deno.writeTextFile(
      `${dir}/sparse_dd.core.js`,
      coreScript(
        'const tls = await import("node:tls");\n' +
          "console.log(import.meta.main, import.meta.url, typeof tls.connect, Deno.args.join());\n",
      ),
    );
    const run = () =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", "--quiet", "--no-config", `${dir}/sparse_dd.js`, "-a", "b"],
        env: { DENO_DIR: "/dev/null/sparse_dd" },
      }).output();
    const ran = await run();
    strictEqual(ran.code, 0, new TextDecoder().decode(ran.stderr));
    strictEqual(
      new TextDecoder().decode(ran.stdout),
      `true file://${dir}/sparse_dd.js function -a,b\n`,
    );
    await Deno.remove(`${dir}/sparse_dd.core.js`);
    const broken = await run();
    strictEqual(broken.code, 1);
    strictEqual(
      new TextDecoder().decode(broken.stderr),
      `sparse_dd: cannot read ${dir}/sparse_dd.core.js: No such file or directory\n`,
    );
  });
});
