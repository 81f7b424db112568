/**
 * Byte streams a remote copy runs over: a plain TCP connection (`Deno.Conn` as it is), a TLS
 * connection (Node's `tls` in Deno, the one TLS client in Deno that can skip verification as
 * xapi does without `-verify-dest`), and a stream with bytes pushed back in front of it (what
 * the response head reader read too far goes back to the NBD session).
 *
 * @module
 */

import type { TLSSocket } from "node:tls";

/**
 * What a remote copy needs of a connection; `Deno.Conn` is one.
 *
 * @example
 * ```ts
 * import type { ByteStream } from "./stream.ts";
 * const conn: ByteStream = await Deno.connect({ hostname: "127.0.0.1", port: 80 });
 * ```
 */
export interface ByteStream {
  /** Reads some bytes into `buf`; `null` at the end of the stream. */
  read(buf: Uint8Array): Promise<number | null>;
  /** Writes some of `buf` (at least one byte); the caller may reuse `buf` once it resolves. */
  write(buf: Uint8Array): Promise<number>;
  /** Ends the sending side (TCP FIN; TLS close_notify, then FIN). */
  closeWrite(): Promise<void>;
  /** Drops the connection. Idempotent. */
  close(): void;
}

/**
 * Writes all of `b`.
 *
 * @example
 * ```ts
 * import { writeFully } from "./stream.ts";
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 80 });
 * await writeFully(conn, new TextEncoder().encode("PUT / HTTP/1.1\r\n\r\n"));
 * ```
 */
export async function writeFully(s: ByteStream, b: Uint8Array): Promise<void> {
  let at = 0;
  while (at < b.length) at += await s.write(b.subarray(at));
}

/**
 * A stream that first gives back `prefix` (bytes read from `inner` too early), then reads on.
 *
 * @example
 * ```ts
 * import { PrefixedStream } from "./stream.ts";
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 80 });
 * const s = new PrefixedStream(conn, new Uint8Array([1, 2]));
 * ```
 */
export class PrefixedStream implements ByteStream {
  #prefix: Uint8Array;
  constructor(readonly inner: ByteStream, prefix: Uint8Array) {
    this.#prefix = prefix;
  }
  read(buf: Uint8Array): Promise<number | null> {
    if (this.#prefix.length === 0) return this.inner.read(buf);
    const n = Math.min(buf.length, this.#prefix.length);
    buf.set(this.#prefix.subarray(0, n));
    this.#prefix = this.#prefix.subarray(n);
    return Promise.resolve(n);
  }
  write(buf: Uint8Array): Promise<number> {
    return this.inner.write(buf);
  }
  closeWrite(): Promise<void> {
    return this.inner.closeWrite();
  }
  close(): void {
    this.inner.close();
  }
}

/** Bytes received and not yet read after which the socket stops reading (back pressure). */
const HIGH_WATER = 4 * 1024 * 1024;

/**
 * A Node `TLSSocket` as a {@linkcode ByteStream}. A write resolves once Node has handed the
 * bytes on (its callback), so the caller's buffer is never read after it is reused.
 *
 * @example
 * ```ts
 * import * as tls from "node:tls";
 * import { TlsSocketStream } from "./stream.ts";
 * const socket = tls.connect({ host: "127.0.0.1", port: 443, rejectUnauthorized: false });
 * const s = new TlsSocketStream(socket);
 * ```
 */
export class TlsSocketStream implements ByteStream {
  readonly #socket: TLSSocket;
  readonly #chunks: Uint8Array[] = [];
  #buffered = 0;
  #ended = false;
  #error?: Error;
  #wake?: () => void;
  readonly #failWrites = new Set<(e: Error) => void>();

  constructor(socket: TLSSocket) {
    this.#socket = socket;
    socket.on("data", (d: Uint8Array) => {
      this.#chunks.push(d);
      this.#buffered += d.length;
      if (this.#buffered > HIGH_WATER) socket.pause();
      this.#notify();
    });
    socket.on("end", () => {
      this.#ended = true;
      this.#notify();
    });
    socket.on("error", (e: Error) => this.#fail(e));
    socket.on("close", () => this.#fail(new Error("the connection was closed")));
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }

  #fail(e: Error): void {
    this.#error ??= e;
    this.#ended = true;
    for (const f of this.#failWrites) f(this.#error);
    this.#failWrites.clear();
    this.#notify();
  }

  async read(buf: Uint8Array): Promise<number | null> {
    while (this.#chunks.length === 0) {
      // A clean end (close_notify or FIN) is the end of the stream; anything else is an error.
      if (this.#ended) {
        if (this.#error && !/closed/.test(this.#error.message)) throw this.#error;
        return null;
      }
      await new Promise<void>((resolve) => this.#wake = resolve);
    }
    let n = 0;
    while (n < buf.length && this.#chunks.length > 0) {
      const c = this.#chunks[0];
      const take = Math.min(c.length, buf.length - n);
      buf.set(c.subarray(0, take), n);
      n += take;
      if (take === c.length) this.#chunks.shift();
      else this.#chunks[0] = c.subarray(take);
    }
    this.#buffered -= n;
    if (this.#buffered <= HIGH_WATER && this.#socket.isPaused()) this.#socket.resume();
    return n;
  }

  write(buf: Uint8Array): Promise<number> {
    if (this.#error) return Promise.reject(this.#error);
    return new Promise<number>((resolve, reject) => {
      const fail = (e: Error) => reject(e);
      this.#failWrites.add(fail);
      this.#socket.write(buf, (err?: Error | null) => {
        this.#failWrites.delete(fail);
        if (err) reject(err);
        else resolve(buf.length);
      });
    });
  }

  closeWrite(): Promise<void> {
    if (this.#error) return Promise.reject(this.#error);
    return new Promise<void>((resolve, reject) => {
      const fail = (e: Error) => reject(e);
      this.#failWrites.add(fail);
      this.#socket.end(() => {
        this.#failWrites.delete(fail);
        resolve();
      });
    });
  }

  close(): void {
    this.#socket.destroy();
  }
}

/**
 * A plain TCP connection as a {@linkcode ByteStream}.
 *
 * @example
 * ```ts
 * import { TcpStream } from "./stream.ts";
 * const s = new TcpStream(await Deno.connect({ hostname: "127.0.0.1", port: 80 }));
 * ```
 */
export class TcpStream implements ByteStream {
  #closed = false;
  constructor(readonly conn: Deno.TcpConn) {}
  read(buf: Uint8Array): Promise<number | null> {
    return this.conn.read(buf);
  }
  write(buf: Uint8Array): Promise<number> {
    return this.conn.write(buf);
  }
  closeWrite(): Promise<void> {
    return this.conn.closeWrite();
  }
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.conn.close();
    } catch { /* already closed */ }
  }
}
