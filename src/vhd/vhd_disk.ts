/**
 * A VHD file or chain as a read-only {@linkcode Disk}: `read` gives the logical content (each
 * sector from the nearest layer whose bitmap has it, zeroes where no layer has it; fixed disks
 * directly), `allocation` gives the chain's allocated blocks. So `-src disk.vhd` converts a VHD
 * chain to raw without tapdisk, reading only allocated blocks.
 *
 * @module
 */

import { type ChainOptions, openChain, type VhdChain } from "./chain.ts";
import { asDiskError, type Disk, DiskError } from "../core/disk.ts";
import type { ExtentSet } from "../core/extent.ts";
import { ExitCode, SparseDdError } from "../core/errors.ts";

/**
 * A VHD chain as a source disk.
 *
 * @example Converting a VHD to raw with the copier
 * ```ts ignore
 * import { VhdDisk } from "./vhd_disk.ts";
 * const src = await VhdDisk.open("leaf.vhd");
 * const buf = new Uint8Array(4096);
 * await src.read(0, buf);          // logical bytes 0..4095 of the chain
 * (await src.allocation()).bytes;  // what a copy has to read
 * await src.close();
 * ```
 */
export class VhdDisk implements Disk {
  readonly name: string;
  /** Allocation comes from the chain's BATs. */
  readonly allocationRoute = "vhd";
  readonly size: number;
  #closed = false;

  constructor(readonly chain: VhdChain, name?: string) {
    this.name = name ?? chain.leaf.path;
    this.size = chain.size;
  }

  /** Opens the VHD at `path` and its parents. */
  static async open(path: string, options: ChainOptions = {}): Promise<VhdDisk> {
    return new VhdDisk(await openChain(path, options), path);
  }

  /** Bytes read from the VHD files so far (metadata, bitmaps and data). */
  get bytesRead(): number {
    return this.chain.bytesRead;
  }

  async read(offset: number, buf: Uint8Array): Promise<void> {
    if (this.#closed) throw new DiskError(this.name, "read", offset, "disk is closed");
    if (offset < 0 || offset + buf.length > this.size) {
      throw new DiskError(
        this.name,
        "read",
        offset,
        `read of ${buf.length} bytes outside [0, ${this.size})`,
      );
    }
    try {
      await this.#readFrom(0, offset, buf);
    } catch (err) {
      throw asDiskError(err, this.name, "read", offset);
    }
  }

  /** Fills `buf` with virtual bytes at `offset` as seen from layer `i` down to the root. */
  async #readFrom(i: number, offset: number, buf: Uint8Array): Promise<void> {
    const layers = this.chain.layers;
    if (i >= layers.length) {
      buf.fill(0);
      return;
    }
    const layer = layers[i];
    // Runs of present sectors are contiguous in the file: one read per run, not per sector.
    for (const run of await layer.runs(offset, offset + buf.length)) {
      const view = buf.subarray(run.start - offset, run.start - offset + run.length);
      if (run.fileOffset !== undefined) {
        await layer.readData(run.fileOffset, view);
      } else if (layer.kind === "differencing") {
        // Inside the layer's size the parent shows through; past it (a child grown after the
        // snapshot) there is nothing below.
        const inside = Math.max(0, Math.min(run.length, layer.size - run.start));
        if (inside > 0) await this.#readFrom(i + 1, run.start, view.subarray(0, inside));
        view.subarray(inside).fill(0);
      } else {
        view.fill(0);
      }
    }
  }

  write(offset: number, _buf: Uint8Array): Promise<void> {
    return Promise.reject(
      new DiskError(this.name, "write", offset, "VHD sources are read-only"),
    );
  }

  /** The union of the chain's allocated blocks, clipped to the virtual size. */
  allocation(): Promise<ExtentSet | undefined> {
    return Promise.resolve(this.chain.allocation());
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  close(): Promise<void> {
    this.#closed = true;
    this.chain.close();
    return Promise.resolve();
  }
}

/**
 * The allocation of the VHD chain at `vhdPath` for a device source of `deviceSize` bytes
 * (`-src-vhd`): the chain must describe a disk of that size, or it is not this device's VHD.
 *
 * @example
 * ```ts ignore
 * import { deviceVhdAllocation } from "./vhd_disk.ts";
 * const { extents, layers } = await deviceVhdAllocation("/dev/sm/x", 10 << 30, "/sr/x.vhd");
 * ```
 */
export async function deviceVhdAllocation(
  device: string,
  deviceSize: number,
  vhdPath: string,
  options: ChainOptions = {},
): Promise<{ extents: ExtentSet; layers: string[] }> {
  const chain = await openChain(vhdPath, options);
  try {
    if (chain.size !== deviceSize) {
      throw new SparseDdError(
        ExitCode.Source,
        `-src-vhd ${vhdPath} describes a disk of ${chain.size} bytes, but ${device} has ` +
          `${deviceSize}: not the VHD behind this device`,
      );
    }
    return { extents: chain.allocation(), layers: chain.layers.map((l) => l.path) };
  } finally {
    chain.close();
  }
}
