/**
 * The command line: a drop-in for the argv xapi builds
 * (`sparse_dd -machine -src IN -dest OUT -size N -good-ciphersuites C [-prezeroed] [-base B] ...`),
 * single-dash flags as in OCaml's `Arg`, with `--` spellings accepted too. Parsing and `--help`.
 *
 * @module
 */

import { parseArgs } from "./args.ts";
import { ExitCode, SparseDdError } from "../core/errors.ts";
import { DEFAULT_CONFIG, loadConfig } from "./config.ts";
import { DISCOVERY_FLAGS, discoveryOptionsFrom } from "./discovery_flags.ts";
import type { SourceDiscoveryOptions } from "../discovery/source_allocation.ts";
import { VHD_FLAGS, type VhdOptions, vhdOptionsFrom } from "./vhd_flags.ts";
import { BYTES_FORMAT, parseBool, parseBytes, parseInteger, parseSeconds } from "./values.ts";
import { isNbdUri } from "../nbd/protocol.ts";
import { type EncryptionMode, isRemoteUrl, parseEncryptionMode } from "../http/url.ts";
import { DEFAULT_QUANTUM } from "../copy/quantum.ts";
import { errorText } from "../core/error_text.ts";

/** Most threads `-threads` accepts. */
const MAX_THREADS = 16;
/**
 * Threads by default into a block device: two (one on a single CPU). Into a regular file: one,
 * since two threads make the file system allocate it in interleaved order (docs/performance.md).
 */
export const DEVICE_THREADS = Math.max(1, Math.min(2, navigator.hardwareConcurrency ?? 1));
/** Bytes a copy thread claims at a time. */
export const THREAD_SEGMENT = 32 * 1024 * 1024;

type Kind = "string" | "boolean";
interface FlagSpec {
  kind: Kind;
  arg?: string;
  help: string;
  /** Accepted for compatibility with xapi's argv, but has no effect here: why. */
  inert?: string;
}

/** Other spellings of flags on the command line (not in configuration files). */
const ALIASES: Record<string, string> = {
  "destination-is-zero": "prezeroed",
  p: "progress",
};

/** Values a bare `-progress` may take from the next token; anything else leaves it bare. */
const PROGRESS_VALUES = new Set(["auto", "bar", "none"]);

/** Flags for tests and diagnosis, listed last in `--help`. */
const DIAGNOSTIC_FLAGS = new Set([
  "quantum",
  "ignore-allocation",
  "vhd-backend",
  "tap-ctl",
  "xenstore-read",
  "sysfs-root",
  "procfs-root",
  "run-root",
  "discovery-timeout",
  "config-dir",
]);

