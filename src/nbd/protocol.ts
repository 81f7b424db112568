/**
 * The NBD wire protocol as pure functions: fixed newstyle negotiation, options and their replies,
 * transmission requests, simple and structured replies, and `nbd://` / `nbd+unix://` URIs.
 * Nothing here does I/O. Only the client's side is here: the encoders that play the server
 * live with the tests (`tests/_support/nbd_server.ts`).
 *
 * Every number on the wire is big-endian. 64-bit fields (sizes, offsets, cookies) are JavaScript
 * numbers: exact up to 2^53, far beyond any disk; a larger value is a protocol error.
 *
 * @module
 */

import {
  checkU32,
  concat,
  decoder,
  decodeString,
  encoder,
  encodeString,
  getU64,
  MAX_STRING,
  NbdProtocolError,
  need,
  setU64,
  view,
} from "./_wire.ts";

export { MAX_STRING, NbdProtocolError };

/** `NBDMAGIC`: the first 8 bytes a server sends. */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** `IHAVEOPT`: newstyle negotiation (after `NBDMAGIC`), and the prefix of every option request. */
export const IHAVEOPT = 0x49484156454f5054n;
/** The oldstyle greeting's second magic (size and flags follow; no negotiation). */
export const OLDSTYLE_MAGIC = 0x00420281861253n;
/** Prefix of every option reply. */
export const OPTION_REPLY_MAGIC = 0x0003e889045565a9n;
/** Prefix of every transmission request. */
export const REQUEST_MAGIC = 0x25609513;
/** Prefix of a simple reply. */
export const SIMPLE_REPLY_MAGIC = 0x67446698;
/** Prefix of a structured reply chunk. */
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;
/** The IANA port for NBD. */
export const DEFAULT_PORT = 10809;

/** Bytes of the server greeting: `NBDMAGIC`, `IHAVEOPT`, 16-bit handshake flags. */
export const GREETING_SIZE = 18;
/** Bytes of an option request header (magic, option, length). */
export const OPTION_HEADER_SIZE = 16;
/** Bytes of an option reply header (magic, option, type, length). */
export const OPTION_REPLY_HEADER_SIZE = 20;
/** Bytes of a transmission request header. */
export const REQUEST_HEADER_SIZE = 28;
/** Bytes of a simple reply header. */
export const SIMPLE_REPLY_SIZE = 16;
/** Bytes of a structured reply chunk header. */
export const STRUCTURED_REPLY_HEADER_SIZE = 20;
/** The largest payload the spec lets a client assume when the server states no maximum. */
export const DEFAULT_MAX_BLOCK = 32 * 1024 * 1024;

/** Handshake flags the server sends in its greeting. */
export const HandshakeFlag = { FixedNewstyle: 1 << 0, NoZeroes: 1 << 1 } as const;
/** Client flags, the client's answer to the greeting. */
export const ClientFlag = { FixedNewstyle: 1 << 0, NoZeroes: 1 << 1 } as const;

/** Option numbers (`NBD_OPT_*`). */
export const Opt = {
  ExportName: 1,
  Abort: 2,
  List: 3,
  StartTls: 5,
  Info: 6,
  Go: 7,
  StructuredReply: 8,
  ListMetaContext: 9,
  SetMetaContext: 10,
} as const;

/** Successful option reply types (`NBD_REP_*`). */
export const Rep = { Ack: 1, Server: 2, Info: 3, MetaContext: 4 } as const;

const REP_ERR = 0x80000000;
/** Error option reply types (`NBD_REP_ERR_*`): bit 31 set. */
export const RepErr = {
  Unsup: REP_ERR + 1,
  Policy: REP_ERR + 2,
  Invalid: REP_ERR + 3,
  Platform: REP_ERR + 4,
  TlsReqd: REP_ERR + 5,
  Unknown: REP_ERR + 6,
  Shutdown: REP_ERR + 7,
  BlockSizeReqd: REP_ERR + 8,
  TooBig: REP_ERR + 9,
  ExtHeaderReqd: REP_ERR + 10,
} as const;

/** Information items of `NBD_OPT_GO` / `NBD_OPT_INFO` (`NBD_INFO_*`). */
export const Info = { Export: 0, Name: 1, Description: 2, BlockSize: 3 } as const;

/** Transmission flags of an export (`NBD_FLAG_*`). */
export const TransmissionFlag = {
  HasFlags: 1 << 0,
  ReadOnly: 1 << 1,
  SendFlush: 1 << 2,
  SendFua: 1 << 3,
  Rotational: 1 << 4,
  SendTrim: 1 << 5,
  SendWriteZeroes: 1 << 6,
  SendDf: 1 << 7,
  CanMultiConn: 1 << 8,
  SendResize: 1 << 9,
  SendCache: 1 << 10,
  SendFastZero: 1 << 11,
} as const;

