/**
 * Argument checks for the plugin's functions. Every value arrives as a string from whoever may
 * call `host.call_plugin`; nothing reaches the copier's argv unless it is an absolute path of an
 * acceptable disk, a byte count or a fixed word, so no value can become a flag or reach a shell
 * (and none ever meets a shell: children are spawned with an argv array).
 *
 * Disks (`src`, `base`, `dest`) are resolved first (symlinks, `..`) and then must be a block
 * device under `/dev`, or a regular file with a single link inside one of the directories the
 * configuration allows (`plugin-dest-dirs`, by default the SR mounts). Every directory on the
 * resolved path must be root's alone (see `trust.ts`), so the path sparse_dd opens later is the
 * one checked here. A new destination file is created here, mode 0600, with `O_EXCL`.
 *
 * @example
 * ```ts
 * import { validateCopy } from "./validate.ts";
 * const req = await validateCopy(
 *   { src: "/dev/sm/a", dest: "/dev/sm/b", prezeroed: "true" },
 *   { fileDirs: ["/var/run/sr-mount"] },
 * );
 * req.prezeroed; // true
 * ```
 *
 * @module
 */

import { basename, dirname, join } from "../src/core/path.ts";
import { parseBytes } from "../src/cli/values.ts";
import { ErrorCode, PluginFailure } from "./protocol.ts";
import { isWithin, untrustedReason } from "./trust.ts";
import { isRemoteUrl, parseRemoteUrl, redactSecrets } from "../src/http/url.ts";

