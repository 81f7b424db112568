/**
 * Remote destinations as xapi passes them: `http(s)://[user:pass@]host[:port]/path?query`.
 * Pure functions: recognising such a `-dest`, rewriting it as `-encryption-mode` says, turning it
 * into what a connection needs, and redacting secrets (`session_id`, credentials) from any text
 * that may be shown or logged.
 *
 * @module
 */

/** `-encryption-mode`: `always` makes http https, `never` makes https http, `user` keeps it. */
export type EncryptionMode = "always" | "never" | "user";

/** What a connection to a remote destination needs. */
export interface RemoteTarget {
  /** After `-encryption-mode`. */
  scheme: "http" | "https";
  /** Host name or address, without the brackets of an IPv6 literal. */
  host: string;
  /** The URL's port, or 80 / 443. */
  port: number;
  /** What follows the method: the path and the query, as given. */
  requestTarget: string;
  /** The `host` header: the URL's host and any explicit port. */
  hostHeader: string;
  /** `Basic …` when the URL carries `user:pass@`. */
  authorization?: string;
  /** The URL with secrets replaced, for messages. */
  display: string;
}

/**
 * True for a `-dest` that names an http or https destination.
 *
 * @example
 * ```ts
 * import { isRemoteUrl } from "./url.ts";
 * isRemoteUrl("https://pool/import_raw_vdi?vdi=OpaqueRef:1"); // true
 * isRemoteUrl("/dev/sm/backend/sr/vdi"); // false
 * ```
 */
export function isRemoteUrl(spec: string): boolean {
  return /^https?:\/\//i.test(spec);
}

/**
 * Parses `-encryption-mode`.
 *
 * @example
 * ```ts
 * import { parseEncryptionMode } from "./url.ts";
 * parseEncryptionMode("always"); // "always"
 * ```
 */
export function parseEncryptionMode(text: string | undefined): EncryptionMode {
  const mode = (text ?? "user").trim().toLowerCase();
  if (mode === "always" || mode === "never" || mode === "user") return mode;
  throw new RangeError(`invalid -encryption-mode value '${text}': expected always, never or user`);
}

const REDACTED = "<redacted>";

/**
 * Replaces the secrets in any text: the value of every `session_id` parameter and the
 * `user:password@` of any URL. Applied to every message and log line that may hold a URL.
 *
 * @example
 * ```ts
 * import { redactSecrets } from "./url.ts";
 * redactSecrets("cannot open https://root:pw@h/import?session_id=OpaqueRef:abc&vdi=x");
 * // "cannot open https://<redacted>@h/import?session_id=<redacted>&vdi=x"
 * ```
 */
export function redactSecrets(text: string): string {
  return text
    .replace(/(\b[a-z][a-z0-9+.-]*:\/\/)(?!<redacted>@)[^/\s@?#]*@/gi, `$1${REDACTED}@`)
    .replace(/(session_id(?:=|%3D))(?!<redacted>)[^&;\s#'"<>]*/gi, `$1${REDACTED}`);
}

/**
 * Parses a remote `-dest` and applies `-encryption-mode`. Throws a `RangeError` (a usage error)
 * for anything that is not a usable http(s) URL; its message is already redacted.
 *
 * @example
 * ```ts
 * import { parseRemoteUrl } from "./url.ts";
 * const t = parseRemoteUrl("http://[::1]:8080/services/SM/nbdproxy/import/a?session_id=s", "always");
 * t.scheme; // "https"
 * t.host; // "::1"
 * t.port; // 8080
 * t.requestTarget; // "/services/SM/nbdproxy/import/a?session_id=s"
 * ```
 */
export function parseRemoteUrl(spec: string, mode: EncryptionMode = "user"): RemoteTarget {
  const shown = redactSecrets(spec);
  let url: URL;
  try {
    url = new URL(spec);
  } catch {
    throw new RangeError(`malformed destination URL ${shown}`);
  }
  const given = url.protocol.replace(/:$/, "").toLowerCase();
  if (given !== "http" && given !== "https") {
    throw new RangeError(`not an http(s) destination: ${shown}`);
  }
  if (url.hostname === "") throw new RangeError(`destination URL without a host: ${shown}`);
  if (url.hash) throw new RangeError(`destination URL with a #fragment: ${shown}`);
  const scheme = mode === "always" ? "https" : mode === "never" ? "http" : given;
  const port = url.port === "" ? (scheme === "https" ? 443 : 80) : Number(url.port);
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
  let authorization: string | undefined;
  if (url.username !== "" || url.password !== "") {
    let user: string, pass: string;
    try {
      user = decodeURIComponent(url.username);
      pass = decodeURIComponent(url.password);
    } catch {
      throw new RangeError(`bad percent-encoding in the credentials of ${shown}`);
    }
    authorization = `Basic ${base64(new TextEncoder().encode(`${user}:${pass}`))}`;
  }
  const bracketed = host.includes(":") ? `[${host}]` : host;
  const display = redactSecrets(
    `${scheme}://${url.username || url.password ? "x@" : ""}${bracketed}${
      url.port === "" ? "" : `:${url.port}`
    }${url.pathname}${url.search}`,
  );
  return {
    scheme,
    host,
    port,
    requestTarget: `${url.pathname}${url.search}`,
    hostHeader: `${bracketed}${url.port === "" ? "" : `:${url.port}`}`,
    authorization,
    display,
  };
}

function base64(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}