/** Transmission commands (`NBD_CMD_*`). */
export const Cmd = {
  Read: 0,
  Write: 1,
  Disc: 2,
  Flush: 3,
  Trim: 4,
  Cache: 5,
  WriteZeroes: 6,
  BlockStatus: 7,
} as const;

/** Command flags (`NBD_CMD_FLAG_*`). */
export const CmdFlag = {
  Fua: 1 << 0,
  NoHole: 1 << 1,
  Df: 1 << 2,
  ReqOne: 1 << 3,
  FastZero: 1 << 4,
} as const;

/** Structured reply chunk flags. */
export const ReplyFlag = { Done: 1 << 0 } as const;

/** Structured reply chunk types (`NBD_REPLY_TYPE_*`). */
export const ChunkType = {
  None: 0,
  OffsetData: 1,
  OffsetHole: 2,
  BlockStatus: 5,
  Error: (1 << 15) + 1,
  ErrorOffset: (1 << 15) + 2,
} as const;

/** Flags of a `base:allocation` extent. */
export const StateFlag = { Hole: 1 << 0, Zero: 1 << 1 } as const;

/** The metadata context that describes allocation. */
export const BASE_ALLOCATION = "base:allocation";

/** Error numbers on the wire (Linux values, whatever the server's platform). */
export const Errno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

const ERRNO_TEXT: Record<number, string> = {
  1: "EPERM (Operation not permitted)",
  5: "EIO (Input/output error)",
  12: "ENOMEM (Cannot allocate memory)",
  22: "EINVAL (Invalid argument)",
  28: "ENOSPC (No space left on device)",
  75: "EOVERFLOW (Value too large)",
  95: "ENOTSUP (Operation not supported)",
  108: "ESHUTDOWN (Server is shutting down)",
};

/**
 * A readable name for an NBD error number.
 *
 * @example
 * ```ts
 * import { errnoText } from "./protocol.ts";
 * errnoText(5); // "EIO (Input/output error)"
 * ```
 */
export function errnoText(errno: number): string {
  return ERRNO_TEXT[errno] ?? `error ${errno}`;
}

const OPT_NAMES: Record<number, string> = {
  1: "NBD_OPT_EXPORT_NAME",
  2: "NBD_OPT_ABORT",
  3: "NBD_OPT_LIST",
  5: "NBD_OPT_STARTTLS",
  6: "NBD_OPT_INFO",
  7: "NBD_OPT_GO",
  8: "NBD_OPT_STRUCTURED_REPLY",
  9: "NBD_OPT_LIST_META_CONTEXT",
  10: "NBD_OPT_SET_META_CONTEXT",
};

/**
 * The spec's name for an option number, for messages.
 *
 * @example
 * ```ts
 * import { optionName } from "./protocol.ts";
 * optionName(7); // "NBD_OPT_GO"
 * ```
 */
export function optionName(option: number): string {
  return OPT_NAMES[option] ?? `option ${option}`;
}

const CMD_NAMES = [
  "NBD_CMD_READ",
  "NBD_CMD_WRITE",
  "NBD_CMD_DISC",
  "NBD_CMD_FLUSH",
  "NBD_CMD_TRIM",
  "NBD_CMD_CACHE",
  "NBD_CMD_WRITE_ZEROES",
  "NBD_CMD_BLOCK_STATUS",
];

/**
 * The spec's name for a command number, for messages.
 *
 * @example
 * ```ts
 * import { commandName } from "./protocol.ts";
 * commandName(6); // "NBD_CMD_WRITE_ZEROES"
 * ```
 */
export function commandName(type: number): string {
  return CMD_NAMES[type] ?? `command ${type}`;
}

// ---------------------------------------------------------------------------------------------
// Handshake

/**
 * Decodes the server's first 18 bytes. Refuses oldstyle servers and servers without fixed
 * newstyle negotiation, which cannot be told about options they do not know.
 *
 * @example
 * ```ts
 * import { decodeGreeting, IHAVEOPT, NBD_MAGIC } from "./protocol.ts";
 * const b = new Uint8Array(18);
 * const v = new DataView(b.buffer);
 * v.setBigUint64(0, NBD_MAGIC); v.setBigUint64(8, IHAVEOPT); v.setUint16(16, 3);
 * decodeGreeting(b).handshakeFlags; // 3
 * ```
 */
export function decodeGreeting(b: Uint8Array): { handshakeFlags: number } {
  need(b, GREETING_SIZE, "server greeting");
  const v = view(b);
  if (v.getBigUint64(0) !== NBD_MAGIC) {
    throw new NbdProtocolError("not an NBD server (bad greeting magic)");
  }
  const second = v.getBigUint64(8);
  if (second === OLDSTYLE_MAGIC) {
    throw new NbdProtocolError("oldstyle NBD negotiation is not supported");
  }
  if (second !== IHAVEOPT) throw new NbdProtocolError("not an NBD server (bad newstyle magic)");
  const handshakeFlags = v.getUint16(16);
  if (!(handshakeFlags & HandshakeFlag.FixedNewstyle)) {
    throw new NbdProtocolError("server does not support fixed newstyle negotiation");
  }
  return { handshakeFlags };
}

