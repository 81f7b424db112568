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

import { main } from "./src/cli/main.ts";
import { serveThread, THREAD_WORKER_NAME } from "./src/copy/threads.ts";
import { isPluginInvocation, pluginMain } from "./plugin/main.ts";

if (
  (globalThis as { name?: string }).name === THREAD_WORKER_NAME && "WorkerGlobalScope" in globalThis
) {
  // A copy thread started by this program (src/copy/threads.ts).
  serveThread();
} else if (import.meta.main) {
  // `sparse_dd --xapi-plugin <methodCall>`: the XAPI host plugin (see plugin/main.ts).
  Deno.exit(
    isPluginInvocation(Deno.args)
      ? await pluginMain(Deno.args)
      : await main(Deno.args, { threadWorker: import.meta.url }),
  );
}
