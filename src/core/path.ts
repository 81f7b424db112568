/**
 * POSIX path arithmetic (`node:path`'s `posix.dirname`, `basename`, `normalize`, `join`,
 * `resolve`) without
 * importing `node:path`: a `node:` import starts Deno's Node compatibility layer, several
 * milliseconds of every run's start-up.
 *
 * @example
 * ```ts
 * import { basename, dirname, join } from "./path.ts";
 * dirname("/etc/sparse_dd.conf"); // "/etc"
 * basename("/etc/sparse_dd.conf"); // "sparse_dd.conf"
 * join("/srv/sr", "../x.vhd"); // "/srv/x.vhd"
 * ```
 *
 * @module
 */

/** The path without its last component, as `posix.dirname` (slashes before it are kept). */
export function dirname(path: string): string {
  if (path === "") return ".";
  const rooted = path[0] === "/";
  let end = -1;
  let inTrailingSlashes = true;
  for (let i = path.length - 1; i >= 1; i--) {
    if (path[i] === "/") {
      if (!inTrailingSlashes) {
        end = i;
        break;
      }
    } else {
      inTrailingSlashes = false;
    }
  }
  if (end === -1) return rooted ? "/" : ".";
  if (rooted && end === 1) return "//";
  return path.slice(0, end);
}

/** The last component of the path, as `posix.basename` (without a suffix argument). */
export function basename(path: string): string {
  let end = path.length;
  while (end > 0 && path[end - 1] === "/") end--;
  if (end === 0) return "";
  return path.slice(path.lastIndexOf("/", end - 1) + 1, end);
}

/** `.` and `..` resolved and repeated slashes folded, as `posix.normalize`. */
export function normalize(path: string): string {
  if (path === "") return ".";
  const absolute = path.startsWith("/");
  const trailing = path.endsWith("/");
  const parts: string[] = [];
  for (const p of path.split("/")) {
    if (p === "" || p === ".") continue;
    if (p === "..") {
      if (parts.length > 0 && parts[parts.length - 1] !== "..") parts.pop();
      else if (!absolute) parts.push("..");
    } else {
      parts.push(p);
    }
  }
  const out = parts.join("/");
  if (out === "") return absolute ? "/" : trailing ? "./" : ".";
  const withSlash = trailing ? `${out}/` : out;
  return absolute ? `/${withSlash}` : withSlash;
}

/** The non-empty parts joined with `/` and normalised, as `posix.join`. */
export function join(...parts: string[]): string {
  const joined = parts.filter((p) => p !== "").join("/");
  return joined === "" ? "." : normalize(joined);
}

/**
 * The absolute path the arguments name, read right to left until one is absolute, else from the
 * working directory; normalised, without a trailing slash (as `posix.resolve`).
 */
export function resolve(...paths: string[]): string {
  let out = "";
  for (let i = paths.length - 1; i >= -1; i--) {
    const p = i >= 0 ? paths[i] : Deno.cwd();
    if (p === "") continue;
    out = out === "" ? p : `${p}/${out}`;
    if (p.startsWith("/")) break;
  }
  const n = normalize(out);
  return n.length > 1 && n.endsWith("/") ? n.slice(0, -1) : n;
}