/** Bytes of an oldstyle greeting: magics, size, flags, 124 reserved zero bytes. */
export const OLDSTYLE_GREETING_SIZE = 152;

/**
 * True when the first 16 bytes of a greeting are an oldstyle server's (`NBDMAGIC`, then
 * `0x00420281861253`): the size and flags follow at once, there is no negotiation.
 *
 * @example
 * ```ts
 * import { isOldstyleGreeting, NBD_MAGIC, OLDSTYLE_MAGIC } from "./protocol.ts";
 * const b = new Uint8Array(16);
 * new DataView(b.buffer).setBigUint64(0, NBD_MAGIC);
 * new DataView(b.buffer).setBigUint64(8, OLDSTYLE_MAGIC);
 * isOldstyleGreeting(b); // true
 * ```
 */
export function isOldstyleGreeting(b: Uint8Array): boolean {
  need(b, 16, "server greeting");
  const v = view(b);
  return v.getBigUint64(0) === NBD_MAGIC && v.getBigUint64(8) === OLDSTYLE_MAGIC;
}

/**
 * Decodes a whole oldstyle greeting (152 bytes): the export size and its transmission flags
 * (the low 16 bits of the 32-bit flags field).
 *
 * @example
 * ```ts
 * import { decodeOldstyleGreeting, NBD_MAGIC, OLDSTYLE_MAGIC } from "./protocol.ts";
 * const b = new Uint8Array(152);
 * const v = new DataView(b.buffer);
 * v.setBigUint64(0, NBD_MAGIC);
 * v.setBigUint64(8, OLDSTYLE_MAGIC);
 * v.setBigUint64(16, 1048576n);
 * v.setUint32(24, 5);
 * decodeOldstyleGreeting(b); // { size: 1048576, transmissionFlags: 5 }
 * ```
 */
export function decodeOldstyleGreeting(
  b: Uint8Array,
): { size: number; transmissionFlags: number } {
  need(b, OLDSTYLE_GREETING_SIZE, "oldstyle greeting");
  if (!isOldstyleGreeting(b)) throw new NbdProtocolError("not an oldstyle NBD greeting");
  const v = view(b);
  return { size: getU64(v, 16, "export size"), transmissionFlags: v.getUint32(24) & 0xffff };
}

/**
 * The client's 32-bit flags: always fixed newstyle, and no-zeroes when the server offers it.
 *
 * @example
 * ```ts
 * import { clientFlagsFor, HandshakeFlag } from "./protocol.ts";
 * clientFlagsFor(HandshakeFlag.FixedNewstyle | HandshakeFlag.NoZeroes); // 3
 * ```
 */
export function clientFlagsFor(handshakeFlags: number): number {
  return ClientFlag.FixedNewstyle |
    (handshakeFlags & HandshakeFlag.NoZeroes ? ClientFlag.NoZeroes : 0);
}

/**
 * Encodes the client flags (4 bytes).
 *
 * @example
 * ```ts
 * import { encodeClientFlags } from "./protocol.ts";
 * encodeClientFlags(3); // Uint8Array [0, 0, 0, 3]
 * ```
 */
export function encodeClientFlags(flags: number): Uint8Array {
  const b = new Uint8Array(4);
  view(b).setUint32(0, flags);
  return b;
}

/**
 * Encodes an option request: `IHAVEOPT`, option, length, data.
 *
 * @example
 * ```ts
 * import { encodeOption, Opt } from "./protocol.ts";
 * encodeOption(Opt.StructuredReply).length; // 16
 * ```
 */
export function encodeOption(option: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const b = new Uint8Array(OPTION_HEADER_SIZE + data.length);
  const v = view(b);
  v.setBigUint64(0, IHAVEOPT);
  v.setUint32(8, option);
  v.setUint32(12, data.length);
  b.set(data, OPTION_HEADER_SIZE);
  return b;
}

/**
 * The data of `NBD_OPT_GO` / `NBD_OPT_INFO`: export name and the information items wanted.
 *
 * @example
 * ```ts
 * import { encodeGoData, Info } from "./protocol.ts";
 * encodeGoData("disk", [Info.BlockSize]); // [0, 0, 0, 4, "disk", 0, 1, 0, 3]
 * ```
 */
export function encodeGoData(exportName: string, infos: readonly number[]): Uint8Array {
  const name = encodeString(exportName, "export name");
  const b = new Uint8Array(4 + name.length + 2 + 2 * infos.length);
  const v = view(b);
  v.setUint32(0, name.length);
  b.set(name, 4);
  v.setUint16(4 + name.length, infos.length);
  infos.forEach((info, i) => v.setUint16(6 + name.length + 2 * i, info));
  return b;
}

