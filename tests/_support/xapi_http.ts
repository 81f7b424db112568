/**
 * xapi's side of a remote copy, for tests: a raw-socket HTTP/1.1 server that answers sparse_dd's
 * `PUT` as xapi does. `chunked` is `import_raw_vdi` with `vhd-tool serve --source-protocol
 * chunked` behind it (frames written into a file, unaligned frames refused by dropping the
 * connection); `nbd` is `nbdproxy/import` (`200 OK`, `Transfer-encoding: nbd`, then the bytes
 * relayed to an NBD server); the other behaviours are the faults xapi's side can show.
 *
 * @module
 */

/** What the server does with a request. */
export type Behaviour =
  | { kind: "chunked"; file: string; closeAfter?: number; stallAfter?: number }
  | { kind: "nbd"; socket: string; headerName?: string }
  /** The upgrade answered by an oldstyle NBD server of its own writing into `file` (nbdkit
   * 1.32's `--oldstyle` advertises FLUSH but refuses it, and qemu-nbd has no oldstyle). */
  | { kind: "nbd-oldstyle"; file: string }
  | { kind: "status"; line: string; headers?: string[] }
  | { kind: "stall-head" }
  | { kind: "truncated-head" };

import { Cmd, REQUEST_HEADER_SIZE, TransmissionFlag } from "../../src/nbd/protocol.ts";
import { decodeRequest, encodeOldstyleGreeting, encodeSimpleReply } from "./nbd_server.ts";

/** What one connection saw. */
export interface Received {
  /** The request head, as text. */
  head: string;
  /** Header names (lower case) to values. */
  headers: Map<string, string>;
  frames: number;
  /** Data bytes received in frames. */
  bytes: number;
  /** The 12-byte end of stream arrived. */
  ended: boolean;
  /** Why the server dropped the connection, when it did. */
  error?: string;
  /** Largest frame length seen. */
  maxFrame: number;
}

/** Options of {@linkcode XapiSide.start}. */
export interface XapiSideOptions {
  /** Serve TLS with this certificate chain and key (PEM), through Deno's own TLS server. */
  tls?: { cert: string; key: string };
}

async function writeAll(c: Deno.Conn, b: Uint8Array): Promise<void> {
  let at = 0;
  while (at < b.length) at += await c.write(b.subarray(at));
}

