import assert from "node:assert/strict";
import {
  firstDataQuantum,
  firstNonZero,
  firstZeroQuantum,
  isZero,
  scanBackend,
  scanBuffer,
} from "../../src/copy/zeroscan.ts";
import { addressOf, libc, O_DIRECT, O_RDONLY } from "../../src/file/libc.ts";
import { Prng } from "../_support/prng.ts";
import { withTempDir } from "../_support/helpers.ts";

function refFirstNonZero(b: Uint8Array, from: number, to: number): number {
  for (let i = from; i < to; i++) if (b[i] !== 0) return i;
  return to;
}

function refFirstZeroQuantum(b: Uint8Array, q: number, from: number, to: number): number {
  for (let p = from; p < to; p += q) {
    const end = Math.min(to, p + q);
    if (refFirstNonZero(b, p, end) === end) return p;
  }
  return to;
}

/** A buffer of mostly zero bytes with a few random non-zero runs. */
function sparseBytes(r: Prng, into: Uint8Array): Uint8Array {
  into.fill(0);
  const runs = r.int(4);
  for (let k = 0; k < runs; k++) {
    const at = r.int(into.length);
    const len = 1 + r.int(Math.min(300, into.length - at));
    for (let i = at; i < at + len; i++) into[i] = r.int(2) === 0 ? 0 : 1 + r.int(255);
  }
  return into;
}

Deno.test("WebAssembly SIMD is the scanner on this machine", () => {
  assert.equal(scanBackend(), "wasm-simd");
});

for (const kind of ["wasm memory", "plain, unaligned view"] as const) {
  Deno.test(`scans agree with a byte-by-byte reference (${kind}, seeded)`, () => {
    for (let seed = 1; seed <= 300; seed++) {
      const r = new Prng(seed);
      const size = 1 + r.int(5000);
      const buf = kind === "wasm memory"
        ? scanBuffer(size)
        : new Uint8Array(new ArrayBuffer(size + 8), 1 + r.int(7), size);
      sparseBytes(r, buf);
      const from = r.int(size + 1);
      const to = from + r.int(size - from + 1);
      const q = 1 + r.int(700);
      const msg = `seed ${seed} size ${size} [${from}, ${to}) q ${q}`;
      const fnz = refFirstNonZero(buf, from, to);
      assert.equal(firstNonZero(buf, from, to), fnz, msg);
      assert.equal(isZero(buf, from, to), fnz === to, msg);
      assert.equal(firstZeroQuantum(buf, q, from, to), refFirstZeroQuantum(buf, q, from, to), msg);
      const data = fnz === to ? to : from + Math.floor((fnz - from) / q) * q;
      assert.equal(firstDataQuantum(buf, q, from, to), data, msg);
    }
  });
}

Deno.test("a subarray of a scan buffer is scanned relative to the subarray", () => {
  const big = scanBuffer(1 << 16);
  big[1000] = 9;
  big[5000] = 9;
  const sub = big.subarray(2000, 9000);
  assert.equal(firstNonZero(sub), 3000);
  assert.equal(firstZeroQuantum(sub, 1000), 0);
  assert.equal(firstZeroQuantum(sub, 1000, 3000), 4000);
  // Quanta count from `from`: [1, 1001), [1001, 2001), [2001, 3001) holds byte 3000.
  assert.equal(firstDataQuantum(sub, 1000, 1), 2001);
});

Deno.test("a non-zero byte in the last of 64 bytes or in the tail is found", () => {
  for (const size of [64, 65, 127, 128, 129, 4096]) {
    for (const at of [0, 15, 16, 63, size - 1]) {
      if (at >= size) continue;
      const b = scanBuffer(size);
      b[at] = 0x80;
      assert.equal(firstNonZero(b), at, `size ${size} at ${at}`);
    }
  }
});

Deno.test("a quantum longer than the range is the whole range", () => {
  const b = scanBuffer(4096);
  assert.equal(firstZeroQuantum(b, 2 ** 40), 0);
  b[4095] = 1;
  assert.equal(firstZeroQuantum(b, 2 ** 40), 4096);
  assert.equal(firstDataQuantum(b, 2 ** 40), 0);
});

Deno.test("bad ranges and quanta are refused", () => {
  const b = scanBuffer(100);
  assert.throws(() => firstNonZero(b, 50, 40), RangeError);
  assert.throws(() => firstNonZero(b, 0, 101), RangeError);
  assert.throws(() => firstZeroQuantum(b, 0), RangeError);
  assert.throws(() => firstDataQuantum(b, 1.5), RangeError);
  assert.throws(() => scanBuffer(-1), RangeError);
});

Deno.test("scan buffers are page aligned and take O_DIRECT reads in place", async () => {
  const c = libc();
  assert.ok(c, "run with -A: FFI is needed for this test");
  const buf = scanBuffer(1 << 20);
  assert.equal(addressOf(buf)! % 4096n, 0n);
  await withTempDir(async (dir) => {
    const path = `${dir}/d.raw`;
    const data = new Uint8Array(1 << 20);
    data[777_777] = 42;
    await Deno.writeFile(path, data);
    const fd = c.open(path, O_RDONLY | O_DIRECT);
    try {
      await c.preadAll(fd, buf, 0);
    } finally {
      c.close(fd);
    }
    assert.equal(firstNonZero(buf), 777_777);
    assert.equal(firstZeroQuantum(buf, 65536), 0);
    assert.equal(firstDataQuantum(buf, 65536), 11 * 65536);
  });
});