/**
 * The data of `NBD_OPT_SET_META_CONTEXT` / `LIST_META_CONTEXT`: export name and queries.
 *
 * @example
 * ```ts
 * import { encodeMetaContextData } from "./protocol.ts";
 * encodeMetaContextData("", ["base:allocation"]).length; // 4 + 4 + 4 + 15
 * ```
 */
export function encodeMetaContextData(exportName: string, queries: readonly string[]): Uint8Array {
  const parts: Uint8Array[] = [];
  const name = encodeString(exportName, "export name");
  const head = new Uint8Array(4);
  view(head).setUint32(0, name.length);
  parts.push(head, name);
  const count = new Uint8Array(4);
  view(count).setUint32(0, queries.length);
  parts.push(count);
  for (const q of queries) {
    const qb = encodeString(q, "metadata context query");
    const len = new Uint8Array(4);
    view(len).setUint32(0, qb.length);
    parts.push(len, qb);
  }
  return concat(parts);
}

/** An option reply header. */
export interface OptionReplyHeader {
  /** The option being answered. */
  option: number;
  /** `Rep.*` or `RepErr.*`. */
  type: number;
  /** Payload bytes that follow. */
  length: number;
}

/**
 * Decodes the 20-byte header of an option reply. `expectOption` guards against a server
 * answering a different option than the one asked.
 *
 * @example
 * ```ts
 * import { decodeOptionReplyHeader, OPTION_REPLY_MAGIC } from "./protocol.ts";
 * const b = new Uint8Array(20);
 * const v = new DataView(b.buffer);
 * v.setBigUint64(0, OPTION_REPLY_MAGIC); v.setUint32(8, 8); v.setUint32(12, 1);
 * decodeOptionReplyHeader(b, 8).type; // 1 (NBD_REP_ACK)
 * ```
 */
export function decodeOptionReplyHeader(b: Uint8Array, expectOption?: number): OptionReplyHeader {
  need(b, OPTION_REPLY_HEADER_SIZE, "option reply");
  const v = view(b);
  if (v.getBigUint64(0) !== OPTION_REPLY_MAGIC) {
    throw new NbdProtocolError("bad option reply magic");
  }
  const option = v.getUint32(8);
  if (expectOption !== undefined && option !== expectOption) {
    throw new NbdProtocolError(
      `server answered ${optionName(option)} to ${optionName(expectOption)}`,
    );
  }
  return { option, type: v.getUint32(12), length: v.getUint32(16) };
}

/**
 * True for an `NBD_REP_ERR_*` reply type.
 *
 * @example
 * ```ts
 * import { isOptionError, RepErr } from "./protocol.ts";
 * isOptionError(RepErr.Unsup); // true
 * ```
 */
export function isOptionError(type: number): boolean {
  return type >= REP_ERR;
}

const REP_ERR_TEXT: Record<number, string> = {
  [RepErr.Unsup]: "not supported by the server",
  [RepErr.Policy]: "refused by server policy",
  [RepErr.Invalid]: "invalid request",
  [RepErr.Platform]: "not supported on the server's platform",
  [RepErr.TlsReqd]: "the server requires TLS, which sparse_dd does not support",
  [RepErr.Unknown]: "no such export",
  [RepErr.Shutdown]: "the server is shutting down",
  [RepErr.BlockSizeReqd]: "the server requires block size negotiation",
  [RepErr.TooBig]: "request too big",
  [RepErr.ExtHeaderReqd]: "the server requires extended headers",
};

/**
 * One line describing an option error reply, including the server's message if it sent one.
 *
 * @example
 * ```ts
 * import { describeOptionError, RepErr } from "./protocol.ts";
 * describeOptionError(7, RepErr.Unknown, new TextEncoder().encode("no export 'x'"));
 * // "NBD_OPT_GO failed: no such export (server: no export 'x')"
 * ```
 */
export function describeOptionError(option: number, type: number, payload: Uint8Array): string {
  const what = REP_ERR_TEXT[type] ?? `error reply 0x${type.toString(16)}`;
  let message = "";
  try {
    message = decoder.decode(payload).trim();
  } catch {
    message = "";
  }
  return `${optionName(option)} failed: ${what}${message ? ` (server: ${message})` : ""}`;
}

/** What an `NBD_REP_INFO` reply says. */
export type InfoReply =
  | { info: "export"; size: number; transmissionFlags: number }
  | { info: "block_size"; minimum: number; preferred: number; maximum: number }
  | { info: "name"; name: string }
  | { info: "description"; description: string }
  | { info: "unknown"; type: number };

