/**
 * Parsers for flag and configuration values: byte counts, booleans, integers, seconds. Every
 * failure is a usage error (exit 1) naming the flag and the value.
 *
 * @module
 */

import { ExitCode, SparseDdError } from "../core/errors.ts";

/**
 * Parses a byte count: a non-negative integer, optionally with a binary suffix
 * (`K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB`).
 *
 * @example
 * ```ts
 * import { parseBytes } from "./values.ts";
 * parseBytes("4G", "-size"); // 4294967296
 * ```
 */
export function parseBytes(text: string, flag: string): number {
  const m = /^(\d+)\s*(|K|KiB|M|MiB|G|GiB|T|TiB)$/i.exec(text.trim());
  const mult: Record<string, number> = { "": 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };
  const n = m ? Number(m[1]) * mult[m[2].charAt(0).toLowerCase()] : NaN;
  if (!Number.isSafeInteger(n)) {
    throw new SparseDdError(
      ExitCode.Usage,
      `invalid ${flag} value '${text}': expected a non-negative whole number of bytes`,
    );
  }
  return n;
}

/** Parses `true|yes|on|1` / `false|no|off|0`. */
export function parseBool(text: string, flag: string): boolean {
  if (/^(true|yes|on|1)$/i.test(text)) return true;
  if (/^(false|no|off|0)$/i.test(text)) return false;
  throw new SparseDdError(
    ExitCode.Usage,
    `invalid ${flag} value '${text}': expected true or false`,
  );
}

/** Parses a whole number and clamps it to `[min, max]`. */
export function parseInteger(text: string, flag: string, min: number, max: number): number {
  const n = /^-?\d+$/.test(text.trim()) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n)) {
    throw new SparseDdError(ExitCode.Usage, `invalid ${flag} value '${text}': expected an integer`);
  }
  return Math.min(max, Math.max(min, n));
}

/**
 * Parses a duration in seconds (`15`, `0.5`) into milliseconds. `0` is accepted only when
 * `zeroMeans` says what it means (for example "no limit"), and is then named in the error.
 *
 * @example
 * ```ts
 * import { parseSeconds } from "./values.ts";
 * parseSeconds("1.5", "-nbd-timeout", "no limit"); // 1500
 * ```
 */
export function parseSeconds(text: string, flag: string, zeroMeans?: string): number {
  const seconds = Number(text);
  const ok = /^\d+(\.\d+)?$/.test(text.trim()) && Number.isFinite(seconds) &&
    (seconds > 0 || zeroMeans !== undefined);
  if (!ok) {
    const what = zeroMeans === undefined
      ? "a positive number of seconds"
      : `seconds (0 = ${zeroMeans})`;
    throw new SparseDdError(ExitCode.Usage, `invalid ${flag} value '${text}': expected ${what}`);
  }
  return Math.round(seconds * 1000);
}
