/**
 * One description per endpoint: `-src`, `-dest` and `-base` are resolved once (stat after
 * following links, the format, the storage they stand on) into an {@linkcode Endpoint} that
 * opening, allocation, `-base` and the copy threads use; nothing stats or sniffs the name again.
 *
 * The format is never chosen by a disk's content (a guest owns a raw disk's bytes and can write a
 * VHD footer into them): a regular file is a VHD only when told so (`-src-format vhd`,
 * `-base-format vhd`) or when its name ends in `.vhd`.
 *
 * @module
 */

import { resolve } from "../core/path.ts";
import { DiskError } from "../core/disk.ts";
import { ExitCode, SparseDdError } from "../core/errors.ts";
import { isNbdUri } from "../nbd/protocol.ts";
import { isRemoteUrl, redactSecrets } from "../http/url.ts";

/** What an endpoint is: a local file, device or VHD chain, an NBD export, an http(s) import. */
export type EndpointKind = "file" | "block" | "vhd" | "nbd" | "http";

/** Which operand of the copy an endpoint is. */
export type EndpointRole = "source" | "destination" | "base";

/** How the bytes of a local endpoint are read. */
export type Format = "raw" | "vhd";

/** What the command line says about the format: decide by name (`auto`), or forced. */
export type FormatChoice = "auto" | "raw" | "vhd";

/** What `stat` said about a local endpoint (links followed). */
export interface EndpointStat {
  /** Device of the file system holding the file. */
  dev: number;
  /** Inode number. */
  ino: number;
  /** The device number of a block or character device, else null. */
  rdev: number | null;
  /** A regular file. */
  isFile: boolean;
  /** A block device. */
  isBlockDevice: boolean;
  /** A character device (`/dev/null`). */
  isCharDevice: boolean;
  /** Bytes of a regular file (0 for devices). */
  size: number;
}

/**
 * A resolved `-src`, `-dest` or `-base`: plain data, so copy threads get the same description.
 *
 * @example
 * ```ts
 * import type { Endpoint } from "./endpoint.ts";
 * const e: Endpoint = { spec: "a.vhd", role: "source", kind: "vhd", format: "vhd", storage: [] };
 * e.kind; // "vhd"
 * ```
 */
export interface Endpoint {
  /** As given on the command line: the name in messages. */
  spec: string;
  /** Which operand. */
  role: EndpointRole;
  /** What it is. */
  kind: EndpointKind;
  /** How its bytes are read (a destination is always written raw). */
  format: Format;
  /** Absolute path of a local endpoint (links not resolved: messages keep the user's name). */
  path?: string;
  /** `stat` of a local endpoint; absent for a URI or a destination file that does not exist. */
  stat?: EndpointStat;
  /** The file behind a loop device (`/sys/block/loopN/loop/backing_file`). */
  loopBacking?: string;
  /**
   * Everything this endpoint's bytes live in, as identity keys with a human name: the file or
   * device itself, a loop device's backing file, each file of its VHD chain (added once the
   * chain is open), the VHD behind a device. Two endpoints overlap when they share a key.
   */
  storage: StorageRef[];
  /** The files of its VHD chain, leaf first, once opened (threads reopen exactly these). */
  chain?: string[];
}

/** One piece of storage an endpoint stands on. */
export interface StorageRef {
  /** `file:DEV:INO`, `block:RDEV` or `char:RDEV`. */
  key: string;
  /** What it is, for messages: `the file a.raw`, `layer 2 (/sr/base.vhd) of the VHD chain`. */
  what: string;
}

/** Options of {@linkcode resolveEndpoint}. */
export interface ResolveOptions {
  /** How to read a regular file (default `auto`: by its name). Ignored for destinations. */
  format?: FormatChoice;
  /** Where sysfs is (default `/sys`), for loop devices' backing files. */
  sysfsRoot?: string;
}

/**
 * The format of a local file by the rule above: forced, or `vhd` for a name ending in `.vhd`.
 *
 * @example
 * ```ts
 * import { formatByName } from "./endpoint.ts";
 * formatByName("/sr/disk.vhd", "auto"); // "vhd"
 * formatByName("/sr/disk.img", "auto"); // "raw", whatever the file holds
 * formatByName("/sr/disk.img", "vhd");  // "vhd"
 * ```
 */
