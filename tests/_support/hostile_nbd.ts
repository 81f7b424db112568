/**
 * A small in-memory NBD server for tests that can lie: an honest fixed newstyle server with
 * structured replies and `base:allocation`, and one switch ({@linkcode Lie}) that makes it break
 * the protocol in one way. Used as a source (`-src nbd://...`) and as a destination.
 *
 * @example
 * ```ts
 * import { startHostileNbd } from "./hostile_nbd.ts";
 * const srv = await startHostileNbd({ data: new Uint8Array(65536), lie: "duplicate-chunk" });
 * // run sparse_dd -src srv.uri ...
 * await srv.close();
 * ```
 *
 * @module
 */

import {
  ChunkType,
  Cmd,
  Errno,
  HandshakeFlag,
  IHAVEOPT,
  NBD_MAGIC,
  Opt,
  OPTION_REPLY_MAGIC,
  Rep,
  RepErr,
  ReplyFlag,
  type Request,
  TransmissionFlag,
} from "../../src/nbd/protocol.ts";
import {
  decodeClientFlags,
  decodeOptionHeader,
  decodeRequest,
  encodeBlockStatus,
  encodeChunk,
  encodeErrorChunk,
  encodeGreeting,
  encodeInfoReply,
  encodeMetaContextReply,
  encodeOffsetData,
  encodeOptionReply,
  encodeSimpleReply,
} from "./nbd_server.ts";

/** Every way the server can lie, one at a time. `none` is an honest server. */
export const LIES = [
  "none",
  // Handshake
  "greeting-oldstyle",
  "no-fixed-newstyle",
  "export-size-huge",
  "export-size-zero",
  "export-size-odd",
  "size-not-multiple-of-minimum",
  "max-block-1",
  "max-block-below-minimum",
  "minimum-block-not-power-of-2",
  "option-reply-huge",
  "option-reply-wrong-option",
  "no-export-info",
  "export-info-bad-length",
  "read-only",
  // Reads
  "duplicate-chunk",
  "overlapping-chunks",
  "missing-coverage",
  "data-beyond-request",
  "hole-beyond-request",
  "unknown-chunk-type",
  "simple-after-chunks",
  "unknown-cookie",
  "reply-not-in-flight",
  "error-chunk",
  "error-chunk-errno-0",
  "error-offset-outside",
  "oversized-payload",
  "trickle",
  // Block status
  "extents-1-byte-per-reply",
  "extents-1-byte-many",
  "extent-zero-length",
  "extent-beyond-export",
  "extent-beyond-request",
  "extents-twice",
  "no-extents",
  // Writes (as a destination)
  "data-chunk-for-write",
  "write-error",
] as const;

/** One switch: how the server lies. */
export type Lie = typeof LIES[number];

/** Options of {@linkcode startHostileNbd}. */
export interface HostileOptions {
  /** The export's content (its size is the export size unless a lie says otherwise). */
  data: Uint8Array;
  /** How to lie; default `none`. */
  lie?: Lie;
}

/** A running server. */
export interface HostileServer {
  /** `nbd://127.0.0.1:PORT/`. */
  uri: string;
  /** The export's content (writes land here). */
  data: Uint8Array;
  /** Requests received, by command name (`read`, `write`, `zero`, `trim`, `flush`, `status`). */
  counts: Record<string, number>;
  /** Every range a write-like request asked to change. */
  writes: Array<{ offset: number; length: number }>;
  /** Stops listening and closes every connection. */
  close(): Promise<void>;
}

const ALLOCATION_ID = 7;
const PAGE = 4096;

class Conn {
  #buf = new Uint8Array(0);
  constructor(readonly c: Deno.Conn) {}

