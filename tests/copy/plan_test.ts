import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { ExtentSet } from "../../src/core/extent.ts";
import { claimedSteps, planCopy, planSteps, planWork, type Step } from "../../src/copy/plan.ts";
import { Prng } from "../_support/prng.ts";

function randomSet(r: Prng, size: number): ExtentSet {
  const list = [];
  for (let i = r.int(6); i > 0; i--) {
    const start = r.int(size + 1);
    list.push({ start, length: r.int(size - start + 1) });
  }
  return ExtentSet.of(list);
}

Deno.test("every byte of [0, size) is in exactly one of data, zero, skip, unchanged", () => {
  for (let seed = 1; seed <= 2000; seed++) {
    const r = new Prng(seed);
    const size = r.int(1000);
    const p = planCopy({
      size,
      allocation: r.chance(0.2) ? undefined : randomSet(r, size + 100),
      prezeroed: r.chance(0.5),
      unchanged: r.chance(0.5) ? randomSet(r, size) : undefined,
    });
    const parts = [p.data, p.zero, p.skip, p.unchanged];
    strictEqual(parts.reduce((n, s) => n + s.bytes, 0), size, `seed ${seed}`);
    const all = parts.reduce((a, b) => a.union(b));
    ok(all.equals(ExtentSet.range(0, size)), `seed ${seed}: parts do not cover [0, size)`);
    strictEqual(planWork(p), p.data.bytes + p.zero.bytes);
    const steps = [...planSteps(p, 1 + r.int(64), 1 + r.int(200))];
    for (let i = 1; i < steps.length; i++) {
      ok(steps[i].start > steps[i - 1].start, `seed ${seed}: order`);
    }
    ok(ExtentSet.of(steps.filter((s) => s.kind === "data")).equals(p.data));
    ok(ExtentSet.of(steps.filter((s) => s.kind === "zero")).equals(p.zero));
  }
});

Deno.test("a prezeroed destination skips holes and scans data; otherwise holes are zeroed", () => {
  const allocation = ExtentSet.range(0, 100);
  const pre = planCopy({ size: 1000, allocation, prezeroed: true });
  ok(pre.scan);
  strictEqual(pre.skip.bytes, 900);
  strictEqual(pre.zero.bytes, 0);
  const not = planCopy({ size: 1000, allocation, prezeroed: false });
  ok(!not.scan);
  strictEqual(not.zero.bytes, 900);
});

Deno.test("with a base the destination is not assumed zero outside the unchanged ranges", () => {
  const p = planCopy({
    size: 1000,
    allocation: ExtentSet.range(0, 100),
    prezeroed: true,
    unchanged: ExtentSet.range(500, 500),
  });
  ok(!p.scan);
  strictEqual(p.zero.bytes, 400);
  strictEqual(p.skip.bytes, 0);
});

Deno.test("a destination holding a base is never assumed zero, even when the base is of no use", () => {
  // -prezeroed -base B, B not comparable with the source (no `unchanged`): the destination
  // holds B's data, so every hole is zeroed and no zero run of the data is skipped.
  const p = planCopy({
    size: 1000,
    allocation: ExtentSet.range(0, 100),
    prezeroed: true,
    holdsBase: true,
  });
  ok(!p.scan);
  strictEqual(p.zero.bytes, 900);
  strictEqual(p.skip.bytes, 0);
  strictEqual(p.data.bytes, 100);
});

Deno.test("threads claiming segments in any interleaving take every step exactly once", () => {
  for (let seed = 1; seed <= 300; seed++) {
    const r = new Prng(seed);
    const size = 1 + r.int(100000);
    const plan = planCopy({ size, allocation: randomSet(r, size), prezeroed: r.chance(0.5) });
    const chunk = 1 + r.int(5000);
    const segment = 1 + r.int(20000);
    const all = [...planSteps(plan, chunk, chunk * 4)];
    let next = 0;
    const claim = () => next++;
    const threads = Array.from({ length: 1 + r.int(4) }, () => ({
      it: claimedSteps(planSteps(plan, chunk, chunk * 4), segment, claim),
      done: false,
    }));
    const taken: Step[] = [];
    // Advance a random thread at a time, as threads would.
    while (threads.some((l) => !l.done)) {
      const live = threads.filter((l) => !l.done);
      const thread = live[r.int(live.length)];
      const n = thread.it.next();
      if (n.done) thread.done = true;
      else taken.push(n.value);
    }
    taken.sort((a, b) => a.start - b.start);
    deepStrictEqual(taken, all, `seed ${seed}`);
  }
});

Deno.test("a thread stops claiming when told: claim returns undefined", () => {
  const plan = planCopy({ size: 10 << 20, prezeroed: false });
  let next = 0;
  const claim = () => (next < 2 ? next++ : undefined);
  const steps = [...claimedSteps(planSteps(plan, 1 << 20), 2 << 20, claim)];
  strictEqual(steps.length, 4);
  strictEqual(steps[3].start, 3 << 20);
});
