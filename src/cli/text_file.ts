/**
 * Reading the small text files named by flags and configuration (configuration files, the
 * `-cert-bundle-path` bundle) without ever waiting on them: only a regular file, or `/dev/null`
 * for nothing, is read. A FIFO would wait for a writer, and a character device such as
 * `/dev/zero` or `/dev/urandom` never ends.
 *
 * @module
 */

/** `/dev/null`'s device number (major 1, minor 3): the one character device that reads as empty. */
const DEV_NULL_RDEV = (1 << 8) | 3;

/**
 * Why `info` is no file to read as text, or `undefined` when it is one (a regular file or
 * `/dev/null`).
 *
 * @example
 * ```ts
 * import { notATextFile } from "./text_file.ts";
 * notATextFile(Deno.statSync("/dev/zero")); // "a character device"
 * ```
 */
export function notATextFile(info: Deno.FileInfo): string | undefined {
  if (info.isFile) return undefined;
  if (info.isCharDevice) return info.rdev === DEV_NULL_RDEV ? undefined : "a character device";
  if (info.isFifo) return "a FIFO";
  if (info.isSocket) return "a socket";
  if (info.isBlockDevice) return "a block device";
  if (info.isDirectory) return "a directory";
  return "not a regular file";
}

/**
 * Reads `path` as text after checking it is a regular file (or `/dev/null`); throws an `Error`
 * saying what it is otherwise, before opening it.
 *
 * @example
 * ```ts
 * import { readTextFileOnly } from "./text_file.ts";
 * await readTextFileOnly("/dev/null"); // ""
 * ```
 */
export async function readTextFileOnly(path: string): Promise<string> {
  const what = notATextFile(await Deno.stat(path));
  if (what !== undefined) throw new Error(`it is ${what}, not a file`);
  return await Deno.readTextFile(path);
}
