/**
 * The server's side of the NBD wire codec, for tests that play an NBD server (the scripted and
 * hostile servers): greeting, option replies, transmission replies and chunks. The client's
 * side (`src/nbd/protocol.ts`) never needs these, so they live with the tests.
 *
 * @module
 */

import {
  type BlockDescriptor,
  ChunkType,
  type ErrorChunk,
  GREETING_SIZE,
  IHAVEOPT,
  Info,
  type InfoReply,
  NBD_MAGIC,
  NbdProtocolError,
  OLDSTYLE_GREETING_SIZE,
  OLDSTYLE_MAGIC,
  OPTION_HEADER_SIZE,
  OPTION_REPLY_HEADER_SIZE,
  OPTION_REPLY_MAGIC,
  type Request,
  REQUEST_HEADER_SIZE,
  REQUEST_MAGIC,
  SIMPLE_REPLY_MAGIC,
  SIMPLE_REPLY_SIZE,
  STRUCTURED_REPLY_HEADER_SIZE,
  STRUCTURED_REPLY_MAGIC,
} from "../../src/nbd/protocol.ts";
import { decodeString, encodeString, getU64, need, setU64, view } from "../../src/nbd/_wire.ts";

/**
 * Encodes a newstyle server greeting.
 *
 * @example
 * ```ts
 * import { encodeGreeting } from "./nbd_server.ts";
 * import { decodeGreeting, HandshakeFlag } from "../../src/nbd/protocol.ts";
 * decodeGreeting(encodeGreeting(HandshakeFlag.FixedNewstyle)); // { handshakeFlags: 1 }
 * ```
 */
export function encodeGreeting(handshakeFlags: number): Uint8Array {
  const b = new Uint8Array(GREETING_SIZE);
  const v = view(b);
  v.setBigUint64(0, NBD_MAGIC);
  v.setBigUint64(8, IHAVEOPT);
  v.setUint16(16, handshakeFlags);
  return b;
}

/**
 * Decodes the client flags.
 *
 * @example
 * ```ts
 * import { decodeClientFlags } from "./nbd_server.ts";
 * import { encodeClientFlags } from "../../src/nbd/protocol.ts";
 * decodeClientFlags(encodeClientFlags(1)); // 1
 * ```
 */
export function decodeClientFlags(b: Uint8Array): number {
  need(b, 4, "client flags");
  return view(b).getUint32(0);
}

/**
 * Decodes an option request header.
 *
 * @example
 * ```ts
 * import { decodeOptionHeader } from "./nbd_server.ts";
 * import { encodeOption, Opt } from "../../src/nbd/protocol.ts";
 * decodeOptionHeader(encodeOption(Opt.Go)); // { option: 7, length: 0 }
 * ```
 */
export function decodeOptionHeader(b: Uint8Array): { option: number; length: number } {
  need(b, OPTION_HEADER_SIZE, "option header");
  const v = view(b);
  if (v.getBigUint64(0) !== IHAVEOPT) throw new NbdProtocolError("bad option magic");
  return { option: v.getUint32(8), length: v.getUint32(12) };
}

/**
 * Decodes the data of `NBD_OPT_GO`.
 *
 * @example
 * ```ts
 * import { decodeGoData } from "./nbd_server.ts";
 * import { encodeGoData } from "../../src/nbd/protocol.ts";
 * decodeGoData(encodeGoData("", [])); // { exportName: "", infos: [] }
 * ```
 */
export function decodeGoData(b: Uint8Array): { exportName: string; infos: number[] } {
  need(b, 6, "NBD_OPT_GO data");
  const v = view(b);
  const n = v.getUint32(0);
  need(b, 6 + n, "NBD_OPT_GO data");
  const exportName = decodeString(b.subarray(4, 4 + n), "export name");
  const count = v.getUint16(4 + n);
  if (b.length !== 6 + n + 2 * count) {
    throw new NbdProtocolError("NBD_OPT_GO data has a bad length");
  }
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(v.getUint16(6 + n + 2 * i));
  return { exportName, infos };
}

/**
 * Decodes meta context option data.
 *
 * @example
 * ```ts
 * import { decodeMetaContextData } from "./nbd_server.ts";
 * import { encodeMetaContextData } from "../../src/nbd/protocol.ts";
 * decodeMetaContextData(encodeMetaContextData("x", [])).exportName; // "x"
 * ```
 */
export function decodeMetaContextData(b: Uint8Array): { exportName: string; queries: string[] } {
  const v = view(b);
  let at = 0;
  const str = (what: string): string => {
    need(b, at + 4, what);
    const n = v.getUint32(at);
    need(b, at + 4 + n, what);
    const s = decodeString(b.subarray(at + 4, at + 4 + n), what);
    at += 4 + n;
    return s;
  };
  const exportName = str("export name");
  need(b, at + 4, "query count");
  const count = v.getUint32(at);
  at += 4;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) queries.push(str("query"));
  if (at !== b.length) throw new NbdProtocolError("meta context data has trailing bytes");
  return { exportName, queries };
}

