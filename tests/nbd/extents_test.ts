import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { appendExtents, coarsen, type DataRange, type Run } from "../../src/nbd/extents.ts";
import { blockLimits } from "../../src/nbd/protocol.ts";
import { Prng } from "../_support/prng.ts";

function payload(extents: Array<[number, number]>): Uint8Array {
  const b = new Uint8Array(4 + 8 * extents.length);
  const v = new DataView(b.buffer);
  v.setUint32(0, 1);
  extents.forEach(([length, flags], i) => {
    v.setUint32(4 + 8 * i, length);
    v.setUint32(8 + 8 * i, flags);
  });
  return b;
}

Deno.test("extents are merged by kind and clipped to the request; the last may pass its end", () => {
  const runs: Run[] = [];
  const n = appendExtents(
    payload([[512, 0], [512, 0], [1024, 3], [4096, 1], [8192, 0]]),
    4096,
    4096 + 10_000,
    1 << 20,
    runs,
  );
  strictEqual(n, 10_000);
  deepStrictEqual(runs, [
    { length: 1024, data: true },
    { length: 5120, data: false },
    { length: 3856, data: true },
  ]);
});

Deno.test("zero-length extents, extents after the request's end, and extents past the export are protocol errors", () => {
  throws(() => appendExtents(payload([[0, 0]]), 0, 4096, 8192, []), /zero length/);
  throws(
    () => appendExtents(payload([[8192, 0], [512, 0]]), 0, 4096, 1 << 20, []),
    /beyond the end of the request/,
  );
  throws(
    () => appendExtents(payload([[8192, 0]]), 4096, 8192, 8192, []),
    /beyond the end of the export/,
  );
  throws(() => appendExtents(new Uint8Array(8), 0, 4096, 8192, []), /bad length/);
});

Deno.test("coarsen keeps every data byte and at most the asked number of ranges", () => {
  for (let seed = 1; seed <= 100; seed++) {
    const r = new Prng(seed);
    const ranges: DataRange[] = [];
    let at = 0;
    for (let i = 1 + r.int(3000); i > 0; i--) {
      at += r.int(5000);
      const length = 1 + r.int(5000);
      ranges.push({ start: at, length });
      at += length + 1;
    }
    const max = 1 + r.int(200);
    const out = coarsen(ranges, max);
    ok(out.length <= max, `seed ${seed}: ${out.length} > ${max}`);
    let j = 0;
    for (const x of ranges) {
      while (out[j].start + out[j].length < x.start + x.length) j++;
      ok(out[j].start <= x.start, `seed ${seed}: lost [${x.start}, +${x.length})`);
    }
  }
});

Deno.test("block size constraints the spec forbids are refused; none stated means 1/4096/32 MiB", () => {
  deepStrictEqual(blockLimits(undefined, 1000), {
    minimum: 1,
    preferred: 4096,
    maximum: 32 * 1024 * 1024,
  });
  deepStrictEqual(blockLimits({ minimum: 512, preferred: 4096, maximum: 0xffffffff }, 1 << 20), {
    minimum: 512,
    preferred: 4096,
    maximum: 0xffffffff,
  });
  const bad: Array<[number, number, number, number]> = [
    [1, 4096, 1, 4096], // 1-byte maximum
    [4096, 4096, 512, 4096], // maximum below minimum
    [3000, 4096, 1 << 20, 3000], // minimum not a power of 2
    [1 << 17, 1 << 17, 1 << 20, 1 << 20], // minimum above 64 KiB
    [512, 256, 1 << 20, 4096], // preferred below minimum
    [512, 4096, 1000, 4096], // maximum not a multiple of the minimum
    [512, 4096, 2048, 4096], // maximum below preferred
    [4096, 4096, 1 << 20, 4096 + 100], // size not a multiple of the minimum
  ];
  for (const [minimum, preferred, maximum, size] of bad) {
    throws(
      () => blockLimits({ minimum, preferred, maximum }, size),
      /block size/,
      `${minimum}/${preferred}/${maximum}`,
    );
  }
});
