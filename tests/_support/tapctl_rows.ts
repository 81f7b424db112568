/**
 * The inverse of `parseTapCtlList`, for tests: prints rows as tap-ctl does, so the fake tap-ctl
 * and the parser's property tests share one definition of the format.
 *
 * @module
 */

import type { TapCtlRow } from "../../src/discovery/tapctl.ts";

/**
 * Formats one row exactly as `tap-ctl list` prints it to a pipe (without the newline).
 *
 * @example
 * ```ts
 * import { formatTapCtlRow } from "./tapctl_rows.ts";
 * formatTapCtlRow({ pid: 7, minor: 1, state: 0x2a, driver: "aio", path: "/a b" });
 * // "pid=7 minor=1 state=0x2a args=aio:/a b"
 * ```
 */
export function formatTapCtlRow(row: TapCtlRow): string {
  const parts: string[] = [];
  const known = (n: number | undefined): n is number => n !== undefined && n !== -1;
  if (known(row.pid)) parts.push(`pid=${row.pid}`);
  if (known(row.minor)) parts.push(`minor=${row.minor}`);
  if (known(row.state)) {
    parts.push(`state=${row.state === 0 ? "0" : `0x${row.state.toString(16)}`}`);
  }
  if (row.driver && row.path) parts.push(`args=${row.driver}:${row.path}`);
  return parts.join(" ");
}
