/**
 * From the parsed command line to how an http(s) destination is reached: reads the
 * `-cert-bundle-path` bundle and says once on stderr what Deno's TLS does differently from
 * xapi's OpenSSL (not under `-machine`, where xapi keeps stderr for failures).
 *
 * @module
 */

import { ExitCode, messageOf, SparseDdError } from "../core/errors.ts";
import type { OpenOptions } from "../endpoint/open.ts";
import { TLS_LIMITATION } from "../http/client.ts";
import { parseRemoteUrl } from "../http/url.ts";
import type { Options } from "./flags.ts";
import { note } from "./output.ts";

/**
 * The `remote` part of {@linkcode OpenOptions}; `undefined` when `-dest` is not http(s).
 *
 * @example
 * ```ts
 * import { parse } from "./flags.ts";
 * import { remoteOpenOptions } from "./remote_flags.ts";
 * const r = await parse(["-src", "a", "-dest", "https://h/import", "-config", "/dev/null"]);
 * if (r.action === "copy") await remoteOpenOptions(r.options); // { encryptionMode: "user", ... }
 * ```
 */
export async function remoteOpenOptions(o: Options): Promise<OpenOptions["remote"]> {
  const r = o.remote;
  if (!r) return undefined;
  let caBundle: string | undefined;
  if (r.verify && r.certBundlePath) {
    try {
      caBundle = await Deno.readTextFile(r.certBundlePath);
    } catch (err) {
      throw new SparseDdError(
        ExitCode.Usage,
        `cannot read -cert-bundle-path ${r.certBundlePath}: ${messageOf(err)}`,
      );
    }
    if (!/-----BEGIN CERTIFICATE-----/.test(caBundle)) {
      throw new SparseDdError(
        ExitCode.Usage,
        `-cert-bundle-path ${r.certBundlePath} holds no PEM certificate`,
      );
    }
  }
  let https = false;
  try {
    https = parseRemoteUrl(o.dest, r.encryptionMode).scheme === "https";
  } catch { /* openRemote reports a bad URL */ }
  if (https && !o.machine) note(`note: ${TLS_LIMITATION}`);
  return {
    encryptionMode: r.encryptionMode,
    destProto: r.destProto,
    httpTimeoutMs: r.httpTimeoutMs,
    tls: { verify: r.verify, caBundle, sni: r.sni, ciphers: r.ciphers },
  };
}
