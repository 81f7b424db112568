/**
 * Turning device discovery into a source allocation: the glue between `discovery.ts` and
 * `allocation.ts` (the flags that steer it are in `src/cli/discovery_flags.ts`).
 *
 * Data is still read through the device (tapdisk's view, which is always right); only the
 * allocation comes from the image: a VHD chain's BAT for `vhd:`, SEEK_DATA/SEEK_HOLE for an
 * `aio:` raw file. This is xapi's "hybrid" mode. An image that cannot be read, or whose size
 * differs from the device's, is not trusted: the copy reads every byte instead.
 *
 * @module
 */

import { openChain } from "../vhd/chain.ts";
import { discover, type Discovery, type DiscoveryOptions } from "./discover.ts";
import type { Disk } from "../core/disk.ts";
import { ExitCode, SparseDdError } from "../core/errors.ts";
import { ExtentSet } from "../core/extent.ts";
import { seekDataExtents } from "../file/file_disk.ts";
import type { VhdBackend } from "../vhd/libvhd.ts";
import { errorText } from "../core/error_text.ts";

/** How discovery runs for one copy. */
export interface SourceDiscoveryOptions extends DiscoveryOptions {
  /** `-require-vhd`: fail (exit 3) unless the source's allocation comes from a VHD. */
  requireVhd?: boolean;
  /** Directories where VHD parents are also looked for by basename (xapi: `/dev/mapper`). */
  searchDirs?: readonly string[];
  /** `-vhd-backend`: who reads the discovered VHD's metadata. */
  vhdBackend?: VhdBackend;
}

/** What discovery found, as recorded in the stats. */
export interface DiscoverySummary {
  /** The route (`tapdev`, `nbd`, `blkfront+tapdev`, `blkfront+nbd`, `none`). */
  route: string;
  /** The VHD whose allocation was used, or null. */
  vhd: string | null;
  /** The raw (`aio:`) file whose allocation was used, or null. */
  raw: string | null;
  /** The NBD server behind the device when no tapdisk image was found, or null. */
  nbd: { socket: string; exportname: string | null } | null;
  /** Why no image allocation is used, or null when one is. */
  reason: string | null;
}

/** The outcome for one source. */
export interface DiscoveredAllocation {
  /** The image's allocation clipped to the source size; absent: not known from discovery. */
  extents?: ExtentSet;
  /** The allocation route for the stats when `extents` is set: `vhd` or `raw-seek-data`. */
  route?: string;
  /** Lines for stderr, the `auto-detect src vhd: ...` line first. */
  notes: string[];
  /** For the stats. */
  summary: DiscoverySummary;
  /** The files of the VHD chain whose allocation is used, leaf first. */
  layers?: string[];
}

function summaryOf(d: Discovery): DiscoverySummary {
  return {
    route: d.route,
    vhd: null,
    raw: null,
    nbd: d.nbd ? { socket: d.nbd.socket, exportname: d.nbd.exportname ?? null } : null,
    reason: d.reason ?? null,
  };
}

function why(err: unknown): string {
  const text = errorText(err);
  return text.replace(/\s*\n\s*/g, " ").trim();
}

function requireFailure(spec: string, reason: string): SparseDdError {
  return new SparseDdError(ExitCode.Source, `-require-vhd: no VHD found behind ${spec}: ${reason}`);
}

async function vhdAllocation(
  d: Discovery,
  path: string,
  src: Disk,
  options: SourceDiscoveryOptions,
  notes: string[],
): Promise<{ extents?: ExtentSet; reason?: string; layers?: string[] }> {
  let chain;
  try {
    chain = await openChain(path, { searchDirs: options.searchDirs, backend: options.vhdBackend });
  } catch (err) {
    return { reason: `cannot read VHD ${path}: ${why(err)}` };
  }
  try {
    if (chain.size !== src.size) {
      return {
        reason:
          `VHD ${path} holds ${chain.size} bytes but ${d.device} has ${src.size}: not the same disk`,
      };
    }
    const extents = chain.allocation().clip(src.size);
    notes.push(
      `VHD chain of ${chain.layers.length} file(s) allocates ${extents.bytes} of ${src.size} bytes`,
    );
    return { extents, layers: chain.layers.map((l) => l.path) };
  } finally {
    chain.close();
  }
}

async function rawAllocation(
  d: Discovery,
  path: string,
  src: Disk,
): Promise<{ extents?: ExtentSet; reason?: string }> {
  let info;
  try {
    info = await Deno.stat(path);
  } catch (err) {
    return { reason: `cannot stat raw image ${path}: ${why(err)}` };
  }
  if (!info.isFile) return { reason: `raw image ${path} is not a regular file (no holes to find)` };
  if (info.size !== src.size) {
    return {
      reason: `raw image ${path} holds ${info.size} bytes but ${d.device} has ${src.size}`,
    };
  }
  const extents = seekDataExtents(path, src.size);
  if (extents === undefined) return { reason: `SEEK_DATA/SEEK_HOLE do not work on ${path}` };
  return { extents: ExtentSet.of(extents).clip(src.size) };
}

