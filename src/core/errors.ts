/**
 * Exit codes and the error type that carries one. xapi treats 0 as success, 5 as "sparse_dd
 * received NBD error" and anything else as a plain failure; it shows our stderr to the user, so
 * every failure is one line naming the path (and the offset, for I/O).
 *
 * @module
 */

import { DiskError } from "./disk.ts";
import { errorText } from "./error_text.ts";

/**
 * The documented exit codes (README, `--help`).
 *
 * @example
 * ```ts
 * import { ExitCode } from "./errors.ts";
 * ExitCode.UnknownFlag; // 2, like OCaml's Arg.Bad in xapi's sparse_dd
 * ```
 */
export const ExitCode = {
  /** The copy finished. */
  Ok: 0,
  /** Missing or invalid arguments, or arguments that do not fit the disks (size too large). */
  Usage: 1,
  /** An unknown flag (as xapi's own sparse_dd). */
  UnknownFlag: 2,
  /** The source (or base) could not be opened, parsed or read. */
  Source: 3,
  /** The destination could not be opened, is too small, or could not be written. */
  Destination: 4,
  /** An NBD server failed or broke the protocol (xapi maps 5 to "sparse_dd received NBD error"). */
  Nbd: 5,
  /** Stopped by SIGINT (128 + 2). */
  Interrupted: 130,
  /** Stopped by SIGTERM (128 + 15). */
  Terminated: 143,
} as const;

/** One of {@linkcode ExitCode}'s values. */
export type ExitCodeValue = typeof ExitCode[keyof typeof ExitCode];

/**
 * A failure with a chosen exit code and a one-line message.
 *
 * @example
 * ```ts
 * import { ExitCode, SparseDdError } from "./errors.ts";
 * throw new SparseDdError(ExitCode.Usage, "-size must be a non-negative integer: -5");
 * ```
 */
export class SparseDdError extends Error {
  constructor(readonly exitCode: ExitCodeValue, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SparseDdError";
  }
}

/** The exit code for any thrown value. */
export function exitCodeOf(err: unknown): ExitCodeValue {
  if (err instanceof SparseDdError) return err.exitCode;
  if (err instanceof DiskError) {
    if (err.nbd) return ExitCode.Nbd;
    return err.role === "destination" ? ExitCode.Destination : ExitCode.Source;
  }
  return ExitCode.Source;
}

/** The one line printed on stderr for any thrown value (no stack trace). */
export function messageOf(err: unknown): string {
  const text = errorText(err);
  return text.replace(/\s*\n\s*/g, " ").trim();
}
