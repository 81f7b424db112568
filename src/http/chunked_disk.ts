/**
 * xapi's chunked import as a {@linkcode Disk}: every write is a frame
 * `u64 LE offset, u32 LE length, data` on the connection, and 12 zero bytes end the stream
 * (`ocaml/vhd-tool/src/chunked.ml`; xapi's receiver is `vhd-tool serve --source-protocol
 * chunked`). The receiver writes each frame and nothing else and never answers, so: nothing can
 * be read back, the disk is never known to read as zero (only `-prezeroed` says so), progress is
 * bytes sent, and success is the end of the stream going out cleanly.
 *
 * @module
 */

import { type Disk, DiskError, type DiskOp } from "../core/disk.ts";
import { describe, withTimeout } from "./client.ts";
import { type ByteStream, writeFully } from "./stream.ts";

/** Frame header bytes. */
export const FRAME_HEADER = 12;
/** Largest frame sent, as xapi's sparse_dd (2 MiB). */
export const MAX_FRAME = 2 * 1024 * 1024;
/** Offsets and lengths of frames are multiples of this (the receiver writes sectors). */
export const SECTOR = 512;

/**
 * Encodes a frame header.
 *
 * @example
 * ```ts
 * import { encodeFrameHeader } from "./chunked_disk.ts";
 * encodeFrameHeader(512, 1024); // [0,2,0,0,0,0,0,0, 0,4,0,0]
 * ```
 */
export function encodeFrameHeader(offset: number, length: number): Uint8Array {
  const b = new Uint8Array(FRAME_HEADER);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, BigInt(offset), true);
  v.setUint32(8, length, true);
  return b;
}

/** Options of {@linkcode ChunkedDisk}. */
export interface ChunkedOptions {
  /** Milliseconds one frame may take to go out (a stalled receiver); 0: no limit. */
  timeoutMs: number;
}

/**
 * The destination of a chunked import. `size` is the number of bytes the copy covers; writes
 * outside `[0, size)` or not on sector boundaries are refused before anything is sent.
 *
 * @example
 * ```ts
 * import { ChunkedDisk } from "./chunked_disk.ts";
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 8080 });
 * const disk = new ChunkedDisk(conn, "http://127.0.0.1:8080/import", 1 << 20, { timeoutMs: 0 });
 * await disk.write(0, new Uint8Array(512).fill(1));
 * await disk.flush(); // the end-of-stream frame
 * await disk.close();
 * ```
 */
export class ChunkedDisk implements Disk {
  /** The receiver writes only what it is sent. */
  readonly knownZero = false;
  /** Frames go out one after another; the copier may prepare the next while one is sent. */
  readonly writeQueueDepth = 4;
  readonly #stream: ByteStream;
  readonly #options: ChunkedOptions;
  #chain: Promise<void> = Promise.resolve();
  #failure?: DiskError;
  #ending?: Promise<void>;
  #closed = false;
  #zeroes?: Uint8Array;

  constructor(
    stream: ByteStream,
    readonly name: string,
    readonly size: number,
    options: ChunkedOptions,
  ) {
    this.#stream = stream;
    this.#options = options;
  }

