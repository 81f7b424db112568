/**
 * Byte-level helpers of the NBD wire codec, shared by the client's side (`protocol.ts`) and the
 * server's side the tests play (`tests/_support/nbd_server.ts`). Private: import
 * {@linkcode NbdProtocolError} and {@linkcode MAX_STRING} from `protocol.ts`.
 *
 * @module
 */

/** The longest string (export name, error message) the protocol allows. */
export const MAX_STRING = 4096;

/**
 * The peer broke the protocol: bad magic, impossible lengths, a malformed payload.
 *
 * @example
 * ```ts
 * import { decodeGreeting, NbdProtocolError } from "./protocol.ts";
 * try { decodeGreeting(new Uint8Array(18)); } catch (e) { e instanceof NbdProtocolError; }
 * ```
 */
export class NbdProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "NbdProtocolError";
  }
}

/** UTF-8 both ways; the decoder refuses malformed input. */
export const encoder = new TextEncoder();
export const decoder = new TextDecoder("utf-8", { fatal: true });

export function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

export function need(b: Uint8Array, n: number, what: string): void {
  if (b.length < n) {
    throw new NbdProtocolError(`${what}: need ${n} bytes, got ${b.length}`);
  }
}

export function getU64(v: DataView, at: number, what: string): number {
  const hi = v.getUint32(at);
  const lo = v.getUint32(at + 4);
  const n = hi * 0x1_0000_0000 + lo;
  if (!Number.isSafeInteger(n)) throw new NbdProtocolError(`${what} too large: ${n}`);
  return n;
}

export function setU64(v: DataView, at: number, n: number): void {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`not a 64-bit unsigned value: ${n}`);
  v.setUint32(at, Math.floor(n / 0x1_0000_0000));
  v.setUint32(at + 4, n >>> 0);
}

export function checkU32(n: number, what: string): void {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) {
    throw new RangeError(`${what} does not fit in 32 bits: ${n}`);
  }
}

export function encodeString(s: string, what: string): Uint8Array {
  const b = encoder.encode(s);
  if (b.length > MAX_STRING) {
    throw new RangeError(`${what} longer than ${MAX_STRING} bytes`);
  }
  return b;
}

export function decodeString(b: Uint8Array, what: string): string {
  try {
    return decoder.decode(b);
  } catch {
    throw new NbdProtocolError(`${what} is not valid UTF-8`);
  }
}

/** Concatenates byte arrays. */
export function concat(parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