/** Every flag the tool accepts, in `--help` order. Config-file keys are the same names. */
export const FLAGS: Record<string, FlagSpec> = {
  src: {
    kind: "string",
    arg: "SOURCE",
    help: "source disk: a file, a block device, a VHD file (its whole chain is read), " +
      "nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH",
  },
  dest: {
    kind: "string",
    arg: "DEST",
    help: "destination disk: a file (created if missing), a block device, an nbd:// or " +
      "nbd+unix:// URI, or an http:// or https:// URL of xapi's chunked import or NBD proxy " +
      "(docs/remote.md)",
  },
  size: {
    kind: "string",
    arg: "BYTES",
    help: "bytes to copy (default, or -1: the size of the source)",
  },
  prezeroed: {
    kind: "boolean",
    help: "the destination already reads as zero: skip zero runs " +
      "(also --destination-is-zero, nbdcopy's name)",
  },
  base: {
    kind: "string",
    arg: "PATH",
    help: "the destination already holds this disk: copy only what differs from it",
  },
  machine: { kind: "boolean", help: "xapi's framed 'Progress: N' records on stdout, nothing else" },
  json: { kind: "boolean", help: "print the stats as JSON (stdout; stderr with -machine)" },
  "stats-file": {
    kind: "string",
    arg: "PATH",
    help: "also write the stats as JSON to PATH (for a failed copy too: exitCode, error)",
  },
  quantum: {
    kind: "string",
    arg: "BYTES",
    help: `zero-scan granularity, a power of two from 512 to 4194304 (default ${DEFAULT_QUANTUM})`,
  },
  "ignore-allocation": { kind: "boolean", help: "copy every byte even where allocation is known" },
  threads: {
    kind: "string",
    arg: "N",
    help: `threads sharing a copy between local disks, 1..${MAX_THREADS} ` +
      `(default ${DEVICE_THREADS} into a block device, 1 into a file)`,
  },

  // -require-vhd, and where discovery looks (-tap-ctl, -sysfs-root, ...: tests, unusual hosts).
  ...DISCOVERY_FLAGS,
  // -src-format, -src-vhd, -base-vhd, -vhd-backend (vhd_options.ts).
  ...VHD_FLAGS,
  progress: {
    kind: "string",
    arg: "[auto|bar|none]",
    help: "the bar on stderr (default auto: on a terminal); bare -progress or -p: bar",
  },
  config: { kind: "string", arg: "PATH", help: `configuration file (default ${DEFAULT_CONFIG})` },
  "config-dir": { kind: "string", arg: "DIR", help: "configuration fragments (default CONFIG.d)" },
  unbuffered: {
    kind: "string",
    arg: "true|false",
    help: "O_DIRECT I/O, sparing dom0's page cache",
  },
  nice: { kind: "string", arg: "N", help: "renice this process to N (-20..19)" },
  ionice_class: {
    kind: "string",
    arg: "N",
    help: "ionice class (0 none, 1 realtime, 2 best-effort, 3 idle)",
  },
  ionice_class_data: { kind: "string", arg: "N", help: "ionice priority within the class (0..7)" },
  "nbd-export": {
    kind: "string",
    arg: "NAME",
    help: "export name of an NBD destination (overrides the URI's)",
  },
  "nbd-timeout": {
    kind: "string",
    arg: "SECONDS",
    help: "seconds to wait for the NBD handshake and each reply, 0 = no limit (default 30/120)",
  },
  "dest-proto": {
    kind: "string",
    arg: "PROTO",
    help: "destination protocol: none (file or device), nbd (an nbd:// URI, or an http(s) URL " +
      "answering 'Transfer-encoding: nbd'), chunked (an http(s) URL)",
  },
  "http-timeout": {
    kind: "string",
    arg: "SECONDS",
    help: "seconds allowed for an http(s) destination to connect, answer, and take each frame, " +
      "0 = no limit (default 60)",
  },
  "good-ciphersuites": {
    kind: "string",
    arg: "LIST",
    help: "TLS ciphers for https destinations (OpenSSL names; see docs/remote.md)",
  },
  "legacy-ciphersuites": {
    kind: "string",
    arg: "LIST",
    help: "removed from xapi in 2022",
    inert: "removed option",
  },
  "ssl-legacy": { kind: "boolean", help: "removed from xapi in 2022", inert: "removed option" },
  "encryption-mode": {
    kind: "string",
    arg: "MODE",
    help: "always (http becomes https), never (https becomes http), user (default: as given)",
  },
  "verify-dest": {
    kind: "boolean",
    help: "verify the TLS certificate chain of an https destination (not its host name)",
  },
  "cert-bundle-path": {
    kind: "string",
    arg: "PATH",
    help: "CA bundle (PEM) for -verify-dest: the only trusted roots",
  },
  sni: {
    kind: "string",
    arg: "HOST",
    help: "TLS server name to send to an https destination (none without it)",
  },
  test: {
    kind: "boolean",
    help: "the 2010 tool's self-test",
    inert: "removed option; run scripts/test.sh",
  },
  help: { kind: "boolean", help: "this text" },
  version: { kind: "boolean", help: "print the version" },
};

