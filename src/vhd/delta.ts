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
import { ExtentSet } from "../core/extent.ts";
import { isVhdFile } from "./layer.ts";

export { isVhdFile };

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
 * import { planBase } from "./delta.ts";
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

/** Inputs of {@linkcode resolveVhdBase}: what the command line and the opened source say. */
export interface VhdBaseInputs {
  /** `-base` as given, for messages; may be undefined (only `-base-vhd`). */
  base?: string;
  /**
   * The base's VHD: `-base-vhd`, the VHD found behind a base device, or the base itself when it
   * is read as a VHD. Absent: the base is not a VHD chain.
   */
  baseVhd?: string;
  /** The source's own chain, when the source is read as a VHD. */
  sourceChain?: VhdChain;
  /** The source's name, for messages. */
  sourceName: string;
  /** The VHD behind a device source (`-src-vhd`, or what discovery found). */
  srcVhd?: string;
  /** Bytes of the copy. */
  size: number;
  /** Chain options (backend, search directories). */
  chain?: ChainOptions;
}

/** What {@linkcode resolveVhdBase} decided. */
export interface VhdBaseResult {
  /** Ranges the destination already holds; `undefined`: full copy. */
  unchanged?: ExtentSet;
  /** Lines for stderr (the full-copy warning). */
  notes: string[];
  /** The layer comparison, when both sides were VHD chains. */
  plan?: BasePlan;
  /** The files of the base's VHD chain, leaf first, when it was opened. */
  baseLayers?: string[];
  /** The files of the source's VHD chain opened from `srcVhd`, leaf first. */
  sourceLayers?: string[];
}

/**
 * Resolves `-base` for the CLI: when both the source and the base are VHD chains, the ranges the
 * destination already holds; otherwise a warning and a full copy (as xapi's sparse_dd, which
 * ignores a non-VHD base). A base that is a VHD but broken, or whose parents are missing, is an
 * error: silently copying everything would hide it.
 *
 * @example
 * ```ts ignore
 * import { resolveVhdBase } from "./delta.ts";
 * const r = await resolveVhdBase({ baseVhd: "snap.vhd", sourceChain, sourceName: "leaf.vhd", size });
 * r.unchanged; // pass to copy()
 * ```
 */
export async function resolveVhdBase(inputs: VhdBaseInputs): Promise<VhdBaseResult> {
  const label = inputs.base ?? inputs.baseVhd ?? "";
  const basePath = inputs.baseVhd;
  if (basePath === undefined) {
    return {
      notes: [
        `warning: -base ${label} is not a VHD chain sparse_dd can read (give -base-vhd PATH, ` +
        `or -base-format vhd): doing a full copy`,
      ],
    };
  }
  let source: VhdChain | undefined = inputs.sourceChain;
  let owned = false;
  if (source === undefined && inputs.srcVhd !== undefined) {
    source = await openChain(inputs.srcVhd, inputs.chain);
    owned = true;
  }
  if (source === undefined) {
    const r: VhdBaseResult = {
      notes: [
        `warning: -base ${label} ignored: the source ${inputs.sourceName} is not a VHD chain ` +
        `(give -src-vhd PATH): doing a full copy`,
      ],
    };
    // Its files are still learnt, so that none of them can be the destination.
    const base = await openChain(basePath, inputs.chain).catch(() => undefined);
    if (base) {
      r.baseLayers = base.layers.map((l) => l.path);
      base.close();
    }
    return r;
  }
  try {
    const base = await openChain(basePath, inputs.chain);
    try {
      const plan = planBase(source, base, inputs.size);
      const r: VhdBaseResult = {
        unchanged: plan.unchanged,
        notes: [],
        plan,
        baseLayers: base.layers.map((l) => l.path),
      };
      if (owned) r.sourceLayers = source.layers.map((l) => l.path);
      return r;
    } finally {
      base.close();
    }
  } finally {
    if (owned) source.close();
  }
}
