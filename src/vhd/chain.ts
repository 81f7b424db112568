/**
 * VHD chains: a leaf and its ancestors, found through parent locators. The allocation of a chain
 * is the union of its layers' allocated blocks, clipped to the leaf's virtual size — what xapi's
 * sparse_dd calls "allocated in any BAT on the path from the leaf to the root".
 *
 * @module
 */

import { ExtentSet } from "../core/extent.ts";
import { FileAccess, type RandomAccess, VhdLayer } from "./layer.ts";
import { metadataReader, type VhdBackend } from "./libvhd.ts";
import { DiskType, isNilUuid, parentCandidates, VhdError } from "./format.ts";

/** Longest chain we follow; real chains are under 30 deep (SM coalesces them). */
export const MAX_CHAIN_DEPTH = 256;

/** Options for {@linkcode openChain}. */
export interface ChainOptions {
  /** Metadata reader: `auto` (libvhd when loadable), `ts` or `ffi`. Default `ts`. */
  backend?: VhdBackend;
  /** Load libvhd from here (else `$SPARSE_DD_LIBVHD`, else standard paths). */
  libvhdPath?: string;
  /** Extra directories to look for parents in, by basename (xapi uses `/dev/mapper`). */
  searchDirs?: readonly string[];
  /** Deepest chain accepted (default {@linkcode MAX_CHAIN_DEPTH}). */
  maxDepth?: number;
  /** File access, for tests over memory (default: the real file system). */
  fs?: ChainFs;
  /**
   * The chain's files, leaf first, as an earlier open found them: each parent is opened from
   * here (its UUID still checked) instead of being looked for again (copy threads reopen a chain).
   */
  layers?: readonly string[];
}

/** The file-system operations a chain needs; the default is Deno's. */
export interface ChainFs {
  /** Opens a file read-only. */
  open(path: string): Promise<RandomAccess>;
  /** Canonical path (symlinks resolved), or throws when the file does not exist. */
  realPath(path: string): Promise<string>;
}

/**
 * The real file system.
 *
 * @example
 * ```ts ignore
 * import { denoFs } from "./chain.ts";
 * const file = await denoFs.open("disk.vhd");
 * ```
 */
export const denoFs: ChainFs = {
  open: (path) => FileAccess.open(path),
  realPath: (path) => Deno.realPath(path),
};

/**
 * An open chain, leaf first. Layers share nothing; closing the chain closes every file.
 *
 * @example
 * ```ts ignore
 * import { openChain } from "./chain.ts";
 * const chain = await openChain("leaf.vhd");
 * chain.layers.map((l) => l.path); // ["leaf.vhd", "/sr/parent.vhd", "/sr/base.vhd"]
 * chain.allocation().bytes;
 * chain.close();
 * ```
 */
export class VhdChain {
  constructor(
    /** Leaf first, root last. */
    readonly layers: readonly VhdLayer[],
  ) {}

  /** The leaf (the file the chain was opened from). */
  get leaf(): VhdLayer {
    return this.layers[0];
  }

  /** Virtual size: the leaf's. */
  get size(): number {
    return this.leaf.size;
  }

  /** Footer UUIDs, leaf first. */
  get uuids(): string[] {
    return this.layers.map((l) => l.uuid);
  }

  /** Union of every layer's allocated blocks as byte ranges, clipped to the virtual size. */
  allocation(): ExtentSet {
    let all = ExtentSet.empty();
    for (const layer of this.layers) all = all.union(layer.allocation());
    return all.clip(this.size);
  }

  /** Bytes read from all files so far (metadata, bitmaps, data). */
  get bytesRead(): number {
    let n = 0;
    for (const l of this.layers) n += l.file.bytesRead;
    return n;
  }

  /** Closes every file. Idempotent. */
  close(): void {
    for (const l of this.layers) l.close();
  }
}

/**
 * Opens a VHD and its ancestors. Each parent is looked for as tapdisk does (see
 * `parentCandidates` in `vhd.ts`); an existing candidate whose footer UUID differs from the
 * child's header is skipped. Fails with a {@linkcode VhdError} on a missing parent, a UUID that
 * no candidate has, a loop, or any broken layer.
 *
 * @param path the leaf VHD
 * @param options backend, search directories, file system
 * @example
 * ```ts ignore
 * import { openChain } from "./chain.ts";
 * const chain = await openChain("/var/run/sr-mount/sr/leaf.vhd", { backend: "auto" });
 * chain.layers.length; // leaf and every ancestor
 * chain.close();
 * ```
 */