/** The parsed and validated command line. */
export interface Options {
  src: string;
  dest: string;
  /** `undefined`: the source's size. */
  size?: number;
  prezeroed: boolean;
  base?: string;
  machine: boolean;
  json: boolean;
  statsFile?: string;
  quantum: number;
  ignoreAllocation: boolean;
  /** Device discovery for the source (`discovery_allocation.ts`). */
  discovery: SourceDiscoveryOptions;
  /** VHD source format, the VHDs behind devices, and the metadata backend (`vhd_options.ts`). */
  vhd: VhdOptions;
  progress: "auto" | "bar" | "none";
  unbuffered?: boolean;
  nice?: number;
  ioniceClass?: number;
  ioniceClassData?: number;
  nbdExport?: string;
  /** `-nbd-timeout` in milliseconds; `undefined`: the default. */
  nbdTimeoutMs?: number;
  /** An http(s) destination: how to reach it (`undefined` for local and nbd:// ones). */
  remote?: RemoteFlags;
  /** `-threads`: threads sharing the copy (1: the main thread alone); `undefined`: by the
   * destination (see `DEVICE_THREADS`). */
  threads?: number;
  /** Flags given that have no effect here, for the stderr note. */
  inert: string[];
}

/** The flags of an http(s) destination (see `src/http/remote.ts`). */
export interface RemoteFlags {
  encryptionMode: EncryptionMode;
  destProto?: "nbd" | "chunked";
  /** `-http-timeout` in milliseconds; `undefined`: the default. */
  httpTimeoutMs?: number;
  verify: boolean;
  certBundlePath?: string;
  sni?: string;
  ciphers?: string;
}

/** What parsing decided: run a copy, or print something and exit. */
export type ParseResult =
  | { action: "copy"; options: Options; configNotes: string[] }
  | { action: "help" }
  | { action: "version" };

/**
 * Rewrites `-name value` / `--name value` / `--name=value` into `--name=value` for known flags,
 * so that parseArgs (args.ts) sees long options and values that start with `-` (a negative
 * `-size`) are kept as values. Unknown names are left for parseArgs to reject.
 */
function normalise(argv: string[]): string[] {
  const out: string[] = [];
  const isFlag = (tok: string | undefined) => tok !== undefined && /^--?[A-Za-z]/.test(tok);
  for (let i = 0; i < argv.length; i++) {
    const tok = argv[i];
    const m = /^--?([A-Za-z][A-Za-z0-9_-]*)(?:=(.*))?$/s.exec(tok);
    if (tok === "-h") {
      out.push("--help");
      continue;
    }
    if (!m) {
      out.push(tok);
      continue;
    }
    const [, given, inline] = m;
    const name = FLAGS[given] ? given : ALIASES[given] ?? given;
    const spec = FLAGS[name];
    if (!spec) {
      out.push(`--${name}${inline === undefined ? "" : `=${inline}`}`);
      continue;
    }
    if (name === "progress" && inline === undefined) {
      // Bare -progress / -p turns the bar on; a following accepted value is its value.
      out.push(`--progress=${PROGRESS_VALUES.has(argv[i + 1]) ? argv[++i] : "bar"}`);
      continue;
    }
    if (spec.kind === "string" && inline === undefined) {
      if (i + 1 >= argv.length) {
        throw new SparseDdError(ExitCode.Usage, `option -${given} needs a value (${spec.arg})`);
      }
      if (isFlag(argv[i + 1])) {
        throw new SparseDdError(
          ExitCode.Usage,
          `option -${given} needs a value (${spec.arg}) but is followed by the option ${
            argv[i + 1]
          } (write -${given}=VALUE for a value that starts with '-')`,
        );
      }
      out.push(`--${name}=${argv[++i]}`);
    } else {
      out.push(`--${name}${inline === undefined ? "" : `=${inline}`}`);
    }
  }
  return out;
}

/**
 * `nice`, `ionice_class` and `ionice_class_data` as xapi's sparse_dd takes them: a value that is
 * not an integer (or an ionice class other than 0..3) is noted and ignored, never a failure, as
 * an administrator's typo in sparse_dd.conf must not fail every copy; others are clipped.
 *
 * @example
 * ```ts
 * import { priorities } from "./flags.ts";
 * const notes: string[] = [];
 * priorities({ nice: "ten", ionice_class: "2", ionice_class_data: "9" }, notes);
 * // { nice: undefined, ioniceClass: 2, ioniceClassData: 7 }; notes: ["ignoring invalid value ..."]
 * ```
 */