/**
 * Decodes an `NBD_REP_INFO` payload. Unknown items are returned as `unknown` (the spec says
 * clients ignore them).
 *
 * @example
 * ```ts
 * import { decodeInfoReply, Info } from "./protocol.ts";
 * const b = new Uint8Array(14);
 * const v = new DataView(b.buffer);
 * v.setUint16(0, Info.BlockSize); v.setUint32(2, 1); v.setUint32(6, 4096); v.setUint32(10, 1 << 25);
 * decodeInfoReply(b).info; // "block_size"
 * ```
 */
export function decodeInfoReply(b: Uint8Array): InfoReply {
  need(b, 2, "NBD_REP_INFO");
  const v = view(b);
  const type = v.getUint16(0);
  switch (type) {
    case Info.Export:
      if (b.length !== 12) throw new NbdProtocolError("NBD_INFO_EXPORT has a bad length");
      return {
        info: "export",
        size: getU64(v, 2, "export size"),
        transmissionFlags: v.getUint16(10),
      };
    case Info.BlockSize: {
      if (b.length !== 14) throw new NbdProtocolError("NBD_INFO_BLOCK_SIZE has a bad length");
      const minimum = v.getUint32(2);
      const preferred = v.getUint32(6);
      const maximum = v.getUint32(10);
      if (minimum === 0 || preferred === 0 || maximum === 0) {
        throw new NbdProtocolError("NBD_INFO_BLOCK_SIZE has a zero size");
      }
      return { info: "block_size", minimum, preferred, maximum };
    }
    case Info.Name:
      return { info: "name", name: decodeString(b.subarray(2), "export name") };
    case Info.Description:
      return { info: "description", description: decodeString(b.subarray(2), "description") };
    default:
      return { info: "unknown", type };
  }
}

/** The block size constraints of an export (`NBD_INFO_BLOCK_SIZE`). */
export interface BlockLimits {
  minimum: number;
  preferred: number;
  maximum: number;
}

/**
 * The block size constraints to use for an export of `size` bytes: the server's (checked), or
 * 1 / 4096 / 32 MiB when it stated none. The minimum and preferred sizes must be powers of 2
 * (the minimum at most 64 KiB, the preferred at least the minimum); the maximum a multiple of
 * the minimum (or 0xffffffff), at least the smaller of the preferred size and 32 MiB, and never
 * below 512 bytes; the size a multiple of the minimum. Anything else is a protocol error: a
 * 1-byte maximum would turn one read into millions of requests.
 *
 * @example
 * ```ts
 * import { blockLimits } from "./protocol.ts";
 * blockLimits(undefined, 1 << 20); // { minimum: 1, preferred: 4096, maximum: 33554432 }
 * blockLimits({ minimum: 1, preferred: 4096, maximum: 1 }, 1 << 20); // throws NbdProtocolError
 * ```
 */
export function blockLimits(block: BlockLimits | undefined, size: number): BlockLimits {
  if (block === undefined) return { minimum: 1, preferred: 4096, maximum: DEFAULT_MAX_BLOCK };
  const { minimum, preferred, maximum } = block;
  const pow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;
  const sizes = `block sizes ${minimum}/${preferred}/${maximum} (minimum/preferred/maximum)`;
  if (!pow2(minimum) || minimum > 65536) {
    throw new NbdProtocolError(`unusable minimum block size in ${sizes}`);
  }
  if (!pow2(preferred) || preferred < minimum) {
    throw new NbdProtocolError(`unusable preferred block size in ${sizes}`);
  }
  if (
    maximum !== 0xffffffff &&
    (maximum % minimum !== 0 || maximum < Math.min(preferred, DEFAULT_MAX_BLOCK) || maximum < 512)
  ) {
    throw new NbdProtocolError(`unusable maximum block size in ${sizes}`);
  }
  if (size % minimum !== 0) {
    throw new NbdProtocolError(
      `export size ${size} is not a multiple of the minimum block size ${minimum}`,
    );
  }
  return { minimum, preferred, maximum };
}

/**
 * Decodes an `NBD_REP_META_CONTEXT` payload.
 *
 * @example
 * ```ts
 * import { decodeMetaContextReply } from "./protocol.ts";
 * decodeMetaContextReply(Uint8Array.of(0, 0, 0, 2, 0x61)); // { id: 2, name: "a" }
 * ```
 */
export function decodeMetaContextReply(b: Uint8Array): { id: number; name: string } {
  need(b, 4, "NBD_REP_META_CONTEXT");
  return { id: view(b).getUint32(0), name: decodeString(b.subarray(4), "context name") };
}

/**
 * Decodes the reply to the old `NBD_OPT_EXPORT_NAME` (size, flags, and 124 zero bytes unless
 * no-zeroes was agreed). Used only when a server refuses `NBD_OPT_GO`.
 *
 * @example
 * ```ts
 * import { decodeExportNameReply } from "./protocol.ts";
 * const b = new Uint8Array(10); b[7] = 1; b[9] = 1;
 * decodeExportNameReply(b); // { size: 256, transmissionFlags: 1 }
 * ```
 */
