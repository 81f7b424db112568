/**
 * Argument checks for the plugin's functions. Every value arrives as a string from whoever may
 * call `host.call_plugin`; nothing reaches the copier's argv unless it is an absolute path of an
 * existing disk, a decimal integer or a fixed word, so no value can become a flag or reach a
 * shell (and none ever meets a shell: children are spawned with an argv array).
 *
 * @example
 * ```ts
 * import { validateCopy } from "./validate.ts";
 * const req = await validateCopy({ src: "/dev/sm/a", dest: "/dev/sm/b", prezeroed: "true" });
 * req.prezeroed; // true
 * ```
 *
 * @module
 */

import { ErrorCode, PluginFailure } from "./protocol.ts";
import { isRemoteUrl, parseRemoteUrl, redactSecrets } from "../src/http/url.ts";

/** A validated copy: what the plugin passes to `sparse_dd`. */
export interface CopyRequest {
  /** Absolute path of an existing block device or regular file. */
  src: string;
  /** Absolute path of an existing block device or regular file, or a new file; or an http(s)
   * URL of xapi's chunked import or NBD proxy (docs/remote.md). */
  dest: string;
  /** `-dest-proto` for a URL destination: `nbd` or `chunked`. */
  destProto?: "nbd" | "chunked";
  /** `-nbd-export` for a URL destination. */
  nbdExport?: string;
  /** Bytes to copy; absent: the source's size. */
  size?: number;
  /** Absolute path of an existing block device or regular file. */
  base?: string;
  /** The destination is known to read as zero. */
  prezeroed: boolean;
  /** The XenAPI task to report progress on, with the caller's session. */
  taskRef?: string;
}

function invalid(name: string, value: string, reason: string): never {
  throw new PluginFailure(ErrorCode.InvalidArgument, [name, value, reason]);
}

/**
 * Refuses arguments the function does not take (a typo such as `prezerod` must not be ignored
 * silently).
 *
 * @example
 * ```ts
 * import { checkKnown } from "./validate.ts";
 * checkKnown({ id: "x" }, ["id"]); // fine
 * ```
 */
export function checkKnown(args: Record<string, string>, allowed: readonly string[]): void {
  for (const [k, v] of Object.entries(args)) {
    if (!allowed.includes(k)) invalid(k, v, `unknown argument; expected ${allowed.join(", ")}`);
  }
}

/**
 * A required, non-empty argument.
 *
 * @example
 * ```ts
 * import { required } from "./validate.ts";
 * required({ src: "/a" }, "src"); // "/a"
 * ```
 */
export function required(args: Record<string, string>, name: string): string {
  const v = args[name];
  if (v === undefined || v === "") throw new PluginFailure(ErrorCode.MissingArgument, [name]);
  return v;
}

/** An optional argument; empty counts as absent (xapi sends `args:k=` as `<value/>`). */
function optional(args: Record<string, string>, name: string): string | undefined {
  const v = args[name];
  return v === undefined || v === "" ? undefined : v;
}

/**
 * The syntax every path must have: absolute, no NUL, no leading `-`, sane length.
 *
 * @example
 * ```ts
 * import { checkPathSyntax } from "./validate.ts";
 * checkPathSyntax("src", "/dev/xvda"); // "/dev/xvda"
 * checkPathSyntax("src", "-prezeroed"); // throws SPARSE_DD_INVALID_ARGUMENT
 * ```
 */
export function checkPathSyntax(name: string, value: string): string {
  if (value.startsWith("-")) invalid(name, value, "must not start with '-'");
  if (!value.startsWith("/")) invalid(name, value, "must be an absolute path");
  if (value.includes("\0")) invalid(name, value, "must not contain NUL");
  if (value.length > 4096) invalid(name, value, "longer than PATH_MAX");
  return value;
}

/**
 * A byte count: decimal digits only (no sign, no suffix), at most 2^53 - 1.
 *
 * @example
 * ```ts
 * import { parseSize } from "./validate.ts";
 * parseSize("size", "1073741824"); // 1073741824
 * ```
 */
export function parseSize(name: string, value: string): number {
  if (!/^[0-9]{1,16}$/.test(value)) invalid(name, value, "must be a non-negative integer");
  const n = Number(value);
  if (!Number.isSafeInteger(n)) invalid(name, value, "too large");
  return n;
}

/**
 * `true` or `false` (any case).
 *
 * @example
 * ```ts
 * import { parseBool } from "./validate.ts";
 * parseBool("prezeroed", "True"); // true
 * ```
 */
export function parseBool(name: string, value: string): boolean {
  const v = value.toLowerCase();
  if (v === "true") return true;
  if (v === "false") return false;
  return invalid(name, value, "must be true or false");
}

/**
 * A XenAPI reference as xapi prints them (`OpaqueRef:` and a UUID).
 *
 * @example
 * ```ts
 * import { parseRef } from "./validate.ts";
 * parseRef("task_ref", "OpaqueRef:8c2b4f4e-3a5b-4d9e-9a51-6f9d1c1e7a10");
 * ```
 */
export function parseRef(name: string, value: string): string {
  if (!/^OpaqueRef:[0-9A-Za-z-]{1,64}$/.test(value)) {
    invalid(name, value, "must be an OpaqueRef:<uuid>");
  }
  return value;
}

/**
 * An operation id as `start` returns them (a lowercase UUID), so it can name a directory.
 *
 * @example
 * ```ts
 * import { parseOpId } from "./validate.ts";
 * parseOpId("id", "0b6f2c1e-8a9d-4c3b-b1a2-3f4e5d6c7b8a");
 * ```
 */