export function priorities(
  values: Record<string, string | boolean | undefined>,
  notes: string[],
): Pick<Options, "nice" | "ioniceClass" | "ioniceClassData"> {
  const int = (key: string, min: number, max: number): number | undefined => {
    const text = values[key];
    if (typeof text !== "string") return undefined;
    const n = /^[+-]?\d+$/.test(text.trim()) ? Number(text) : NaN;
    if (!Number.isSafeInteger(n)) {
      notes.push(`ignoring invalid value for ${key}: '${text}' (expected an integer)`);
      return undefined;
    }
    if (n < min || n > max) {
      const used = Math.min(max, Math.max(min, n));
      notes.push(`value ${n} is out of range for ${key}: using ${used}`);
      return used;
    }
    return n;
  };
  let ioniceClass = int("ionice_class", -Infinity, Infinity);
  if (ioniceClass !== undefined && (ioniceClass < 0 || ioniceClass > 3)) {
    notes.push(`ignoring ionice_class ${ioniceClass}: the classes are 0 to 3`);
    ioniceClass = undefined;
  }
  return {
    nice: int("nice", -20, 19),
    ioniceClass,
    ioniceClassData: int("ionice_class_data", 0, 7),
  };
}

/**
 * Parses argv and the configuration files into {@linkcode Options}.
 *
 * @example
 * ```ts
 * import { parse } from "./flags.ts";
 * const r = await parse(["-src", "/a", "-dest", "/b", "-size", "1024", "-config", "/dev/null"]);
 * r.action; // "copy"
 * ```
 */
