/**
 * The command line: a drop-in for the argv xapi builds
 * (`sparse_dd -machine -src IN -dest OUT -size N -good-ciphersuites C [-prezeroed] [-base B] ...`),
 * single-dash flags as in OCaml's `Arg`, with `--` spellings accepted too.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { resolveAllocation, resolveBase } from "./allocation.ts";
import { ExitCode, exitCodeOf, messageOf, SparseDdError } from "./errors.ts";
import { DEFAULT_CONFIG, loadConfig } from "./config.ts";
import { copy, CopyAborted, type CopyStats } from "./copy.ts";
import {
  DISCOVERY_FLAGS,
  discoveryOptionsFrom,
  type DiscoverySummary,
  type SourceDiscoveryOptions,
} from "./discovery_allocation.ts";
import type { Disk } from "./disk.ts";
import { openDestination, openSource } from "./open.ts";
import { type LaneGroup, startLanes } from "./lane.ts";
import { VHD_FLAGS, type VhdOptions, vhdOptionsFrom } from "./vhd_options.ts";
import { isNbdUri } from "./nbd_protocol.ts";
import {
  formatBytes,
  HumanProgress,
  MachineProgress,
  NoProgress,
  type ProgressReporter,
} from "./progress.ts";
import { DEFAULT_QUANTUM } from "./quantum.ts";

/** Most threads `-threads` accepts. */
const MAX_THREADS = 16;
/**
 * Threads by default into a block device: two (or one on a single CPU); more only compete with
 * dom0's other work (tapdisks, qemu) for a disk that is already busy. Into a regular file: one.
 * Threads writing one file make the file system allocate its blocks in interleaved order: a few
 * hundred physical fragments instead of a few dozen per 2 GiB, and extent-tree blocks half
 * filled (measured: +60 KiB for 600 MiB of data in 6,900 runs). Copying in that order one
 * segment after another cost more than the second thread gained, so a file gets a second thread
 * only when asked (`-threads 2`: 5-10% faster where most of what is read is zeroes).
 */
const DEVICE_THREADS = Math.max(1, Math.min(2, navigator.hardwareConcurrency ?? 1));
/** Bytes a copy thread claims at a time. */
const LANE_SEGMENT = 32 * 1024 * 1024;

/** The program's version. */
export const VERSION = "0.1.0";

type Kind = "string" | "boolean";
interface FlagSpec {
  kind: Kind;
  arg?: string;
  help: string;
  /** Accepted for compatibility with xapi's argv, but has no effect here: why. */
  inert?: string;
}

/** Every flag the tool accepts, in `--help` order. Config-file keys are the same names. */
export const FLAGS: Record<string, FlagSpec> = {
  src: { kind: "string", arg: "PATH", help: "source disk: block device or file" },
  dest: {
    kind: "string",
    arg: "PATH",
    help: "destination disk: block device or file (created if missing)",
  },
  size: {
    kind: "string",
    arg: "BYTES",
    help: "bytes to copy (default, or -1: the size of the source)",
  },
  prezeroed: { kind: "boolean", help: "the destination already reads as zero: skip zero runs" },
  base: {
    kind: "string",
    arg: "PATH",
    help: "the destination already holds this disk: copy only what differs from it",
  },
  machine: { kind: "boolean", help: "xapi's framed 'Progress: N' records on stdout, nothing else" },
  json: { kind: "boolean", help: "print the stats as JSON (stdout; stderr with -machine)" },
  "stats-file": { kind: "string", arg: "PATH", help: "also write the stats as JSON to PATH" },
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
    arg: "auto|bar|none",
    help: "the bar on stderr (default auto: on a terminal)",
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
    help:
      "destination protocol: none (file or device) or nbd (needs an nbd:// or nbd+unix:// -dest)",
  },
  "good-ciphersuites": {
    kind: "string",
    arg: "LIST",
    help: "TLS ciphers for https destinations",
    inert: "no https destinations",
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
    help: "http/https rewriting",
    inert: "no http destinations",
  },
  "verify-dest": {
    kind: "boolean",
    help: "verify the TLS certificate of an https destination",
    inert: "no https destinations",
  },
  "cert-bundle-path": {
    kind: "string",
    arg: "PATH",
    help: "CA bundle for -verify-dest",
    inert: "no https destinations",
  },
  sni: {
    kind: "string",
    arg: "HOST",
    help: "TLS SNI for https destinations",
    inert: "no https destinations",
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
  /** `-threads`: threads sharing the copy (1: the main thread alone); `undefined`: by the
   * destination (see `DEVICE_THREADS`). */
  threads?: number;
  /** Flags given that have no effect here, for the stderr note. */
  inert: string[];
  /** Raw values of every flag, for integrations that add their own flags. */
  values: Record<string, string | boolean | undefined>;
}

