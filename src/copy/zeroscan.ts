/**
 * Finding zeroes fast: "is this range all zero", "where is the first non-zero byte", "where is
 * the first all-zero quantum".
 *
 * The scan runs in a hand-written WebAssembly SIMD module (`zeroscan_wasm.ts`, 64 bytes per
 * step) when the bytes live in WebAssembly memory. To avoid copying data into wasm memory, the
 * copier reads straight into buffers from {@linkcode scanBuffer}: each is the whole of its own
 * `WebAssembly.Memory`, which is also page aligned, so it serves `O_DIRECT` too. Any other
 * buffer is scanned by a `Uint32Array` loop (`tests/copy/zeroscan_bench.ts` compares the choices).
 *
 * @example Splitting a block into data and zero quanta
 * ```ts
 * import { firstDataQuantum, firstZeroQuantum, scanBuffer } from "./zeroscan.ts";
 * const buf = scanBuffer(1 << 20); // read into this
 * buf[300_000] = 1;
 * const q = 65536;
 * const data = firstDataQuantum(buf, q); // 262144: the quantum holding byte 300000
 * const zero = firstZeroQuantum(buf, q, data); // 327680: the next all-zero quantum
 * ```
 *
 * @module
 */

import { ZEROSCAN_WASM } from "./_zeroscan_wasm.ts";

interface ScanExports {
  firstNonZero(p: number, end: number): number;
  firstZeroQuantum(p: number, end: number, q: number): number;
}

const WASM_PAGE = 65536;

let compiled: WebAssembly.Module | null | undefined;

/** The compiled module, or null where WebAssembly SIMD is unavailable. Compiled once, in sync. */
function wasmModule(): WebAssembly.Module | null {
  if (compiled === undefined) {
    try {
      compiled = new WebAssembly.Module(ZEROSCAN_WASM as Uint8Array<ArrayBuffer>);
    } catch {
      compiled = null;
    }
  }
  return compiled;
}

/** The scanner bound to each wasm memory handed out by {@linkcode scanBuffer}. */
const scanners = new WeakMap<ArrayBufferLike, ScanExports>();

/**
 * Which scanner {@linkcode scanBuffer} buffers get: `"wasm-simd"`, or `"js"` when WebAssembly
 * SIMD is unavailable (then every buffer is scanned by the JavaScript loop).
 *
 * @example
 * ```ts
 * import { scanBackend } from "./zeroscan.ts";
 * scanBackend(); // "wasm-simd"
 * ```
 */
export function scanBackend(): "wasm-simd" | "js" {
  return wasmModule() ? "wasm-simd" : "js";
}

/**
 * A zero-filled buffer of `size` bytes that the SIMD scanner reads in place: the start of a
 * `WebAssembly.Memory` of its own (so its address is page aligned, fit for `O_DIRECT`). Falls back
 * to a plain `Uint8Array` without WebAssembly SIMD. Allocate a few and reuse them.
 *
 * @example
 * ```ts
 * import { isZero, scanBuffer } from "./zeroscan.ts";
 * const buf = scanBuffer(2 << 20);
 * isZero(buf); // true
 * ```
 */
export function scanBuffer(size: number): Uint8Array {
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`invalid size: ${size}`);
  const module = wasmModule();
  // wasm32 addresses end at 4 GiB; a larger buffer (never used by the copier) is a plain one.
  if (!module || size > 2 ** 31) return new Uint8Array(size);
  const pages = Math.max(1, Math.ceil(size / WASM_PAGE));
  const memory = new WebAssembly.Memory({ initial: pages, maximum: pages });
  const instance = new WebAssembly.Instance(module, { env: { memory } });
  scanners.set(memory.buffer, instance.exports as unknown as ScanExports);
  return new Uint8Array(memory.buffer, 0, size);
}

function checkRange(buf: Uint8Array, from: number, to: number): void {
  if (!(0 <= from && from <= to && to <= buf.length)) {
    throw new RangeError(`range [${from}, ${to}) outside a buffer of ${buf.length} bytes`);
  }
}

