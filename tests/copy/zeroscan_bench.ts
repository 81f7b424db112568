/**
 * Zero-scanning alternatives over a 2 MiB all-zero block (the worst case: every byte is read).
 * Run: `deno bench -A tests/copy/zeroscan_bench.ts`. The winner is what src/copy/zeroscan.ts uses.
 */
import { firstNonZero, scanBuffer } from "../../src/copy/zeroscan.ts";
import { libc } from "../../src/file/libc.ts";

const SIZE = 2 << 20;
const inWasm = scanBuffer(SIZE);
const plain = new Uint8Array(SIZE);
const scratch = scanBuffer(256 << 10);

function byteLoop(b: Uint8Array): number {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return i;
  return b.length;
}

function u64Loop(b: Uint8Array): number {
  const w = new BigUint64Array(b.buffer, b.byteOffset, b.length >>> 3);
  for (let k = 0; k < w.length; k++) if (w[k] !== 0n) return k * 8;
  return b.length;
}

function copyThenSimd(b: Uint8Array): number {
  for (let at = 0; at < b.length; at += scratch.length) {
    const part = b.subarray(at, Math.min(b.length, at + scratch.length));
    scratch.set(part);
    const i = firstNonZero(scratch, 0, part.length);
    if (i < part.length) return at + i;
  }
  return b.length;
}

const c = libc();
const memcmp = c
  ? Deno.dlopen("libc.so.6", {
    memcmp: { parameters: ["buffer", "buffer", "usize"], result: "i32" },
  }).symbols.memcmp
  : undefined;
const zeros = new Uint8Array(SIZE);

Deno.bench("wasm SIMD, in place (scanBuffer)", { baseline: true }, () => {
  firstNonZero(inWasm);
});
Deno.bench("Uint32Array loop, 8 words per test (fallback)", () => {
  firstNonZero(plain);
});
Deno.bench("BigUint64Array loop", () => {
  u64Loop(plain);
});
Deno.bench("byte loop", () => {
  byteLoop(plain);
});
Deno.bench("copy into wasm scratch, then SIMD", () => {
  copyThenSimd(plain);
});
if (memcmp) {
  Deno.bench("libc memcmp via FFI against a zero buffer", () => {
    memcmp(plain, zeros, BigInt(SIZE));
  });
}
