/**
 * An NBD client and the {@linkcode Disk} on top of it: `nbd://host[:port]/export` and
 * `nbd+unix:///export?socket=PATH` as sources and destinations.
 *
 * One connection carries many requests at once: each gets a cookie, a reader loop takes the
 * replies off the socket in whatever order the server sends them and settles the matching
 * request. Large reads and writes are split at the server's maximum block size; allocation comes
 * from `NBD_CMD_BLOCK_STATUS` on `base:allocation`. Every failure is a {@linkcode DiskError}
 * with `nbd = true` (exit code 5) naming the server and the offset.
 *
 * @module
 */

import { DiskError, type DiskOp } from "../core/disk.ts";
import type { Disk } from "../core/disk.ts";
import { ExtentSet } from "../core/extent.ts";
import { Coverage } from "./coverage.ts";
import { appendExtents, coarsen, type DataRange, type Run } from "./extents.ts";
import {
  BASE_ALLOCATION,
  blockLimits,
  ChunkType,
  ClientFlag,
  clientFlagsFor,
  Cmd,
  CmdFlag,
  commandName,
  decodeDataOffset,
  decodeErrorChunk,
  decodeExportNameReply,
  decodeGreeting,
  decodeInfoReply,
  decodeMetaContextReply,
  decodeOffsetHole,
  decodeOldstyleGreeting,
  decodeOptionReplyHeader,
  decodeReplyHeader,
  DEFAULT_MAX_BLOCK,
  describeOptionError,
  encodeClientFlags,
  encodeGoData,
  encodeMetaContextData,
  encodeOption,
  encodeRequestInto,
  errnoText,
  formatNbdUri,
  GREETING_SIZE,
  Info,
  isErrorChunk,
  isOldstyleGreeting,
  isOptionError,
  NbdProtocolError,
  type NbdTarget,
  OLDSTYLE_GREETING_SIZE,
  Opt,
  OPTION_REPLY_HEADER_SIZE,
  optionName,
  parseNbdUri,
  Rep,
  RepErr,
  ReplyFlag,
  replyHeaderSize,
  REQUEST_HEADER_SIZE,
  SIMPLE_REPLY_SIZE,
  STRUCTURED_REPLY_HEADER_SIZE,
  TransmissionFlag,
} from "./protocol.ts";
import { errorText } from "../core/error_text.ts";
import { deadline } from "../core/deadline.ts";

/**
 * What the client needs of a connection: a socket (`Deno.Conn`), or a stream that was
 * something else first (an HTTP connection upgraded to NBD, see `src/http/`).
 */
export interface NbdConnection {
  /** Reads some bytes; `null` at the end of the stream. */
  read(buf: Uint8Array): Promise<number | null>;
  /** Writes some of `buf`; the buffer may be reused once it resolves. */
  write(buf: Uint8Array): Promise<number>;
  /** Drops the connection. */
  close(): void;
}

/** Options of {@linkcode NbdDisk.open} and {@linkcode NbdDisk.attach}. */
export interface NbdOptions {
  /** Export name to ask for instead of the one in the URI (`-nbd-export`). */
  exportName?: string;
  /** Refuse read-only exports (open a destination). Default false. */
  writable?: boolean;
  /** Milliseconds allowed for connecting plus the handshake. Default 30 000. */
  connectTimeoutMs?: number;
  /** Milliseconds allowed for each request's reply; 0 waits forever. Default 120 000. */
  requestTimeoutMs?: number;
  /** Requests in flight at once on the connection. Default 16. */
  maxInFlight?: number;
  /**
   * `zero()` asks the server to keep the range allocated (`NBD_CMD_FLAG_NO_HOLE`), for
   * destinations that must stay thick. Default false: the server may punch holes.
   */
  noHole?: boolean;
  /** Largest range asked in one `NBD_CMD_BLOCK_STATUS`. Default 1 GiB (as xapi's helper). */
  blockStatusRange?: number;
  /**
   * Let `write`/`zero` return once the request is on the socket rather than when the server
   * answers; failures surface on the next call or on `flush`. Default true.
   */
  writeBehind?: boolean;
  /**
   * `full` (default): structured replies, `base:allocation`, `NBD_OPT_GO`. `export-name`: only
   * `NBD_OPT_EXPORT_NAME` and simple replies, as xapi's sparse_dd speaks to tapdisk through
   * xapi's NBD proxy; oldstyle servers are accepted too, only in this mode.
   */
  negotiation?: "full" | "export-name";
  /** Use `NBD_CMD_WRITE_ZEROES` when the server offers it. Default true; false writes zero
   * buffers (only `NBD_CMD_WRITE`, as xapi does over its proxy). */
  writeZeroes?: boolean;
}

/** What the handshake learnt about the export. */
export interface NbdExportInfo {
  /** Export size in bytes. */
  size: number;
  /** `TransmissionFlag.*` bits. */
  transmissionFlags: number;
  /** Structured replies were agreed (needed for block status and sparse reads). */
  structuredReplies: boolean;
  /** The id of `base:allocation`, when the server offers it. */
  allocationContext?: number;
  /** Block size constraints (1 / 4096 / 32 MiB when the server states none). */
  minimumBlock: number;
  preferredBlock: number;
  maximumBlock: number;
}

