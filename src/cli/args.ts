/**
 * The part of `node:util`'s `parseArgs` the command line uses (long options, `--name=value`,
 * strict, no positionals), with the same error codes and messages. Importing `node:util` starts
 * Deno's Node compatibility layer: 10-50 ms of every run's start-up, and xapi starts sparse_dd
 * for every operation.
 *
 * @example
 * ```ts
 * import { parseArgs } from "./args.ts";
 * const { values } = parseArgs({
 *   args: ["--src=a.raw", "--prezeroed"],
 *   options: { src: { type: "string" }, prezeroed: { type: "boolean" } },
 * });
 * values.src; // "a.raw"
 * ```
 *
 * @module
 */

/** How {@linkcode parseArgs} reads one option. */
export interface ArgOption {
  type: "string" | "boolean";
}

/** A command line that does not parse; `code` as `node:util`'s. */
export class ArgsError extends TypeError {
  constructor(
    readonly code:
      | "ERR_PARSE_ARGS_UNKNOWN_OPTION"
      | "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL"
      | "ERR_PARSE_ARGS_INVALID_OPTION_VALUE",
    message: string,
  ) {
    super(message);
    this.name = "TypeError";
  }
}

/**
 * Parses `args`: `--name`, `--name=value` or `--name value` for a string option (a value
 * starting with `-` only inline). Throws {@linkcode ArgsError} on an unknown option, a value
 * given to a boolean, a string option without its value, or any positional argument (strict,
 * as `node:util` with `allowPositionals: false`). A later option wins over an earlier one.
 */
export function parseArgs(config: {
  args: string[];
  options: Record<string, ArgOption>;
  strict?: boolean;
  allowPositionals?: boolean;
}): { values: Record<string, string | boolean | undefined> } {
  const { args, options } = config;
  const values: Record<string, string | boolean | undefined> = {};
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--") {
      if (i + 1 < args.length) throw positional(args[i + 1]);
      break;
    }
    if (!arg.startsWith("-") || arg === "-") throw positional(arg);
    if (!arg.startsWith("--")) {
      // Short options: the command line has none besides those normalised before.
      throw new ArgsError("ERR_PARSE_ARGS_UNKNOWN_OPTION", `Unknown option '${arg.slice(0, 2)}'`);
    }
    const eq = arg.indexOf("=");
    const name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
    const spec = Object.hasOwn(options, name) ? options[name] : undefined;
    if (!spec) {
      throw new ArgsError("ERR_PARSE_ARGS_UNKNOWN_OPTION", `Unknown option '--${name}'`);
    }
    if (spec.type === "boolean") {
      if (eq >= 0) {
        throw new ArgsError(
          "ERR_PARSE_ARGS_INVALID_OPTION_VALUE",
          `Option '--${name}' does not take an argument`,
        );
      }
      values[name] = true;
    } else if (eq >= 0) {
      values[name] = arg.slice(eq + 1);
    } else if (i + 1 >= args.length) {
      throw new ArgsError(
        "ERR_PARSE_ARGS_INVALID_OPTION_VALUE",
        `Option '--${name} <value>' argument missing`,
      );
    } else if (args[i + 1].startsWith("-") && args[i + 1] !== "-") {
      throw new ArgsError(
        "ERR_PARSE_ARGS_INVALID_OPTION_VALUE",
        `Option '--${name}' argument is ambiguous.\nDid you forget to specify the option argument ` +
          `for '--${name}'?\nTo specify an option argument starting with a dash use ` +
          `'--${name}=-XYZ'.`,
      );
    } else {
      values[name] = args[++i];
    }
  }
  return { values };
}

function positional(arg: string): ArgsError {
  return new ArgsError(
    "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL",
    `Unexpected argument '${arg}'. This command does not take positional arguments`,
  );
}
