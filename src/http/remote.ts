/**
 * Opens a remote `-dest` as xapi passes it: `PUT` to the URL, then either xapi's chunked import
 * ({@linkcode ChunkedDisk}) or, when the response says `Transfer-encoding: nbd`, an NBD session
 * over the same connection ({@linkcode NbdDisk.attach}). The status is judged here: anything but
 * 2xx is a destination error (exit 4) naming the status and reason; no redirect is followed.
 *
 * @module
 */

import { type Disk, DiskError } from "../core/disk.ts";
import { ExitCode, SparseDdError } from "../core/errors.ts";
import { NbdDisk } from "../nbd/nbd_disk.ts";
import { VERSION } from "../version.ts";
import { ChunkedDisk, SECTOR } from "./chunked_disk.ts";
import { HttpError, openPut, type TlsSettings } from "./client.ts";
import { isNbdUpgrade } from "./message.ts";
import { type EncryptionMode, parseRemoteUrl, redactSecrets } from "./url.ts";

/** Default `-http-timeout`: seconds for connecting, the response head and each frame. */
export const DEFAULT_HTTP_TIMEOUT_S = 60;

/** What the command line says about a remote destination. */
export interface RemoteOptions {
  /** `-encryption-mode`. */
  encryptionMode?: EncryptionMode;
  /** `-dest-proto`: `nbd` requires the upgrade; `chunked` refuses it; unset follows the server. */
  destProto?: "nbd" | "chunked";
  /** `-nbd-export` (default ""). */
  nbdExport?: string;
  /** TLS for https. */
  tls: TlsSettings;
  /** `-http-timeout` in milliseconds (0: no limit). */
  httpTimeoutMs?: number;
  /** `-nbd-timeout` in milliseconds for NBD requests (default: the NBD client's). */
  nbdTimeoutMs?: number;
}

function destinationError(name: string, reason: string, cause?: unknown): DiskError {
  const e = new DiskError(name, "open", undefined, reason, cause ? { cause } : undefined);
  e.role = "destination";
  return e;
}

/**
 * Opens `spec` for a copy of `size` bytes. A malformed URL or a size that is not a whole number
 * of sectors is a usage error (exit 1), checked before connecting.
 *
 * @example
 * ```ts
 * import { openRemote } from "./remote.ts";
 * const disk = await openRemote("https://pool/import_raw_vdi?vdi=x&session_id=s", 1 << 30, {
 *   tls: { verify: false },
 * });
 * ```
 */
export async function openRemote(
  spec: string,
  size: number,
  options: RemoteOptions,
): Promise<Disk> {
  let target;
  try {
    target = parseRemoteUrl(spec, options.encryptionMode ?? "user");
  } catch (e) {
    throw new SparseDdError(ExitCode.Usage, (e as Error).message);
  }
  const name = target.display;
  const timeoutMs = options.httpTimeoutMs ?? DEFAULT_HTTP_TIMEOUT_S * 1000;
  if (options.destProto !== "nbd" && size % SECTOR !== 0) {
    throw new SparseDdError(
      ExitCode.Usage,
      `-size ${size} is not a multiple of ${SECTOR}: a chunked import (${name}) takes whole sectors`,
    );
  }
  let response;
  try {
    response = await openPut(target, {
      tls: options.tls,
      timeoutMs,
      userAgent: `sparse_dd/${VERSION}`,
    });
  } catch (e) {
    throw destinationError(name, redactSecrets(e instanceof HttpError ? e.message : String(e)), e);
  }
  const { head, stream } = response;
  if (head.status < 200 || head.status > 299) {
    stream.close();
    const location = head.headers.get("location");
    const redirect = head.status >= 300 && head.status < 400 && location
      ? ` (redirect to ${redactSecrets(location)} not followed)`
      : "";
    throw destinationError(
      name,
      `the server answered ${head.status} ${head.reason}${redirect}`.replace(/\s+$/, ""),
    );
  }
  const upgrade = isNbdUpgrade(head);
  if (options.destProto === "nbd" && !upgrade) {
    stream.close();
    throw destinationError(
      name,
      `-dest-proto nbd, but the server answered ${head.status} ${head.reason} without ` +
        "'Transfer-encoding: nbd'",
    );
  }
  if (options.destProto === "chunked" && upgrade) {
    stream.close();
    throw destinationError(name, "-dest-proto chunked, but the server upgraded to NBD");
  }
  if (!upgrade) return new ChunkedDisk(stream, name, size, { timeoutMs });
  return await NbdDisk.attach(stream, name, {
    exportName: options.nbdExport ?? "",
    writable: true,
    negotiation: "export-name",
    writeZeroes: false,
    connectTimeoutMs: timeoutMs,
    requestTimeoutMs: options.nbdTimeoutMs,
  });
}
