import { deepStrictEqual, ok } from "node:assert/strict";
import { isZero, nonZeroRuns } from "../../src/copy/quantum.ts";
import { Prng } from "../_support/prng.ts";
import { scanBuffer } from "../../src/copy/zeroscan.ts";

function naiveRuns(buf: Uint8Array, q: number, diskOffset: number) {
  const runs: Array<{ start: number; length: number }> = [];
  let pos = 0;
  while (pos < buf.length) {
    const next = Math.min(buf.length, (Math.floor((diskOffset + pos) / q) + 1) * q - diskOffset);
    const nz = buf.subarray(pos, next).some((b) => b !== 0);
    const last = runs[runs.length - 1];
    if (nz) {
      if (last && last.start + last.length === pos) last.length += next - pos;
      else runs.push({ start: pos, length: next - pos });
    }
    pos = next;
  }
  return runs;
}

Deno.test("isZero agrees with a byte loop at every alignment", () => {
  const r = new Prng(7);
  const backing = new Uint8Array(4096 + 64);
  for (let t = 0; t < 3000; t++) {
    backing.fill(0);
    if (r.chance(0.7)) backing[r.int(backing.length)] = 1 + r.int(255);
    const start = r.int(64);
    const end = start + r.int(backing.length - start + 1);
    const view = backing.subarray(r.int(8));
    const s = Math.min(start, view.length);
    const e = Math.min(end, view.length);
    ok(isZero(view, s, e) === !view.subarray(s, e).some((b) => b !== 0), `trial ${t}`);
  }
});

Deno.test("nonZeroRuns finds whole quanta aligned to disk offsets, clipped to the buffer", () => {
  for (let seed = 1; seed <= 1000; seed++) {
    const r = new Prng(seed);
    const buf = new Uint8Array(r.int(5000));
    for (let k = r.int(6); k > 0; k--) {
      const at = r.int(buf.length + 1);
      buf.fill(1 + r.int(255), at, Math.min(buf.length, at + r.int(300)));
    }
    const q = [16, 64, 512, 1024][r.int(4)];
    const off = r.int(3000);
    deepStrictEqual(nonZeroRuns(buf, q, off), naiveRuns(buf, q, off), `seed ${seed}`);
  }
});

Deno.test("nonZeroRuns over SIMD-scanned buffers matches the quantum-by-quantum walk", () => {
  for (let seed = 1; seed <= 500; seed++) {
    const r = new Prng(seed);
    const len = r.int(9000);
    const buf = scanBuffer(len);
    for (let k = r.int(8); k > 0; k--) {
      const at = r.int(len + 1);
      buf.fill(1 + r.int(255), at, Math.min(len, at + r.int(700)));
    }
    const q = [16, 512, 4096, 16384][r.int(4)];
    const off = r.int(40000);
    deepStrictEqual(nonZeroRuns(buf, q, off), naiveRuns(buf, q, off), `seed ${seed}`);
    ok(isZero(buf) === !buf.some((b) => b !== 0), `seed ${seed}`);
  }
});