export async function parse(argv: string[]): Promise<ParseResult> {
  const options: Record<string, { type: Kind }> = {};
  for (const [name, spec] of Object.entries(FLAGS)) options[name] = { type: spec.kind };
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: normalise(argv),
      options,
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    if (err instanceof SparseDdError) throw err;
    const code = (err as { code?: string }).code;
    const msg = errorText(err);
    if (code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
      const name = /'([^']+)'/.exec(msg)?.[1] ?? msg;
      throw new SparseDdError(
        ExitCode.UnknownFlag,
        `unknown option '${name.replace(/^--/, "-")}' (see sparse_dd --help)`,
      );
    }
    if (code === "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL") {
      const arg = /'([^']+)'/.exec(msg)?.[1] ?? "";
      throw new SparseDdError(
        ExitCode.Usage,
        `unexpected argument '${arg}' (see sparse_dd --help)`,
      );
    }
    throw new SparseDdError(ExitCode.Usage, msg.replace(/--/g, "-"));
  }
  if (values.help) return { action: "help" };
  if (values.version) return { action: "version" };

  // Configuration files are read after argv and win over it (Xcp_service's order).
  const configFile = (values.config as string | undefined) ?? DEFAULT_CONFIG;
  const configNotes: string[] = [];
  const entries = await loadConfig(configFile, values["config-dir"] as string | undefined);
  const fromArgv = { ...values };
  for (const e of entries) {
    // The plugin's setting (plugin/config.ts), in the same file: not the command line's business.
    if (e.key === "plugin-dest-dirs") continue;
    const spec = FLAGS[e.key];
    if (
      !spec || e.key === "config" || e.key === "config-dir" || e.key === "help" ||
      e.key === "version"
    ) {
      configNotes.push(`${e.where}: ignoring unknown key '${e.key}'`);
      continue;
    }
    const value = spec.kind === "boolean" ? parseBool(e.value, e.where) : e.value;
    // Silently replacing an operand (-size, -dest, ...) a caller passed would look like the
    // caller's choice: say so.
    const given = fromArgv[e.key];
    if (given !== undefined && given !== value) {
      configNotes.push(
        `${e.where}: ${e.key} = ${e.value} overrides -${e.key} ${given} of the command line`,
      );
    }
    values[e.key] = value;
  }

  const str = (k: string) => values[k] as string | undefined;
  if (!str("src")) throw new SparseDdError(ExitCode.Usage, "missing -src (see sparse_dd --help)");
  if (!str("dest")) throw new SparseDdError(ExitCode.Usage, "missing -dest (see sparse_dd --help)");
  let size: number | undefined;
  const sizeText = str("size");
  if (sizeText !== undefined && sizeText.trim() !== "-1") size = parseBytes(sizeText, "-size");
  const quantum = str("quantum") === undefined
    ? DEFAULT_QUANTUM
    : parseBytes(str("quantum")!, "-quantum");
  if (quantum < 512 || quantum > 4 * 1024 * 1024 || (quantum & (quantum - 1)) !== 0) {
    throw new SparseDdError(
      ExitCode.Usage,
      `invalid -quantum value '${str("quantum")}': expected a power of two from 512 to 4194304`,
    );
  }
  const progress = str("progress") ?? "auto";
  if (progress !== "auto" && progress !== "bar" && progress !== "none") {
    throw new SparseDdError(
      ExitCode.Usage,
      `invalid -progress value '${progress}': expected auto, bar or none`,
    );
  }
  // -dest-proto: xapi's NBD destinations arrive through an HTTP upgrade (an http(s) -dest); a
  // bare host:port is not accepted: other NBD destinations are always URIs.
  const destProto = str("dest-proto");
  const remoteDest = isRemoteUrl(str("dest")!);
  if (remoteDest && destProto !== undefined && destProto !== "nbd" && destProto !== "chunked") {
    throw new SparseDdError(
      ExitCode.Usage,
      `-dest-proto ${destProto} does not fit an http(s) destination: use nbd or chunked`,
    );
  }
  if (destProto !== undefined && !remoteDest) {
    const nbdDest = isNbdUri(str("dest")!);
    if (destProto === "nbd" && !nbdDest) {
      throw new SparseDdError(
        ExitCode.Usage,
        `-dest-proto nbd needs an nbd://host[:port]/export or nbd+unix:///export?socket=PATH -dest, not '${
          str("dest")
        }'`,
      );
    }
    if (destProto !== "nbd" && destProto !== "none") {
      throw new SparseDdError(
        ExitCode.Usage,
        `-dest-proto ${destProto} is not supported: only none (files and devices), nbd (NBD URIs ` +
          "and http(s) URLs) and chunked (http(s) URLs)",
      );
    }
    if (destProto === "none" && nbdDest) {
      throw new SparseDdError(
        ExitCode.Usage,
        `-dest-proto none contradicts the NBD destination '${str("dest")}'`,
      );
    }
  }
  const nbdTimeoutText = str("nbd-timeout");
  const nbdTimeoutMs = nbdTimeoutText === undefined
    ? undefined
    : parseSeconds(nbdTimeoutText, "-nbd-timeout", "no limit");
  if (values["verify-dest"] && !str("cert-bundle-path")) {
    throw new SparseDdError(ExitCode.Usage, "-verify-dest needs -cert-bundle-path");
  }
  let remote: RemoteFlags | undefined;
  let encryptionMode: EncryptionMode;
  try {
    encryptionMode = parseEncryptionMode(str("encryption-mode"));
  } catch (e) {
    throw new SparseDdError(ExitCode.Usage, (e as Error).message);
  }
  if (remoteDest) {
    remote = {
      encryptionMode,
      destProto: destProto as "nbd" | "chunked" | undefined,
      httpTimeoutMs: str("http-timeout") === undefined
        ? undefined
        : parseSeconds(str("http-timeout")!, "-http-timeout", "no limit"),
      verify: values["verify-dest"] === true,
      certBundlePath: str("cert-bundle-path"),
      sni: str("sni"),
      ciphers: str("good-ciphersuites"),
    };
  }
  const inert: string[] = [];
  for (const [name, spec] of Object.entries(FLAGS)) {
    if (spec.inert && values[name] !== undefined && values[name] !== false) {
      inert.push(`-${name} (${spec.inert})`);
    }
  }
  return {
    action: "copy",
    configNotes,
    options: {
      src: str("src")!,
      dest: str("dest")!,
      size,
      prezeroed: values.prezeroed === true,
      base: str("base") || undefined,
      machine: values.machine === true,
      json: values.json === true,
      statsFile: str("stats-file"),
      quantum,
      ignoreAllocation: values["ignore-allocation"] === true,
      discovery: discoveryOptionsFrom(values),
      vhd: vhdOptionsFrom(values),
      progress,
      unbuffered: str("unbuffered") === undefined
        ? undefined
        : parseBool(str("unbuffered")!, "-unbuffered"),
      ...priorities(values, configNotes),
      nbdExport: str("nbd-export"),
      nbdTimeoutMs,
      remote,
      threads: str("threads") === undefined
        ? undefined
        : parseInteger(str("threads")!, "-threads", 1, MAX_THREADS),
      inert,
    },
  };
}