/** A validated copy: what the plugin passes to `sparse_dd`. */
export interface CopyRequest {
  /** Resolved path of an acceptable block device or regular file. */
  src: string;
  /** Resolved path of an acceptable block device or regular file (the plugin created a new one);
   * or an http(s) URL of xapi's chunked import or NBD proxy (docs/remote.md). */
  dest: string;
  /** `-dest-proto` for a URL destination: `nbd` or `chunked`. */
  destProto?: "nbd" | "chunked";
  /** `-nbd-export` for a URL destination. */
  nbdExport?: string;
  /** Bytes to copy; absent: the source's size. */
  size?: number;
  /** Resolved path of an acceptable block device or regular file. */
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

/** What the plugin says about a byte count it cannot read. */
export const SIZE_SYNTAX =
  "expected a whole number of bytes, optionally with a suffix K, M, G or T (or KiB, MiB, GiB, " +
  "TiB; powers of 1024), e.g. 10G";

/**
 * A byte count, read as the command line reads `-size` (decimal, an optional K/M/G/T suffix in
 * powers of 1024), at most 2^53 - 1.
 *
 * @example
 * ```ts
 * import { parseSize } from "./validate.ts";
 * parseSize("size", "1073741824"); // 1073741824
 * parseSize("size", "10G"); // 10737418240
 * ```
 */
export function parseSize(name: string, value: string): number {
  try {
    return parseBytes(value, name);
  } catch {
    return invalid(name, value, SIZE_SYNTAX);
  }
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

/** Where the plugin may read and write regular files (`plugin-dest-dirs`). */
export interface DiskPolicy {
  /** Absolute directories; regular files must be inside one of them (missing ones are skipped). */
  fileDirs: readonly string[];
}

/** A disk argument after resolution. */
export interface ResolvedDisk {
  /** The resolved path (no symlinks, no `..`): what sparse_dd is given. */
  path: string;
  /** What it is; `new` is a destination file that does not exist yet; `remote` an http(s)
   * destination (then `path` is the URL). */
  kind: "block" | "file" | "new" | "remote";
  /** Device and inode, for telling two names of one disk apart. */
  id?: string;
}

function missing(err: unknown): boolean {
  return err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory;
}

async function resolvedDirs(dirs: readonly string[]): Promise<string[]> {
  const out: string[] = [];
  for (const d of dirs) {
    try {
      out.push(await Deno.realPath(d));
    } catch { /* a directory that does not exist on this host allows nothing */ }
  }
  return out;
}

function outside(name: string, value: string, real: string, dirs: readonly string[]): never {
  const where = dirs.length ? dirs.join(", ") : "none configured";
  const resolved = real === value ? "" : ` (resolves to ${real})`;
  return invalid(
    name,
    value,
    `a regular file must be inside the plugin's directories${resolved}: ${where} ` +
      "(plugin-dest-dirs in /etc/sparse_dd.conf)",
  );
}

/**
 * Resolves a disk argument and checks it against `policy`: a block device whose resolved path is
 * under `/dev` (a device node anywhere else, e.g. one planted on an NFS share, is refused), or a
 * regular file with one link inside `policy.fileDirs`, or (with `mayCreate`) a new file whose
 * directory is inside them. Every directory on the resolved path must be safe from other users.
 *
 * @example
 * ```ts
 * import { resolveDisk } from "./validate.ts";
 * await resolveDisk("src", "/dev/disk/by-id/x", { fileDirs: [] }, false);
 * // { path: "/dev/sdb", kind: "block", id: "..." }
 * ```
 */
export async function resolveDisk(
  name: string,
  value: string,
  policy: DiskPolicy,
  mayCreate: boolean,
): Promise<ResolvedDisk> {
  checkPathSyntax(name, value);
  const base = basename(value);
  if (value.endsWith("/") || base === "." || base === ".." || base === "") {
    return invalid(name, value, "names a directory");
  }
  const parent = dirname(value);
  let parentReal: string;
  try {
    parentReal = await Deno.realPath(parent);
    if (!(await Deno.stat(parentReal)).isDirectory) throw new Deno.errors.NotADirectory();
  } catch (err) {
    if (missing(err)) return invalid(name, value, `directory ${parent} does not exist`);
    throw err;
  }
  const full = join(parentReal, base);
  let exists = true;
  try {
    await Deno.lstat(full);
  } catch (err) {
    if (!missing(err)) throw err;
    exists = false;
  }
  const dirs = await resolvedDirs(policy.fileDirs);
  if (!exists) {
    if (!mayCreate) return invalid(name, value, "does not exist");
    if (!dirs.some((d) => isWithin(parentReal, d))) {
      return outside(name, value, full, policy.fileDirs);
    }
    const why = await untrustedReason(parentReal);
    if (why) return invalid(name, value, `unsafe directory: ${why}`);
    return { path: full, kind: "new" };
  }
  let real: string;
  let info: Deno.FileInfo;
  try {
    real = await Deno.realPath(full);
    info = await Deno.stat(real);
  } catch (err) {
    if (missing(err)) return invalid(name, value, "is a symlink to nothing");
    throw err;
  }
  const id = `${info.dev}:${info.ino}`;
  if (info.isBlockDevice) {
    if (!isWithin(real, "/dev")) {
      return invalid(name, value, `a block device must be a device node under /dev, not ${real}`);
    }
    const why = await untrustedReason(real);
    if (why) return invalid(name, value, `unsafe path: ${why}`);
    return { path: real, kind: "block", id: `rdev:${info.rdev}` };
  }
  if (!info.isFile) return invalid(name, value, "is neither a block device nor a regular file");
  if (!dirs.some((d) => isWithin(real, d) && real !== d)) {
    return outside(name, value, real, policy.fileDirs);
  }
  if ((info.nlink ?? 1) > 1) {
    return invalid(name, value, `has ${info.nlink} hard links; a regular file must have one`);
  }
  const why = await untrustedReason(real);
  if (why) return invalid(name, value, `unsafe path: ${why}`);
  return { path: real, kind: "file", id };
}

/**
 * Creates the new destination file `path` (mode 0600, never following a symlink, failing if
 * anything appeared there meanwhile), so sparse_dd opens a file that is root's alone.
 *
 * @example
 * ```ts
 * import { createDestination } from "./validate.ts";
 * await createDestination("/var/run/sr-mount/SR/new.raw", "/var/run/sr-mount/SR/new.raw");
 * ```
 */
export async function createDestination(path: string, value: string): Promise<void> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { write: true, createNew: true, mode: 0o600 });
  } catch (err) {
    if (err instanceof Deno.errors.AlreadyExists) {
      return invalid("dest", value, "appeared while it was being checked");
    }
    throw err;
  }
  file.close();
  // The mode given to open() is narrowed by the umask; make it exactly 0600. The directory is
  // root's alone (checked), so the name still means the file just created.
  await Deno.chmod(path, 0o600);
}

