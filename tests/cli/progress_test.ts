import { deepStrictEqual, strictEqual } from "node:assert/strict";
import {
  encodeRecord,
  END_RECORD,
  formatBytes,
  MachineProgress,
  percentOf,
  RecordDecoder,
} from "../../src/cli/progress.ts";
import { readMachineStream } from "../_support/helpers.ts";

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

Deno.test("a record is a 12-byte little-endian header (offset 0, length) and the ASCII payload", () => {
  const r = encodeRecord("Progress: 7");
  deepStrictEqual([...r.subarray(0, 12)], [0, 0, 0, 0, 0, 0, 0, 0, 11, 0, 0, 0]);
  strictEqual(new TextDecoder().decode(r.subarray(12)), "Progress: 7");
  deepStrictEqual([...END_RECORD], new Array(12).fill(0));
});

Deno.test("machine progress: 0 first, one record per whole percent, 100 and the end record", () => {
  const out: Uint8Array[] = [];
  const p = new MachineProgress((b) => out.push(b));
  const total = 1000;
  for (let done = 0; done <= total; done += 3) p.update(done, total);
  p.finish();
  const stream = readMachineStream(concat(out));
  strictEqual(stream.ended, true);
  deepStrictEqual(stream.percents, Array.from({ length: 101 }, (_, i) => i));
  deepStrictEqual(stream.percents[0], 0);
});

Deno.test("percentOf never says 100 before the end and counts empty work as done", () => {
  strictEqual(percentOf(999, 1000), 99);
  strictEqual(percentOf(1000, 1000), 100);
  strictEqual(percentOf(0, 0), 100);
  strictEqual(formatBytes(3 * 1024 ** 3), "3.00 GiB");
});

Deno.test("the progress reader follows xapi's framing across arbitrary chunk boundaries", () => {
  const records: number[] = [];
  const enc = (p: number) => {
    const body = new TextEncoder().encode(`Progress: ${p}`);
    const out = new Uint8Array(12 + body.length);
    new DataView(out.buffer).setUint32(8, body.length, true);
    out.set(body, 12);
    return out;
  };
  const parts = [0, 1, 50, 99, 100].map(enc);
  const all = new Uint8Array([...parts.flatMap((p) => [...p]), ...new Uint8Array(12)]);
  const r = new RecordDecoder();
  for (let i = 0; i < all.length; i += 5) records.push(...r.push(all.subarray(i, i + 5)));
  deepStrictEqual(records, [0, 1, 50, 99, 100]);
  strictEqual(r.ended, true);
});

Deno.test("the decoder refuses what xapi refuses: other payloads, an offset end record, a cut record", () => {
  const bad = (bytes: Uint8Array) => {
    let threw = false;
    try {
      const d = new RecordDecoder();
      d.push(bytes);
      d.finish();
    } catch {
      threw = true;
    }
    strictEqual(threw, true);
  };
  bad(encodeRecord("Progress: ten"));
  bad(encodeRecord("note: hello"));
  const offsetEnd = new Uint8Array(12);
  offsetEnd[0] = 1;
  bad(offsetEnd);
  bad(encodeRecord("Progress: 5").subarray(0, 20));
  const d = new RecordDecoder();
  deepStrictEqual(d.push(concat([encodeRecord("Progress: 5"), END_RECORD, new Uint8Array(3)])), [
    5,
  ]);
  strictEqual(d.trailing, 3);
});
