/**
 * Turns the strings of `-src`, `-dest` and `-base` into {@linkcode Disk}s. This is the one place
 * that knows which kinds of disk exist: the copier does not.
 *
 * @module
 */

import type { Disk } from "./disk.ts";
import { ExitCode, SparseDdError } from "./errors.ts";
import { FileDisk } from "./file.ts";

/** What the command line says about how to open disks. */
export interface OpenOptions {
  /** `-unbuffered`: O_DIRECT I/O where the disk supports it. */
  unbuffered?: boolean;
  /** How to read the source: detect, or force raw or VHD. */
  srcFormat?: "auto" | "raw" | "vhd";
  /** `-nbd-export`: the export name of an NBD destination. */
  nbdExport?: string;
}

/** A `-dest` the tool cannot write to at all (http/https uploads are not implemented). */
function refuseUnsupported(spec: string): void {
  if (/^https?:\/\//i.test(spec)) {
    throw new SparseDdError(
      ExitCode.Usage,
      `${spec}: http(s) destinations are not supported by this sparse_dd; attach the VDI locally or use an nbd:// URI`,
    );
  }
}

/**
 * Opens the source of a copy, read-only.
 *
 * @example
 * ```ts
 * import { openSource } from "./open.ts";
 * const src = await openSource("/dev/sm/backend/sr/vdi", {});
 * src.size;
 * ```
 */
export async function openSource(spec: string, _options: OpenOptions = {}): Promise<Disk> {
  refuseUnsupported(spec);
  return await FileDisk.open(spec);
}

/**
 * Opens the destination of a copy for writing. A missing regular file is created with `size`
 * bytes (and is then known to read as zero); a shorter regular file is extended; a block device
 * must already be large enough (the copier checks before writing anything).
 *
 * @example
 * ```ts
 * import { openDestination } from "./open.ts";
 * const dst = await openDestination("/tmp/out.raw", 1 << 30, {});
 * ```
 */
export async function openDestination(
  spec: string,
  size: number,
  _options: OpenOptions = {},
): Promise<Disk> {
  refuseUnsupported(spec);
  return await FileDisk.open(spec, { write: true, createSize: size });
}