/**
 * The destination: a local disk by {@linkcode resolveDisk}, which may be a new file. (A remote
 * destination, a URL, is not a local path: it is recognised here, before the rule for files.)
 *
 * @example
 * ```ts
 * import { resolveDestination } from "./validate.ts";
 * await resolveDestination("/var/run/sr-mount/SR/new.raw", { fileDirs: ["/var/run/sr-mount"] });
 * // { path: "/run/sr-mount/SR/new.raw", kind: "new" }
 * ```
 */
export function resolveDestination(value: string, policy: DiskPolicy): Promise<ResolvedDisk> {
  // A URL bypasses the local-path rules: it is checked as a URL (docs/remote.md).
  if (isRemoteUrl(value)) {
    return Promise.resolve({ path: checkRemoteDestination(value), kind: "remote" });
  }
  return resolveDisk("dest", value, policy, true);
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
 * Validates the arguments of `copy`/`start` against `policy`; creates a new destination file
 * (0600) once everything else is known to be acceptable.
 *
 * @example
 * ```ts
 * import { validateCopy } from "./validate.ts";
 * await validateCopy({ src: "relative.raw", dest: "/b" }, { fileDirs: [] }); // throws SPARSE_DD_INVALID_ARGUMENT
 * ```
 */
export async function validateCopy(
  args: Record<string, string>,
  policy: DiskPolicy,
): Promise<CopyRequest> {
  checkKnown(args, COPY_ARGS);
  const srcText = checkPathSyntax("src", required(args, "src"));
  const destText = required(args, "dest");
  const remote = isRemoteUrl(destText);
  const sizeText = optional(args, "size");
  const baseText = optional(args, "base");
  const prezeroedText = optional(args, "prezeroed");
  const taskText = optional(args, "task_ref");
  const prezeroed = prezeroedText === undefined ? false : parseBool("prezeroed", prezeroedText);
  const size = sizeText === undefined ? undefined : parseSize("size", sizeText);
  if (baseText !== undefined) checkPathSyntax("base", baseText);
  const taskRef = taskText === undefined ? undefined : parseRef("task_ref", taskText);
  const destProto = optional(args, "dest_proto");
  const nbdExport = optional(args, "nbd_export");
  if (!remote && (destProto !== undefined || nbdExport !== undefined)) {
    const name = destProto !== undefined ? "dest_proto" : "nbd_export";
    invalid(name, args[name], "only for an http(s) dest");
  }
  if (destProto !== undefined && destProto !== "nbd" && destProto !== "chunked") {
    invalid("dest_proto", destProto, "expected nbd or chunked");
  }
  // deno-lint-ignore no-control-regex
  if (nbdExport !== undefined && (nbdExport.length > 4096 || /[\x00-\x1f\x7f]/.test(nbdExport))) {
    invalid("nbd_export", nbdExport, "is longer than 4096 characters or holds control characters");
  }
  const src = await resolveDisk("src", srcText, policy, false);
  const base = baseText === undefined
    ? undefined
    : await resolveDisk("base", baseText, policy, false);
  const dest = await resolveDestination(destText, policy);
  if (dest.path === src.path || (dest.id !== undefined && dest.id === src.id)) {
    invalid("dest", destText, "is the source");
  }
  if (dest.kind === "new") await createDestination(dest.path, destText);
  const req: CopyRequest = { src: src.path, dest: dest.path, prezeroed };
  if (size !== undefined) req.size = size;
  if (base !== undefined) req.base = base.path;
  if (taskRef !== undefined) req.taskRef = taskRef;
  if (destProto !== undefined) req.destProto = destProto;
  if (nbdExport !== undefined) req.nbdExport = nbdExport;
  return req;
}