/**
 * Encodes an option reply.
 *
 * @example
 * ```ts
 * import { encodeOptionReply } from "./nbd_server.ts";
 * import { decodeOptionReplyHeader, Opt, Rep } from "../../src/nbd/protocol.ts";
 * decodeOptionReplyHeader(encodeOptionReply(Opt.Go, Rep.Ack)); // { option: 7, type: 1, length: 0 }
 * ```
 */
export function encodeOptionReply(
  option: number,
  type: number,
  data: Uint8Array = new Uint8Array(0),
): Uint8Array {
  const b = new Uint8Array(OPTION_REPLY_HEADER_SIZE + data.length);
  const v = view(b);
  v.setBigUint64(0, OPTION_REPLY_MAGIC);
  v.setUint32(8, option);
  v.setUint32(12, type);
  v.setUint32(16, data.length);
  b.set(data, OPTION_REPLY_HEADER_SIZE);
  return b;
}

/**
 * Encodes an `NBD_REP_INFO` payload.
 *
 * @example
 * ```ts
 * import { encodeInfoReply } from "./nbd_server.ts";
 * import { decodeInfoReply } from "../../src/nbd/protocol.ts";
 * decodeInfoReply(encodeInfoReply({ info: "export", size: 4096, transmissionFlags: 1 }));
 * // { info: "export", size: 4096, transmissionFlags: 1 }
 * ```
 */
export function encodeInfoReply(reply: InfoReply): Uint8Array {
  switch (reply.info) {
    case "export": {
      const b = new Uint8Array(12);
      const v = view(b);
      v.setUint16(0, Info.Export);
      setU64(v, 2, reply.size);
      v.setUint16(10, reply.transmissionFlags);
      return b;
    }
    case "block_size": {
      const b = new Uint8Array(14);
      const v = view(b);
      v.setUint16(0, Info.BlockSize);
      v.setUint32(2, reply.minimum);
      v.setUint32(6, reply.preferred);
      v.setUint32(10, reply.maximum);
      return b;
    }
    case "name":
    case "description": {
      const s = encodeString(reply.info === "name" ? reply.name : reply.description, reply.info);
      const b = new Uint8Array(2 + s.length);
      view(b).setUint16(0, reply.info === "name" ? Info.Name : Info.Description);
      b.set(s, 2);
      return b;
    }
    case "unknown": {
      const b = new Uint8Array(2);
      view(b).setUint16(0, reply.type);
      return b;
    }
  }
}

/**
 * Encodes an `NBD_REP_META_CONTEXT` payload: context id, then name.
 *
 * @example
 * ```ts
 * import { encodeMetaContextReply } from "./nbd_server.ts";
 * import { decodeMetaContextReply } from "../../src/nbd/protocol.ts";
 * decodeMetaContextReply(encodeMetaContextReply(1, "base:allocation"));
 * // { id: 1, name: "base:allocation" }
 * ```
 */
export function encodeMetaContextReply(id: number, name: string): Uint8Array {
  const s = encodeString(name, "context name");
  const b = new Uint8Array(4 + s.length);
  view(b).setUint32(0, id);
  b.set(s, 4);
  return b;
}

/**
 * Decodes a request header.
 *
 * @example
 * ```ts
 * import { decodeRequest } from "./nbd_server.ts";
 * import { Cmd, encodeRequest } from "../../src/nbd/protocol.ts";
 * decodeRequest(encodeRequest({ flags: 0, type: Cmd.Disc, cookie: 1, offset: 0, length: 0 })).type;
 * // 2
 * ```
 */
export function decodeRequest(b: Uint8Array): Request {
  need(b, REQUEST_HEADER_SIZE, "request");
  const v = view(b);
  if (v.getUint32(0) !== REQUEST_MAGIC) throw new NbdProtocolError("bad request magic");
  return {
    flags: v.getUint16(4),
    type: v.getUint16(6),
    cookie: getU64(v, 8, "cookie"),
    offset: getU64(v, 16, "offset"),
    length: v.getUint32(24),
  };
}

/**
 * Encodes a simple reply header.
 *
 * @example
 * ```ts
 * import { encodeSimpleReply } from "./nbd_server.ts";
 * encodeSimpleReply(0, 1).length; // 16
 * ```
 */
export function encodeSimpleReply(error: number, cookie: number): Uint8Array {
  const b = new Uint8Array(SIMPLE_REPLY_SIZE);
  const v = view(b);
  v.setUint32(0, SIMPLE_REPLY_MAGIC);
  v.setUint32(4, error);
  setU64(v, 8, cookie);
  return b;
}

/**
 * Encodes a whole structured chunk: header plus payload.
 *
 * @example
 * ```ts
 * import { encodeChunk } from "./nbd_server.ts";
 * import { ChunkType, ReplyFlag } from "../../src/nbd/protocol.ts";
 * encodeChunk(ReplyFlag.Done, ChunkType.None, 7).length; // 20
 * ```
 */
