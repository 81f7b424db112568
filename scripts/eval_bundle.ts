/**
 * The shipped form of the bundle: a small module (`sparse_dd.js`) that reads the bundle's code
 * (`sparse_dd.core.js`) and evaluates it as one function.
 *
 * Why: Deno parses every module it loads (with swc, to build the module graph) before V8 sees it,
 * and the installed launcher runs with no Deno cache (nothing but the destination is written), so
 * a 320 KB module cost ~50 ms of parsing on every run: `--version` took 120-130 ms as installed
 * against 63-66 ms for an empty script. Code handed to `eval` is only V8's to parse, lazily: the
 * same `--version` takes 73-80 ms (docs/deploy.md). The bundle has no static imports (it is
 * self-contained) and its dynamic ones (`node:tls`, …) work from evaluated code.
 *
 * Usage: `deno run -R -W scripts/eval_bundle.ts BUNDLE DIR` writes DIR/sparse_dd.js and
 * DIR/sparse_dd.core.js.
 *
 * @module
 */

/** The name of the evaluated file, beside the loader module. */
export const CORE_NAME = "sparse_dd.core.js";
/** The name of the loader module, the one `deno run` runs. */
export const LOADER_NAME = "sparse_dd.js";

/** The parameter that stands for the loader's `import.meta` inside the evaluated function. */
const META = "__sparse_dd_meta";

/**
 * The loader module: reads {@link CORE_NAME} beside itself, evaluates it to a function and runs it
 * with its own `import.meta.main` and `import.meta.url`, so that `--threads` Workers (started from
 * `import.meta.url`) load this module again and run the same code.
 */
export const LOADER =
  `// sparse_dd (made by scripts/eval_bundle.ts): runs ${CORE_NAME}, the bundle as one function,
// through eval, so that Deno does not parse 320 KB of JavaScript before V8 does on every start.
const core = new URL("./${CORE_NAME}", import.meta.url);
let code;
try {
  code = Deno.readTextFileSync(core);
} catch (err) {
  const why = err.message.replace(/ \\(os error \\d+\\).*$/s, "");
  console.error(\`sparse_dd: cannot read \${decodeURIComponent(core.pathname)}: \${why}\`);
  Deno.exit(1);
}
await (0, eval)(code)({ main: import.meta.main, url: import.meta.url });
`;

/**
 * The bundle (one ES module with no static imports or exports) as the source of one async function
 * expression taking the loader's `{ main, url }` for `import.meta`. Strict, as modules are.
 *
 * Throws if the bundle has a static `import`/`export` or uses `import.meta` for more than `main`
 * and `url`: neither would mean the same inside a function.
 *
 * @example
 * ```ts
 * import { coreScript } from "./eval_bundle.ts";
 * const run = (0, eval)(coreScript("globalThis.ran = import.meta.main;\n"));
 * await run({ main: true, url: "file:///x.js" });
 * ```
 */
export function coreScript(bundle: string): string {
  const lineOf = (m: RegExpExecArray) => bundle.slice(0, m.index).split("\n").length;
  const statement = /^\s*(import\s*[\w{*"']|export\s)/m.exec(bundle);
  if (statement) {
    throw new Error(`the bundle has a static import or export at line ${lineOf(statement)}`);
  }
  const other = /\bimport\.meta\b(?!\.(main|url)\b)/.exec(bundle);
  if (other) {
    throw new Error(
      `the bundle uses import.meta other than .main and .url at line ${lineOf(other)}`,
    );
  }
  const body = bundle.replace(/\bimport\.meta\b/g, META);
  return `(async function (${META}) {\n"use strict";\n${body}\n})\n`;
}

if (import.meta.main) {
  const [bundlePath, dir] = Deno.args;
  if (!bundlePath || !dir) {
    console.error("usage: eval_bundle.ts BUNDLE DIR");
    Deno.exit(2);
  }
  const core = coreScript(Deno.readTextFileSync(bundlePath));
  Deno.writeTextFileSync(`${dir}/${CORE_NAME}`, core);
  Deno.writeTextFileSync(`${dir}/${LOADER_NAME}`, LOADER);
}