export function decodeExportNameReply(b: Uint8Array): { size: number; transmissionFlags: number } {
  need(b, 10, "NBD_OPT_EXPORT_NAME reply");
  const v = view(b);
  return { size: getU64(v, 0, "export size"), transmissionFlags: v.getUint16(8) };
}

// ---------------------------------------------------------------------------------------------
// Transmission

/** A transmission request header. */
export interface Request {
  /** `CmdFlag.*` bits. */
  flags: number;
  /** `Cmd.*`. */
  type: number;
  /** Echoed in the reply; a number below 2^53. */
  cookie: number;
  /** Byte offset. */
  offset: number;
  /** Byte count (32 bits). */
  length: number;
}

/**
 * Writes a 28-byte request header into `out` at `at` (no allocation on the hot path).
 *
 * @example
 * ```ts
 * import { Cmd, encodeRequestInto, REQUEST_HEADER_SIZE } from "./protocol.ts";
 * const b = new Uint8Array(REQUEST_HEADER_SIZE);
 * encodeRequestInto(b, 0, { flags: 0, type: Cmd.Read, cookie: 1, offset: 0, length: 512 });
 * ```
 */
export function encodeRequestInto(out: Uint8Array, at: number, r: Request): void {
  checkU32(r.length, "request length");
  const v = new DataView(out.buffer, out.byteOffset + at, REQUEST_HEADER_SIZE);
  v.setUint32(0, REQUEST_MAGIC);
  v.setUint16(4, r.flags);
  v.setUint16(6, r.type);
  setU64(v, 8, r.cookie);
  setU64(v, 16, r.offset);
  v.setUint32(24, r.length);
}

/**
 * Encodes a request header into a new 28-byte array.
 *
 * @example
 * ```ts
 * import { Cmd, encodeRequest } from "./protocol.ts";
 * encodeRequest({ flags: 0, type: Cmd.Flush, cookie: 9, offset: 0, length: 0 }).length; // 28
 * ```
 */
export function encodeRequest(r: Request): Uint8Array {
  const b = new Uint8Array(REQUEST_HEADER_SIZE);
  encodeRequestInto(b, 0, r);
  return b;
}

/** A simple reply header (any data of a successful simple READ follows it). */
export interface SimpleReply {
  kind: "simple";
  /** 0 for success, else an `Errno` value. */
  error: number;
  cookie: number;
}

/** A structured reply chunk header (its payload of `length` bytes follows it). */
export interface ChunkHeader {
  kind: "structured";
  /** `ReplyFlag.*` bits. */
  flags: number;
  /** `ChunkType.*`. */
  type: number;
  cookie: number;
  /** Payload bytes. */
  length: number;
}

/**
 * How many header bytes a reply starting with these 4 magic bytes has: 16 for a simple reply,
 * 20 for a structured chunk. Lets a stream reader take 16 bytes first, then the rest.
 *
 * @example
 * ```ts
 * import { replyHeaderSize, STRUCTURED_REPLY_MAGIC } from "./protocol.ts";
 * const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, STRUCTURED_REPLY_MAGIC);
 * replyHeaderSize(b); // 20
 * ```
 */
export function replyHeaderSize(b: Uint8Array): number {
  need(b, 4, "reply");
  const magic = view(b).getUint32(0);
  if (magic === SIMPLE_REPLY_MAGIC) return SIMPLE_REPLY_SIZE;
  if (magic === STRUCTURED_REPLY_MAGIC) return STRUCTURED_REPLY_HEADER_SIZE;
  throw new NbdProtocolError(`bad reply magic 0x${magic.toString(16).padStart(8, "0")}`);
}

/**
 * Decodes a simple reply or structured chunk header (16 or 20 bytes, see
 * {@linkcode replyHeaderSize}).
 *
 * @example
 * ```ts
 * import { decodeReplyHeader, SIMPLE_REPLY_MAGIC } from "./protocol.ts";
 * const b = new Uint8Array(16);
 * const v = new DataView(b.buffer);
 * v.setUint32(0, SIMPLE_REPLY_MAGIC); v.setUint32(4, 5); v.setUint32(12, 42);
 * decodeReplyHeader(b); // { kind: "simple", error: 5, cookie: 42 }
 * ```
 */
export function decodeReplyHeader(b: Uint8Array): SimpleReply | ChunkHeader {
  const size = replyHeaderSize(b);
  need(b, size, "reply header");
  const v = view(b);
  if (size === SIMPLE_REPLY_SIZE) {
    return { kind: "simple", error: v.getUint32(4), cookie: getU64(v, 8, "cookie") };
  }
  return {
    kind: "structured",
    flags: v.getUint16(4),
    type: v.getUint16(6),
    cookie: getU64(v, 8, "cookie"),
    length: v.getUint32(16),
  };
}

