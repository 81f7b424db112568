/**
 * The HTTP(S) side of a remote copy: connect (TCP, or TLS 1.2 as xapi configures it), send the
 * `PUT` head, and read the response head without losing a byte of what follows it (the chunked
 * stream goes the other way; after `Transfer-encoding: nbd` the NBD greeting follows at once).
 *
 * TLS runs through Node's `tls` module in Deno (rustls underneath): it is the one TLS client in
 * Deno that can connect without verifying the peer (xapi without `-verify-dest`), verify against
 * a given bundle only, skip the host name check (xapi's `-verify-dest` checks the chain only),
 * and send SNI only when asked (`-sni`). It cannot apply an OpenSSL cipher string: see
 * {@linkcode TLS_LIMITATION}.
 *
 * @module
 */

// Only types here: the modules are loaded when a TLS connection is made (a static node: import
// starts Deno's Node layer, 15-20 ms of every run's start-up, TLS or not).
import type * as tls from "node:tls";
import {
  encodeRequestHead,
  headEnd,
  MAX_HEAD,
  parseResponseHead,
  type ResponseHead,
} from "./message.ts";
import {
  type ByteStream,
  PrefixedStream,
  TcpStream,
  TlsSocketStream,
  writeFully,
} from "./stream.ts";
import type { RemoteTarget } from "./url.ts";
import { deadline } from "../core/deadline.ts";

/** How to speak TLS to an https destination. */
export interface TlsSettings {
  /** `-verify-dest`: check the peer's chain against `caBundle` (never its host name). */
  verify: boolean;
  /** `-cert-bundle-path`'s contents (PEM), the only trusted roots when verifying. */
  caBundle?: string;
  /** `-sni`: the server name sent in the handshake; none is sent without it. */
  sni?: string;
  /** `-good-ciphersuites` (OpenSSL names); passed on, but see {@linkcode TLS_LIMITATION}. */
  ciphers?: string;
}

/** What the TLS client here does differently from xapi's OpenSSL, said once on stderr. */
export const TLS_LIMITATION =
  "TLS 1.2 with rustls's ECDHE AES-GCM/ChaCha20 suites: Deno cannot restrict them to the " +
  "OpenSSL list of -good-ciphersuites (xapi's list is a subset of them)";

/** Options of {@linkcode openPut}. */
export interface PutOptions {
  tls: TlsSettings;
  /** Milliseconds allowed for connecting, the TLS handshake and the response head. */
  timeoutMs: number;
  /** The `user-agent` header. */
  userAgent: string;
}

/** The response head, and the connection positioned just past it. */
export interface PutResponse {
  head: ResponseHead;
  stream: ByteStream;
}

/**
 * Why a remote destination could not be opened; `message` never holds secrets.
 *
 * @example
 * ```ts
 * import { HttpError } from "./client.ts";
 * new HttpError("no response within 60 s").message; // "no response within 60 s"
 * ```
 */
export class HttpError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "HttpError";
  }
}

/**
 * Races `p` against `ms` (0: no limit); on timeout runs `onTimeout` (which closes the connection,
 * so `p` settles too) and rejects with an {@linkcode HttpError} saying `message`.
 *
 * @example
 * ```ts
 * import { withTimeout } from "./client.ts";
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 80 });
 * await withTimeout(conn.write(new Uint8Array(1)), 60_000, "stalled", () => conn.close());
 * ```
 */
export function withTimeout<T>(
  p: Promise<T>,
  ms: number,
  message: string,
  onTimeout: () => void,
): Promise<T> {
  return deadline(p, ms, onTimeout, () => new HttpError(message));
}

/**
 * Connects to `target`, sends `PUT` and reads the response head. Does not judge the status:
 * the caller does (no redirect is ever followed). Throws {@linkcode HttpError}.
 *
 * @example
 * ```ts
 * import { openPut } from "./client.ts";
 * import { parseRemoteUrl } from "./url.ts";
 * const r = await openPut(parseRemoteUrl("http://127.0.0.1:8080/import_raw_vdi?vdi=x"), {
 *   tls: { verify: false }, timeoutMs: 30_000, userAgent: "sparse_dd",
 * });
 * r.head.status; // 200
 * ```
 */
export async function openPut(target: RemoteTarget, options: PutOptions): Promise<PutResponse> {
  let stream: ByteStream | undefined;
  let timedOut = false;
  const run = async (): Promise<PutResponse> => {
    const s = target.scheme === "https"
      ? await connectTls(target, options.tls)
      : await connectTcp(target);
    if (timedOut) {
      s.close();
      throw new HttpError("timed out");
    }
    stream = s;
    await writeFully(s, encodeRequestHead(target, options.userAgent));
    return await readHead(s);
  };
  try {
    return await withTimeout(
      run(),
      options.timeoutMs,
      `no response within ${options.timeoutMs / 1000} s`,
      () => {
        timedOut = true;
        stream?.close();
      },
    );
  } catch (e) {
    stream?.close();
    throw e instanceof HttpError ? e : new HttpError(describe(e), { cause: e });
  }
}