export function encodeChunk(
  flags: number,
  type: number,
  cookie: number,
  payload: Uint8Array = new Uint8Array(0),
): Uint8Array {
  const b = new Uint8Array(STRUCTURED_REPLY_HEADER_SIZE + payload.length);
  const v = view(b);
  v.setUint32(0, STRUCTURED_REPLY_MAGIC);
  v.setUint16(4, flags);
  v.setUint16(6, type);
  setU64(v, 8, cookie);
  v.setUint32(16, payload.length);
  b.set(payload, STRUCTURED_REPLY_HEADER_SIZE);
  return b;
}

/**
 * Payload of `NBD_REPLY_TYPE_OFFSET_DATA`: 8-byte offset, then data.
 *
 * @example
 * ```ts
 * import { encodeOffsetData } from "./nbd_server.ts";
 * import { decodeDataOffset } from "../../src/nbd/protocol.ts";
 * decodeDataOffset(encodeOffsetData(512, new Uint8Array(4))); // 512
 * ```
 */
export function encodeOffsetData(offset: number, data: Uint8Array): Uint8Array {
  const b = new Uint8Array(8 + data.length);
  setU64(view(b), 0, offset);
  b.set(data, 8);
  return b;
}

/**
 * Payload of `NBD_REPLY_TYPE_OFFSET_HOLE`: offset and hole size.
 *
 * @example
 * ```ts
 * import { encodeOffsetHole } from "./nbd_server.ts";
 * import { decodeOffsetHole } from "../../src/nbd/protocol.ts";
 * decodeOffsetHole(encodeOffsetHole(0, 4096)); // { offset: 0, length: 4096 }
 * ```
 */
export function encodeOffsetHole(offset: number, length: number): Uint8Array {
  const b = new Uint8Array(12);
  const v = view(b);
  setU64(v, 0, offset);
  v.setUint32(8, length);
  return b;
}

/**
 * Payload of `NBD_REPLY_TYPE_BLOCK_STATUS`: context id, then (length, flags) pairs.
 *
 * @example
 * ```ts
 * import { encodeBlockStatus } from "./nbd_server.ts";
 * import { decodeBlockStatus } from "../../src/nbd/protocol.ts";
 * decodeBlockStatus(encodeBlockStatus(1, [{ length: 65536, flags: 3 }]));
 * // { contextId: 1, descriptors: [{ length: 65536, flags: 3 }] }
 * ```
 */
export function encodeBlockStatus(
  contextId: number,
  descriptors: readonly BlockDescriptor[],
): Uint8Array {
  const b = new Uint8Array(4 + 8 * descriptors.length);
  const v = view(b);
  v.setUint32(0, contextId);
  descriptors.forEach((d, i) => {
    v.setUint32(4 + 8 * i, d.length);
    v.setUint32(8 + 8 * i, d.flags);
  });
  return b;
}

/**
 * Payload of `NBD_REPLY_TYPE_ERROR` (no offset) or `ERROR_OFFSET` (with offset).
 *
 * @example
 * ```ts
 * import { encodeErrorChunk } from "./nbd_server.ts";
 * import { decodeErrorChunk } from "../../src/nbd/protocol.ts";
 * const e = { error: 5, message: "bad sector", offset: 4096 };
 * decodeErrorChunk(encodeErrorChunk(e)); // e
 * ```
 */
export function encodeErrorChunk(e: ErrorChunk): Uint8Array {
  const msg = encodeString(e.message, "error message");
  const b = new Uint8Array(6 + msg.length + (e.offset === undefined ? 0 : 8));
  const v = view(b);
  v.setUint32(0, e.error);
  v.setUint16(4, msg.length);
  b.set(msg, 6);
  if (e.offset !== undefined) setU64(v, 6 + msg.length, e.offset);
  return b;
}

/**
 * The chunk type an {@linkcode ErrorChunk} is sent as.
 *
 * @example
 * ```ts
 * import { errorChunkType } from "./nbd_server.ts";
 * import { ChunkType } from "../../src/nbd/protocol.ts";
 * errorChunkType({ error: 5, message: "", offset: 0 }) === ChunkType.ErrorOffset; // true
 * ```
 */
export function errorChunkType(e: ErrorChunk): number {
  return e.offset === undefined ? ChunkType.Error : ChunkType.ErrorOffset;
}

/**
 * Encodes an oldstyle greeting (for tests that play the server).
 *
 * @example
 * ```ts
 * import { encodeOldstyleGreeting } from "./nbd_server.ts";
 * encodeOldstyleGreeting(512, 1).length; // 152
 * ```
 */
export function encodeOldstyleGreeting(size: number, transmissionFlags: number): Uint8Array {
  const b = new Uint8Array(OLDSTYLE_GREETING_SIZE);
  const v = view(b);
  v.setBigUint64(0, NBD_MAGIC);
  v.setBigUint64(8, OLDSTYLE_MAGIC);
  setU64(v, 16, size);
  v.setUint32(24, transmissionFlags);
  return b;
}