export function formatByName(path: string, choice: FormatChoice): Format {
  if (choice !== "auto") return choice;
  return /\.vhd$/i.test(path) ? "vhd" : "raw";
}

/** The identity key of what `stat` describes. */
function keyOf(st: EndpointStat): string {
  if (st.isBlockDevice) return `block:${st.rdev}`;
  if (st.isCharDevice) return `char:${st.rdev}`;
  return `file:${st.dev}:${st.ino}`;
}

function statOf(info: Deno.FileInfo): EndpointStat {
  return {
    dev: info.dev,
    ino: info.ino ?? 0,
    rdev: info.rdev,
    isFile: info.isFile,
    isBlockDevice: info.isBlockDevice === true,
    isCharDevice: info.isCharDevice === true,
    size: info.size,
  };
}

/**
 * The storage key and `stat` of a local path (links followed), or `undefined` when it does not
 * exist.
 *
 * @example
 * ```ts ignore
 * import { storageOf } from "./endpoint.ts";
 * (await storageOf("/tmp/a.raw"))?.key; // "file:2049:131078"
 * ```
 */
export async function storageOf(
  path: string,
): Promise<{ key: string; stat: EndpointStat } | undefined> {
  try {
    const stat = statOf(await Deno.stat(path));
    return { key: keyOf(stat), stat };
  } catch (err) {
    if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory) {
      return undefined;
    }
    throw err;
  }
}

/** Why a path is not something sparse_dd may open, or undefined when it may. */
function notADisk(info: Deno.FileInfo): string | undefined {
  if (info.isDirectory) return "Is a directory";
  if (info.isFifo) {
    return "is a FIFO, not a disk (opening it would wait for a writer): give a regular file or " +
      "block device";
  }
  if (info.isSocket) return "is a socket, not a disk: give a regular file or block device";
  if (!info.isFile && !info.isBlockDevice && !info.isCharDevice) {
    return "not a regular file or block device";
  }
  return undefined;
}

/** `/dev/null`'s device number (1:3): the one character device that is a disk, an empty one. */
const DEV_NULL_RDEV = (1 << 8) | 3;

/**
 * Why a source has no size to copy (a character device other than `/dev/null`: `/dev/zero`, a
 * tty), or undefined. Copying "its size" would silently copy nothing.
 */
function sizeless(info: Deno.FileInfo): string | undefined {
  if (!info.isCharDevice || info.rdev === DEV_NULL_RDEV) return undefined;
  return "is a character device, which has no size to copy: give a regular file or block device";
}

/** The file a loop device reads and writes, from sysfs; undefined for other devices. */
async function loopBackingFile(rdev: number, sysfsRoot: string): Promise<string | undefined> {
  const r = BigInt(rdev);
  const major = Number(((r >> 8n) & 0xfffn) | ((r >> 32n) & 0xfffff000n));
  const minor = Number((r & 0xffn) | ((r >> 12n) & 0xffffff00n));
  if (major !== 7) return undefined;
  try {
    const text = await Deno.readTextFile(
      `${sysfsRoot}/dev/block/${major}:${minor}/loop/backing_file`,
    );
    const path = text.replace(/\n$/, "").replace(/ \(deleted\)$/, "");
    return path === "" ? undefined : path;
  } catch {
    return undefined; // not bound, or no sysfs: nothing behind it to protect
  }
}

function roleFlag(role: EndpointRole): string {
  return role === "source" ? "-src" : role === "destination" ? "-dest" : "-base";
}

/**
 * Resolves one `-src`, `-dest` or `-base` without opening it: a URI stays a URI; a local path is
 * stat'ed (links followed) and refused unless it is a regular file or a device, so that nothing
 * waits on a FIFO. A destination that does not exist is a new file. A source or base that does
 * not exist is an error naming it (exit 3).
 *
 * @example
 * ```ts ignore
 * import { resolveEndpoint } from "./endpoint.ts";
 * const src = await resolveEndpoint("disk.vhd", "source", {});
 * src.kind; // "vhd"
 * ```
 */