const GiB = 1024 * 1024 * 1024;
const DEFAULT_CONNECT_TIMEOUT = 30_000;
const DEFAULT_REQUEST_TIMEOUT = 120_000;
const DEFAULT_IN_FLIGHT = 16;
/** Writes up to this size are sent as one buffer with their header (one syscall). */
const COALESCE_LIMIT = 256 * 1024;
/** Largest block status payload accepted: 2^20 extents (qemu-nbd sends at most 2^17). */
const MAX_STATUS_PAYLOAD = 4 + 8 * (1 << 20);
/** Largest error chunk: errno, message length, a 4096-byte message, an offset. */
const MAX_ERROR_PAYLOAD = 4 + 2 + 4096 + 8;
/** Largest option reply: strings on the wire are at most 4096 bytes. */
const MAX_OPTION_REPLY = 64 * 1024;
/** Data ranges the allocation map keeps before it is coarsened. */
const MAX_DATA_RANGES = 1 << 20;
/**
 * BLOCK_STATUS requests allowed per window: a few, plus one per 64 KiB. A server answering in
 * tiny pieces would otherwise take millions of round trips.
 */
const statusBudget = (bytes: number) => 64 + Math.ceil(bytes / (64 * 1024));
/** Largest fallback zero-buffer write when the server lacks WRITE_ZEROES. */
const ZERO_BUFFER = 4 * 1024 * 1024;

/**
 * A buffered reader over a socket: small headers come from the buffer, large payloads land
 * straight in their final buffer.
 */
class ByteReader {
  #conn: NbdConnection;
  #buf = new Uint8Array(256 * 1024);
  #start = 0;
  #end = 0;

  constructor(conn: NbdConnection) {
    this.#conn = conn;
  }

