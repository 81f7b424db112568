/**
 * sparse_dd: a sparse-aware disk copier for Xen hosts, a drop-in for xapi's
 * `/opt/xensource/libexec/sparse_dd`. See README.md and `sparse_dd --help`.
 *
 * @example
 * ```sh
 * deno run -A main.ts -src disk.raw -dest copy.raw
 * ```
 *
 * @module
 */

import { main } from "./src/cli.ts";

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