export async function resolveEndpoint(
  spec: string,
  role: EndpointRole,
  options: ResolveOptions = {},
): Promise<Endpoint> {
  if (isNbdUri(spec)) return { spec, role, kind: "nbd", format: "raw", storage: [] };
  if (isRemoteUrl(spec)) {
    // xapi's imports take data; they give none.
    if (role !== "destination") {
      throw new SparseDdError(
        ExitCode.Usage,
        `${redactSecrets(spec)}: an http(s) URL can only be the destination, not the ${role}`,
      );
    }
    return { spec, role, kind: "http", format: "raw", storage: [] };
  }
  const path = spec.startsWith("/") ? spec : resolve(spec);
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (err) {
    if (role === "destination" && err instanceof Deno.errors.NotFound) {
      return { spec, role, kind: "file", format: "raw", path, storage: [] };
    }
    throw roleError(
      new DiskError(spec, "open", undefined, reasonOf(err), { cause: err }),
      role,
    );
  }
  const refusal = notADisk(info) ?? (role === "source" ? sizeless(info) : undefined);
  if (refusal !== undefined) {
    throw roleError(new DiskError(spec, "open", undefined, refusal), role);
  }
  const stat = statOf(info);
  const self = stat.isBlockDevice ? `the device ${spec}` : `the file ${spec}`;
  const storage: StorageRef[] = [{ key: keyOf(stat), what: self }];
  let loopBacking: string | undefined;
  if (stat.isBlockDevice && stat.rdev !== null) {
    loopBacking = await loopBackingFile(stat.rdev, options.sysfsRoot ?? "/sys");
    const backing = loopBacking === undefined
      ? undefined
      : await storageOf(loopBacking).catch(() => undefined);
    if (backing) {
      storage.push({ key: backing.key, what: `${loopBacking}, the backing file of ${spec}` });
    }
  }
  const choice = role === "destination" ? "raw" : options.format ?? "auto";
  const format = stat.isCharDevice
    ? "raw"
    : stat.isBlockDevice
    ? (choice === "vhd" ? "vhd" : "raw")
    : formatByName(path, choice);
  const kind: EndpointKind = format === "vhd" ? "vhd" : stat.isBlockDevice ? "block" : "file";
  const e: Endpoint = { spec, role, kind, format, path, stat, storage };
  if (loopBacking !== undefined) e.loopBacking = loopBacking;
  return e;
}

/**
 * Adds the files of a VHD chain (leaf first) to an endpoint's storage, as layers of `whose`
 * chain (`the source's`, `the VHD behind -src`).
 *
 * @example
 * ```ts ignore
 * import { addChainStorage } from "./endpoint.ts";
 * await addChainStorage(src, ["/sr/c.vhd", "/sr/b.vhd", "/sr/a.vhd"], "the source's");
 * ```
 */
export async function addChainStorage(
  e: Endpoint,
  layers: readonly string[],
  whose: string,
): Promise<void> {
  for (let i = 0; i < layers.length; i++) {
    const s = await storageOf(layers[i]).catch(() => undefined);
    if (s === undefined || e.storage.some((r) => r.key === s.key)) continue;
    const what = i === 0
      ? `${layers[i]}, the leaf of ${whose} VHD chain`
      : `${layers[i]}, layer ${i + 1} of ${whose} VHD chain`;
    e.storage.push({ key: s.key, what });
  }
}

/** The first piece of storage two endpoints share, as seen from each, or undefined. */
function shared(a: Endpoint, b: Endpoint): [StorageRef, StorageRef] | undefined {
  for (const x of a.storage) {
    const y = b.storage.find((r) => r.key === x.key);
    if (y) return [x, y];
  }
  return undefined;
}

