import { ok, strictEqual, throws } from "node:assert/strict";
import { Coverage } from "../../src/nbd/coverage.ts";
import { NbdProtocolError } from "../../src/nbd/protocol.ts";
import { Prng } from "../_support/prng.ts";

Deno.test("chunks that tile the request in any order make it complete", () => {
  for (let seed = 1; seed <= 300; seed++) {
    const r = new Prng(seed);
    const start = r.int(1 << 20);
    const cuts = new Set<number>([start, start + 1 + r.int(1 << 16)]);
    const end = Math.max(...cuts);
    for (let i = r.int(40); i > 0; i--) cuts.add(start + r.int(end - start));
    const points = [...cuts].sort((a, b) => a - b);
    const pieces = points.slice(1).map((to, i) => [points[i], to] as const);
    for (let i = pieces.length - 1; i > 0; i--) {
      const j = r.int(i + 1);
      [pieces[i], pieces[j]] = [pieces[j], pieces[i]];
    }
    const c = new Coverage(start, end);
    pieces.forEach(([a, b], i) => {
      ok(!c.complete || i === 0, `seed ${seed}: complete too early`);
      c.add(a, b);
    });
    ok(c.complete, `seed ${seed}`);
    strictEqual(c.bytes, end - start);
  }
});

Deno.test("a duplicate, overlapping, empty or outside chunk is a protocol error", () => {
  for (let seed = 1; seed <= 300; seed++) {
    const r = new Prng(seed);
    const c = new Coverage(0, 65536);
    const a = r.int(60000);
    const b = a + 1 + r.int(65536 - a - 1);
    c.add(a, b);
    // Any range sharing a byte with [a, b) overlaps.
    const x = r.int(b);
    const y = Math.max(x + 1, a + 1) + r.int(1000);
    throws(() => c.add(x, Math.min(65536, y)), NbdProtocolError, `seed ${seed}`);
  }
  const c = new Coverage(100, 200);
  throws(() => c.add(99, 150), /outside the request \[100, 200\)/);
  throws(() => c.add(150, 201), /outside the request/);
  throws(() => c.add(150, 150), /outside the request/);
  c.add(100, 150);
  throws(() => c.add(100, 150), /overlaps bytes already received/);
  strictEqual(c.bytes, 50);
  ok(!c.complete);
});

Deno.test("a reply in thousands of scattered pieces is refused, in-order pieces are not", () => {
  const scattered = new Coverage(0, 1 << 20);
  throws(() => {
    for (let i = 0; i < 1 << 19; i++) scattered.add(2 * i, 2 * i + 1);
  }, /disjoint pieces/);
  const inOrder = new Coverage(0, 1 << 20);
  for (let i = 0; i < 1 << 20; i += 7) inOrder.add(i, Math.min(1 << 20, i + 7));
  ok(inOrder.complete);
});