/** What parsing decided: run a copy, or print something and exit. */
export type ParseResult =
  | { action: "copy"; options: Options; configNotes: string[] }
  | { action: "help" }
  | { action: "version" };

/**
 * Rewrites `-name value` / `--name value` / `--name=value` into `--name=value` for known flags,
 * so that `node:util` parseArgs sees long options and values that start with `-` (a negative
 * `-size`) are kept as values. Unknown names are left for parseArgs to reject.
 */
function normalise(argv: string[]): string[] {
  const out: string[] = [];
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
    const [, name, inline] = m;
    const spec = FLAGS[name];
    if (!spec) {
      out.push(`--${name}${inline === undefined ? "" : `=${inline}`}`);
      continue;
    }
    if (spec.kind === "string" && inline === undefined) {
      if (i + 1 >= argv.length) {
        throw new SparseDdError(ExitCode.Usage, `option -${name} needs a value (${spec.arg})`);
      }
      out.push(`--${name}=${argv[++i]}`);
    } else {
      out.push(`--${name}${inline === undefined ? "" : `=${inline}`}`);
    }
  }
  return out;
}

/**
 * Parses a byte count: a non-negative integer, optionally with a binary suffix
 * (`K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB`).
 *
 * @example
 * ```ts
 * import { parseBytes } from "./cli.ts";
 * parseBytes("4G", "-size"); // 4294967296
 * ```
 */
export function parseBytes(text: string, flag: string): number {
  const m = /^(\d+)\s*(|K|KiB|M|MiB|G|GiB|T|TiB)$/i.exec(text.trim());
  const mult: Record<string, number> = { "": 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };
  const n = m ? Number(m[1]) * mult[m[2].charAt(0).toLowerCase()] : NaN;
  if (!Number.isSafeInteger(n)) {
    throw new SparseDdError(
      ExitCode.Usage,
      `invalid ${flag} value '${text}': expected a non-negative whole number of bytes`,
    );
  }
  return n;
}

function parseBool(text: string, flag: string): boolean {
  if (/^(true|yes|on|1)$/i.test(text)) return true;
  if (/^(false|no|off|0)$/i.test(text)) return false;
  throw new SparseDdError(
    ExitCode.Usage,
    `invalid ${flag} value '${text}': expected true or false`,
  );
}

function parseInteger(text: string, flag: string, min: number, max: number): number {
  const n = /^-?\d+$/.test(text.trim()) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n)) {
    throw new SparseDdError(ExitCode.Usage, `invalid ${flag} value '${text}': expected an integer`);
  }
  return Math.min(max, Math.max(min, n));
}