  #error(op: DiskOp, offset: number | undefined, reason: string, cause?: unknown): DiskError {
    const e = new DiskError(this.name, op, offset, reason, cause ? { cause } : undefined);
    e.role = "destination";
    return e;
  }

  /** Nothing can be read back from a chunked import. */
  read(offset: number, _buf: Uint8Array): Promise<void> {
    return Promise.reject(
      this.#error("read", offset, "a chunked import cannot be read back"),
    );
  }

  #check(op: DiskOp, offset: number, length: number): void {
    if (this.#closed || this.#ending) {
      throw this.#error(op, offset, "the stream has ended");
    }
    if (this.#failure) throw this.#failure;
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw this.#error(op, offset, `access of ${length} bytes outside [0, ${this.size})`);
    }
    if (offset % SECTOR !== 0 || length % SECTOR !== 0) {
      throw this.#error(op, offset, `${length} bytes not on ${SECTOR}-byte sector boundaries`);
    }
  }

  /** Queues one frame behind the others; settles once it is on the connection. */
  #frame(op: DiskOp, offset: number, data: Uint8Array): Promise<void> {
    const send = async () => {
      if (this.#failure) throw this.#failure;
      const what = `frame at offset ${offset}`;
      try {
        await withTimeout(
          (async () => {
            await writeFully(this.#stream, encodeFrameHeader(offset, data.length));
            await writeFully(this.#stream, data);
          })(),
          this.#options.timeoutMs,
          `the server took no data for ${this.#options.timeoutMs / 1000} s (${what})`,
          () => this.#stream.close(),
        );
      } catch (e) {
        this.#failure ??= this.#error(op, offset, describe(e), e);
        throw this.#failure;
      }
    };
    const p = this.#chain.then(send);
    this.#chain = p.catch(() => {});
    return p;
  }

  /** Sends `buf` as frames of at most 2 MiB. */
  async write(offset: number, buf: Uint8Array): Promise<void> {
    this.#check("write", offset, buf.length);
    const frames: Promise<void>[] = [];
    for (let at = 0; at < buf.length; at += MAX_FRAME) {
      frames.push(this.#frame("write", offset + at, buf.subarray(at, at + MAX_FRAME)));
    }
    await settleAll(frames);
  }

  /** Sends frames of zeroes: the receiver writes only what it gets. */
  async zero(offset: number, length: number): Promise<void> {
    this.#check("zero", offset, length);
    this.#zeroes ??= new Uint8Array(MAX_FRAME);
    const frames: Promise<void>[] = [];
    for (let at = 0; at < length; at += MAX_FRAME) {
      const n = Math.min(MAX_FRAME, length - at);
      frames.push(this.#frame("zero", offset + at, this.#zeroes.subarray(0, n)));
    }
    await settleAll(frames);
  }

  /**
   * Ends the stream: the 12 zero bytes after every frame, then the end of the sending side (TLS
   * close_notify). Then waits (at most the timeout) for the receiver to close its side, so that a
   * receiver that drops the connection instead (it refused a frame) is reported. Idempotent.
   */
  flush(): Promise<void> {
    this.#ending ??= this.#end();
    return this.#ending;
  }

  async #end(): Promise<void> {
    await this.#chain;
    if (this.#failure) throw this.#failure;
    const timeout = this.#options.timeoutMs;
    try {
      await withTimeout(
        (async () => {
          await writeFully(this.#stream, new Uint8Array(FRAME_HEADER));
          await this.#stream.closeWrite();
        })(),
        timeout,
        `the server took no data for ${timeout / 1000} s (end of stream)`,
        () => this.#stream.close(),
      );
    } catch (e) {
      throw this.#error("flush", undefined, describe(e), e);
    }
    // The receiver may answer nothing and keep the connection open (xapi's sparse_dd does not
    // wait): then the stream ended cleanly on our side and that is success.
    const drain = async () => {
      const b = new Uint8Array(4096);
      while (await this.#stream.read(b) !== null) { /* ignore what it says */ }
    };
    let timer: ReturnType<typeof setTimeout> | undefined;
    const waited = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, timeout > 0 ? Math.min(timeout, 10_000) : 10_000);
    });
    const drained = drain();
    drained.catch(() => {});
    try {
      await Promise.race([drained, waited]);
    } catch (e) {
      throw this.#error("flush", undefined, `after the end of the stream: ${describe(e)}`, e);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Drops the connection. Idempotent. */
  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#stream.close();
    }
    return Promise.resolve();
  }
}

async function settleAll(ps: Promise<void>[]): Promise<void> {
  if (ps.length === 1) return await ps[0];
  const results = await Promise.allSettled(ps);
  for (const r of results) if (r.status === "rejected") throw r.reason;
}