/** What the caller already knows about a `-src` (resolved once: no second stat). */
export interface SourceKind {
  /** It is a local block device: discovery looks behind it. */
  blockDevice: boolean;
  /** It is read as a VHD file (its own chain gives the allocation). */
  vhd: boolean;
  /** It is a local path (not a URI). */
  local: boolean;
  /** Its device number, as stat'ed (discovery does not stat it again). */
  rdev?: number | null;
}

/**
 * Runs discovery for a `-src` and, when it finds a VHD or raw file whose size matches, returns
 * that image's allocation. Returns `undefined` when the source is not a block device (a file,
 * a URI): the source's own allocation applies. Never throws because discovery failed, except
 * with `requireVhd` (a {@linkcode SparseDdError} with exit code 3).
 *
 * @example
 * ```ts ignore
 * import { FileDisk } from "../file/file_disk.ts";
 * import { allocationFromDiscovery } from "./source_allocation.ts";
 * const src = await FileDisk.open("/dev/sm/backend/SR/VDI");
 * const kind = { blockDevice: true, vhd: false, local: true };
 * const found = await allocationFromDiscovery("/dev/sm/backend/SR/VDI", src, {}, kind);
 * found?.notes[0]; // "auto-detect src vhd: /var/run/sr-mount/SR/VDI.vhd"
 * ```
 */
export async function allocationFromDiscovery(
  spec: string,
  src: Disk,
  options: SourceDiscoveryOptions,
  kind: SourceKind,
): Promise<DiscoveredAllocation | undefined> {
  if (!kind.blockDevice) {
    if (options.requireVhd) {
      if (kind.vhd) return undefined;
      throw requireFailure(
        spec,
        kind.local ? "it is not a block device or a VHD file" : "not a local path",
      );
    }
    return undefined;
  }

  const d = await discover(spec, options, {
    isBlockDevice: true,
    isFile: false,
    rdev: kind.rdev ?? null,
  });
  const summary = summaryOf(d);
  const notes: string[] = [];
  const detail: string[] = [];
  let found: { extents?: ExtentSet; reason?: string; layers?: string[] } = { reason: d.reason };
  if (d.image?.kind === "vhd") found = await vhdAllocation(d, d.image.path, src, options, detail);
  else if (d.image?.kind === "raw") found = await rawAllocation(d, d.image.path, src);

  const vhd = d.image?.kind === "vhd" && found.extents ? d.image.path : undefined;
  notes.push(`auto-detect src vhd: ${vhd ?? "None"}`);
  if (d.image?.kind === "raw" && found.extents) {
    notes.push(`auto-detect src raw: ${d.image.path} (route ${d.route})`);
  } else if (vhd) {
    notes.push(`auto-detect: route ${d.route}`);
  }
  notes.push(...detail);
  if (!found.extents) {
    const reason = found.reason ?? "no image found";
    summary.reason = reason;
    if (d.image) summary.route = d.route; // found an image but cannot use it: say which
    if (options.requireVhd) throw requireFailure(spec, reason);
    notes.push(`auto-detect: ${reason}`);
    if (d.nbd) {
      notes.push(
        `auto-detect: ${spec} is served by NBD socket ${d.nbd.socket}${
          d.nbd.exportname === undefined ? "" : ` export ${d.nbd.exportname}`
        }`,
      );
    }
    return { notes, summary };
  }
  if (vhd) summary.vhd = vhd;
  else if (d.image?.kind === "raw") summary.raw = d.image.path;
  if (options.requireVhd && !vhd) {
    throw requireFailure(spec, `${d.image?.path} is a raw image, not a VHD`);
  }
  summary.reason = null;
  const out: DiscoveredAllocation = {
    extents: found.extents,
    route: vhd ? "vhd" : "raw-seek-data",
    notes,
    summary,
  };
  if (found.layers) out.layers = found.layers;
  return out;
}

/**
 * The VHD a tapdisk serves behind `device` (for `-base` devices, say), or `undefined` with the
 * reason. Only the path: the caller opens and checks the chain.
 *
 * @example
 * ```ts ignore
 * import { vhdBehindDevice } from "./source_allocation.ts";
 * const { vhd, reason } = await vhdBehindDevice("/dev/sm/backend/SR/BASE", {});
 * ```
 */
export async function vhdBehindDevice(
  device: string,
  options: DiscoveryOptions,
): Promise<{ vhd?: string; reason?: string; route: string }> {
  const d = await discover(device, options);
  if (d.image?.kind === "vhd") return { vhd: d.image.path, route: d.route };
  return {
    reason: d.reason ?? `${device} is served by a tapdisk ${d.image?.driver} image, not a VHD`,
    route: d.route,
  };
}
