/**
 * Which paths root may trust: a path is only as safe as every directory on the way to it. A
 * directory another user can write lets that user swap what a path names between the plugin's
 * check and the moment sparse_dd (or the plugin) opens it; so a path the plugin hands on must
 * run through directories owned by root and writable by nobody else (a sticky directory such as
 * `/tmp` is fine for entries root owns, since nobody else may rename them). Files in the state
 * directory are opened without following symlinks (checked after opening: same inode as the
 * `lstat`), and created with `O_EXCL`, which never follows one.
 *
 * @example
 * ```ts
 * import { untrustedReason } from "./trust.ts";
 * await untrustedReason("/var/run/sr-mount/0b6f2c1e/disk.vhd"); // undefined: root's all the way
 * ```
 *
 * @module
 */

import { dirname, join, resolve } from "../src/core/path.ts";

/** The owners a trusted entry may have: root, and whoever runs the plugin (root on a host). */
function trustedOwner(uid: number | null): boolean {
  return uid === 0 || uid === Deno.uid();
}

/** Group- or world-writable. */
export function othersMayWrite(mode: number | null): boolean {
  return ((mode ?? 0) & 0o022) !== 0;
}

function sticky(mode: number | null): boolean {
  return ((mode ?? 0) & 0o1000) !== 0;
}

/**
 * Why `path` (absolute, already resolved: no symlinks, no `..`) is not safe from other users,
 * or undefined when it is: every directory on the way is owned by root and writable by nobody
 * else unless sticky; an entry of a sticky, shared directory (the last one included) is owned by
 * root.
 *
 * @example
 * ```ts
 * import { untrustedReason } from "./trust.ts";
 * await untrustedReason("/home/alice/disk.raw"); // "/home/alice is owned by uid 1000"
 * ```
 */
export async function untrustedReason(path: string): Promise<string | undefined> {
  const parts = path.split("/").filter((p) => p !== "");
  let current = "/";
  let parentShared = false;
  for (let i = 0; i <= parts.length; i++) {
    if (i > 0) current = join(current, parts[i - 1]);
    const last = i === parts.length;
    const info = await Deno.lstat(current);
    if (info.isSymlink) return `${current} is a symlink`;
    if (parentShared && !trustedOwner(info.uid)) {
      return `${current} is owned by uid ${info.uid} in a directory others can write`;
    }
    if (last && !info.isDirectory) break;
    if (!info.isDirectory) return `${current} is not a directory`;
    if (!trustedOwner(info.uid)) return `${current} is owned by uid ${info.uid}`;
    if (othersMayWrite(info.mode) && !sticky(info.mode)) {
      return `${current} is writable by other users (mode ${modeText(info.mode)})`;
    }
    parentShared = othersMayWrite(info.mode);
  }
  return undefined;
}

/** `0777` for messages. */
export function modeText(mode: number | null): string {
  return "0" + ((mode ?? 0) & 0o7777).toString(8);
}

/**
 * True when `path` is `dir` or below it (both absolute and resolved).
 *
 * @example
 * ```ts
 * import { isWithin } from "./trust.ts";
 * isWithin("/run/sr-mount/a/b.vhd", "/run/sr-mount"); // true
 * isWithin("/run/sr-mountx/b.vhd", "/run/sr-mount"); // false
 * ```
 */
export function isWithin(path: string, dir: string): boolean {
  if (dir === "/") return path.startsWith("/");
  return path === dir || path.startsWith(dir + "/");
}

/** The state directory is unsafe to use; the plugin refuses to run operations in it. */
export class UnsafeDirectory extends Error {
  /** The directory. */
  readonly path: string;
  /** Why. */
  readonly reason: string;

  /** `path` is unsafe because of `reason`. */
  constructor(path: string, reason: string) {
    super(`${path}: ${reason}`);
    this.path = path;
    this.reason = reason;
    this.name = "UnsafeDirectory";
  }
}

/**
 * Makes sure `dir` is a private directory of root's: creates it (mode 0700, its parents 0755)
 * when `create` is set, and refuses it (throws {@linkcode UnsafeDirectory}) if it is a symlink,
 * not a directory, not owned by root, writable by group or others, or reachable only through a
 * directory others could swap. Returns false when it does not exist and `create` is not set.
 *
 * @example
 * ```ts
 * import { privateDirectory } from "./trust.ts";
 * await privateDirectory("/var/run/nonpersistent/sparse_dd", true); // true
 * ```
 */
export async function privateDirectory(dir: string, create: boolean): Promise<boolean> {
  const path = resolve(dir);
  const parent = dirname(path);
  if (create) {
    await Deno.mkdir(parent, { recursive: true, mode: 0o755 });
    try {
      await Deno.mkdir(path, { mode: 0o700 });
      // Exactly 0700 whatever the umask; a directory just made cannot have been swapped yet
      // unless its parent is unsafe, which is refused below.
      await Deno.chmod(path, 0o700);
    } catch (err) {
      if (!(err instanceof Deno.errors.AlreadyExists)) throw err;
    }
  }
  let info: Deno.FileInfo;
  try {
    info = await Deno.lstat(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
  if (info.isSymlink) throw new UnsafeDirectory(path, "is a symlink");
  if (!info.isDirectory) throw new UnsafeDirectory(path, "is not a directory");
  if (!trustedOwner(info.uid)) throw new UnsafeDirectory(path, `is owned by uid ${info.uid}`);
  if (othersMayWrite(info.mode)) {
    throw new UnsafeDirectory(
      path,
      `is writable by group or others (mode ${modeText(info.mode)})`,
    );
  }
  // The parents are resolved (/var/run is a symlink to /run), then each is checked.
  const why = await untrustedReason(await Deno.realPath(parent));
  if (why) throw new UnsafeDirectory(path, `its parent is unsafe: ${why}`);
  return true;
}

/**
 * Reads a regular file without following a symlink: `lstat`, open, and the opened file must be
 * the very inode `lstat` saw (a symlink's own inode is never its target's). A file replaced by
 * an atomic rename in between is simply read again.
 *
 * @example
 * ```ts
 * import { readNoFollow } from "./trust.ts";
 * await readNoFollow("/var/run/nonpersistent/sparse_dd/ID/state.json");
 * ```
 */
export async function readNoFollow(path: string): Promise<string> {
  for (let attempt = 0;; attempt++) {
    const before = await Deno.lstat(path);
    if (!before.isFile) throw new UnsafeDirectory(path, "is not a regular file");
    const file = await Deno.open(path, { read: true });
    try {
      const after = await file.stat();
      if (after.ino !== before.ino || after.dev !== before.dev) {
        if (attempt < 10) continue;
        throw new UnsafeDirectory(path, "keeps being replaced while being opened");
      }
      return await readAll(file);
    } finally {
      file.close();
    }
  }
}

async function readAll(file: Deno.FsFile): Promise<string> {
  const out: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const buf = new Uint8Array(64 * 1024);
    const n = await file.read(buf);
    if (n === null) break;
    out.push(buf.subarray(0, n));
    total += n;
  }
  const all = new Uint8Array(total);
  let at = 0;
  for (const c of out) {
    all.set(c, at);
    at += c.length;
  }
  return new TextDecoder().decode(all);
}
