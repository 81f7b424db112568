import { deepStrictEqual, strictEqual } from "node:assert/strict";
import {
  decodeRecords,
  encodeRecord,
  END_RECORD,
  formatBytes,
  MachineProgress,
  percentOf,
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
  deepStrictEqual(decodeRecords(concat(out)).payloads[0], "Progress: 0");
});

Deno.test("percentOf never says 100 before the end and counts empty work as done", () => {
  strictEqual(percentOf(999, 1000), 99);
  strictEqual(percentOf(1000, 1000), 100);
  strictEqual(percentOf(0, 0), 100);
  strictEqual(formatBytes(3 * 1024 ** 3), "3.00 GiB");
});
