import { deepStrictEqual, ok, throws } from "node:assert/strict";
import { ExtentSet } from "../../src/core/extent.ts";
import { Prng } from "../_support/prng.ts";

const SIZE = 256;

/** The model: one boolean per byte. */
function bitsOf(set: ExtentSet, size = SIZE): boolean[] {
  const bits = new Array<boolean>(size).fill(false);
  for (const e of set.extents) for (let i = e.start; i < e.start + e.length; i++) bits[i] = true;
  return bits;
}

function randomSet(r: Prng): ExtentSet {
  const list = [];
  const n = r.int(8);
  for (let i = 0; i < n; i++) {
    const start = r.int(SIZE);
    list.push({ start, length: r.int(SIZE - start + 1) });
  }
  return ExtentSet.of(list);
}

function isNormalised(set: ExtentSet): boolean {
  const xs = set.extents;
  for (let i = 0; i < xs.length; i++) {
    if (xs[i].length <= 0) return false;
    if (i > 0 && xs[i - 1].start + xs[i - 1].length >= xs[i].start) return false;
  }
  return true;
}

Deno.test("of() sorts, merges overlapping and touching ranges, and drops empty ones", () => {
  const s = ExtentSet.of([
    { start: 10, length: 5 },
    { start: 0, length: 5 },
    { start: 5, length: 2 },
    { start: 12, length: 10 },
    { start: 40, length: 0 },
  ]);
  deepStrictEqual(s.toJSON(), [[0, 7], [10, 12]]);
  deepStrictEqual(s.bytes, 19);
});

Deno.test("invalid extents are refused", () => {
  throws(() => ExtentSet.of([{ start: -1, length: 2 }]), RangeError);
  throws(() => ExtentSet.range(0, 1.5), RangeError);
});

Deno.test("set operations agree with a per-byte model on 2000 seeded random pairs", () => {
  for (let seed = 1; seed <= 2000; seed++) {
    const r = new Prng(seed);
    const a = randomSet(r);
    const b = randomSet(r);
    const ma = bitsOf(a);
    const mb = bitsOf(b);
    const ops: Array<[string, ExtentSet, (x: boolean, y: boolean) => boolean]> = [
      ["union", a.union(b), (x, y) => x || y],
      ["intersection", a.intersection(b), (x, y) => x && y],
      ["difference", a.difference(b), (x, y) => x && !y],
    ];
    for (const [name, got, f] of ops) {
      ok(isNormalised(got), `seed ${seed}: ${name} not normalised: ${JSON.stringify(got)}`);
      deepStrictEqual(bitsOf(got), ma.map((x, i) => f(x, mb[i])), `seed ${seed}: ${name}`);
    }
    const size = r.int(SIZE + 1);
    deepStrictEqual(
      bitsOf(a.complement(size)),
      ma.map((x, i) => !x && i < size),
      `seed ${seed}: complement`,
    );
    deepStrictEqual(bitsOf(a.clip(size)), ma.map((x, i) => x && i < size), `seed ${seed}: clip`);
    for (let i = 0; i < SIZE; i++) ok(a.has(i) === ma[i], `seed ${seed}: has(${i})`);
    ok(a.union(b).equals(b.union(a)));
  }
});

Deno.test("chunks() covers the set exactly in pieces of at most max bytes, cut at multiples of max", () => {
  for (let seed = 1; seed <= 500; seed++) {
    const r = new Prng(seed);
    const a = randomSet(r);
    const max = 1 + r.int(40);
    const pieces = [...a.chunks(max)];
    for (const p of pieces) {
      ok(p.length > 0 && p.length <= max, `seed ${seed}: piece ${JSON.stringify(p)}`);
      ok(
        Math.floor(p.start / max) === Math.floor((p.start + p.length - 1) / max),
        `seed ${seed}: straddles`,
      );
    }
    ok(ExtentSet.of(pieces).equals(a), `seed ${seed}: pieces do not rebuild the set`);
    deepStrictEqual(pieces.reduce((n, p) => n + p.length, 0), a.bytes);
  }
});

Deno.test("roundOut() widens to whole blocks and fromBlocks() builds block ranges", () => {
  const s = ExtentSet.of([{ start: 5, length: 2 }, { start: 4100, length: 1 }]);
  deepStrictEqual(s.roundOut(4096).toJSON(), [[0, 8192]]);
  deepStrictEqual(ExtentSet.fromBlocks([0, 1, 3], 2).toJSON(), [[0, 4], [6, 2]]);
});

Deno.test("sets beyond 4 GiB keep exact offsets", () => {
  const big = ExtentSet.range(2 ** 40, 2 ** 21).union(ExtentSet.range(0, 512));
  deepStrictEqual(big.complement(2 ** 41).bytes, 2 ** 41 - 2 ** 21 - 512);
});
