/**
 * `-base` planning: which bytes of the destination can be left alone because it already holds
 * the base. Both chains are sets of layers keyed by footer UUID; a block can differ between
 * source and base only if it is allocated in a layer that is in one chain and not the other
 * (xapi's `Vhd_input` symmetric difference: "include changes" plus "revert base-only changes").
 * Everything else is `unchanged`, and the copier neither reads nor writes it.
 *
 * @module
 */

import { type ChainOptions, openChain, type VhdChain } from "./chain.ts";
import { ExtentSet } from "./extent.ts";
import { FileAccess } from "./layer.ts";
import { FOOTER_SIZE, hasVhdCookie } from "./vhd.ts";

/** What {@linkcode planBase} found. */
export interface BasePlan {
  /** Bytes of `[0, size)` that can differ: read and written. */
  changed: ExtentSet;
  /** Bytes of `[0, size)` the destination already holds: left alone. */
  unchanged: ExtentSet;
  /** UUIDs of the layers the two chains share (leaf first, as in the source). */
  shared: string[];
  /** UUIDs of the layers only in the source chain. */
  sourceOnly: string[];
  /** UUIDs of the layers only in the base chain. */
  baseOnly: string[];
}

/**
 * Plans a delta copy of `source` over a destination that holds `base`.
 *
 * @param source the source chain
 * @param base the base chain
 * @param size bytes of the copy (default: the source's virtual size)
 * @example
 * ```ts ignore
 * import { openChain } from "./chain.ts";
 * import { planBase } from "./base.ts";
 * const plan = planBase(await openChain("leaf.vhd"), await openChain("snapshot.vhd"));
 * plan.unchanged; // pass to copy() as `unchanged`
 * ```
 */
export function planBase(source: VhdChain, base: VhdChain, size: number = source.size): BasePlan {
  const inSource = new Set(source.uuids);
  const inBase = new Set(base.uuids);
  let changed = ExtentSet.empty();
  const shared: string[] = [];
  const sourceOnly: string[] = [];
  const baseOnly: string[] = [];
  for (const layer of source.layers) {
    if (inBase.has(layer.uuid)) {
      shared.push(layer.uuid);
    } else {
      sourceOnly.push(layer.uuid);
      changed = changed.union(layer.allocation());
    }
  }
  for (const layer of base.layers) {
    if (!inSource.has(layer.uuid)) {
      baseOnly.push(layer.uuid);
      changed = changed.union(layer.allocation());
    }
  }
  // Past the base's virtual size the destination holds nothing of the base's layers, even where
  // a shared layer has data: copy it.
  if (base.size < size) changed = changed.union(ExtentSet.range(base.size, size - base.size));
  changed = changed.clip(size);
  return {
    changed,
    unchanged: ExtentSet.range(0, size).difference(changed),
    shared,
    sourceOnly,
    baseOnly,
  };
}

/**
 * True when the file at `path` is a VHD: a regular file (or block device) whose last 512 bytes,
 * or first 512 bytes (the footer copy), start with the cookie `conectix`.
 *
 * @example
 * ```ts ignore
 * import { isVhdFile } from "./base.ts";
 * await isVhdFile("disk.vhd"); // true
 * await isVhdFile("disk.raw"); // false
 * ```
 */
export async function isVhdFile(path: string): Promise<boolean> {
  let file: FileAccess;
  try {
    file = await FileAccess.open(path);
  } catch {
    return false;
  }
  try {
    if (file.size < FOOTER_SIZE) return false;
    const buf = new Uint8Array(FOOTER_SIZE);
    await file.readAt(file.size - FOOTER_SIZE, buf);
    if (hasVhdCookie(buf)) return true;
    await file.readAt(0, buf);
    return hasVhdCookie(buf);
  } catch {
    return false;
  } finally {
    file.close();
  }
}

/**
 * The `unchanged` set for a copy of the source chain at `sourcePath` over a destination holding
 * `basePath`, or `undefined` when the base is not a VHD (the caller warns and copies in full).
 * A base that is a VHD but broken is an error, not a silent full copy.
 *
 * @param sourcePath the source's VHD (leaf of its chain)
 * @param basePath the base's VHD (leaf of its chain)
 * @param size bytes of the copy
 * @param options backend and search options for both chains
 * @example
 * ```ts ignore
 * import { baseUnchanged } from "./base.ts";
 * const unchanged = await baseUnchanged("leaf.vhd", "snap.vhd", size);
 * ```
 */
export async function baseUnchanged(
  sourcePath: string,
  basePath: string,
  size: number,
  options: ChainOptions = {},
): Promise<BasePlan | undefined> {
  if (!(await isVhdFile(basePath))) return undefined;
  const source = await openChain(sourcePath, options);
  try {
    const base = await openChain(basePath, options);
    try {
      return planBase(source, base, size);
    } finally {
      base.close();
    }
  } finally {
    source.close();
  }
}