/**
 * The offset at the start of an `OFFSET_DATA` payload. The client reads only these 8 bytes and
 * then lets the data land straight in the caller's buffer.
 *
 * @example
 * ```ts
 * import { decodeDataOffset } from "./protocol.ts";
 * decodeDataOffset(Uint8Array.of(0, 0, 0, 0, 0, 0, 0x10, 0, 0xff)); // 4096
 * ```
 */
export function decodeDataOffset(b: Uint8Array): number {
  need(b, 8, "NBD_REPLY_TYPE_OFFSET_DATA");
  return getU64(view(b), 0, "data offset");
}

/**
 * Decodes an `OFFSET_HOLE` payload.
 *
 * @example
 * ```ts
 * import { decodeOffsetHole } from "./protocol.ts";
 * decodeOffsetHole(Uint8Array.of(0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 2, 0)); // { offset: 512, length: 512 }
 * ```
 */
export function decodeOffsetHole(b: Uint8Array): { offset: number; length: number } {
  if (b.length !== 12) throw new NbdProtocolError("NBD_REPLY_TYPE_OFFSET_HOLE has a bad length");
  const v = view(b);
  const length = v.getUint32(8);
  if (length === 0) throw new NbdProtocolError("NBD_REPLY_TYPE_OFFSET_HOLE of zero length");
  return { offset: getU64(v, 0, "hole offset"), length };
}

/** One extent of a block status reply. */
export interface BlockDescriptor {
  /** Bytes. */
  length: number;
  /** `StateFlag.*` bits for `base:allocation`. */
  flags: number;
}

/**
 * Decodes a `BLOCK_STATUS` payload.
 *
 * @example
 * ```ts
 * import { decodeBlockStatus } from "./protocol.ts";
 * decodeBlockStatus(Uint8Array.of(0, 0, 0, 1, 0, 0, 2, 0, 0, 0, 0, 3));
 * // { contextId: 1, descriptors: [{ length: 512, flags: 3 }] }
 * ```
 */
export function decodeBlockStatus(
  b: Uint8Array,
): { contextId: number; descriptors: BlockDescriptor[] } {
  if (b.length < 12 || (b.length - 4) % 8 !== 0) {
    throw new NbdProtocolError("NBD_REPLY_TYPE_BLOCK_STATUS has a bad length");
  }
  const v = view(b);
  const descriptors: BlockDescriptor[] = [];
  for (let at = 4; at < b.length; at += 8) {
    descriptors.push({ length: v.getUint32(at), flags: v.getUint32(at + 4) });
  }
  return { contextId: v.getUint32(0), descriptors };
}

/** What an error chunk says. */
export interface ErrorChunk {
  /** `Errno` value, never 0. */
  error: number;
  /** The server's message, possibly empty. */
  message: string;
  /** For `ERROR_OFFSET`: the offset that failed. */
  offset?: number;
}

/**
 * Decodes an error chunk payload; `ERROR_OFFSET` is told by the trailing 8 bytes. Messages that
 * are not valid UTF-8 are replaced rather than refused: the error matters more than its text.
 *
 * @example
 * ```ts
 * import { ChunkType, decodeErrorChunk } from "./protocol.ts";
 * decodeErrorChunk(Uint8Array.of(0, 0, 0, 28, 0, 1, 0x21), ChunkType.Error);
 * // { error: 28, message: "!" }
 * ```
 */
export function decodeErrorChunk(b: Uint8Array, type?: number): ErrorChunk {
  need(b, 6, "error chunk");
  const v = view(b);
  const error = v.getUint32(0);
  const n = v.getUint16(4);
  const rest = b.length - 6 - n;
  if (rest !== 0 && rest !== 8) throw new NbdProtocolError("error chunk has a bad length");
  if (type === ChunkType.ErrorOffset && rest !== 8) {
    throw new NbdProtocolError("NBD_REPLY_TYPE_ERROR_OFFSET without an offset");
  }
  if (type === ChunkType.Error && rest !== 0) {
    throw new NbdProtocolError("NBD_REPLY_TYPE_ERROR has trailing bytes");
  }
  if (error === 0) throw new NbdProtocolError("error chunk with error 0");
  const message = new TextDecoder().decode(b.subarray(6, 6 + n));
  return rest === 8 ? { error, message, offset: getU64(v, 6 + n, "error offset") } : {
    error,
    message,
  };
}

/**
 * True for the chunk types that report an error (bit 15 set).
 *
 * @example
 * ```ts
 * import { ChunkType, isErrorChunk } from "./protocol.ts";
 * isErrorChunk(ChunkType.Error); // true
 * ```
 */
export function isErrorChunk(type: number): boolean {
  return (type & 0x8000) !== 0;
}

// ---------------------------------------------------------------------------------------------
// URIs

/** Where an NBD export lives. */
export type NbdTarget =
  | { transport: "tcp"; host: string; port: number; exportName: string }
  | { transport: "unix"; path: string; exportName: string };

