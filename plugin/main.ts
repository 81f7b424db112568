/**
 * Plugin mode of the sparse_dd binary. xapi runs `/etc/xapi.d/plugins/sparse_dd` with the whole
 * XML-RPC methodCall as argv[1]; that thin script execs `sparse_dd --xapi-plugin "$1"`, which
 * lands here. The answer is one methodResponse on stdout and exit status 0, always — xapi
 * discards the answer of a plugin that exits non-zero.
 *
 * @example
 * ```ts
 * import { isPluginInvocation, pluginMain } from "./main.ts";
 * if (isPluginInvocation(Deno.args)) Deno.exit(await pluginMain(Deno.args));
 * ```
 *
 * @module
 */

import { configFromEnv, type PluginConfig } from "./config.ts";
import { FUNCTIONS } from "./functions.ts";
import {
  ErrorCode,
  failureResponse,
  parseRequest,
  PluginFailure,
  successResponse,
} from "./protocol.ts";
import { runWorker, WORKER_FLAG } from "./detached.ts";
import { errorText } from "../src/core/error_text.ts";

/** argv[1] of the binary that selects plugin mode. */
export const PLUGIN_FLAG = "--xapi-plugin";

/**
 * True when argv asks for plugin mode (or is a detached copy's worker).
 *
 * @example
 * ```ts
 * import { isPluginInvocation } from "./main.ts";
 * isPluginInvocation(["--xapi-plugin", "<methodCall>...</methodCall>"]); // true
 * isPluginInvocation(["-src", "/a", "-dest", "/b"]); // false
 * ```
 */
export function isPluginInvocation(args: readonly string[]): boolean {
  return args[0] === PLUGIN_FLAG || args[0] === WORKER_FLAG;
}

/**
 * Answers one methodCall document. Never throws: every failure is a Failure response.
 *
 * @example
 * ```ts
 * import { handleRequest } from "./main.ts";
 * import { configFromEnv } from "./config.ts";
 * await handleRequest("<methodCall><methodName>version</methodName></methodCall>", configFromEnv());
 * ```
 */
export async function handleRequest(
  xml: string | undefined,
  config: PluginConfig,
): Promise<string> {
  let fn = "";
  try {
    const req = parseRequest(xml);
    fn = req.fn;
    const f = Object.hasOwn(FUNCTIONS, fn) ? FUNCTIONS[fn] : undefined;
    if (!f) throw new PluginFailure(ErrorCode.UnknownFunction, [fn]);
    return successResponse(await f(req, config));
  } catch (err) {
    if (err instanceof PluginFailure) return failureResponse(err.code, err.params);
    const message = errorText(err);
    config.log(`${fn || "(no fn)"}: ${message}`);
    return failureResponse(ErrorCode.Internal, [fn, message.replace(/\s*\n\s*/g, " ")]);
  }
}

/**
 * The whole plugin-mode program: returns the exit status, which is 0 for every answer.
 *
 * @example
 * ```ts
 * import { pluginMain } from "./main.ts";
 * Deno.exit(await pluginMain(["--xapi-plugin", Deno.args[1]]));
 * ```
 */
export async function pluginMain(args: readonly string[]): Promise<number> {
  const config = configFromEnv();
  if (args[0] === WORKER_FLAG) {
    if (args[1]) await runWorker(args[1], config);
    return 0;
  }
  const response = await handleRequest(args[1], config);
  const bytes = new TextEncoder().encode(response);
  try {
    let off = 0;
    while (off < bytes.length) off += Deno.stdout.writeSync(bytes.subarray(off));
  } catch (err) {
    config.log(`cannot write the response: ${(err as Error).message}`);
  }
  return 0;
}