/** A reader that keeps what it read ahead; large takes land straight in their buffer. */
class Reader {
  #buf = new Uint8Array(1 << 20);
  #start = 0;
  #end = 0;
  constructor(readonly conn: Deno.Conn) {}
  /** What was read and not taken yet. */
  get buf(): Uint8Array {
    return this.#buf.subarray(this.#start, this.#end);
  }
  set buf(rest: Uint8Array) {
    // Only ever a tail of the current view (what is left after a head).
    this.#start = this.#end - rest.length;
  }
  async more(): Promise<boolean> {
    if (this.#end === this.#buf.length) {
      this.#buf.copyWithin(0, this.#start, this.#end);
      this.#end -= this.#start;
      this.#start = 0;
      if (this.#end === this.#buf.length) {
        const bigger = new Uint8Array(this.#buf.length * 2);
        bigger.set(this.#buf);
        this.#buf = bigger;
      }
    }
    const n = await this.conn.read(this.#buf.subarray(this.#end));
    if (n === null) return false;
    this.#end += n;
    return true;
  }
  async take(n: number): Promise<Uint8Array | null> {
    const out = new Uint8Array(n);
    const have = Math.min(n, this.#end - this.#start);
    out.set(this.#buf.subarray(this.#start, this.#start + have));
    this.#start += have;
    let at = have;
    while (at < n) {
      const got = await this.conn.read(out.subarray(at));
      if (got === null) return null;
      at += got;
    }
    return out;
  }
}

/**
 * The server. `received` grows by one entry per connection; `done()` resolves once every
 * connection so far has been handled.
 *
 * @example
 * ```ts
 * import { XapiSide } from "./xapi_http.ts";
 * const srv = await XapiSide.start({ kind: "chunked", file: "/tmp/dest.raw" });
 * // sparse_dd -src a.raw -dest http://127.0.0.1:${srv.port}/import_raw_vdi?session_id=x
 * await srv.stop();
 * ```
 */
export class XapiSide {
  readonly received: Received[] = [];
  readonly #handlers: Promise<void>[] = [];
  readonly #conns = new Set<Deno.Conn>();
  #loop?: Promise<void>;
  readonly #stopping = Promise.withResolvers<void>();

  private constructor(readonly listener: Deno.Listener, readonly behaviour: Behaviour) {}

  /** Port on 127.0.0.1. */
  get port(): number {
    return (this.listener.addr as Deno.NetAddr).port;
  }

  static start(behaviour: Behaviour, options: XapiSideOptions = {}): XapiSide {
    const listener = options.tls
      ? Deno.listenTls({ hostname: "127.0.0.1", port: 0, ...options.tls })
      : Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const srv = new XapiSide(listener, behaviour);
    srv.#loop = srv.#accept();
    return srv;
  }

  async #accept(): Promise<void> {
    try {
      for await (const conn of this.listener) {
        this.#conns.add(conn);
        const h = this.#handle(conn).catch(() => {}).finally(() => {
          this.#conns.delete(conn);
          try {
            conn.close();
          } catch { /* closed */ }
        });
        this.#handlers.push(h);
      }
    } catch { /* listener closed */ }
  }

  /** Waits until every connection so far has been handled. */
  async done(): Promise<void> {
    await Promise.all(this.#handlers);
  }

  /** Stops listening and drops every connection. */
  async stop(): Promise<void> {
    this.#stopping.resolve();
    try {
      this.listener.close();
    } catch { /* closed */ }
    for (const c of this.#conns) {
      try {
        c.close();
      } catch { /* closed */ }
    }
    await this.#loop;
    await this.done();
  }

  async #handle(conn: Deno.Conn): Promise<void> {
    const r = new Reader(conn);
    const rec: Received = {
      head: "",
      headers: new Map(),
      frames: 0,
      bytes: 0,
      ended: false,
      maxFrame: 0,
    };
    this.received.push(rec);
    // The request head.
    while (true) {
      const text = new TextDecoder("latin1").decode(r.buf);
      const end = text.indexOf("\r\n\r\n");
      if (end >= 0) {
        rec.head = text.slice(0, end);
        r.buf = r.buf.subarray(end + 4);
        break;
      }
      if (!await r.more()) {
        rec.error = "no request head";
        return;
      }
    }
    for (const line of rec.head.split("\r\n").slice(1)) {
      const i = line.indexOf(":");
      rec.headers.set(line.slice(0, i).trim().toLowerCase(), line.slice(i + 1).trim());
    }
    const b = this.behaviour;
    const enc = new TextEncoder();
    switch (b.kind) {
      case "stall-head":
        // Reads on (so sparse_dd is never stuck writing), answers nothing.
        while (await r.more()) r.buf = new Uint8Array(0);
        return;
      case "truncated-head":
        await writeAll(conn, enc.encode("HTTP/1.1 200 OK\r\nContent-"));
        return;
      case "status":
        await writeAll(
          conn,
          enc.encode(
            `HTTP/1.1 ${b.line}\r\n${(b.headers ?? []).map((h) => `${h}\r\n`).join("")}\r\n`,
          ),
        );
        return;
      case "nbd": {
        const upstream = await Deno.connect({ transport: "unix", path: b.socket });
        await writeAll(
          conn,
          enc.encode(`HTTP/1.1 200 OK\r\n${b.headerName ?? "Transfer-encoding"}: nbd\r\n\r\n`),
        );
        if (r.buf.length > 0) await writeAll(upstream, r.buf);
        const pump = async (from: Deno.Conn, to: Deno.Conn) => {
          const buf = new Uint8Array(1 << 20);
          try {
            while (true) {
              const n = await from.read(buf);
              if (n === null) break;
              await writeAll(to, buf.subarray(0, n));
            }
          } catch { /* either side gone */ }
          try {
            to.close();
          } catch { /* closed */ }
          try {
            from.close();
          } catch { /* closed */ }
        };
        await Promise.all([pump(conn, upstream), pump(upstream, conn)]);
        return;
      }
      case "nbd-oldstyle": {
        const file = await Deno.open(b.file, { read: true, write: true });
        try {
          const size = (await file.stat()).size;
          await writeAll(conn, enc.encode("HTTP/1.1 200 OK\r\ntransfer-encoding: nbd\r\n\r\n"));
          const flags = TransmissionFlag.HasFlags | TransmissionFlag.SendFlush;
          await writeAll(conn, encodeOldstyleGreeting(size, flags));
          while (true) {
            const h = await r.take(REQUEST_HEADER_SIZE);
            if (h === null) return;
            const req = decodeRequest(h);
            if (req.type === Cmd.Disc) {
              rec.ended = true;
              return;
            }
            if (req.type === Cmd.Write) {
              const data = await r.take(req.length);
              if (data === null) return;
              await file.seek(req.offset, Deno.SeekMode.Start);
              let at = 0;
              while (at < data.length) at += await file.write(data.subarray(at));
              rec.frames++;
              rec.bytes += req.length;
            } else if (req.type === Cmd.Flush) {
              await file.sync();
            } else {
              rec.error = `unexpected NBD command ${req.type}`;
              await writeAll(conn, encodeSimpleReply(22, req.cookie));
              continue;
            }
            await writeAll(conn, encodeSimpleReply(0, req.cookie));
          }
        } finally {
          file.close();
        }
      }
      case "chunked": {
        await writeAll(conn, enc.encode("HTTP/1.1 200 OK\r\n\r\n"));
        const file = await Deno.open(b.file, { write: true });
        try {
          while (true) {
            if (b.closeAfter !== undefined && rec.bytes >= b.closeAfter) {
              rec.error = "closed by the test";
              return;
            }
            if (b.stallAfter !== undefined && rec.bytes >= b.stallAfter) {
              // Stops reading: sparse_dd's writes block once the socket buffers are full.
              await this.#stopping.promise;
              return;
            }
            const h = await r.take(12);
            if (h === null) {
              rec.error = "the stream ended without its end frame";
              return;
            }
            const v = new DataView(h.buffer, h.byteOffset, 12);
            const offset = Number(v.getBigUint64(0, true));
            const length = v.getUint32(8, true);
            if (offset === 0 && length === 0) {
              rec.ended = true;
              // After the end frame the sender closes; anything more is an error.
              const extra = await r.take(1);
              if (extra !== null) rec.error = "bytes after the end frame";
              return;
            }
            if (offset % 512 !== 0 || length % 512 !== 0 || length === 0) {
              rec.error = `unaligned frame offset ${offset} length ${length}`;
              return;
            }
            const data = await r.take(length);
            if (data === null) {
              rec.error = "the stream ended in a frame";
              return;
            }
            await file.seek(offset, Deno.SeekMode.Start);
            let at = 0;
            while (at < data.length) at += await file.write(data.subarray(at));
            rec.frames++;
            rec.bytes += length;
            rec.maxFrame = Math.max(rec.maxFrame, length);
          }
        } finally {
          file.close();
        }
      }
    }
  }
}

/**
 * A throw-away CA and certificates signed by it (openssl): `cert`/`key` for each name given,
 * RSA 2048. Files live in `dir`.
 */
export async function makeCa(
  dir: string,
  label: string,
  names: string[],
): Promise<{ ca: string; certs: Record<string, { cert: string; key: string }> }> {
  const run = async (args: string[]) => {
    const out = await new Deno.Command("openssl", { args, stdout: "null", stderr: "piped" })
      .output();
    if (!out.success) {
      throw new Error(`openssl ${args[0]}: ${new TextDecoder().decode(out.stderr)}`);
    }
  };
  const ca = `${dir}/${label}-ca`;
  await run([
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    `${ca}.key`,
    "-out",
    `${ca}.pem`,
    "-days",
    "2",
    "-subj",
    `/CN=${label} test CA`,
  ]);
  const certs: Record<string, { cert: string; key: string }> = {};
  for (const name of names) {
    const base = `${dir}/${label}-${name}`;
    await run([
      "req",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      `${base}.key`,
      "-out",
      `${base}.csr`,
      "-subj",
      `/CN=${name}`,
    ]);
    await Deno.writeTextFile(`${base}.ext`, `subjectAltName=DNS:${name}\n`);
    await run([
      "x509",
      "-req",
      "-in",
      `${base}.csr`,
      "-CA",
      `${ca}.pem`,
      "-CAkey",
      `${ca}.key`,
      "-CAcreateserial",
      "-out",
      `${base}.pem`,
      "-days",
      "2",
      "-extfile",
      `${base}.ext`,
    ]);
    certs[name] = { cert: `${base}.pem`, key: `${base}.key` };
  }
  return { ca: `${ca}.pem`, certs };
}