async function connectTcp(target: RemoteTarget): Promise<ByteStream> {
  const conn = await Deno.connect({ hostname: target.host, port: target.port });
  // Frames go out as header and data: no waiting for ACKs between them.
  conn.setNoDelay(true);
  return new TcpStream(conn);
}

async function connectTls(target: RemoteTarget, settings: TlsSettings): Promise<ByteStream> {
  // Node's TLS sends the host name as SNI whenever it is one; xapi sends SNI only with -sni, so
  // a name is resolved here and the address is what TLS sees.
  const [{ connect }, { lookup }, { isIP }] = await Promise.all([
    import("node:tls"),
    import("node:dns/promises"),
    import("node:net"),
  ]);
  const address = isIP(target.host) ? target.host : (await lookup(target.host)).address;
  const options: tls.ConnectionOptions = {
    host: address,
    port: target.port,
    minVersion: "TLSv1.2",
    maxVersion: "TLSv1.2",
    rejectUnauthorized: settings.verify,
    // xapi verifies the chain only: pool members' certificates do not name the address used.
    checkServerIdentity: () => undefined,
  };
  if (settings.verify) options.ca = [settings.caBundle ?? ""];
  if (settings.sni !== undefined) options.servername = settings.sni;
  if (settings.ciphers) options.ciphers = settings.ciphers;
  const socket = connect(options);
  // As for plain TCP: NBD's request, reply, request pattern must not wait for delayed ACKs
  // (Nagle's algorithm held each request's tail: 3x slower NBD over TLS).
  socket.setNoDelay(true);
  const stream = new TlsSocketStream(socket);
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once("secureConnect", () => resolve());
      socket.once("error", (e: Error) => reject(e));
      socket.once("close", () => reject(new Error("the server closed the connection")));
    });
  } catch (e) {
    stream.close();
    // When the server refused what was offered, say what that was (also under -machine, where
    // the note about it is not printed).
    const why = describe(e);
    const offered = /HandshakeFailure|ProtocolVersion|InsufficientSecurity|cipher/i.test(why)
      ? ` (sparse_dd offers ${TLS_LIMITATION})`
      : "";
    throw new HttpError(`TLS handshake failed: ${why}${offered}`, { cause: e });
  }
  return stream;
}

/** Reads up to `\r\n\r\n`; whatever came with it is handed on in front of the stream. */
async function readHead(s: ByteStream): Promise<PutResponse> {
  let buf = new Uint8Array(4096);
  let have = 0;
  while (true) {
    if (have === buf.length) {
      if (buf.length >= MAX_HEAD) {
        throw new HttpError(`response header longer than ${MAX_HEAD} bytes`);
      }
      const bigger = new Uint8Array(buf.length * 2);
      bigger.set(buf);
      buf = bigger;
    }
    const n = await s.read(buf.subarray(have));
    if (n === null) {
      throw new HttpError(
        have === 0
          ? "the server closed the connection without a response"
          : `the server closed the connection in the response header (after ${have} bytes)`,
      );
    }
    const end = headEnd(buf.subarray(0, have + n), Math.max(0, have - 3));
    have += n;
    if (end >= 0) {
      let head: ResponseHead;
      try {
        head = parseResponseHead(buf.subarray(0, end));
      } catch (e) {
        throw new HttpError(describe(e));
      }
      const rest = buf.slice(end, have);
      return { head, stream: rest.length > 0 ? new PrefixedStream(s, rest) : s };
    }
  }
}

/**
 * A connection error in words (Deno's and Node's errors carry their code in the message).
 *
 * @example
 * ```ts
 * import { describe } from "./client.ts";
 * describe(new Error("connect ECONNREFUSED 10.0.0.2:443")); // "connection refused"
 * ```
 */
export function describe(e: unknown): string {
  if (e instanceof Deno.errors.ConnectionRefused) return "connection refused";
  if (e instanceof Deno.errors.ConnectionReset) return "connection reset by the server";
  if (e instanceof Deno.errors.BrokenPipe) return "the server closed the connection";
  if (e instanceof Deno.errors.NotFound) return "host not found";
  const msg = e instanceof Error ? e.message : String(e);
  if (/ECONNREFUSED/.test(msg)) return "connection refused";
  if (/ECONNRESET/.test(msg)) return "connection reset by the server";
  if (/ENOTFOUND|EAI_AGAIN/.test(msg)) return "host not found";
  return msg;
}