  async read(n: number): Promise<Uint8Array | null> {
    while (this.#buf.length < n) {
      const chunk = new Uint8Array(Math.max(65536, n));
      const k = await this.c.read(chunk);
      if (k === null) return null;
      const next = new Uint8Array(this.#buf.length + k);
      next.set(this.#buf);
      next.set(chunk.subarray(0, k), this.#buf.length);
      this.#buf = next;
    }
    const out = this.#buf.slice(0, n);
    this.#buf = this.#buf.slice(n);
    return out;
  }

  /** Writes `parts` as one buffer, so that they arrive together. */
  async write(...parts: Uint8Array[]): Promise<void> {
    const b = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    parts.reduce((at, p) => (b.set(p, at), at + p.length), 0);
    let at = 0;
    while (at < b.length) at += await this.c.write(b.subarray(at));
  }
}

function u64(v: DataView, at: number, n: bigint): void {
  v.setBigUint64(at, n);
}

/** An `NBD_INFO_EXPORT` payload with any 64-bit size (the codec refuses sizes above 2^53). */
function exportInfo(size: bigint, flags: number): Uint8Array {
  const b = new Uint8Array(12);
  const v = new DataView(b.buffer);
  v.setUint16(0, 0);
  u64(v, 2, size);
  v.setUint16(10, flags);
  return b;
}

function isZero(b: Uint8Array): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

/** `base:allocation` of `[offset, offset + length)`: all-zero pages are holes. */
function extentsOf(data: Uint8Array, offset: number, length: number) {
  const out: Array<{ length: number; flags: number }> = [];
  const end = Math.min(data.length, offset + length);
  for (let at = offset; at < end;) {
    const next = Math.min(end, (Math.floor(at / PAGE) + 1) * PAGE);
    const flags = isZero(data.subarray(at, next)) ? 3 : 0;
    const last = out[out.length - 1];
    if (last && last.flags === flags) last.length += next - at;
    else out.push({ length: next - at, flags });
    at = next;
  }
  return out;
}

/**
 * Starts the server on a loopback port. It serves until `close()`.
 */
export function startHostileNbd(options: HostileOptions): Promise<HostileServer> {
  const lie = options.lie ?? "none";
  const data = options.data;
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const counts: Record<string, number> = {};
  const writes: Array<{ offset: number; length: number }> = [];
  const count = (what: string) => counts[what] = (counts[what] ?? 0) + 1;

  const serve = async (raw: Deno.Conn) => {
    const c = new Conn(raw);
    // Greeting
    if (lie === "greeting-oldstyle") {
      const b = new Uint8Array(152);
      const v = new DataView(b.buffer);
      u64(v, 0, NBD_MAGIC);
      u64(v, 8, 0x00420281861253n);
      u64(v, 16, BigInt(data.length));
      await c.write(b);
      return;
    }
    if (lie === "no-fixed-newstyle") {
      const b = new Uint8Array(18);
      const v = new DataView(b.buffer);
      u64(v, 0, NBD_MAGIC);
      u64(v, 8, IHAVEOPT);
      await c.write(b);
      await c.read(4);
      return;
    }
    await c.write(encodeGreeting(HandshakeFlag.FixedNewstyle | HandshakeFlag.NoZeroes));
    const flags = await c.read(4);
    if (!flags) return;
    decodeClientFlags(flags);
    // Options
    while (true) {
      const head = await c.read(16);
      if (!head) return;
      const h = decodeOptionHeader(head);
      if (h.length > 0 && !(await c.read(h.length))) return;
      if (lie === "option-reply-huge") {
        const b = new Uint8Array(20);
        const v = new DataView(b.buffer);
        u64(v, 0, OPTION_REPLY_MAGIC);
        v.setUint32(8, h.option);
        v.setUint32(12, Rep.Ack);
        v.setUint32(16, 0xfffffff0);
        await c.write(b);
        // Then nothing more: a client that waits for 4 GiB waits for its timeout.
        await new Promise(() => {});
      }
      if (lie === "option-reply-wrong-option") {
        await c.write(encodeOptionReply(h.option + 1, Rep.Ack));
        continue;
      }
      if (h.option === Opt.StructuredReply) {
        await c.write(encodeOptionReply(h.option, Rep.Ack));
      } else if (h.option === Opt.SetMetaContext) {
        await c.write(
          encodeOptionReply(
            h.option,
            Rep.MetaContext,
            encodeMetaContextReply(ALLOCATION_ID, "base:allocation"),
          ),
          encodeOptionReply(h.option, Rep.Ack),
        );
      } else if (h.option === Opt.Go) {
        let size = BigInt(data.length);
        if (lie === "export-size-huge") size = 1n << 60n;
        if (lie === "export-size-zero") size = 0n;
        if (lie === "export-size-odd") size = BigInt(data.length - 1);
        if (lie === "size-not-multiple-of-minimum") size = BigInt(data.length - 100);
        const tflags = TransmissionFlag.HasFlags | TransmissionFlag.SendFlush |
          TransmissionFlag.SendWriteZeroes | TransmissionFlag.SendTrim |
          (lie === "read-only" ? TransmissionFlag.ReadOnly : 0);
        if (lie === "export-info-bad-length") {
          await c.write(
            encodeOptionReply(h.option, Rep.Info, exportInfo(size, tflags).subarray(0, 10)),
          );
        } else if (lie !== "no-export-info") {
          await c.write(encodeOptionReply(h.option, Rep.Info, exportInfo(size, tflags)));
        }
        const block = lie === "max-block-1"
          ? { minimum: 1, preferred: 4096, maximum: 1 }
          : lie === "max-block-below-minimum"
          ? { minimum: 4096, preferred: 4096, maximum: 512 }
          : lie === "minimum-block-not-power-of-2"
          ? { minimum: 3000, preferred: 4096, maximum: 1 << 20 }
          : lie === "size-not-multiple-of-minimum"
          ? { minimum: 4096, preferred: 4096, maximum: 1 << 20 }
          : { minimum: 1, preferred: 4096, maximum: 1 << 20 };
        await c.write(
          encodeOptionReply(h.option, Rep.Info, encodeInfoReply({ info: "block_size", ...block })),
          encodeOptionReply(h.option, Rep.Ack),
        );
        break;
      } else if (h.option === Opt.Abort) {
        await c.write(encodeOptionReply(h.option, Rep.Ack));
        return;
      } else {
        await c.write(encodeOptionReply(h.option, RepErr.Unsup));
      }
    }
    // Transmission
    while (true) {
      const head = await c.read(28);
      if (!head) return;
      const r = decodeRequest(head);
      let payload: Uint8Array | undefined;
      if (r.type === Cmd.Write) {
        payload = (await c.read(r.length)) ?? undefined;
        if (!payload) return;
      }
      if (r.type === Cmd.Disc) return;
      await answer(c, r, payload);
    }
  };

  const answer = async (c: Conn, r: Request, payload?: Uint8Array) => {
    const done = (type: number, body?: Uint8Array) =>
      encodeChunk(ReplyFlag.Done, type, r.cookie, body);
    const end = r.offset + r.length;
    switch (r.type) {
      case Cmd.Read: {
        count("read");
        const bytes = data.slice(r.offset, end);
        const half = Math.floor(r.length / 2);
        const dataChunk = (at: number, n: number, flags = 0) =>
          encodeChunk(
            flags,
            ChunkType.OffsetData,
            r.cookie,
            encodeOffsetData(at, data.slice(at, at + n)),
          );
        switch (lie) {
          case "duplicate-chunk":
            // The first half twice, the second half never: the bytes add up to the request.
            if (r.length >= 2) {
              await c.write(dataChunk(r.offset, half), dataChunk(r.offset, r.length - half, 1));
              return;
            }
            break;
          case "overlapping-chunks": {
            const q = Math.floor(r.length / 4);
            if (q > 0) {
              await c.write(
                dataChunk(r.offset, 3 * q),
                dataChunk(r.offset + 2 * q, r.length - 3 * q, 1),
              );
              return;
            }
            break;
          }
          case "missing-coverage":
            if (r.length >= 2) {
              await c.write(dataChunk(r.offset, half, 1));
              return;
            }
            break;
          case "data-beyond-request":
            await c.write(
              encodeChunk(
                ReplyFlag.Done,
                ChunkType.OffsetData,
                r.cookie,
                encodeOffsetData(r.offset, new Uint8Array(r.length + 512)),
              ),
            );
            return;
          case "hole-beyond-request": {
            const b = new Uint8Array(12);
            const v = new DataView(b.buffer);
            u64(v, 0, BigInt(r.offset));
            v.setUint32(8, r.length + 4096);
            await c.write(done(ChunkType.OffsetHole, b));
            return;
          }
          case "unknown-chunk-type":
            await c.write(encodeChunk(0, 42, r.cookie, new Uint8Array(16)));
            break;
          case "simple-after-chunks":
            if (r.length >= 2) {
              await c.write(dataChunk(r.offset, half), encodeSimpleReply(0, r.cookie), bytes);
              return;
            }
            break;
          case "unknown-cookie":
            await c.write(encodeChunk(ReplyFlag.Done, ChunkType.None, r.cookie + 1_000_000));
            return;
          case "reply-not-in-flight":
            await c.write(dataChunk(r.offset, r.length, 1), done(ChunkType.None));
            return;
          case "error-chunk":
            await c.write(
              done(
                ChunkType.ErrorOffset,
                encodeErrorChunk({ error: Errno.EIO, message: "bad sector", offset: r.offset }),
              ),
            );
            return;
          case "error-chunk-errno-0": {
            const e = encodeErrorChunk({ error: 1, message: "" });
            e[3] = 0;
            await c.write(done(ChunkType.Error, e));
            return;
          }
          case "error-offset-outside":
            await c.write(
              done(
                ChunkType.ErrorOffset,
                encodeErrorChunk({ error: Errno.EIO, message: "", offset: end + 65536 }),
              ),
            );
            return;
          case "oversized-payload": {
            // An error chunk announcing 48 MiB of message, then silence.
            const h = encodeChunk(ReplyFlag.Done, ChunkType.Error, r.cookie);
            new DataView(h.buffer).setUint32(16, 48 << 20);
            await c.write(h, Uint8Array.of(0, 0, 0, 5, 0xff, 0xff));
            await new Promise(() => {});
            return;
          }
          case "trickle": {
            // One byte of a valid reply every 100 ms, forever.
            const whole = dataChunk(r.offset, r.length, 1);
            for (let i = 0; i < whole.length; i++) {
              await c.write(whole.subarray(i, i + 1));
              await new Promise((res) => setTimeout(res, 100));
              if (i === whole.length - 2) await new Promise(() => {});
            }
            return;
          }
        }
        await c.write(dataChunk(r.offset, r.length, 1));
        return;
      }
      case Cmd.BlockStatus: {
        count("status");
        const status = (ds: Array<{ length: number; flags: number }>, flags = ReplyFlag.Done) =>
          encodeChunk(
            flags,
            ChunkType.BlockStatus,
            r.cookie,
            encodeBlockStatus(ALLOCATION_ID, ds),
          );
        const extents = extentsOf(data, r.offset, r.length);
        switch (lie) {
          case "extents-1-byte-per-reply":
            await c.write(status([{ length: 1, flags: extents[0].flags }]));
            return;
          case "extents-1-byte-many": {
            // True, but one extent per byte (up to 2^20 of them in one reply).
            const n = Math.min(r.length, 1 << 20);
            const body = new Uint8Array(4 + 8 * n);
            const v = new DataView(body.buffer);
            v.setUint32(0, ALLOCATION_ID);
            for (let i = 0; i < n; i++) {
              v.setUint32(4 + 8 * i, 1);
              v.setUint32(8 + 8 * i, data[r.offset + i] === 0 ? 3 : 0);
            }
            await c.write(done(ChunkType.BlockStatus, body));
            return;
          }
          case "extent-zero-length":
            await c.write(status([{ length: 0, flags: 0 }, ...extents]));
            return;
          case "extent-beyond-export":
            extents[extents.length - 1].length += 1 << 20;
            await c.write(status(extents));
            return;
          case "extent-beyond-request":
            await c.write(
              status([{ length: r.length + 4096, flags: 0 }, { length: 512, flags: 0 }]),
            );
            return;
          case "extents-twice":
            await c.write(status(extents, 0), status([{ length: r.length, flags: 3 }]));
            return;
          case "no-extents":
            await c.write(done(ChunkType.None));
            return;
        }
        await c.write(status(extents));
        return;
      }
      case Cmd.Write:
      case Cmd.WriteZeroes:
      case Cmd.Trim: {
        count(r.type === Cmd.Write ? "write" : r.type === Cmd.Trim ? "trim" : "zero");
        writes.push({ offset: r.offset, length: r.length });
        if (lie === "write-error") {
          await c.write(
            done(
              ChunkType.ErrorOffset,
              encodeErrorChunk({ error: Errno.ENOSPC, message: "full", offset: r.offset }),
            ),
          );
          return;
        }
        if (lie === "data-chunk-for-write") {
          await c.write(
            done(ChunkType.OffsetData, encodeOffsetData(r.offset, new Uint8Array(r.length))),
          );
          return;
        }
        if (lie === "unknown-cookie") {
          await c.write(encodeSimpleReply(0, r.cookie + 1_000_000));
          return;
        }
        if (lie === "trickle") {
          const reply = encodeSimpleReply(0, r.cookie);
          await c.write(reply.subarray(0, 4));
          await new Promise(() => {});
        }
        if (end > data.length) {
          await c.write(encodeSimpleReply(Errno.EINVAL, r.cookie));
          return;
        }
        if (r.type === Cmd.Write) data.set(payload!, r.offset);
        else data.fill(0, r.offset, end);
        await c.write(encodeSimpleReply(0, r.cookie));
        if (lie === "reply-not-in-flight") await c.write(encodeSimpleReply(0, r.cookie));
        return;
      }
      case Cmd.Flush:
        count("flush");
        await c.write(encodeSimpleReply(0, r.cookie));
        return;
      default:
        await c.write(encodeSimpleReply(Errno.EINVAL, r.cookie));
    }
  };

  const accepting = (async () => {
    for await (const c of listener) {
      conns.add(c);
      serve(c).catch(() => {}).finally(() => {
        conns.delete(c);
        try {
          c.close();
        } catch { /* closed */ }
      });
    }
  })();

  return Promise.resolve({
    uri: `nbd://127.0.0.1:${(listener.addr as Deno.NetAddr).port}/`,
    data,
    counts,
    writes,
    async close() {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      await accepting.catch(() => {});
    },
  });
}
