/**
 * `/etc/sparse_dd.conf` and `/etc/sparse_dd.conf.d/*`: `key = value` lines, `#` comments, keys
 * spelled like the flags. As in xapi's Xcp_service, the files are read after the command line
 * and win over it, so an administrator can pin settings (`unbuffered`, `nice`, ...) that xapi's
 * fixed argv cannot carry.
 *
 * @module
 */

import { basename, dirname } from "../core/path.ts";
import { ExitCode, SparseDdError } from "../core/errors.ts";
import { errorText } from "../core/error_text.ts";
import { notATextFile } from "./text_file.ts";

/** The system configuration file. */
export const DEFAULT_CONFIG = "/etc/sparse_dd.conf";

/** One `key = value` setting and where it came from. */
export interface ConfigEntry {
  key: string;
  value: string;
  /** `file:line`, for messages. */
  where: string;
}

/**
 * Parses one configuration file's text. Quotes around a value are stripped; blank lines and
 * `#` comments are skipped; a line without `=` is an error naming the file and line.
 *
 * @example
 * ```ts
 * import { parseConfig } from "./config.ts";
 * parseConfig("# pinned by the admin\nunbuffered = false\nnice = \"10\"\n", "/etc/sparse_dd.conf");
 * // [{ key: "unbuffered", value: "false", where: "/etc/sparse_dd.conf:2" },
 * //  { key: "nice", value: "10", where: "/etc/sparse_dd.conf:3" }]
 * ```
 */
export function parseConfig(text: string, file: string): ConfigEntry[] {
  const out: ConfigEntry[] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].replace(/#.*$/, "").trim();
    if (line === "") continue;
    const eq = line.indexOf("=");
    if (eq <= 0) {
      throw new SparseDdError(
        ExitCode.Usage,
        `${file}:${i + 1}: expected 'key = value', found '${lines[i].trim()}'`,
      );
    }
    const key = line.slice(0, eq).trim().replace(/^-+/, "");
    let value = line.slice(eq + 1).trim();
    if (value.length >= 2 && (value[0] === '"' || value[0] === "'") && value.endsWith(value[0])) {
      value = value.slice(1, -1);
    }
    out.push({ key, value, where: `${file}:${i + 1}` });
  }
  return out;
}

/**
 * Reads `file` and then every file of `dir` in sorted order (`file.d` by default). Missing files
 * and a missing directory are fine: the shipped configuration is all comments anyway.
 */
export async function loadConfig(file: string, dir: string = file + ".d"): Promise<ConfigEntry[]> {
  const out: ConfigEntry[] = [];
  const readOne = async (path: string) => {
    let text: string;
    try {
      // Reading a FIFO would wait for a writer forever, /dev/zero never ends (and a disk is no
      // configuration).
      const info = await Deno.stat(path);
      const what = info.isDirectory ? undefined : notATextFile(info);
      if (what !== undefined) {
        throw new SparseDdError(
          ExitCode.Usage,
          `cannot read configuration ${path}: it is ${what}, not a file: give a regular file (or /dev/null for none)`,
        );
      }
      text = await Deno.readTextFile(path);
    } catch (err) {
      if (err instanceof SparseDdError) throw err;
      if (
        err instanceof Deno.errors.NotFound || err instanceof Deno.errors.IsADirectory ||
        err instanceof Deno.errors.NotADirectory
      ) return;
      throw new SparseDdError(
        ExitCode.Usage,
        `cannot read configuration ${path}: ${errorText(err)}`,
      );
    }
    out.push(...parseConfig(text, path));
  };
  // The usual case is that neither exists. Listing their directory says so without an error
  // (the first error a process makes costs a few milliseconds of start-up, measured ~5 ms);
  // both usually sit in one directory, listed once.
  const listings = new Map<string, Set<string> | undefined>();
  const present = (path: string) => {
    const parent = dirname(path);
    if (!listings.has(parent)) {
      let names: Set<string> | undefined;
      try {
        names = new Set([...Deno.readDirSync(parent)].map((e) => e.name));
      } catch {
        names = undefined; // cannot tell: try it, and report what that says
      }
      listings.set(parent, names);
    }
    return listings.get(parent)?.has(basename(path)) ?? true;
  };
  if (present(file)) await readOne(file);
  let names: string[] = [];
  if (!present(dir)) return out;
  try {
    for await (const e of Deno.readDir(dir)) if (e.isFile || e.isSymlink) names.push(e.name);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory)) {
      throw new SparseDdError(
        ExitCode.Usage,
        `cannot read configuration directory ${dir}: ${errorText(err)}`,
      );
    }
  }
  names = names.sort();
  for (const n of names) await readOne(`${dir}/${n}`);
  return out;
}
