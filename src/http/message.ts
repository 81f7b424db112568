/**
 * The HTTP/1.1 messages of a remote copy as pure functions: the `PUT` request head sparse_dd
 * sends, and the response head it reads back (status line and headers, up to `\r\n\r\n`).
 *
 * @module
 */

import type { RemoteTarget } from "./url.ts";

/** A parsed response head. */
export interface ResponseHead {
  /** `HTTP/1.1`, `HTTP/1.0`. */
  version: string;
  status: number;
  reason: string;
  /** Header names in lower case; repeated headers joined with `, `. */
  headers: Map<string, string>;
}

/** Largest response head accepted: more is not an HTTP server we talk to. */
export const MAX_HEAD = 64 * 1024;

/**
 * The request head: `PUT`, `host`, `user-agent`, `cookie: chunked=true`, and `authorization`
 * only when the URL has credentials. No Content-Length and no Transfer-Encoding: the body runs
 * until the connection closes (xapi's chunked import and its NBD upgrade both expect this).
 *
 * @example
 * ```ts
 * import { encodeRequestHead } from "./message.ts";
 * import { parseRemoteUrl } from "./url.ts";
 * const head = encodeRequestHead(parseRemoteUrl("http://h/import_raw_vdi?vdi=v"), "sparse_dd/1");
 * new TextDecoder().decode(head).split("\r\n")[0]; // "PUT /import_raw_vdi?vdi=v HTTP/1.1"
 * ```
 */
export function encodeRequestHead(t: RemoteTarget, userAgent: string): Uint8Array {
  const lines = [
    `PUT ${t.requestTarget} HTTP/1.1`,
    `host: ${t.hostHeader}`,
    `user-agent: ${userAgent}`,
    `cookie: chunked=true`,
  ];
  if (t.authorization) lines.push(`authorization: ${t.authorization}`);
  return new TextEncoder().encode(lines.join("\r\n") + "\r\n\r\n");
}

/**
 * Where the head ends in `buf`: the index just past the first `\r\n\r\n`, or -1. `from` lets a
 * caller that appends bytes search only what is new.
 *
 * @example
 * ```ts
 * import { headEnd } from "./message.ts";
 * headEnd(new TextEncoder().encode("HTTP/1.1 200 OK\r\n\r\nNBD")); // 19
 * ```
 */
export function headEnd(buf: Uint8Array, from = 0): number {
  for (let i = Math.max(3, from); i < buf.length; i++) {
    if (buf[i] === 10 && buf[i - 1] === 13 && buf[i - 2] === 10 && buf[i - 3] === 13) return i + 1;
  }
  return -1;
}

/**
 * Parses a response head (the bytes up to and including `\r\n\r\n`). Throws a `RangeError` saying
 * what is wrong with a head that is not HTTP.
 *
 * @example
 * ```ts
 * import { parseResponseHead } from "./message.ts";
 * const h = parseResponseHead(
 *   new TextEncoder().encode("HTTP/1.1 200 OK\r\nTransfer-encoding: nbd\r\n\r\n"),
 * );
 * h.status; // 200
 * h.headers.get("transfer-encoding"); // "nbd"
 * ```
 */
export function parseResponseHead(bytes: Uint8Array): ResponseHead {
  const text = new TextDecoder("latin1").decode(bytes);
  const lines = text.replace(/\r\n\r\n$/, "").split("\r\n");
  const m = /^(HTTP\/\d\.\d) (\d{3})(?: (.*))?$/.exec(lines[0]);
  if (!m) throw new RangeError(`not an HTTP response: '${printable(lines[0])}'`);
  const headers = new Map<string, string>();
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(":");
    if (colon <= 0) throw new RangeError(`malformed response header '${printable(line)}'`);
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    const had = headers.get(name);
    headers.set(name, had === undefined ? value : `${had}, ${value}`);
  }
  return { version: m[1], status: Number(m[2]), reason: (m[3] ?? "").trim(), headers };
}

/**
 * True when the response upgrades the connection to NBD: a `Transfer-encoding` header whose
 * value is `nbd`, in any case (xapi's `nbd_handler` sends `Transfer-encoding: nbd`).
 *
 * @example
 * ```ts
 * import { isNbdUpgrade, parseResponseHead } from "./message.ts";
 * const h = parseResponseHead(new TextEncoder().encode("HTTP/1.1 200 OK\r\nTRANSFER-ENCODING: NBD\r\n\r\n"));
 * isNbdUpgrade(h); // true
 * ```
 */
export function isNbdUpgrade(h: ResponseHead): boolean {
  const te = h.headers.get("transfer-encoding");
  return te !== undefined && te.split(",").some((v) => v.trim().toLowerCase() === "nbd");
}

/** At most 80 printable characters of a line from the server, for a message. */
function printable(s: string): string {
  const clean = s.replace(/[^\x20-\x7e]/g, "?");
  return clean.length > 80 ? `${clean.slice(0, 80)}...` : clean;
}
