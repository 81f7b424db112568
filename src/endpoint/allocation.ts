/**
 * Deciding what of the source may hold data, and what the destination already holds (`-base`).
 * Routes are tried from the most precise to the least: a VHD behind the device, the disk's own
 * allocation (SEEK_DATA/SEEK_HOLE, NBD block status, a VHD file's BAT), and finally "everything".
 * Every image found on the way is added to its endpoint's storage, so the destination can be
 * checked against it before it is opened.
 *
 * @module
 */

import type { Disk } from "../core/disk.ts";
import type { ExtentSet } from "../core/extent.ts";
import {
  allocationFromDiscovery,
  type DiscoverySummary,
  type SourceDiscoveryOptions,
  vhdBehindDevice,
} from "../discovery/source_allocation.ts";
import type { VhdChain } from "../vhd/chain.ts";
import { resolveVhdBase } from "../vhd/delta.ts";
import type { VhdBackend } from "../vhd/libvhd.ts";
import { deviceVhdAllocation } from "../vhd/vhd_disk.ts";
import { errorText } from "../core/error_text.ts";
import { addChainStorage, type Endpoint, storageOf } from "./endpoint.ts";

/** Where the allocation came from, and what else the user should know. */
export interface AllocationResult {
  /** Ranges that may hold data; `undefined` = everything is copied. */
  extents?: ExtentSet;
  /** The route, for stats and messages: `none`, `seek-data`, `disk`, `ignored`, ... */
  route: string;
  /** Human notes for stderr (never stdout in -machine mode). */
  notes: string[];
  /** What device discovery found, when it ran (block-device sources), for the stats. */
  discovery?: DiscoverySummary;
}

/** What the command line says about allocation. */
export interface AllocationOptions {
  /** `-ignore-allocation`: copy everything, as if no allocation were known. */
  ignore?: boolean;
  /**
   * Look behind a block-device source for the VHD or raw file a tapdisk serves
   * (`discovery_allocation.ts`); absent: don't look.
   */
  discovery?: SourceDiscoveryOptions;
  /** `-src-vhd`: the VHD behind a device source, given by the user (wins over discovery). */
  srcVhd?: string;
  /** `-vhd-backend`: who reads VHD metadata. */
  vhdBackend?: VhdBackend;
}

/**
 * Finds the source's allocation.
 *
 * @example
 * ```ts
 * import { MemoryDisk } from "../core/disk.ts";
 * import { ExtentSet } from "../core/extent.ts";
 * import { resolveAllocation } from "./allocation.ts";
 * const src = new MemoryDisk(8192, { allocation: ExtentSet.range(0, 4096) });
 * const e = { spec: "mem", role: "source" as const, kind: "file" as const, format: "raw" as const, storage: [] };
 * const a = await resolveAllocation(e, src, {});
 * a.route; // "disk"
 * ```
 */
export async function resolveAllocation(
  e: Endpoint,
  src: Disk,
  options: AllocationOptions,
): Promise<AllocationResult> {
  if (options.ignore) return { route: "ignored", notes: [] };
  if (options.srcVhd !== undefined) {
    const { extents, layers } = await deviceVhdAllocation(e.spec, src.size, options.srcVhd, {
      backend: options.vhdBackend,
    });
    await addChainStorage(e, layers, "-src-vhd's");
    return { extents, route: "vhd", notes: [] };
  }
  // A VHD (or raw file) behind the device first: devices cannot tell their own allocation.
  const found = options.discovery
    ? await allocationFromDiscovery(e.spec, src, {
      ...options.discovery,
      vhdBackend: options.discovery.vhdBackend ?? options.vhdBackend,
    }, {
      blockDevice: e.kind === "block",
      vhd: e.kind === "vhd",
      local: e.kind !== "nbd",
      rdev: e.stat?.rdev,
    })
    : undefined;
  if (found?.extents) {
    if (found.layers) await addChainStorage(e, found.layers, "the VHD behind the source's");
    const raw = found.summary.raw;
    const s = raw === null ? undefined : await storageOf(raw).catch(() => undefined);
    if (s) e.storage.push({ key: s.key, what: `${raw}, the image behind ${e.spec}` });
    return {
      extents: found.extents,
      route: found.route ?? "vhd",
      notes: found.notes,
      discovery: found.summary,
    };
  }
  const extents = await src.allocation?.();
  if (extents !== undefined) {
    return {
      extents: extents.clip(src.size),
      route: src.allocationRoute ?? "disk",
      notes: found?.notes ?? [],
      discovery: found?.summary,
    };
  }
  return {
    route: "none",
    notes: [...found?.notes ?? [], `no allocation information for ${src.name}: copying every byte`],
    discovery: found?.summary,
  };
}

/** What `-base` resolved to. */
export interface BaseResult {
  /** Ranges the destination already holds; `undefined` = the base is not used (full copy). */
  unchanged?: ExtentSet;
  /** Human notes for stderr. */
  notes: string[];
}

/**
 * Resolves `-base`: the ranges the destination already holds because it holds the base.
 * Only VHD chains can tell which blocks differ; for anything else the base is not used and the
 * copy is a full one (with a warning), as xapi's sparse_dd does. The base's chain files join the
 * base's storage (and a chain opened from `srcVhd` the source's).
 *
 * @example
 * ```ts ignore
 * import { resolveBase } from "./allocation.ts";
 * const r = await resolveBase(baseEndpoint, srcEndpoint, opened, { size });
 * r.unchanged; // pass to copy()
 * ```
 */
export async function resolveBase(
  base: Endpoint | undefined,
  src: Endpoint,
  source: { disk: Disk; chain?: VhdChain },
  options: BaseOptions = {},
): Promise<BaseResult> {
  let baseVhd = options.baseVhd;
  const notes: string[] = [];
  if (baseVhd === undefined && base?.kind === "vhd") baseVhd = base.path ?? base.spec;
  // A base device (xapi passes one): the VHD its tapdisk serves, unless -base-vhd names it.
  if (baseVhd === undefined && base?.kind === "block" && options.discovery) {
    const found = await vhdBehindDevice(base.spec, options.discovery).catch((err) => ({
      vhd: undefined,
      reason: errorText(err),
    }));
    if (found.vhd) baseVhd = found.vhd;
    else notes.push(`no VHD found behind -base ${base.spec}: ${found.reason}`);
  }
  const r = await resolveVhdBase({
    base: base?.spec,
    baseVhd,
    sourceChain: source.chain,
    sourceName: source.disk.name,
    srcVhd: options.srcVhd,
    size: options.size ?? source.disk.size,
    chain: { backend: options.vhdBackend, searchDirs: options.discovery?.searchDirs },
  });
  if (base && r.baseLayers) await addChainStorage(base, r.baseLayers, "the base's");
  if (r.sourceLayers) await addChainStorage(src, r.sourceLayers, "the VHD behind the source's");
  return { unchanged: r.unchanged, notes: [...notes, ...r.notes] };
}

/** What the command line says about `-base` beyond the base itself. */
export interface BaseOptions {
  /** `-base-vhd`: the VHD behind the base device. */
  baseVhd?: string;
  /** The VHD behind a device source (`-src-vhd`, or the one discovery found). */
  srcVhd?: string;
  /** Bytes of the copy (default: the source's size). */
  size?: number;
  /** `-vhd-backend`. */
  vhdBackend?: VhdBackend;
  /** Look behind a block-device base for the VHD its tapdisk serves; absent: don't look. */
  discovery?: SourceDiscoveryOptions;
}
