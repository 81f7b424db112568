/**
 * xapi's host-plugin protocol, without I/O: the methodCall xapi puts in argv[1]
 * (`fn`, the caller's session ref, a struct of string → string) and the methodResponse the
 * plugin prints (`{Status: Success, Value: string}` or `{Status: Failure, ErrorDescription:
 * [code, params...]}`). See xapi.md §3.
 *
 * @example
 * ```ts
 * import { failureResponse, parseRequest, successResponse } from "./protocol.ts";
 * const req = parseRequest(
 *   "<methodCall><methodName>version</methodName><params><param><value>OpaqueRef:s</value>" +
 *     "</param><param><value><struct/></value></param></params></methodCall>",
 * );
 * req.fn; // "version"
 * successResponse("0.1.0");
 * failureResponse("UNKNOWN_XENAPI_PLUGIN_FUNCTION", ["frobnicate"]);
 * ```
 *
 * @module
 */

import { isStruct, parseMethodCall, serializeMethodResponse, XmlRpcError } from "./xmlrpc.ts";

/**
 * The error codes this plugin returns as `ErrorDescription[0]`; xapi raises them as
 * `Server_error(code, params)`.
 *
 * @example
 * ```ts
 * import { ErrorCode } from "./protocol.ts";
 * ErrorCode.InvalidArgument; // "SPARSE_DD_INVALID_ARGUMENT": params [name, value]
 * ```
 */
export const ErrorCode = {
  /** `[name, value]`: a value that is not acceptable (also an argument this fn does not take). */
  InvalidArgument: "SPARSE_DD_INVALID_ARGUMENT",
  /** `[name]`: a required argument is absent or empty. */
  MissingArgument: "SPARSE_DD_MISSING_ARGUMENT",
  /** `[message]`: the copy ran and failed (message: sparse_dd's last error line). */
  CopyFailed: "SPARSE_DD_COPY_FAILED",
  /** `[id]`: `status`/`cancel` for an operation that does not exist (or was cleaned up). */
  UnknownOperation: "SPARSE_DD_UNKNOWN_OPERATION",
  /** `[reason]`: argv[1] is not a well-formed, acceptable XML-RPC methodCall. */
  BadRequest: "SPARSE_DD_BAD_REQUEST",
  /** `[path, reason]`: the state directory is not root's alone; nothing runs from it. */
  UnsafeStateDir: "SPARSE_DD_UNSAFE_STATE_DIR",
  /** `[message]`: `/etc/sparse_dd.conf` (or a fragment) cannot be read or parsed. */
  BadConfig: "SPARSE_DD_BAD_CONFIG",
  /** `[fn]`: the same code as XenAPIPlugin.py. */
  UnknownFunction: "UNKNOWN_XENAPI_PLUGIN_FUNCTION",
  /** `[fn, message]`: anything unexpected; never a stack trace. */
  Internal: "SPARSE_DD_INTERNAL_ERROR",
} as const;

/**
 * A failure the plugin reports as `{Status: Failure, ErrorDescription: [code, ...params]}`.
 *
 * @example
 * ```ts
 * import { ErrorCode, PluginFailure } from "./protocol.ts";
 * throw new PluginFailure(ErrorCode.MissingArgument, ["src"]);
 * ```
 */
export class PluginFailure extends Error {
  /** `ErrorDescription[0]`. */
  readonly code: string;
  /** The rest of `ErrorDescription`. */
  readonly params: string[];

  /** A failure `[code, ...params]`. */
  constructor(code: string, params: string[]) {
    super(`${code} [${params.join(", ")}]`);
    this.code = code;
    this.params = params;
    this.name = "PluginFailure";
  }
}

/** One plugin call, as xapi makes it. */
export interface PluginRequest {
  /** The function (the methodName). */
  fn: string;
  /** Param 0: the caller's session ref, valid while the call runs. */
  session: string;
  /** Param 1: the `args:KEY=VALUE` map. */
  args: Record<string, string>;
}

/**
 * Parses argv[1]. Anything malformed — bad XML, DTDs, oversized input, params of the wrong
 * shape — becomes a {@linkcode PluginFailure} `SPARSE_DD_BAD_REQUEST [reason]`.
 *
 * @example
 * ```ts
 * import { parseRequest } from "./protocol.ts";
 * parseRequest("<!DOCTYPE x><methodCall/>"); // throws SPARSE_DD_BAD_REQUEST
 * ```
 */
export function parseRequest(xml: string | undefined): PluginRequest {
  if (xml === undefined) {
    throw new PluginFailure(ErrorCode.BadRequest, ["no methodCall in argv[1]"]);
  }
  let call;
  try {
    call = parseMethodCall(xml);
  } catch (err) {
    if (err instanceof XmlRpcError) throw new PluginFailure(ErrorCode.BadRequest, [err.message]);
    throw err;
  }
  const [session, argStruct] = call.params;
  if (call.params.length > 2) {
    throw new PluginFailure(ErrorCode.BadRequest, ["expected two params: session and args"]);
  }
  if (typeof session !== "string") {
    throw new PluginFailure(ErrorCode.BadRequest, ["param 0 (the session ref) is not a string"]);
  }
  const args: Record<string, string> = Object.create(null);
  if (argStruct !== undefined) {
    if (!isStruct(argStruct)) {
      throw new PluginFailure(ErrorCode.BadRequest, ["param 1 (the args) is not a struct"]);
    }
    for (const [k, v] of Object.entries(argStruct)) {
      if (typeof v !== "string") {
        throw new PluginFailure(ErrorCode.BadRequest, [`argument ${k} is not a string`]);
      }
      args[k] = v;
    }
  }
  return { fn: call.methodName, session, args };
}

/**
 * The methodResponse for a successful call: `{Status: Success, Value: value}`.
 *
 * @example
 * ```ts
 * import { successResponse } from "./protocol.ts";
 * successResponse('{"state":"running"}');
 * ```
 */
export function successResponse(value: string): string {
  return serializeMethodResponse({ Status: "Success", Value: value });
}

/**
 * The methodResponse for a failed call: `{Status: Failure, ErrorDescription: [code, ...params]}`.
 *
 * @example
 * ```ts
 * import { failureResponse } from "./protocol.ts";
 * failureResponse("SPARSE_DD_MISSING_ARGUMENT", ["dest"]);
 * ```
 */
export function failureResponse(code: string, params: readonly string[]): string {
  return serializeMethodResponse({ Status: "Failure", ErrorDescription: [code, ...params] });
}
