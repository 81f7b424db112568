/**
 * Turns resolved {@linkcode Endpoint}s into {@linkcode Disk}s. This is the one place that knows
 * which kinds of disk exist: the copier does not.
 *
 * @module
 */

import type { Disk } from "../core/disk.ts";
import { ExitCode, SparseDdError } from "../core/errors.ts";
import { FileDisk } from "../file/file_disk.ts";
import { NbdDisk } from "../nbd/nbd_disk.ts";
import { parseNbdUri } from "../nbd/protocol.ts";
import type { VhdChain } from "../vhd/chain.ts";
import type { VhdBackend } from "../vhd/libvhd.ts";
import { VhdDisk } from "../vhd/vhd_disk.ts";
import { openRemote, type RemoteOptions } from "../http/remote.ts";
import { addChainStorage, type Endpoint } from "./endpoint.ts";

/** What the command line says about how to open disks. */
export interface OpenOptions {
  /** `-unbuffered`: O_DIRECT I/O where the disk supports it. */
  unbuffered?: boolean;
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

/** An opened source: the disk, and its VHD chain when it is read as one (for `-base`). */
export interface OpenedSource {
  /** What the copier reads. */
  disk: Disk;
  /** The chain a VHD source is read through. */
  chain?: VhdChain;
}

/**
 * Opens the source of a copy, read-only, as its description says. A VHD source's chain files are
 * recorded in the endpoint (`chain`, `storage`), so copy threads reopen exactly those files and
 * the destination can be checked against every one of them.
 *
 * @example
 * ```ts ignore
 * import { resolveEndpoint } from "./endpoint.ts";
 * import { openSource } from "./open.ts";
 * const src = await openSource(await resolveEndpoint("/dev/sm/backend/sr/vdi", "source"), {});
 * src.disk.size;
 * ```
 */
export async function openSource(e: Endpoint, options: OpenOptions = {}): Promise<OpenedSource> {
  if (e.kind === "nbd") return { disk: await openNbd(e.spec, false, options) };
  if (e.kind === "vhd") {
    const disk = await VhdDisk.open(e.spec, {
      backend: options.vhdBackend ?? "auto",
      layers: e.chain,
    });
    if (e.chain === undefined) {
      e.chain = disk.chain.layers.map((l) => l.path);
      await addChainStorage(e, e.chain, "the source's");
    }
    return { disk, chain: disk.chain };
  }
  return { disk: await FileDisk.open(e.spec, { unbuffered: options.unbuffered }) };
}

/** Options of {@linkcode openDestination} beyond {@linkcode OpenOptions}. */
export interface DestinationOptions extends OpenOptions {
  /**
   * Claim the destination for this copy alone (default true): a block device is opened with
   * `O_EXCL` (refused while mounted or claimed by another writer), a regular file is locked
   * (`flock`). Copy threads of the same copy open it without claiming.
   */
  claim?: boolean;
}

/**
 * Opens the destination of a copy for writing. A missing regular file is created with `size`
 * bytes (and is then known to read as zero); a shorter regular file is extended; a block device
 * must already be large enough (the copier checks before writing anything).
 *
 * @example
 * ```ts ignore
 * import { resolveEndpoint } from "./endpoint.ts";
 * import { openDestination } from "./open.ts";
 * const dst = await openDestination(await resolveEndpoint("/tmp/out.raw", "destination"), 1 << 30);
 * ```
 */
export async function openDestination(
  e: Endpoint,
  size: number,
  options: DestinationOptions = {},
): Promise<Disk> {
  if (e.kind === "http") {
    return await openRemote(e.spec, size, {
      tls: { verify: false },
      ...options.remote,
      nbdExport: options.nbdExport,
      nbdTimeoutMs: options.nbdTimeoutMs,
    });
  }
  // An NBD export has its own size and is never assumed to be zero (only -prezeroed says so).
  if (e.kind === "nbd") return await openNbd(e.spec, true, options);
  return await FileDisk.open(e.spec, {
    write: true,
    createSize: size,
    unbuffered: options.unbuffered,
    claim: options.claim ?? true,
  });
}
