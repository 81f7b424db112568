/**
 * Turns the strings of `-src`, `-dest` and `-base` into {@linkcode Disk}s. This is the one place
 * that knows which kinds of disk exist: the copier does not.
 *
 * @module
 */

import type { Disk } from "../core/disk.ts";
import { ExitCode, SparseDdError } from "../core/errors.ts";
import { FileDisk } from "../file/file_disk.ts";
import { NbdDisk } from "../nbd/nbd_disk.ts";
import { isNbdUri, parseNbdUri } from "../nbd/protocol.ts";
import type { VhdBackend } from "../vhd/libvhd.ts";
import { isVhdSource, VhdDisk } from "../vhd/vhd_disk.ts";
import { isRemoteUrl, redactSecrets } from "../http/url.ts";
import { openRemote, type RemoteOptions } from "../http/remote.ts";

/** What the command line says about how to open disks. */
export interface OpenOptions {
  /** `-unbuffered`: O_DIRECT I/O where the disk supports it. */
  unbuffered?: boolean;
  /** How to read the source: detect, or force raw or VHD. */
  srcFormat?: "auto" | "raw" | "vhd";
  /** `-vhd-backend`: who reads VHD metadata (default auto: libvhd when loadable). */
  vhdBackend?: VhdBackend;
  /** `-nbd-export`: the export name of an NBD destination. */
  nbdExport?: string;
  /** `-nbd-timeout`: milliseconds allowed for connecting and for each NBD request (0: no limit). */
  nbdTimeoutMs?: number;
  /** How to reach an http(s) destination (`-encryption-mode`, TLS, `-dest-proto`, timeouts). */
  remote?: Omit<RemoteOptions, "nbdExport" | "nbdTimeoutMs">;
}

/**
 * Opens an `nbd://` / `nbd+unix://` URI. A malformed or unsupported URI (`nbds://`) is a usage
 * error (exit 1); connection and server failures are NBD errors (exit 5).
 */
async function openNbd(
  spec: string,
  writable: boolean,
  options: OpenOptions,
): Promise<Disk> {
  try {
    parseNbdUri(spec);
  } catch (err) {
    throw new SparseDdError(ExitCode.Usage, (err as Error).message);
  }
  return await NbdDisk.open(spec, {
    writable,
    exportName: writable ? options.nbdExport : undefined,
    requestTimeoutMs: options.nbdTimeoutMs,
    connectTimeoutMs: options.nbdTimeoutMs,
  });
}

/** A source that can only be a destination (xapi's imports take data; they give none). */
function refuseRemoteSource(spec: string, role: string): void {
  if (isRemoteUrl(spec)) {
    throw new SparseDdError(
      ExitCode.Usage,
      `${redactSecrets(spec)}: an http(s) URL can only be the destination, not the ${role}`,
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
export async function openSource(spec: string, options: OpenOptions = {}): Promise<Disk> {
  refuseRemoteSource(spec, "source");
  if (isNbdUri(spec)) return await openNbd(spec, false, options);
  // A VHD file is read as the disk it describes (its chain), not as its bytes.
  if (await isVhdSource(spec, options.srcFormat ?? "auto")) {
    return await VhdDisk.open(spec, { backend: options.vhdBackend ?? "auto" });
  }
  return await FileDisk.open(spec, { unbuffered: options.unbuffered });
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
  options: OpenOptions = {},
): Promise<Disk> {
  if (isRemoteUrl(spec)) {
    return await openRemote(spec, size, {
      tls: { verify: false },
      ...options.remote,
      nbdExport: options.nbdExport,
      nbdTimeoutMs: options.nbdTimeoutMs,
    });
  }
  // An NBD export has its own size and is never assumed to be zero (only -prezeroed says so).
  if (isNbdUri(spec)) return await openNbd(spec, true, options);
  return await FileDisk.open(spec, {
    write: true,
    createSize: size,
    unbuffered: options.unbuffered,
  });
}