/** `text` cut into lines of at most `width` characters at spaces. */
function wrap(text: string, width: number): string[] {
  const out: string[] = [];
  let line = "";
  for (const word of text.split(" ")) {
    if (line && line.length + 1 + word.length > width) {
      out.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  out.push(line);
  return out;
}

/** The `--help` text: main flags, then xapi's flags that have no effect, then diagnostics. */
export function usage(): string {
  const lines = [
    "Usage: sparse_dd -src SOURCE -dest DEST [-size BYTES] [-prezeroed] [-base PATH] [-machine] ...",
    "",
    "Copies BYTES from the source disk to the destination disk, reading only what is allocated",
    "(VHD allocation tables, SEEK_DATA/SEEK_HOLE, NBD block status) and, when the destination is",
    "known to be zero (-prezeroed, or a new file), writing only the 4 KiB pieces that hold data.",
    "Otherwise every unallocated range is made zero on the destination. Nothing outside",
    "[0, BYTES) is written.",
    "",
    ...wrap(
      "Flags take one dash or two (-src or --src, -size 4G or --size=4G). BYTES is " +
        BYTES_FORMAT + ".",
      100,
    ),
    "/etc/sparse_dd.conf and /etc/sparse_dd.conf.d/* set the same names as 'key = value' lines",
    "and win over the command line.",
  ];
  const entry = (name: string, spec: FlagSpec) => {
    const flag = `  -${name}${spec.arg ? ` ${spec.arg}` : ""}`;
    const text = spec.inert ? `${spec.help} (no effect: ${spec.inert})` : spec.help;
    const body = wrap(text, 100 - 30);
    if (flag.length >= 30) lines.push(flag);
    else lines.push(`${flag.padEnd(30)}${body.shift()}`);
    for (const b of body) lines.push(`${"".padEnd(30)}${b}`);
  };
  const all = Object.entries(FLAGS);
  const groups: Array<[string, Array<[string, FlagSpec]>]> = [
    ["Flags:", all.filter(([n, s]) => !s.inert && !DIAGNOSTIC_FLAGS.has(n))],
    [
      "Accepted for compatibility with xapi's argv, without effect here (a note on stderr says so):",
      all.filter(([, s]) => s.inert),
    ],
    [
      "For tests, diagnosis and unusual hosts:",
      all.filter(([n, s]) => !s.inert && DIAGNOSTIC_FLAGS.has(n)),
    ],
  ];
  for (const [title, flags] of groups) {
    if (flags.length === 0) continue;
    lines.push("", title);
    for (const [name, spec] of flags) entry(name, spec);
  }
  lines.push(
    "",
    "Examples:",
    "  sparse_dd -src /dev/xvda -dest /dev/xvdb -size 10G -prezeroed",
    "      copy 10 GiB to a disk known to be all zeroes: zero runs are skipped.",
    "  sparse_dd -src /dev/xvda -dest /dev/xvdb",
    "      copy the whole of xvda; xvdb may hold anything, so unallocated ranges are zeroed.",
    "  sparse_dd -src disk.raw -dest copy.raw -p",
    "      copy a sparse file with a progress bar: only its data is read; copy.raw stays sparse.",
    "  sparse_dd -src leaf.vhd -dest 'nbd+unix:///?socket=/run/nbd.sock'",
    "      write the disk a VHD chain describes into an NBD export.",
    "  sparse_dd -src /dev/xvda -dest /dev/xvdb -base /dev/xvdc",
    "      xvdb already holds xvdc: copy only the blocks in which xvda differs from xvdc.",
    "  sparse_dd -machine -src /dev/sm/a -dest /dev/sm/b -size 4294967296 -good-ciphersuites X",
    "      what xapi runs: stdout carries only framed 'Progress: N' records.",
    "",
    "Exit codes: 0 done; 1 missing or invalid arguments; 2 unknown option; 3 source error;",
    "4 destination error; 5 NBD error; 130 SIGINT; 143 SIGTERM.",
  );
  return lines.join("\n") + "\n";
}