  async #fill(): Promise<void> {
    const n = await this.#conn.read(this.#buf.subarray(this.#end));
    if (n === null) throw new ConnectionClosed();
    this.#end += n;
  }

  /** `n` bytes; the view is valid until the next call. */
  async exact(n: number): Promise<Uint8Array> {
    if (this.#end - this.#start >= n) {
      const out = this.#buf.subarray(this.#start, this.#start + n);
      this.#start += n;
      return out;
    }
    if (n > this.#buf.length) {
      const out = new Uint8Array(n);
      await this.into(out);
      return out;
    }
    this.#buf.copyWithin(0, this.#start, this.#end);
    this.#end -= this.#start;
    this.#start = 0;
    while (this.#end < n) await this.#fill();
    this.#start = n;
    return this.#buf.subarray(0, n);
  }

  /** Fills `target` completely. */
  async into(target: Uint8Array): Promise<void> {
    const have = Math.min(this.#end - this.#start, target.length);
    target.set(this.#buf.subarray(this.#start, this.#start + have));
    this.#start += have;
    let at = have;
    while (at < target.length) {
      const n = await this.#conn.read(target.subarray(at));
      if (n === null) throw new ConnectionClosed();
      at += n;
    }
  }

  /** Discards `n` bytes. */
  async skip(n: number): Promise<void> {
    while (n > 0) {
      const step = Math.min(n, this.#buf.length);
      await this.exact(step);
      n -= step;
    }
  }
}

class ConnectionClosed extends Error {
  constructor() {
    super("the server closed the connection");
  }
}

/** One request waiting for its reply. */
interface Pending {
  cookie: number;
  type: number;
  offset: number;
  length: number;
  /** READ: where the data goes. */
  buf?: Uint8Array;
  /** READ: the bytes filled by data and hole chunks. */
  coverage?: Coverage;
  /** Structured chunks received so far. */
  chunks: number;
  /** BLOCK_STATUS: extents of `base:allocation`, merged, clipped to the request. */
  extents?: Run[];
  /** The first error the server reported. */
  error?: { errno: number; message: string; offset?: number };
  resolve: () => void;
  reject: (e: Error) => void;
  timer?: ReturnType<typeof setTimeout>;
}

const CMD_OP: Record<number, DiskOp> = {
  [Cmd.Read]: "read",
  [Cmd.Write]: "write",
  [Cmd.Flush]: "flush",
  [Cmd.Trim]: "zero",
  [Cmd.WriteZeroes]: "zero",
  [Cmd.BlockStatus]: "allocation",
};

function nbdError(
  name: string,
  op: DiskOp,
  offset: number | undefined,
  reason: string,
  cause?: unknown,
): DiskError {
  const e = new DiskError(name, op, offset, reason, cause === undefined ? undefined : { cause });
  e.nbd = true;
  return e;
}

function reasonOf(err: unknown): string {
  if (err instanceof ConnectionClosed || err instanceof NbdProtocolError) return err.message;
  if (err instanceof Deno.errors.ConnectionReset || err instanceof Deno.errors.BrokenPipe) {
    return `connection lost (${err.message})`;
  }
  return errorText(err);
}

/** Writes every byte (a socket write may take only part). */
async function writeAll(conn: NbdConnection, b: Uint8Array): Promise<void> {
  let at = 0;
  while (at < b.length) at += await conn.write(b.subarray(at));
}

/** {@linkcode deadline} with an `Error` of `message` (the caller turns it into a DiskError). */
function timeLimit<T>(p: Promise<T>, ms: number, message: string, onTimeout: () => void) {
  return deadline(p, ms, onTimeout, () => new Error(message));
}

/** The options with their defaults filled in. */
function withDefaults(options: NbdOptions): Required<Omit<NbdOptions, "exportName">> {
  return {
    writable: options.writable ?? false,
    connectTimeoutMs: options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT,
    requestTimeoutMs: options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT,
    maxInFlight: Math.max(1, options.maxInFlight ?? DEFAULT_IN_FLIGHT),
    noHole: options.noHole ?? false,
    blockStatusRange: options.blockStatusRange ?? GiB,
    writeBehind: options.writeBehind ?? true,
    negotiation: options.negotiation ?? "full",
    writeZeroes: options.writeZeroes ?? true,
  };
}

/**
 * An NBD export as a {@linkcode Disk}.
 *
 * @example Copy the first MiB of an export into memory
 * ```ts
 * import { NbdDisk } from "./nbd_disk.ts";
 * const disk = await NbdDisk.open("nbd+unix:///?socket=/tmp/nbd.sock");
 * const buf = new Uint8Array(1 << 20);
 * await disk.read(0, buf);
 * const used = await disk.allocation(); // ExtentSet from base:allocation, or undefined
 * await disk.close();
 * ```
 */
export class NbdDisk implements Disk {
  /** Allocation comes from `base:allocation` block status. */
  readonly allocationRoute = "nbd-block-status";
  /** The URI, as given (or rebuilt when the export name was overridden). */
  readonly name: string;
  /** Where the export lives (undefined for a connection handed to {@linkcode NbdDisk.attach}). */
  readonly target?: NbdTarget;
  /** What the handshake learnt. */
  readonly info: NbdExportInfo;
  /** An NBD export is never assumed to read as zero: the user says so with `-prezeroed`. */
  readonly knownZero = false;

  readonly #conn: NbdConnection;
  readonly #reader: ByteReader;
  readonly #options: Required<Omit<NbdOptions, "exportName">>;
  readonly #pending = new Map<number, Pending>();
  #nextCookie = 1;
  #writeChain: Promise<void> = Promise.resolve();
  #failure?: string;
  /** A protocol error seen while no request was in flight; close() reports it. */
  #late?: string;
  #closed = false;
  #closing?: Promise<void>;
  #readerDone: Promise<void>;
  /** Write-like requests not yet answered: flushes and overlapping requests wait for them. */
  readonly #writes = new Set<{ start: number; end: number; settled: Promise<void> }>();
  #deferred?: DiskError;
  /** Every request not yet answered (settled, never rejecting), for a graceful close. */
  readonly #inflight = new Set<Promise<void>>();
  #slots: number;
  readonly #waiters: Array<() => void> = [];
  #zeroes?: Uint8Array;

  private constructor(
    name: string,
    target: NbdTarget | undefined,
    conn: NbdConnection,
    reader: ByteReader,
    info: NbdExportInfo,
    options: Required<Omit<NbdOptions, "exportName">>,
  ) {
    this.name = name;
    this.target = target;
    this.#conn = conn;
    this.#reader = reader;
    this.info = info;
    this.#options = options;
    this.#slots = options.maxInFlight;
    this.#readerDone = this.#readLoop();
  }

  /**
   * Connects to the export `uri` names, negotiates, and returns the disk. Connect and handshake
   * failures are `DiskError`s of op `open`.
   */
  static async open(uri: string, options: NbdOptions = {}): Promise<NbdDisk> {
    let target: NbdTarget;
    try {
      target = parseNbdUri(uri);
    } catch (e) {
      throw nbdError(uri, "open", undefined, reasonOf(e));
    }
    let name = uri;
    if (options.exportName !== undefined && options.exportName !== target.exportName) {
      target = { ...target, exportName: options.exportName };
      name = formatNbdUri(target);
    }
    const opts = withDefaults(options);
    let conn: Deno.Conn | undefined;
    let timedOut = false;
    const setup = async (): Promise<[Deno.Conn, ByteReader, NbdExportInfo]> => {
      const c = target.transport === "unix"
        ? await Deno.connect({ transport: "unix", path: target.path })
        : await Deno.connect({ hostname: target.host, port: target.port });
      if (timedOut) {
        c.close();
        throw new Error("timed out");
      }
      conn = c;
      if ("setNoDelay" in c) (c as Deno.TcpConn).setNoDelay(true);
      const reader = new ByteReader(c);
      const info = await handshake(c, reader, target.exportName, opts.negotiation);
      return [c, reader, info];
    };
    try {
      const [c, reader, info] = await timeLimit(
        setup(),
        opts.connectTimeoutMs,
        `no answer within ${opts.connectTimeoutMs / 1000} s while connecting`,
        () => {
          timedOut = true;
          try {
            conn?.close();
          } catch { /* already closed */ }
        },
      );
      if (opts.writable && info.transmissionFlags & TransmissionFlag.ReadOnly) {
        throw new Error("the export is read-only");
      }
      return new NbdDisk(name, target, c, reader, info, opts);
    } catch (e) {
      try {
        conn?.close();
      } catch { /* already closed */ }
      const reason = e instanceof ConnectionClosed
        ? "the server closed the connection during the handshake"
        : reasonOf(e);
      throw nbdError(name, "open", undefined, reason, e);
    }
  }

  /**
   * Negotiates over a connection that is already open (an HTTP connection upgraded to NBD) and
   * returns the disk; `name` is what messages call it. Handshake failures are `DiskError`s of
   * op `open`; the connection is closed on failure.
   */
  static async attach(
    conn: NbdConnection,
    name: string,
    options: NbdOptions = {},
  ): Promise<NbdDisk> {
    const opts = withDefaults(options);
    try {
      const reader = new ByteReader(conn);
      const info = await timeLimit(
        handshake(conn, reader, options.exportName ?? "", opts.negotiation),
        opts.connectTimeoutMs,
        `no answer within ${opts.connectTimeoutMs / 1000} s during the NBD handshake`,
        () => conn.close(),
      );
      if (opts.writable && info.transmissionFlags & TransmissionFlag.ReadOnly) {
        throw new Error("the export is read-only");
      }
      return new NbdDisk(name, undefined, conn, reader, info, opts);
    } catch (e) {
      try {
        conn.close();
      } catch { /* already closed */ }
      const reason = e instanceof ConnectionClosed
        ? "the server closed the connection during the NBD handshake"
        : reasonOf(e);
      throw nbdError(name, "open", undefined, reason, e);
    }
  }

  /** Export size in bytes. */
  get size(): number {
    return this.info.size;
  }

  /** True when the server implements `NBD_CMD_WRITE_ZEROES`. */
  get canWriteZeroes(): boolean {
    return this.#options.writeZeroes &&
      (this.info.transmissionFlags & TransmissionFlag.SendWriteZeroes) !== 0;
  }

  // ------------------------------------------------------------------------------------------
  // Requests

  async #acquire(): Promise<void> {
    if (this.#slots > 0) {
      this.#slots--;
      return;
    }
    await new Promise<void>((resolve) => this.#waiters.push(resolve));
  }

  #release(): void {
    const next = this.#waiters.shift();
    if (next) next();
    else this.#slots++;
  }

  /**
   * Starts one request once a slot is free: `sent` settles when its bytes are on the socket,
   * `done` with the whole reply.
   */
  async #start(
    type: number,
    flags: number,
    offset: number,
    length: number,
    opts: { payload?: Uint8Array; buf?: Uint8Array } = {},
  ): Promise<{ sent: Promise<void>; done: Promise<Pending> }> {
    await this.#acquire();
    if (this.#failure !== undefined || this.#closed) {
      this.#release();
      throw nbdError(this.name, CMD_OP[type], offset, this.#failure ?? "the connection is closed");
    }
    const cookie = this.#nextCookie++;
    let pending!: Pending;
    const replied = new Promise<void>((resolve, reject) => {
      pending = {
        cookie,
        type,
        offset,
        length,
        chunks: 0,
        coverage: type === Cmd.Read ? new Coverage(offset, offset + length) : undefined,
        buf: opts.buf,
        resolve,
        reject,
      };
    });
    this.#pending.set(cookie, pending);
    const settled = replied.then(() => {}, () => {});
    this.#inflight.add(settled);
    settled.finally(() => {
      this.#inflight.delete(settled);
      this.#release();
    });
    if (this.#options.requestTimeoutMs > 0) {
      pending.timer = setTimeout(() => {
        this.#fail(
          `no reply to ${commandName(type)} within ${this.#options.requestTimeoutMs / 1000} s`,
        );
      }, this.#options.requestTimeoutMs);
    }
    const sent = this.#send(type, flags, cookie, offset, length, opts.payload);
    return { sent, done: replied.then(() => pending) };
  }

  /** Sends one request and waits for its whole reply. */
  async #request(
    type: number,
    flags: number,
    offset: number,
    length: number,
    opts: { payload?: Uint8Array; buf?: Uint8Array } = {},
  ): Promise<Pending> {
    const { done } = await this.#start(type, flags, offset, length, opts);
    return await done;
  }

  /** The first failure of a write that was not waited for; every later call reports it. */
  #throwDeferred(): void {
    if (this.#deferred) throw this.#deferred;
  }

  /** Waits until no write-like request still in flight overlaps `[start, start + length)`. */
  async #afterOverlapping(start: number, length: number): Promise<void> {
    const end = start + length;
    const waits: Promise<void>[] = [];
    for (const w of this.#writes) if (w.start < end && start < w.end) waits.push(w.settled);
    if (waits.length > 0) await Promise.all(waits);
  }

  /**
   * A write-like request (WRITE, WRITE_ZEROES, TRIM). With write-behind (the default) it returns
   * once the request is on the socket, so the caller's buffer is free and its next request
   * overlaps this one's round trip; a failure is reported by the next call or by `flush`, still
   * naming its own offset. Requests on overlapping ranges are kept in order.
   */
  async #writeLike(
    type: number,
    flags: number,
    offset: number,
    length: number,
    payload?: Uint8Array,
  ): Promise<void> {
    this.#throwDeferred();
    await this.#afterOverlapping(offset, length);
    const { sent, done } = await this.#start(type, flags, offset, length, { payload });
    const entry = {
      start: offset,
      end: offset + length,
      settled: done.then(() => {}, (e: DiskError) => {
        this.#deferred ??= e;
      }),
    };
    this.#writes.add(entry);
    entry.settled.finally(() => this.#writes.delete(entry));
    if (this.#options.writeBehind) {
      await sent;
      this.#throwDeferred();
    } else {
      await done;
    }
  }

  /**
   * Queues the request bytes behind any earlier request (requests must not interleave on the
   * socket). Settles when they are written, or skipped because the connection failed.
   */
  #send(
    type: number,
    flags: number,
    cookie: number,
    offset: number,
    length: number,
    payload?: Uint8Array,
  ): Promise<void> {
    const small = payload === undefined || payload.length <= COALESCE_LIMIT;
    const head = new Uint8Array(REQUEST_HEADER_SIZE + (small && payload ? payload.length : 0));
    encodeRequestInto(head, 0, { flags, type, cookie, offset, length });
    if (small && payload) head.set(payload, REQUEST_HEADER_SIZE);
    this.#writeChain = this.#writeChain.then(async () => {
      if (this.#failure !== undefined) return;
      try {
        await writeAll(this.#conn, head);
        if (!small && payload) await writeAll(this.#conn, payload);
      } catch (e) {
        this.#fail(reasonOf(e));
      }
    });
    return this.#writeChain;
  }

  /** Breaks the connection: every waiting request fails with `reason` at its own offset. */
  #fail(reason: string): void {
    if (this.#failure !== undefined) return;
    this.#failure = reason;
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(nbdError(this.name, CMD_OP[p.type], p.offset, reason));
    }
    this.#pending.clear();
    try {
      this.#conn.close();
    } catch { /* already closed */ }
  }

  #settle(p: Pending): void {
    this.#pending.delete(p.cookie);
    clearTimeout(p.timer);
    const op = CMD_OP[p.type];
    if (p.error) {
      const e = p.error;
      const reason = `server error ${errnoText(e.errno)}${e.message ? `: ${e.message}` : ""}`;
      p.reject(nbdError(this.name, op, e.offset ?? p.offset, reason));
    } else if (p.type === Cmd.Read && !p.coverage!.complete) {
      const reason = `protocol error: the server answered ${
        p.coverage!.bytes
      } of ${p.length} bytes at offset ${p.offset}`;
      p.reject(nbdError(this.name, op, p.offset, reason));
      this.#fail(reason);
    } else {
      p.resolve();
    }
  }

  /** Takes replies off the socket until it closes, settling requests as they complete. */
  async #readLoop(): Promise<void> {
    const r = this.#reader;
    const header = new Uint8Array(STRUCTURED_REPLY_HEADER_SIZE);
    try {
      while (true) {
        header.set(await r.exact(SIMPLE_REPLY_SIZE));
        if (replyHeaderSize(header) === STRUCTURED_REPLY_HEADER_SIZE) {
          header.set(
            await r.exact(STRUCTURED_REPLY_HEADER_SIZE - SIMPLE_REPLY_SIZE),
            SIMPLE_REPLY_SIZE,
          );
        }
        const h = decodeReplyHeader(header);
        const p = this.#pending.get(h.cookie);
        if (!p) {
          throw new NbdProtocolError(
            `reply for unknown cookie ${h.cookie} (no request with it is in flight)`,
          );
        }
        if (h.kind === "simple") {
          if (p.chunks > 0) {
            throw new NbdProtocolError(
              `a simple reply to ${commandName(p.type)} after structured chunks`,
            );
          } else if (h.error !== 0) {
            p.error = { errno: h.error, message: "" };
          } else if (p.type === Cmd.Read) {
            p.coverage!.add(p.offset, p.offset + p.length);
            await r.into(p.buf!);
          }
          this.#settle(p);
          continue;
        }
        await this.#chunk(p, h.type, h.length);
        if (h.flags & ReplyFlag.Done) this.#settle(p);
      }
    } catch (e) {
      const protocol = e instanceof NbdProtocolError;
      if (this.#closed && this.#pending.size === 0 && !protocol) return;
      const reason = protocol
        ? `protocol error: ${e.message}`
        : e instanceof Deno.errors.BadResource || e instanceof Deno.errors.Interrupted
        ? (this.#failure ?? "the connection was closed")
        : reasonOf(e);
      // A broken reply with nothing in flight (a stray or repeated reply) still condemns the
      // connection: later requests fail with it, and so does close().
      if (protocol && this.#pending.size === 0) this.#late ??= reason;
      this.#fail(reason);
    }
  }

  /**
   * Consumes the payload of one structured chunk into its request. Every field is checked
   * before anything lands in the caller's buffer: chunks must lie inside the request, must not
   * overlap, and must be of a type the request can have.
   */
  async #chunk(p: Pending, type: number, length: number): Promise<void> {
    const r = this.#reader;
    const end = p.offset + p.length;
    if (++p.chunks > 1024 + p.length / 512) {
      throw new NbdProtocolError(
        `more than ${p.chunks - 1} chunks for ${p.length} bytes of ${commandName(p.type)}`,
      );
    }
    switch (type) {
      case ChunkType.None:
        if (length !== 0) throw new NbdProtocolError("NBD_REPLY_TYPE_NONE with a payload");
        return;
      case ChunkType.OffsetData: {
        if (p.type !== Cmd.Read) {
          throw new NbdProtocolError(`unexpected data chunk for ${commandName(p.type)}`);
        }
        if (length <= 8) throw new NbdProtocolError("an empty NBD_REPLY_TYPE_OFFSET_DATA");
        const offset = decodeDataOffset(await r.exact(8));
        const n = length - 8;
        p.coverage!.add(offset, offset + n);
        await r.into(p.buf!.subarray(offset - p.offset, offset - p.offset + n));
        return;
      }
      case ChunkType.OffsetHole: {
        if (p.type !== Cmd.Read) {
          throw new NbdProtocolError(`unexpected hole chunk for ${commandName(p.type)}`);
        }
        if (length !== 12) {
          throw new NbdProtocolError("NBD_REPLY_TYPE_OFFSET_HOLE has a bad length");
        }
        const hole = decodeOffsetHole(await r.exact(length));
        p.coverage!.add(hole.offset, hole.offset + hole.length);
        p.buf!.fill(0, hole.offset - p.offset, hole.offset - p.offset + hole.length);
        return;
      }
      case ChunkType.BlockStatus: {
        if (p.type !== Cmd.BlockStatus) {
          throw new NbdProtocolError(`unexpected block status for ${commandName(p.type)}`);
        }
        if (length > MAX_STATUS_PAYLOAD) {
          throw new NbdProtocolError(`a block status chunk of ${length} bytes`);
        }
        const payload = await r.exact(length);
        if (length < 4) throw new NbdProtocolError("NBD_REPLY_TYPE_BLOCK_STATUS has a bad length");
        const context = new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0);
        if (context !== this.info.allocationContext) return;
        if (p.extents) {
          throw new NbdProtocolError("two block status chunks for base:allocation in one reply");
        }
        p.extents = [];
        appendExtents(payload, p.offset, end, this.size, p.extents);
        return;
      }
      default: {
        if (!isErrorChunk(type)) {
          // No extension that adds chunk types was negotiated.
          throw new NbdProtocolError(`unknown chunk type ${type}`);
        }
        if (length > MAX_ERROR_PAYLOAD) {
          throw new NbdProtocolError(`an error chunk of ${length} bytes`);
        }
        const e = decodeErrorChunk(await r.exact(length), type);
        if (e.offset !== undefined && !(e.offset >= p.offset && e.offset < Math.max(end, 1))) {
          throw new NbdProtocolError(
            `error at offset ${e.offset} outside the request [${p.offset}, ${end})`,
          );
        }
        p.error ??= { errno: e.error, message: e.message, offset: e.offset };
        return;
      }
    }
  }

  // ------------------------------------------------------------------------------------------
  // Disk

  #check(op: DiskOp, offset: number, length: number): void {
    if (this.#closed) throw nbdError(this.name, op, offset, "the disk is closed");
    if (
      !Number.isSafeInteger(offset) || offset < 0 || length < 0 || offset + length > this.size
    ) {
      throw nbdError(
        this.name,
        op,
        offset,
        `access of ${length} bytes outside the export [0, ${this.size})`,
      );
    }
  }

  /** Largest payload per request, a multiple of the minimum block size. */
  get #maxPayload(): number {
    const { minimumBlock, maximumBlock } = this.info;
    return Math.max(minimumBlock, Math.floor(maximumBlock / minimumBlock) * minimumBlock);
  }

  /** Largest length of a request without payload (32-bit field). */
  get #maxLength(): number {
    const min = this.info.minimumBlock;
    return Math.floor(Math.min(GiB, 0xffffffff) / min) * min;
  }

  /**
   * Runs `fn` over `[offset, offset + length)` in pieces of at most `max`, as many in flight as
   * the connection allows (pieces are started as earlier ones finish, so memory does not grow
   * with their number). When pieces fail, the one at the lowest offset is reported, after every
   * started piece has settled so no buffer is touched later.
   */
  async #split(
    offset: number,
    length: number,
    max: number,
    fn: (at: number, n: number) => Promise<unknown>,
  ): Promise<void> {
    if (length <= max) {
      await fn(offset, length);
      return;
    }
    const end = offset + length;
    let next = offset;
    let failedAt = Infinity;
    let failure: unknown;
    const pipeline = async () => {
      while (next < end && failedAt === Infinity) {
        const at = next;
        next = Math.min(end, at + max);
        try {
          await fn(at, next - at);
        } catch (error) {
          if (at < failedAt) [failedAt, failure] = [at, error];
        }
      }
    };
    const pipelines = Math.min(this.#options.maxInFlight, Math.ceil(length / max));
    await Promise.all(Array.from({ length: pipelines }, pipeline));
    if (failedAt !== Infinity) throw failure;
  }

  /** Reads `buf.length` bytes at `offset`. */
  async read(offset: number, buf: Uint8Array): Promise<void> {
    this.#check("read", offset, buf.length);
    if (buf.length === 0) return;
    this.#throwDeferred();
    await this.#afterOverlapping(offset, buf.length);
    await this.#split(
      offset,
      buf.length,
      this.#maxPayload,
      (at, n) =>
        this.#request(Cmd.Read, 0, at, n, {
          buf: buf.subarray(at - offset, at - offset + n),
        }),
    );
  }

  /** Writes `buf` at `offset` (see `writeBehind` in {@linkcode NbdOptions}). */
  async write(offset: number, buf: Uint8Array): Promise<void> {
    this.#check("write", offset, buf.length);
    if (buf.length === 0) return;
    await this.#split(
      offset,
      buf.length,
      this.#maxPayload,
      (at, n) => this.#writeLike(Cmd.Write, 0, at, n, buf.subarray(at - offset, at - offset + n)),
    );
  }

  /**
   * Makes `[offset, offset + length)` read as zero with `NBD_CMD_WRITE_ZEROES` (with `NO_HOLE`
   * when the disk was opened with `noHole`). Only a server without WRITE_ZEROES gets zero
   * buffers written instead.
   */
  async zero(offset: number, length: number): Promise<void> {
    this.#check("zero", offset, length);
    if (length === 0) return;
    if (this.canWriteZeroes) {
      const flags = this.#options.noHole ? CmdFlag.NoHole : 0;
      await this.#split(
        offset,
        length,
        this.#maxLength,
        (at, n) => this.#writeLike(Cmd.WriteZeroes, flags, at, n),
      );
      return;
    }
    const step = Math.min(ZERO_BUFFER, this.#maxPayload);
    this.#zeroes ??= new Uint8Array(step);
    const zeroes = this.#zeroes;
    await this.#split(
      offset,
      length,
      step,
      (at, n) => this.#writeLike(Cmd.Write, 0, at, n, zeroes.subarray(0, n)),
    );
  }

  /**
   * Tells the server `[offset, offset + length)` is no longer needed (`NBD_CMD_TRIM`). Afterwards
   * the range may read as anything; a no-op when the server does not support trimming.
   */
  async trim(offset: number, length: number): Promise<void> {
    this.#check("zero", offset, length);
    if (length === 0 || !(this.info.transmissionFlags & TransmissionFlag.SendTrim)) return;
    await this.#split(
      offset,
      length,
      this.#maxLength,
      (at, n) => this.#writeLike(Cmd.Trim, 0, at, n),
    );
  }

  /**
   * Waits for every write sent so far (reporting the first that failed), then `NBD_CMD_FLUSH`
   * (which covers only completed writes). No FLUSH on a server that does not advertise it.
   */
  async flush(): Promise<void> {
    if (this.#closed) throw nbdError(this.name, "flush", undefined, "the disk is closed");
    await Promise.all([...this.#writes].map((w) => w.settled));
    this.#throwDeferred();
    if (!(this.info.transmissionFlags & TransmissionFlag.SendFlush)) return;
    await this.#request(Cmd.Flush, 0, 0, 0);
  }

  /**
   * The ranges that may hold data, from `base:allocation`: extents flagged HOLE or ZERO are
   * empty, as in xapi's `get_nbd_extents.py`. Queried in ranges of at most 1 GiB, those ranges
   * in flight together. `undefined` when the server has no `base:allocation`.
   */
  async allocation(): Promise<ExtentSet | undefined> {
    if (this.info.allocationContext === undefined) return undefined;
    const size = this.size;
    const step = this.#maxLength < this.#options.blockStatusRange
      ? this.#maxLength
      : this.#options.blockStatusRange;
    const count = Math.ceil(size / step);
    // Each window keeps its share of the map; a server answering in tiny pieces gets its map
    // coarsened (which only means reading more) and a bounded number of requests.
    const share = Math.max(64, Math.floor(MAX_DATA_RANGES / Math.max(1, count)));
    const perWindow: DataRange[][] = [];
    const windows: Promise<void>[] = [];
    for (let i = 0; i < count; i++) {
      const start = i * step;
      const end = Math.min(size, start + step);
      windows.push((async () => {
        let data: DataRange[] = [];
        const budget = statusBudget(end - start);
        let requests = 0;
        let at = start;
        while (at < end) {
          if (++requests > budget) {
            throw nbdError(
              this.name,
              "allocation",
              at,
              `protocol error: block status in pieces too small: ${budget} requests covered only ${
                at - start
              } of ${end - start} bytes`,
            );
          }
          const p = await this.#request(Cmd.BlockStatus, 0, at, end - at);
          if (!p.extents || p.extents.length === 0) {
            throw nbdError(this.name, "allocation", at, "the server returned no extents");
          }
          for (const run of p.extents) {
            if (run.data) {
              const last = data[data.length - 1];
              if (last && last.start + last.length === at) last.length += run.length;
              else data.push({ start: at, length: run.length });
            }
            at += run.length;
          }
          if (data.length > 2 * share) data = coarsen(data, share);
        }
        perWindow[i] = coarsen(data, share);
      })());
    }
    const results = await Promise.allSettled(windows);
    for (const r of results) if (r.status === "rejected") throw r.reason;
    return ExtentSet.of(perWindow.flat());
  }

  /**
   * Waits (briefly) for requests in flight, sends `NBD_CMD_DISC` and closes the socket.
   * Idempotent. Rejects when the server broke the protocol after its last answer (a reply to
   * nothing in flight): the copy must not count as clean.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    if (this.#inflight.size > 0 && this.#failure === undefined) {
      const grace = Math.min(5_000, this.#options.requestTimeoutMs || 5_000);
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        Promise.all([...this.#inflight]),
        new Promise((resolve) => timer = setTimeout(resolve, grace)),
      ]);
      clearTimeout(timer);
    }
    this.#closed = true;
    if (this.#failure === undefined) {
      this.#send(Cmd.Disc, 0, this.#nextCookie++, 0, 0);
      await this.#writeChain;
      this.#failure = "the connection is closed";
    }
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(nbdError(this.name, CMD_OP[p.type], p.offset, "the disk was closed"));
    }
    this.#pending.clear();
    try {
      this.#conn.close();
    } catch { /* already closed */ }
    await this.#readerDone;
    if (this.#late !== undefined) {
      throw nbdError(this.name, this.#options.writable ? "write" : "read", undefined, this.#late);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Handshake

/** Reads one option reply: header and payload (a copy). */
async function readOptionReply(
  r: ByteReader,
  option: number,
): Promise<{ type: number; payload: Uint8Array }> {
  const h = decodeOptionReplyHeader(await r.exact(OPTION_REPLY_HEADER_SIZE), option);
  if (h.length > MAX_OPTION_REPLY) {
    throw new NbdProtocolError(`a ${h.length}-byte reply to ${optionName(option)}`);
  }
  const payload = (await r.exact(h.length)).slice();
  return { type: h.type, payload };
}

/**
 * Fixed newstyle negotiation: structured replies, `base:allocation`, then `NBD_OPT_GO` with the
 * export name asking for the block size limits. Falls back to `NBD_OPT_EXPORT_NAME` for a server
 * that does not know `NBD_OPT_GO`.
 */
async function handshake(
  conn: NbdConnection,
  r: ByteReader,
  exportName: string,
  negotiation: "full" | "export-name" = "full",
): Promise<NbdExportInfo> {
  const first = (await r.exact(16)).slice();
  if (isOldstyleGreeting(first)) {
    // Only behind xapi's proxy (as xapi's client does); an nbd:// URI names a newstyle server.
    if (negotiation !== "export-name") {
      throw new NbdProtocolError("oldstyle NBD negotiation is not supported");
    }
    // No negotiation: size and flags follow, then transmission (simple replies only).
    const greeting = new Uint8Array(OLDSTYLE_GREETING_SIZE);
    greeting.set(first);
    greeting.set(await r.exact(OLDSTYLE_GREETING_SIZE - 16), 16);
    const old = decodeOldstyleGreeting(greeting);
    return {
      size: old.size,
      transmissionFlags: old.transmissionFlags & TransmissionFlag.HasFlags
        ? old.transmissionFlags
        : 0,
      structuredReplies: false,
      minimumBlock: 1,
      preferredBlock: 4096,
      maximumBlock: DEFAULT_MAX_BLOCK,
    };
  }
  const greeting = new Uint8Array(GREETING_SIZE);
  greeting.set(first);
  greeting.set(await r.exact(GREETING_SIZE - 16), 16);
  const { handshakeFlags } = decodeGreeting(greeting);
  const clientFlags = clientFlagsFor(handshakeFlags);
  await writeAll(conn, encodeClientFlags(clientFlags));
  if (negotiation === "export-name") return await enterByName(conn, r, exportName, clientFlags);

  await writeAll(conn, encodeOption(Opt.StructuredReply));
  const sr = await readOptionReply(r, Opt.StructuredReply);
  const structuredReplies = sr.type === Rep.Ack;
  if (!structuredReplies && !isOptionError(sr.type)) {
    throw new NbdProtocolError(`unexpected reply ${sr.type} to NBD_OPT_STRUCTURED_REPLY`);
  }
  if (sr.type === RepErr.TlsReqd) {
    throw new Error(describeOptionError(Opt.StructuredReply, sr.type, sr.payload));
  }

  let allocationContext: number | undefined;
  if (structuredReplies) {
    await writeAll(
      conn,
      encodeOption(Opt.SetMetaContext, encodeMetaContextData(exportName, [BASE_ALLOCATION])),
    );
    while (true) {
      const m = await readOptionReply(r, Opt.SetMetaContext);
      if (m.type === Rep.Ack || isOptionError(m.type)) break;
      if (m.type === Rep.MetaContext) {
        const ctx = decodeMetaContextReply(m.payload);
        if (ctx.name === BASE_ALLOCATION) allocationContext = ctx.id;
      }
    }
  }

  await writeAll(conn, encodeOption(Opt.Go, encodeGoData(exportName, [Info.BlockSize])));
  let size: number | undefined;
  let transmissionFlags = 0;
  let block: { minimum: number; preferred: number; maximum: number } | undefined;
  while (true) {
    const g = await readOptionReply(r, Opt.Go);
    if (g.type === Rep.Ack) break;
    if (g.type === Rep.Info) {
      const info = decodeInfoReply(g.payload);
      if (info.info === "export") {
        size = info.size;
        transmissionFlags = info.transmissionFlags;
      } else if (info.info === "block_size") {
        block = info;
      }
      continue;
    }
    if (g.type === RepErr.Unsup) {
      // An old server: the export name option enters transmission without any information.
      const info = await enterByName(conn, r, exportName, clientFlags);
      return {
        ...info,
        transmissionFlags: info.transmissionFlags,
        structuredReplies,
        allocationContext,
      };
    }
    if (isOptionError(g.type)) {
      throw new Error(
        exportName === "" || g.type !== RepErr.Unknown
          ? describeOptionError(Opt.Go, g.type, g.payload)
          : `${describeOptionError(Opt.Go, g.type, g.payload)}: "${exportName}"`,
      );
    }
    // Other reply types to GO are informational; ignore them.
  }
  if (size === undefined) throw new NbdProtocolError("the server sent no NBD_INFO_EXPORT");
  if (!(transmissionFlags & TransmissionFlag.HasFlags)) transmissionFlags = 0;
  const limits = blockLimits(block, size);
  return {
    size,
    transmissionFlags,
    structuredReplies,
    allocationContext: structuredReplies ? allocationContext : undefined,
    minimumBlock: limits.minimum,
    preferredBlock: limits.preferred,
    maximumBlock: limits.maximum,
  };
}

/**
 * `NBD_OPT_EXPORT_NAME`: enters transmission at once; a server that does not know the export
 * closes the connection instead of answering.
 */
async function enterByName(
  conn: NbdConnection,
  r: ByteReader,
  exportName: string,
  clientFlags: number,
): Promise<NbdExportInfo> {
  await writeAll(conn, encodeOption(Opt.ExportName, new TextEncoder().encode(exportName)));
  let reply;
  try {
    reply = decodeExportNameReply(await r.exact(clientFlags & ClientFlag.NoZeroes ? 10 : 134));
  } catch (e) {
    if (e instanceof ConnectionClosed) {
      throw new Error(
        `the server closed the connection after NBD_OPT_EXPORT_NAME "${exportName}" (no such export?)`,
      );
    }
    throw e;
  }
  return {
    size: reply.size,
    transmissionFlags: reply.transmissionFlags,
    structuredReplies: false,
    minimumBlock: 1,
    preferredBlock: 4096,
    maximumBlock: DEFAULT_MAX_BLOCK,
  };
}