export function parseOpId(name: string, value: string): string {
  if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(value)) {
    invalid(name, value, "not an operation id");
  }
  return value;
}

async function statOrUndefined(path: string): Promise<Deno.FileInfo | undefined> {
  try {
    return await Deno.stat(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory) {
      return undefined;
    }
    throw err;
  }
}

/**
 * An existing block device or regular file (symlinks followed, as `/dev/disk/by-*` are).
 *
 * @example
 * ```ts
 * import { checkExistingDisk } from "./validate.ts";
 * await checkExistingDisk("src", "/dev/sm/a"); // "block"
 * ```
 */
export async function checkExistingDisk(name: string, path: string): Promise<"block" | "file"> {
  checkPathSyntax(name, path);
  const info = await statOrUndefined(path);
  if (!info) return invalid(name, path, "does not exist");
  if (info.isBlockDevice) return "block";
  if (info.isFile) return "file";
  return invalid(name, path, "is neither a block device nor a regular file");
}

/**
 * A destination: an existing block device or regular file, or a new file in an existing
 * directory.
 *
 * @example
 * ```ts
 * import { checkDestination } from "./validate.ts";
 * await checkDestination("/tmp/new.raw"); // "new"
 * ```
 */
export async function checkDestination(path: string): Promise<"block" | "file" | "new"> {
  checkPathSyntax("dest", path);
  const info = await statOrUndefined(path);
  if (info) {
    if (info.isBlockDevice) return "block";
    if (info.isFile) return "file";
    return invalid("dest", path, "is neither a block device nor a regular file");
  }
  if (path.endsWith("/")) return invalid("dest", path, "names a directory");
  const parent = path.slice(0, path.lastIndexOf("/")) || "/";
  const dir = await statOrUndefined(parent);
  if (!dir?.isDirectory) return invalid("dest", path, `directory ${parent} does not exist`);
  return "new";
}

async function realPath(path: string): Promise<string> {
  try {
    return await Deno.realPath(path);
  } catch {
    return path;
  }
}

/** The arguments `copy` and `start` take. */
export const COPY_ARGS = [
  "src",
  "dest",
  "size",
  "base",
  "prezeroed",
  "task_ref",
  "dest_proto",
  "nbd_export",
] as const;

/**
 * An http(s) destination: a URL sparse_dd can open, with no control characters; errors show it
 * with its session id and credentials redacted.
 *
 * @example
 * ```ts
 * import { checkRemoteDestination } from "./validate.ts";
 * checkRemoteDestination("https://10.0.0.2/import_raw_vdi?vdi=OpaqueRef:x&session_id=OpaqueRef:s");
 * ```
 */
export function checkRemoteDestination(url: string): string {
  const shown = redactSecrets(url);
  if (url.length > 8192) invalid("dest", shown, "is longer than 8192 characters");
  // deno-lint-ignore no-control-regex
  if (/[\x00-\x20\x7f]/.test(url)) invalid("dest", shown, "holds spaces or control characters");
  try {
    parseRemoteUrl(url);
  } catch (e) {
    invalid("dest", shown, redactSecrets((e as Error).message));
  }
  return url;
}

/**
 * Validates the arguments of `copy`/`start`.
 *
 * @example
 * ```ts
 * import { validateCopy } from "./validate.ts";
 * await validateCopy({ src: "relative.raw", dest: "/b" }); // throws SPARSE_DD_INVALID_ARGUMENT
 * ```
 */
export async function validateCopy(args: Record<string, string>): Promise<CopyRequest> {
  checkKnown(args, COPY_ARGS);
  const src = checkPathSyntax("src", required(args, "src"));
  const destText = required(args, "dest");
  const remote = isRemoteUrl(destText);
  const dest = remote ? checkRemoteDestination(destText) : checkPathSyntax("dest", destText);
  const sizeText = optional(args, "size");
  const base = optional(args, "base");
  const prezeroedText = optional(args, "prezeroed");
  const taskText = optional(args, "task_ref");
  const req: CopyRequest = {
    src,
    dest,
    prezeroed: prezeroedText === undefined ? false : parseBool("prezeroed", prezeroedText),
  };
  if (sizeText !== undefined) req.size = parseSize("size", sizeText);
  if (base !== undefined) req.base = checkPathSyntax("base", base);
  if (taskText !== undefined) req.taskRef = parseRef("task_ref", taskText);
  const destProto = optional(args, "dest_proto");
  const nbdExport = optional(args, "nbd_export");
  if (!remote && (destProto !== undefined || nbdExport !== undefined)) {
    const name = destProto !== undefined ? "dest_proto" : "nbd_export";
    invalid(name, args[name], "only for an http(s) dest");
  }
  if (destProto !== undefined) {
    if (destProto !== "nbd" && destProto !== "chunked") {
      invalid("dest_proto", destProto, "expected nbd or chunked");
    }
    req.destProto = destProto;
  }
  if (nbdExport !== undefined) {
    // deno-lint-ignore no-control-regex
    if (nbdExport.length > 4096 || /[\x00-\x1f\x7f]/.test(nbdExport)) {
      invalid(
        "nbd_export",
        nbdExport,
        "is longer than 4096 characters or holds control characters",
      );
    }
    req.nbdExport = nbdExport;
  }
  await checkExistingDisk("src", src);
  if (!remote) await checkDestination(dest);
  if (req.base !== undefined) await checkExistingDisk("base", req.base);
  if (!remote && await realPath(dest) === await realPath(src)) {
    invalid("dest", dest, "is the source");
  }
  return req;
}