/**
 * Refuses (exit 1) a copy whose destination is, or stands on, anything the copy reads: the source
 * (the same file by another name, a hard link, a second device node, a loop device over it, a
 * file of its VHD chain), or the base. Also a base that is the destination. Called before
 * anything is opened for writing, and again once the VHD chains are known.
 *
 * @example
 * ```ts ignore
 * import { checkDistinct, resolveEndpoint } from "./endpoint.ts";
 * const src = await resolveEndpoint("a.raw", "source");
 * const dst = await resolveEndpoint("./a.raw", "destination");
 * checkDistinct(src, dst); // throws: -dest ./a.raw is the file a.raw ...
 * ```
 */
export function checkDistinct(src: Endpoint, dest: Endpoint, base?: Endpoint): void {
  for (const other of base ? [src, base] : [src]) {
    const hit = shared(dest, other);
    if (!hit) continue;
    const [d, o] = hit;
    const self = d.what === `the file ${dest.spec}` || d.what === `the device ${dest.spec}`;
    throw new SparseDdError(
      ExitCode.Usage,
      `-dest ${dest.spec} is the same storage as ${roleFlag(other.role)} ${other.spec} ` +
        `(${self ? o.what : d.what}): writing it would destroy what the copy reads; ` +
        `give a different destination`,
    );
  }
}

/**
 * Refuses (exit 1) a destination that is, or stands on, this process's own standard output or
 * error as a file or block device (`-dest /dev/stdout > copy.raw`, `-dest copy.raw 2> copy.raw`):
 * the summary, the progress records or a message would be written into the copy.
 *
 * @example
 * ```ts ignore
 * import { checkNotOwnOutput, resolveEndpoint } from "./endpoint.ts";
 * checkNotOwnOutput(await resolveEndpoint("/dev/stdout", "destination")); // throws when a file
 * ```
 */
export async function checkNotOwnOutput(dest: Endpoint): Promise<void> {
  const names: Array<[number, string]> = [[1, "output"], [2, "error"]];
  for (const [fd, name] of names) {
    const s = await storageOf(`/proc/self/fd/${fd}`).catch(() => undefined);
    if (s === undefined || !(s.stat.isFile || s.stat.isBlockDevice)) continue;
    const hit = dest.storage.find((r) => r.key === s.key);
    if (!hit) continue;
    throw new SparseDdError(
      ExitCode.Usage,
      `-dest ${dest.spec} is this program's standard ${name} (${hit.what}): what sparse_dd ` +
        `prints would be written into the copy; redirect the output elsewhere`,
    );
  }
}

/**
 * Refuses (exit 1) a `-stats-file` that is the source, the destination or the base (or a file
 * of their VHD chains): writing the stats would overwrite it.
 *
 * @example
 * ```ts ignore
 * import { checkStatsFile } from "./endpoint.ts";
 * await checkStatsFile("/tmp/stats.json", [src, dst]);
 * ```
 */
export async function checkStatsFile(path: string, endpoints: Endpoint[]): Promise<void> {
  const s = await storageOf(path).catch(() => undefined);
  if (s === undefined) return;
  if (!s.stat.isFile && !s.stat.isCharDevice) {
    throw new SparseDdError(
      ExitCode.Usage,
      `-stats-file ${path} is not a regular file (writing a FIFO would wait for a reader, a ` +
        `device would be overwritten): give a file path`,
    );
  }
  for (const e of endpoints) {
    const hit = e.storage.find((r) => r.key === s.key);
    if (hit) {
      throw new SparseDdError(
        ExitCode.Usage,
        `-stats-file ${path} is ${hit.what} (${roleFlag(e.role)} ${e.spec}): writing the stats ` +
          `would overwrite it; give another path`,
      );
    }
  }
}

function reasonOf(err: unknown): string {
  if (err instanceof Deno.errors.NotFound) return "No such file or directory";
  if (err instanceof Deno.errors.PermissionDenied) return "Permission denied";
  if (err instanceof Deno.errors.NotADirectory) return "Not a directory";
  const msg = err instanceof Error ? err.message : String(err);
  return msg.replace(/,\s*(stat)\s+'[^']*'$/, "");
}

function roleError(err: DiskError, role: EndpointRole): DiskError {
  err.role = role;
  return err;
}
