import { deepStrictEqual, strictEqual } from "node:assert/strict";
import { parseArgs as nodeParseArgs } from "node:util";
import { ArgsError, parseArgs } from "../../src/cli/args.ts";
import { Prng } from "../_support/prng.ts";

const OPTIONS = {
  src: { type: "string" },
  size: { type: "string" },
  prezeroed: { type: "boolean" },
  help: { type: "boolean" },
} as const;

const TOKENS = [
  "--src",
  "--src=a.raw",
  "--src=",
  "--size=-1",
  "--size",
  "--prezeroed",
  "--prezeroed=true",
  "--help",
  "--bogus",
  "--bogus=1",
  "-x",
  "-1",
  "-",
  "--",
  "a.raw",
  "10G",
  "--constructor",
  "-1x",
];

type Outcome = { values: Record<string, unknown> } | { code: string; message: string };

function outcome(f: () => { values: Record<string, unknown> }): Outcome {
  try {
    return { values: { ...f().values } };
  } catch (err) {
    const e = err as { code: string; message: string };
    return { code: e.code, message: e.message };
  }
}

Deno.test("the argument parser agrees with node:util's parseArgs on random command lines", () => {
  const r = new Prng(14);
  for (let n = 0; n < 5000; n++) {
    const args = Array.from({ length: r.int(5) }, () => TOKENS[r.int(TOKENS.length)]);
    const config = { args, options: OPTIONS, strict: true, allowPositionals: false };
    deepStrictEqual(
      outcome(() => parseArgs(config)),
      outcome(() => nodeParseArgs(config)),
      JSON.stringify(args),
    );
  }
});

Deno.test("the argument parser's errors carry node's codes", () => {
  const config = (args: string[]) => ({ args, options: OPTIONS });
  for (
    const [args, code] of [
      [["--bogus"], "ERR_PARSE_ARGS_UNKNOWN_OPTION"],
      [["a.raw"], "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL"],
      [["--prezeroed=1"], "ERR_PARSE_ARGS_INVALID_OPTION_VALUE"],
      [["--src"], "ERR_PARSE_ARGS_INVALID_OPTION_VALUE"],
    ] as const
  ) {
    try {
      parseArgs(config([...args]));
      throw new Error(`no error for ${args}`);
    } catch (err) {
      strictEqual(err instanceof ArgsError && err.code, code);
    }
  }
});