/**
 * Parses argv and the configuration files into {@linkcode Options}.
 *
 * @example
 * ```ts
 * import { parse } from "./cli.ts";
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
    const code = (err as { code?: string }).code;
    const msg = err instanceof Error ? err.message : String(err);
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
  for (const e of entries) {
    const spec = FLAGS[e.key];
    if (
      !spec || e.key === "config" || e.key === "config-dir" || e.key === "help" ||
      e.key === "version"
    ) {
      configNotes.push(`${e.where}: ignoring unknown key '${e.key}'`);
      continue;
    }
    values[e.key] = spec.kind === "boolean" ? parseBool(e.value, e.where) : e.value;
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
  // -dest-proto: xapi's NBD destinations arrive through an HTTP upgrade (not supported here);
  // a bare host:port is not accepted either: NBD destinations are always URIs.
  const destProto = str("dest-proto");
  // http(s) destinations (with or without -dest-proto) get open.ts's own refusal.
  if (destProto !== undefined && !/^https?:\/\//i.test(str("dest")!)) {
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
        `-dest-proto ${destProto} is not supported: only none (files and devices) and nbd (NBD URIs)`,
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
  let nbdTimeoutMs: number | undefined;
  if (nbdTimeoutText !== undefined) {
    const seconds = Number(nbdTimeoutText);
    if (!/^\d+(\.\d+)?$/.test(nbdTimeoutText.trim()) || !Number.isFinite(seconds)) {
      throw new SparseDdError(
        ExitCode.Usage,
        `invalid -nbd-timeout value '${nbdTimeoutText}': expected seconds (0 = no limit)`,
      );
    }
    nbdTimeoutMs = Math.round(seconds * 1000);
  }
  if (values["verify-dest"] && !str("cert-bundle-path")) {
    throw new SparseDdError(ExitCode.Usage, "-verify-dest needs -cert-bundle-path");
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
      nice: str("nice") === undefined ? undefined : parseInteger(str("nice")!, "-nice", -20, 19),
      ioniceClass: str("ionice_class") === undefined
        ? undefined
        : parseInteger(str("ionice_class")!, "-ionice_class", 0, 3),
      ioniceClassData: str("ionice_class_data") === undefined
        ? undefined
        : parseInteger(str("ionice_class_data")!, "-ionice_class_data", 0, 7),
      nbdExport: str("nbd-export"),
      nbdTimeoutMs,
      threads: str("threads") === undefined
        ? undefined
        : parseInteger(str("threads")!, "-threads", 1, MAX_THREADS),
      inert,
      values,
    },
  };
}

/** The `--help` text. */
export function usage(): string {
  const lines = [
    "Usage: sparse_dd -src PATH -dest PATH [-size BYTES] [-prezeroed] [-base PATH] [-machine] ...",
    "",
    "Copies BYTES from the source disk to the destination disk, reading only what is allocated",
    "(VHD allocation tables, SEEK_DATA/SEEK_HOLE) and, when the destination is known to be zero",
    "(-prezeroed, or a new file), writing only the 16 KiB quanta that hold data. Otherwise every",
    "unallocated range is made zero on the destination. Nothing outside [0, BYTES) is written.",
    "",
    "Options (one dash or two; /etc/sparse_dd.conf and /etc/sparse_dd.conf.d/* set the same keys",
    "as 'key = value' and win over the command line):",
  ];
  for (const [name, spec] of Object.entries(FLAGS)) {
    const flag = `  -${name}${spec.arg ? ` ${spec.arg}` : ""}`;
    const text = spec.inert ? `${spec.help} [accepted; no effect: ${spec.inert}]` : spec.help;
    lines.push(flag.length < 30 ? `${flag.padEnd(30)}${text}` : `${flag}\n${"".padEnd(30)}${text}`);
  }
  lines.push(
    "",
    "Examples:",
    "  sparse_dd -src /dev/xvda -dest /dev/xvdb -size 10737418240 -prezeroed",
    "      copy 10 GiB to a disk known to be all zeroes: zero runs are skipped.",
    "  sparse_dd -src /dev/xvda -dest /dev/xvdb",
    "      copy the whole of xvda; xvdb may hold anything, so unallocated ranges are zeroed.",
    "  sparse_dd -src disk.raw -dest copy.raw",
    "      copy a sparse file: only its data extents are read; copy.raw stays sparse.",
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

const encoder = new TextEncoder();
function writeAllSync(fd: { writeSync(p: Uint8Array): number }, text: string): void {
  const bytes = encoder.encode(text);
  let off = 0;
  while (off < bytes.length) off += fd.writeSync(bytes.subarray(off));
}

/** A line on stderr, prefixed with the program name. */
export function note(text: string): void {
  writeAllSync(Deno.stderr, `sparse_dd: ${text}\n`);
}

/** The stats as JSON, with what the copy was. */
export interface Report extends CopyStats {
  src: string;
  dest: string;
  prezeroed: boolean;
  base: string | null;
  allocation: string;
  allocatedExtents: number | null;
  /** What device discovery found behind a block-device source (null: it did not run). */
  discovery: DiscoverySummary | null;
}

function summary(r: Report): string {
  const rate = `${formatBytes(r.throughput)}/s`;
  return [
    `copied ${formatBytes(r.size)} from ${r.src} to ${r.dest} in ${
      r.seconds.toFixed(2)
    } s (${rate}, ${r.threads} thread${r.threads === 1 ? "" : "s"})`,
    `  allocation: ${r.allocation}${
      r.allocatedExtents === null ? "" : ` (${r.allocatedExtents} extents)`
    }, ${formatBytes(r.allocatedBytes)} to read`,
    `  read ${formatBytes(r.bytesRead)}; wrote ${
      formatBytes(r.bytesWritten)
    } in ${r.writes} writes`,
    `  data ${formatBytes(r.dataBytes)}, zeroed ${formatBytes(r.zeroedBytes)}, skipped zeroes ${
      formatBytes(r.skippedBytes)
    }, unchanged ${formatBytes(r.unchangedBytes)}`,
  ].join("\n") + "\n";
}

async function applyPriorities(o: Options): Promise<void> {
  const run = async (cmd: string, args: string[]) => {
    try {
      const out = await new Deno.Command(cmd, {
        args,
        stdin: "null",
        stdout: "null",
        stderr: "piped",
        signal: AbortSignal.timeout(5000),
      }).output();
      if (!out.success) {
        note(
          `warning: ${cmd} ${args.join(" ")} failed: ${
            new TextDecoder().decode(out.stderr).trim()
          }`,
        );
      }
    } catch (err) {
      note(`warning: cannot run ${cmd}: ${messageOf(err)}`);
    }
  };
  const pid = String(Deno.pid);
  if (o.nice !== undefined) await run("renice", ["-n", String(o.nice), "-p", pid]);
  if (o.ioniceClass !== undefined) {
    const args = ["-c", String(o.ioniceClass)];
    if ((o.ioniceClass === 1 || o.ioniceClass === 2) && o.ioniceClassData !== undefined) {
      args.push("-n", String(o.ioniceClassData));
    }
    await run("ionice", [...args, "-p", pid]);
  }
}

/** Where the program runs from, for what it starts in other threads. */
export interface Entry {
  /** The module a copy thread runs (main.ts, or the bundle or binary made of it); without it,
   * copies run in the calling thread alone. */
  laneWorker?: string | URL;
}

/** Runs one copy as the options say; returns the report. Throws on failure. */
export async function runCopy(
  o: Options,
  signal?: AbortSignal,
  entry: Entry = {},
): Promise<Report> {
  const machine = o.machine;
  if (o.inert.length > 0) note(`note: accepted but not applicable here: ${o.inert.join(", ")}`);
  await applyPriorities(o);
  const openOpts = {
    unbuffered: o.unbuffered,
    nbdExport: o.nbdExport,
    nbdTimeoutMs: o.nbdTimeoutMs,
    srcFormat: o.vhd.srcFormat,
    vhdBackend: o.vhd.backend,
  };
  if (o.nbdExport !== undefined && !isNbdUri(o.dest)) {
    note(`note: -nbd-export ${o.nbdExport} ignored: the destination is not an NBD URI`);
  }
  let src: Disk | undefined;
  let dst: Disk | undefined;
  let lanes: LaneGroup | undefined;
  try {
    // Other threads open the disks by name themselves, so only local disks are shared (an NBD
    // server may not take more connections).
    const threads = o.threads ?? (await isBlockDevice(o.dest) ? DEVICE_THREADS : 1);
    if (entry.laneWorker && threads > 1 && !isNbdUri(o.src) && !isNbdUri(o.dest)) {
      lanes = startLanes({
        worker: entry.laneWorker,
        count: threads - 1,
        segment: LANE_SEGMENT,
        job: {
          src: o.src,
          dest: o.dest,
          open: openOpts,
          copy: { quantum: o.quantum },
        },
      });
    }
    src = await openSource(o.src, openOpts).catch((err) => {
      throw tag(err, "source");
    });
    const size = o.size ?? src.size;
    if (size > src.size) {
      throw new SparseDdError(
        ExitCode.Usage,
        `-size ${size} is larger than the source ${o.src} (${src.size} bytes)`,
      );
    }
    // Notes wait until the destination is accepted, so a refused copy prints one line only.
    const alloc = await resolveAllocation(o.src, src, {
      ignore: o.ignoreAllocation,
      discovery: o.discovery,
      srcVhd: o.vhd.srcVhd,
      vhdBackend: o.vhd.backend,
    });
    const notes = [...alloc.notes];
    let unchanged;
    const base = o.base ?? o.vhd.baseVhd;
    if (base) {
      const b = await resolveBase(base, o.src, src, {
        baseVhd: o.vhd.baseVhd,
        srcVhd: o.vhd.srcVhd ?? alloc.discovery?.vhd ?? undefined,
        size,
        vhdBackend: o.vhd.backend,
        discovery: o.discovery,
      });
      notes.push(...b.notes);
      unchanged = b.unchanged;
    }
    dst = await openDestination(o.dest, size, openOpts).catch((err) => {
      throw tag(err, "destination");
    });
    if (dst.size < size) {
      throw new SparseDdError(
        ExitCode.Destination,
        `destination ${o.dest} is smaller (${dst.size} bytes) than -size ${size}`,
      );
    }
    for (const n of notes) note(n);
    const prezeroed = o.prezeroed || dst.knownZero === true;
    const reporter: ProgressReporter = machine
      ? new MachineProgress()
      : (o.progress === "bar" || (o.progress === "auto" && Deno.stderr.isTerminal()))
      ? new HumanProgress()
      : new NoProgress();
    const stats = await copy(src, dst, {
      size,
      allocation: alloc.extents,
      prezeroed,
      unchanged,
      quantum: o.quantum,
      signal,
      lanes,
      onProgress: (done, total) => reporter.update(done, total),
    });
    try {
      await dst.flush();
    } catch (err) {
      throw tag(err, "destination");
    }
    const report: Report = {
      src: o.src,
      dest: o.dest,
      prezeroed,
      base: o.base ?? o.vhd.baseVhd ?? null,
      allocation: alloc.route,
      allocatedExtents: alloc.extents?.count ?? null,
      discovery: alloc.discovery ?? null,
      ...stats,
    };
    reporter.finish();
    return report;
  } finally {
    lanes?.close();
    await src?.close().catch(() => {});
    await dst?.close().catch(() => {});
  }
}

/** True when `path` is a block device; false for anything else, or when it cannot be told. */
async function isBlockDevice(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isBlockDevice === true;
  } catch {
    return false;
  }
}

function tag(err: unknown, role: "source" | "destination"): unknown {
  if (
    err && typeof err === "object" && "role" in err && (err as { role?: string }).role === undefined
  ) {
    (err as { role?: string }).role = role;
  }
  return err;
}

/**
 * The whole program: parses `argv`, copies, reports; returns the exit code. Never throws.
 *
 * @example
 * ```ts
 * import { main } from "./cli.ts";
 * const code = await main(["-src", "a.raw", "-dest", "b.raw"]);
 * ```
 */
export async function main(argv: string[], entry: Entry = {}): Promise<number> {
  let parsed: ParseResult;
  try {
    parsed = await parse(argv);
  } catch (err) {
    note(messageOf(err));
    return exitCodeOf(err);
  }
  if (parsed.action === "help") {
    writeAllSync(Deno.stdout, usage());
    return ExitCode.Ok;
  }
  if (parsed.action === "version") {
    writeAllSync(Deno.stdout, `sparse_dd ${VERSION} (deno ${Deno.version.deno})\n`);
    return ExitCode.Ok;
  }
  const o = parsed.options;
  for (const n of parsed.configNotes) note(n);

  // SIGTERM (xapi's cancel) and SIGINT stop the copy between two steps: no end record is sent.
  const abort = new AbortController();
  let stoppedBy: "SIGINT" | "SIGTERM" | undefined;
  const handlers = (["SIGINT", "SIGTERM"] as const).map((sig) => {
    const h = () => {
      stoppedBy ??= sig;
      abort.abort(sig);
      // The copy stops between steps; anything else (discovery waiting on tap-ctl, a stalled
      // NBD request) must not keep xapi waiting: leave after a grace period regardless.
      setTimeout(() => {
        note(`stopped by ${sig}; ${o.dest} is incomplete`);
        Deno.exit(sig === "SIGINT" ? ExitCode.Interrupted : ExitCode.Terminated);
      }, 2000);
    };
    Deno.addSignalListener(sig, h);
    return [sig, h] as const;
  });
  try {
    const report = await runCopy(o, abort.signal, entry);
    const json = JSON.stringify(report);
    if (o.statsFile) await Deno.writeTextFile(o.statsFile, json + "\n");
    if (o.json) writeAllSync(o.machine ? Deno.stderr : Deno.stdout, json + "\n");
    else if (!o.machine) writeAllSync(Deno.stdout, summary(report));
    return ExitCode.Ok;
  } catch (err) {
    if (err instanceof CopyAborted || stoppedBy) {
      const at = err instanceof CopyAborted ? ` at offset ${err.offset}` : "";
      note(`stopped by ${stoppedBy ?? "signal"}${at}; ${o.dest} is incomplete`);
      return stoppedBy === "SIGINT" ? ExitCode.Interrupted : ExitCode.Terminated;
    }
    note(messageOf(err));
    return exitCodeOf(err);
  } finally {
    for (const [sig, h] of handlers) Deno.removeSignalListener(sig, h);
  }
}