export async function openChain(path: string, options: ChainOptions = {}): Promise<VhdChain> {
  const fs = options.fs ?? denoFs;
  const maxDepth = options.maxDepth ?? MAX_CHAIN_DEPTH;
  const layerOptions = {
    access: (p: string) => fs.open(p),
    metadata: metadataReader(options.backend ?? "ts", options.libvhdPath),
  };
  const layers: VhdLayer[] = [];
  const seenPaths = new Map<string, string>();
  const seenUuids = new Set<string>();
  try {
    let layer = await VhdLayer.open(path, layerOptions);
    layers.push(layer);
    seenPaths.set(await canonical(fs, path), layer.uuid);
    seenUuids.add(layer.uuid);
    while (layer.footer.diskType === DiskType.Differencing) {
      if (layers.length >= maxDepth) {
        throw new VhdError(path, undefined, `VHD chain is deeper than ${maxDepth} layers`);
      }
      const known = options.layers?.[layers.length];
      layer = await openParent(layer, fs, layerOptions, seenPaths, seenUuids, options, known);
      layers.push(layer);
    }
    return new VhdChain(layers);
  } catch (err) {
    for (const l of layers) l.close();
    throw err;
  }
}

async function canonical(fs: ChainFs, path: string): Promise<string> {
  try {
    return await fs.realPath(path);
  } catch {
    return path;
  }
}

async function openParent(
  child: VhdLayer,
  fs: ChainFs,
  layerOptions: Parameters<typeof VhdLayer.open>[1],
  seenPaths: Map<string, string>,
  seenUuids: Set<string>,
  options: ChainOptions,
  known?: string,
): Promise<VhdLayer> {
  const header = child.header!;
  const at = child.footer.dataOffset;
  const want = header.parentUuid;
  if (isNilUuid(want)) {
    throw new VhdError(
      child.path,
      at,
      "differencing VHD over a raw parent (parent UUID is all zeroes) is not supported",
    );
  }
  const locators = known === undefined ? await child.locatorPaths() : [];
  const candidates = known !== undefined
    ? [known]
    : parentCandidates(child.path, locators, header.parentName, options.searchDirs);
  const childReal = known === undefined ? await canonical(fs, child.path) : child.path;
  if (childReal !== child.path) {
    for (const c of parentCandidates(childReal, locators, header.parentName, options.searchDirs)) {
      if (!candidates.includes(c)) candidates.push(c);
    }
  }
  const mismatches: string[] = [];
  for (const candidate of candidates) {
    let real: string;
    try {
      real = await fs.realPath(candidate);
    } catch {
      continue; // does not exist: try the next place
    }
    const inChain = seenPaths.get(real);
    if (inChain !== undefined && inChain !== want) {
      mismatches.push(`${candidate} has ${inChain}`);
      continue;
    }
    if (inChain !== undefined) {
      throw new VhdError(
        child.path,
        at,
        `VHD chain loop: parent ${candidate} is already in the chain`,
      );
    }
    const parent = await VhdLayer.open(candidate, layerOptions);
    if (parent.uuid !== want) {
      mismatches.push(`${candidate} has ${parent.uuid}`);
      parent.close();
      continue;
    }
    if (seenUuids.has(parent.uuid)) {
      parent.close();
      throw new VhdError(
        child.path,
        at,
        `VHD chain loop: parent ${candidate} (uuid ${want}) is already in the chain`,
      );
    }
    seenPaths.set(real, parent.uuid);
    seenUuids.add(parent.uuid);
    return parent;
  }
  const name = header.parentName ? `${JSON.stringify(header.parentName)} ` : "";
  if (mismatches.length > 0) {
    throw new VhdError(
      child.path,
      at,
      `parent ${name}UUID mismatch: the header wants ${want}, but ${mismatches.join(", ")}`,
    );
  }
  if (candidates.length === 0) {
    throw new VhdError(child.path, at, `parent ${name}(uuid ${want}) has no usable locator`);
  }
  throw new VhdError(
    child.path,
    at,
    `parent ${name}(uuid ${want}) not found; tried ${candidates.join(", ")}`,
  );
}