/** The JavaScript scan: 4 bytes at a time over the 4-aligned middle, bytes at the edges. */
function firstNonZeroJs(buf: Uint8Array, from: number, to: number): number {
  let i = from;
  const abs = buf.byteOffset + from;
  const head = Math.min(to, from + ((4 - (abs & 3)) & 3));
  for (; i < head; i++) if (buf[i] !== 0) return i;
  const words = (to - i) >>> 2;
  if (words > 0) {
    const w = new Uint32Array(buf.buffer, buf.byteOffset + i, words);
    let k = 0;
    // Eight words per test: one branch per 32 bytes.
    for (const n8 = words - (words & 7); k < n8; k += 8) {
      if (
        (w[k] | w[k + 1] | w[k + 2] | w[k + 3] | w[k + 4] | w[k + 5] | w[k + 6] | w[k + 7]) !== 0
      ) {
        break;
      }
    }
    for (; k < words; k++) if (w[k] !== 0) break;
    i += k * 4;
  }
  for (; i < to; i++) if (buf[i] !== 0) return i;
  return to;
}

/**
 * The index of the first non-zero byte of `buf[from, to)`, or `to` when all are zero.
 *
 * @example
 * ```ts
 * import { firstNonZero } from "./zeroscan.ts";
 * firstNonZero(new Uint8Array([0, 0, 5, 0])); // 2
 * firstNonZero(new Uint8Array(8)); // 8
 * ```
 */
export function firstNonZero(buf: Uint8Array, from = 0, to: number = buf.length): number {
  checkRange(buf, from, to);
  const s = scanners.get(buf.buffer);
  if (s) return s.firstNonZero(buf.byteOffset + from, buf.byteOffset + to) - buf.byteOffset;
  return firstNonZeroJs(buf, from, to);
}

/**
 * True when every byte of `buf[from, to)` is zero.
 *
 * @example
 * ```ts
 * import { isZero } from "./zeroscan.ts";
 * isZero(new Uint8Array(4096)); // true
 * ```
 */
export function isZero(buf: Uint8Array, from = 0, to: number = buf.length): boolean {
  return firstNonZero(buf, from, to) === to;
}

/**
 * Where the first quantum holding a non-zero byte starts, quanta being `[from, from + quantum)`,
 * `[from + quantum, ...)`, ... (the last one may be short); `to` when all are zero.
 *
 * @example
 * ```ts
 * import { firstDataQuantum } from "./zeroscan.ts";
 * const b = new Uint8Array(4096);
 * b[1500] = 1;
 * firstDataQuantum(b, 512); // 1024
 * ```
 */
export function firstDataQuantum(
  buf: Uint8Array,
  quantum: number,
  from = 0,
  to: number = buf.length,
): number {
  checkQuantum(quantum);
  const i = firstNonZero(buf, from, to);
  return i === to ? to : from + Math.floor((i - from) / quantum) * quantum;
}

/**
 * Where the first all-zero quantum starts (quanta as in {@linkcode firstDataQuantum}); `to`
 * when none is all zero.
 *
 * @example
 * ```ts
 * import { firstZeroQuantum } from "./zeroscan.ts";
 * const b = new Uint8Array(4096).fill(1);
 * b.fill(0, 2048, 3072);
 * firstZeroQuantum(b, 512); // 2048
 * ```
 */
export function firstZeroQuantum(
  buf: Uint8Array,
  quantum: number,
  from = 0,
  to: number = buf.length,
): number {
  checkQuantum(quantum);
  checkRange(buf, from, to);
  const s = scanners.get(buf.buffer);
  if (s) {
    const base = buf.byteOffset;
    // wasm takes i32: a quantum longer than the range is the range itself.
    const q = Math.max(1, Math.min(quantum, to - from));
    return s.firstZeroQuantum(base + from, base + to, q) - base;
  }
  for (let p = from; p < to; p += quantum) {
    const end = Math.min(to, p + quantum);
    if (firstNonZeroJs(buf, p, end) === end) return p;
  }
  return to;
}

function checkQuantum(quantum: number): void {
  if (!Number.isSafeInteger(quantum) || quantum <= 0) {
    throw new RangeError(`quantum must be a positive integer: ${quantum}`);
  }
}