/**
 * True when a `-src`/`-dest` string is meant as an NBD URI (including the forms we refuse, such
 * as `nbds://`, so they get a clear message instead of being taken for a file name).
 *
 * @example
 * ```ts
 * import { isNbdUri } from "./protocol.ts";
 * isNbdUri("nbd+unix:///?socket=/run/x.sock"); // true
 * isNbdUri("/dev/sdb"); // false
 * ```
 */
export function isNbdUri(s: string): boolean {
  return /^nbds?(\+[a-z]+)?:/i.test(s);
}

/**
 * Parses `nbd://host[:port][/export]` and `nbd+unix:///[export]?socket=PATH` (the NBD URI
 * standard). The export name is the path without its first `/`, percent-decoded. TLS
 * (`nbds`), vsock and unknown transports are refused with a clear message.
 *
 * @example
 * ```ts
 * import { parseNbdUri } from "./protocol.ts";
 * parseNbdUri("nbd://localhost:10810/disk");
 * // { transport: "tcp", host: "localhost", port: 10810, exportName: "disk" }
 * parseNbdUri("nbd+unix:///disk?socket=/tmp/nbd.sock");
 * // { transport: "unix", path: "/tmp/nbd.sock", exportName: "disk" }
 * ```
 */
export function parseNbdUri(uri: string): NbdTarget {
  const m = /^([a-z0-9+.-]+):/i.exec(uri);
  if (!m) throw new RangeError(`not an NBD URI: ${uri}`);
  const scheme = m[1].toLowerCase();
  if (scheme === "nbds" || scheme.startsWith("nbds+")) {
    throw new RangeError(`NBD over TLS (${scheme}://) is not supported: ${uri}`);
  }
  if (scheme !== "nbd" && scheme !== "nbd+unix") {
    throw new RangeError(
      `unsupported NBD transport ${scheme}:// (use nbd:// or nbd+unix://): ${uri}`,
    );
  }
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    throw new RangeError(`malformed NBD URI: ${uri}`);
  }
  if (url.username || url.password) {
    throw new RangeError(`NBD URIs cannot carry a user name or password: ${uri}`);
  }
  if (url.hash) throw new RangeError(`NBD URIs have no #fragment: ${uri}`);
  let exportName: string;
  try {
    exportName = decodeURIComponent(url.pathname.replace(/^\//, ""));
  } catch {
    throw new RangeError(`bad percent-encoding in the export name: ${uri}`);
  }
  if (encoder.encode(exportName).length > MAX_STRING) {
    throw new RangeError(`export name longer than ${MAX_STRING} bytes: ${uri}`);
  }
  if (scheme === "nbd+unix") {
    if (url.host !== "") {
      throw new RangeError(
        `nbd+unix:// takes no host (use nbd+unix:///export?socket=PATH): ${uri}`,
      );
    }
    const path = queryParam(url.search, "socket");
    if (!path) throw new RangeError(`nbd+unix:// needs ?socket=PATH: ${uri}`);
    return { transport: "unix", path, exportName };
  }
  if (url.hostname === "") throw new RangeError(`nbd:// needs a host: ${uri}`);
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
  const port = url.port === "" ? DEFAULT_PORT : Number(url.port);
  if (!(port >= 1 && port <= 65535)) throw new RangeError(`bad port in ${uri}`);
  return { transport: "tcp", host, port, exportName };
}

/**
 * One query parameter, decoded as RFC 3986 says (a `+` stays a `+`, unlike form encoding, so
 * socket paths containing `+` survive).
 */
function queryParam(search: string, name: string): string | undefined {
  for (const pair of search.replace(/^\?/, "").split("&")) {
    const eq = pair.indexOf("=");
    const key = eq < 0 ? pair : pair.slice(0, eq);
    if (key !== name) continue;
    try {
      return decodeURIComponent(eq < 0 ? "" : pair.slice(eq + 1));
    } catch {
      throw new RangeError(`bad percent-encoding in ?${name}=`);
    }
  }
  return undefined;
}

/**
 * Formats a target back into a URI: the name used in messages, so that an overridden export
 * name (`-nbd-export`) shows up in them.
 *
 * @example
 * ```ts
 * import { formatNbdUri } from "./protocol.ts";
 * formatNbdUri({ transport: "tcp", host: "::1", port: 10809, exportName: "a b" });
 * // "nbd://[::1]/a%20b"
 * ```
 */
export function formatNbdUri(t: NbdTarget): string {
  const name = encodeURIComponent(t.exportName).replace(/%2F/gi, "/");
  if (t.transport === "unix") {
    return `nbd+unix:///${name}?socket=${encodeURIComponent(t.path).replace(/%2F/gi, "/")}`;
  }
  const host = t.host.includes(":") ? `[${t.host}]` : t.host;
  return `nbd://${host}${t.port === DEFAULT_PORT ? "" : `:${t.port}`}/${name}`;
}
