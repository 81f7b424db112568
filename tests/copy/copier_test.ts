import { Buffer } from "node:buffer";
import { deepStrictEqual, ok, rejects, strictEqual } from "node:assert/strict";
import {
  addCounts,
  copy,
  CopyAborted,
  type CopyStats,
  type CopyThreads,
  noCounts,
  runSteps,
  type StepCounts,
} from "../../src/copy/copier.ts";
import { DEFAULT_QUANTUM } from "../../src/copy/quantum.ts";
import { type Plan, planCopy, planWork } from "../../src/copy/plan.ts";
import { type Disk, DiskError, MemoryDisk } from "../../src/core/disk.ts";
import { type Extent, ExtentSet } from "../../src/core/extent.ts";
import { Prng } from "../_support/prng.ts";

/**
 * The seed's random disk: blocks of size/100 bytes, each allocated or not; allocated blocks hold
 * a mix of zero and non-zero bytes (in runs, so that whole quanta are zero), unallocated blocks
 * are zero.
 */
function randomDisk(r: Prng, size: number): { data: Uint8Array; allocation: ExtentSet } {
  const data = new Uint8Array(size);
  const bs = Math.max(1, Math.floor(size / 100) + r.int(64));
  const alloc: Extent[] = [];
  for (let start = 0; start < size; start += bs) {
    if (!r.chance(0.5)) continue;
    const length = Math.min(bs, size - start);
    alloc.push({ start, length });
    let i = start;
    while (i < start + length) {
      const run = 1 + r.int(300);
      const nonzero = r.chance(0.4);
      for (let k = i; k < Math.min(start + length, i + run); k++) {
        data[k] = nonzero ? 1 + r.int(255) : 0;
      }
      i += run;
    }
  }
  return { data, allocation: ExtentSet.of(alloc) };
}

/** A disk that records every range written or zeroed, on top of a MemoryDisk. */
class Recording implements Disk {
  touched: Extent[] = [];
  readonly zero?: (o: number, l: number) => Promise<void>;
  constructor(readonly inner: MemoryDisk) {
    if (inner.zero) {
      this.zero = (o, l) => {
        this.touched.push({ start: o, length: l });
        return inner.zero!(o, l);
      };
    }
  }
  get name() {
    return this.inner.name;
  }
  get size() {
    return this.inner.size;
  }
  read(o: number, b: Uint8Array) {
    return this.inner.read(o, b);
  }
  write(o: number, b: Uint8Array) {
    this.touched.push({ start: o, length: b.length });
    return this.inner.write(o, b);
  }
  flush() {
    return this.inner.flush();
  }
  close() {
    return this.inner.close();
  }
}

function checkStats(s: CopyStats, size: number, where: string) {
  strictEqual(
    s.dataBytes + s.zeroedBytes + s.skippedBytes + s.unchangedBytes,
    size,
    `${where}: every byte counted once`,
  );
  strictEqual(s.bytesRead, s.allocatedBytes, `${where}: read exactly the allocated bytes`);
  ok(s.bytesWritten >= s.dataBytes, `${where}: bytesWritten covers data`);
  ok(s.seconds >= 0 && s.throughput >= 0, where);
}

Deno.test("1000 seeded random disks copy identically in all four (ignore allocation, prezeroed) combinations", async () => {
  let totalWrites = 0;
  let totalSkipped = 0;
  for (let seed = 1; seed <= 1000; seed++) {
    const r = new Prng(seed);
    const size = r.int(20000);
    const { data, allocation } = randomDisk(r, size);
    const quantum = [16, 64, 512, 4096][r.int(4)];
    const chunkSize = quantum * (1 + r.int(8));
    const readAhead = 1 + r.int(4);
    for (const ignore of [true, false]) {
      for (const prezeroed of [true, false]) {
        const where = `seed ${seed} ignore=${ignore} prezeroed=${prezeroed}`;
        const src = MemoryDisk.from(data, { allocation });
        const canZero = r.chance(0.5);
        const dst = prezeroed
          ? new MemoryDisk(size, { canZero })
          : new MemoryDisk(r.fill(new Uint8Array(size)), { canZero });
        const stats = await copy(src, dst, {
          size,
          allocation: ignore ? undefined : allocation,
          prezeroed,
          quantum,
          chunkSize,
          readAhead,
        });
        ok(Buffer.from(dst.data).equals(Buffer.from(data)), `${where}: copy differs`);
        checkStats(stats, size, where);
        strictEqual(stats.allocatedBytes, ignore ? size : allocation.bytes, where);
        strictEqual(src.counters.bytesRead, stats.bytesRead, where);
        strictEqual(dst.counters.bytesWritten, stats.bytesWritten, where);
        strictEqual(dst.counters.writes, stats.writes, where);
        if (!prezeroed) strictEqual(stats.skippedBytes, 0, `${where}: nothing skipped`);
        if (prezeroed) {
          strictEqual(stats.zeroedBytes, 0, `${where}: nothing zeroed`);
          strictEqual(dst.counters.zeroCalls, 0, where);
        }
        if (canZero) {
          strictEqual(stats.bytesWritten, stats.dataBytes, `${where}: zeroes via zero()`);
        } else strictEqual(stats.bytesWritten, stats.dataBytes + stats.zeroedBytes, where);
        totalWrites += stats.writes;
        totalSkipped += stats.skippedBytes;
      }
    }
  }
  ok(totalWrites > 0 && totalSkipped > 0, "the random disks exercised both writing and skipping");
});

Deno.test("a prezeroed destination receives only whole quanta that hold data", async () => {
  const size = 1 << 20;
  const data = new Uint8Array(size);
  data[100] = 1; // quantum 0
  const q = DEFAULT_QUANTUM;
  data[5 * q + 7] = 2; // quantum 5
  const dst = new Recording(new MemoryDisk(size));
  const stats = await copy(MemoryDisk.from(data), dst, { size, prezeroed: true });
  deepStrictEqual(dst.touched, [{ start: 0, length: q }, { start: 5 * q, length: q }]);
  strictEqual(stats.skippedBytes, size - 2 * q);
});

Deno.test("nothing is written outside [0, size) of a larger destination", async () => {
  for (let seed = 1; seed <= 200; seed++) {
    const r = new Prng(seed);
    const size = r.int(5000);
    const extra = 1 + r.int(3000);
    const { data, allocation } = randomDisk(r, size + extra);
    const garbage = r.fill(new Uint8Array(size + extra));
    const dst = new Recording(MemoryDisk.from(garbage, { canZero: r.chance(0.5) }));
    await copy(MemoryDisk.from(data), dst, {
      size,
      allocation,
      prezeroed: r.chance(0.5),
      quantum: 64,
      chunkSize: 256,
    });
    for (const t of dst.touched) {
      ok(t.start + t.length <= size, `seed ${seed}: touched ${JSON.stringify(t)}`);
    }
    deepStrictEqual(
      dst.inner.data.subarray(size),
      garbage.subarray(size),
      `seed ${seed}: tail changed`,
    );
  }
});

Deno.test("unchanged ranges (-base) are neither read nor written, with or without -prezeroed", async () => {
  for (let seed = 1; seed <= 300; seed++) {
    const r = new Prng(seed);
    const size = 64 * (1 + r.int(200));
    const block = 64;
    const base = r.fill(new Uint8Array(size));
    const src = base.slice();
    const changed: Extent[] = [];
    for (let b = 0; b < size / block; b++) {
      if (!r.chance(0.3)) continue;
      changed.push({ start: b * block, length: block });
      // A changed block may become zero: the copy must still land it (no zero skipping).
      if (r.chance(0.5)) src.fill(0, b * block, (b + 1) * block);
      else r.fill(src.subarray(b * block, (b + 1) * block));
    }
    const unchanged = ExtentSet.of(changed).complement(size);
    const srcDisk = MemoryDisk.from(src);
    const dst = new Recording(MemoryDisk.from(base, { canZero: r.chance(0.5) }));
    const stats = await copy(srcDisk, dst, {
      size,
      prezeroed: r.chance(0.5),
      unchanged,
      quantum: 16,
      chunkSize: 128,
    });
    ok(Buffer.from(dst.inner.data).equals(Buffer.from(src)), `seed ${seed}: copy differs`);
    strictEqual(stats.unchangedBytes, unchanged.bytes, `seed ${seed}`);
    strictEqual(stats.bytesRead, size - unchanged.bytes, `seed ${seed}`);
    ok(
      ExtentSet.of(dst.touched).intersection(unchanged).isEmpty,
      `seed ${seed}: wrote unchanged bytes`,
    );
  }
});

Deno.test("a failing source read is reported with the disk name, role and offset", async () => {
  const src = new MemoryDisk(1 << 20, { name: "/dev/src" });
  src.read = (offset: number) =>
    offset >= 512 * 1024 ? Promise.reject(new Error("Input/output error")) : Promise.resolve();
  const dst = new MemoryDisk(1 << 20, { name: "/dev/dst" });
  await rejects(copy(src, dst, { size: 1 << 20, prezeroed: false, chunkSize: 65536 }), (e) => {
    ok(e instanceof DiskError);
    strictEqual(e.role, "source");
    strictEqual(e.offset, 512 * 1024);
    strictEqual(e.message, "cannot read /dev/src at offset 524288: Input/output error");
    return true;
  });
  // Everything before the failure landed; nothing at or after it.
  ok(dst.counters.bytesWritten <= 512 * 1024);
});

Deno.test("a failing destination write is reported as a destination error with its offset", async () => {
  const src = MemoryDisk.filled(1 << 20, 9);
  const dst = new MemoryDisk(1 << 20, { name: "/dev/dst" });
  dst.write = (offset: number) =>
    offset >= 65536 ? Promise.reject(new Error("No space left on device")) : Promise.resolve();
  await rejects(copy(src, dst, { size: 1 << 20, prezeroed: false, chunkSize: 65536 }), (e) => {
    ok(e instanceof DiskError);
    strictEqual(e.role, "destination");
    strictEqual(e.offset, 65536);
    return true;
  });
});

Deno.test("a destination smaller than size is refused before anything is written", async () => {
  const dst = new MemoryDisk(1000);
  await rejects(copy(MemoryDisk.filled(2000, 1), dst, { size: 2000, prezeroed: false }), (e) => {
    ok(e instanceof DiskError && e.role === "destination");
    return true;
  });
  strictEqual(dst.counters.writes, 0);
});

Deno.test("an aborted copy stops between steps with CopyAborted naming the offset", async () => {
  const ac = new AbortController();
  const dst = new MemoryDisk(1 << 20);
  await rejects(
    copy(MemoryDisk.filled(1 << 20, 3), dst, {
      size: 1 << 20,
      prezeroed: false,
      chunkSize: 65536,
      signal: ac.signal,
      onProgress: (done) => {
        if (done >= 3 * 65536) ac.abort("SIGTERM");
      },
    }),
    (e) => e instanceof CopyAborted && e.offset === 3 * 65536,
  );
  strictEqual(dst.counters.bytesWritten, 3 * 65536);
});

Deno.test("progress rises monotonically from 0 to the total work", async () => {
  const seen: number[] = [];
  let total = -1;
  await copy(MemoryDisk.filled(1 << 20, 1), new MemoryDisk(1 << 20), {
    size: 1 << 20,
    allocation: ExtentSet.range(0, 300000),
    prezeroed: false,
    chunkSize: 65536,
    onProgress: (d, t) => {
      seen.push(d);
      total = t;
    },
  });
  strictEqual(seen[0], 0);
  strictEqual(seen[seen.length - 1], total);
  strictEqual(total, 1 << 20);
  for (let i = 1; i < seen.length; i++) ok(seen[i] >= seen[i - 1]);
});

/** A MemoryDisk that says zeroing it is cheap, as a file or an offloading device does. */
class CheapZero extends Recording {
  readonly zeroIsCheap = true;
  zeroCalls: Extent[] = [];
  constructor(inner: MemoryDisk) {
    super(inner);
    const z = this.zero!;
    (this as { zero?: (o: number, l: number) => Promise<void> }).zero = (o, l) => {
      this.zeroCalls.push({ start: o, length: l });
      return z(o, l);
    };
  }
}

Deno.test("a cheaply zeroed destination is zeroed in one call, then gets only non-zero quanta", async () => {
  for (let seed = 1; seed <= 300; seed++) {
    const r = new Prng(seed);
    const size = 1 + r.int(20000);
    const { data, allocation } = randomDisk(r, size);
    const quantum = [16, 64, 512][r.int(3)];
    const ignore = r.chance(0.3);
    const dst = new CheapZero(MemoryDisk.from(r.fill(new Uint8Array(size)), { canZero: true }));
    const stats = await copy(MemoryDisk.from(data, { allocation }), dst, {
      size,
      allocation: ignore ? undefined : allocation,
      prezeroed: false,
      quantum,
      chunkSize: quantum * (1 + r.int(8)),
      readAhead: 1 + r.int(4),
      writeBehind: 1 + r.int(4),
    });
    const where = `seed ${seed}`;
    ok(Buffer.from(dst.inner.data).equals(Buffer.from(data)), `${where}: copy differs`);
    checkStats(stats, size, where);
    deepStrictEqual(dst.zeroCalls, [{ start: 0, length: size }], where);
    strictEqual(stats.zeroCalls, 1, where);
    strictEqual(stats.skippedBytes, 0, `${where}: nothing is left unwritten`);
    // Every write holds whole quanta with at least one non-zero byte.
    for (const t of dst.touched.slice(1)) {
      const first = Math.floor(t.start / quantum) * quantum;
      for (let q = first; q < t.start + t.length; q += quantum) {
        const end = Math.min(size, q + quantum);
        ok(data.subarray(q, end).some((b) => b !== 0), `${where}: wrote a zero quantum at ${q}`);
      }
    }
  }
});

Deno.test("a cheaply zeroed destination is not zeroed wholesale when prezeroed or with a base", async () => {
  const size = 1 << 16;
  const data = new Uint8Array(size).fill(7);
  const a = new CheapZero(new MemoryDisk(size, { canZero: true }));
  await copy(MemoryDisk.from(data), a, { size, prezeroed: true, chunkSize: 4096 });
  strictEqual(a.zeroCalls.length, 0);
  const b = new CheapZero(MemoryDisk.from(data, { canZero: true }));
  await copy(MemoryDisk.from(data), b, {
    size,
    prezeroed: false,
    unchanged: ExtentSet.range(0, 4096),
    chunkSize: 4096,
  });
  ok(b.zeroCalls.every((z) => z.length < size), "only holes are zeroed with a base");
});

Deno.test("several reads and writes in flight still land every byte once, in any completion order", async () => {
  // Writes that finish in a scrambled order (random delays) must not change the result.
  for (let seed = 1; seed <= 40; seed++) {
    const r = new Prng(seed);
    const size = 4096 * (1 + r.int(64));
    const { data, allocation } = randomDisk(r, size);
    const inner = MemoryDisk.from(r.fill(new Uint8Array(size)));
    const slow: Disk = {
      name: "slow",
      size,
      read: (o, b) => inner.read(o, b),
      write: (o, b) => {
        const copyOf = b.slice();
        return new Promise((res) => setTimeout(() => res(inner.write(o, copyOf)), r.int(3)));
      },
      flush: () => Promise.resolve(),
      close: () => Promise.resolve(),
    };
    const seen: number[] = [];
    await copy(MemoryDisk.from(data, { allocation }), slow, {
      size,
      allocation,
      prezeroed: false,
      chunkSize: 4096,
      readAhead: 1 + r.int(6),
      writeBehind: 1 + r.int(6),
      onProgress: (d) => seen.push(d),
    });
    ok(Buffer.from(inner.data).equals(Buffer.from(data)), `seed ${seed}`);
    for (let i = 1; i < seen.length; i++) ok(seen[i] >= seen[i - 1], `seed ${seed}: progress`);
  }
});

/**
 * CopyThreads in this thread: `count` more runs of the copier's steps over the same disks, claiming
 * segments from one counter, interleaved by their awaits (the contract threads.ts keeps with
 * Workers).
 */
function inThreadLanes(
  src: Disk,
  dst: Disk,
  count: number,
  segment: number,
  options: { quantum: number; chunkSize: number; readAhead: number },
  /** Every write by these threads fails. */
  failing = false,
): CopyThreads & { claimed: number[] } {
  let next = 0;
  let stopped = false;
  let ran = false;
  const claimed: number[] = [];
  const done = new Array(count).fill(0);
  const claim = () => {
    if (stopped) return undefined;
    claimed.push(next);
    return next++;
  };
  const signal = {
    get aborted() {
      return stopped;
    },
    reason: "stopped",
  };
  return {
    segment,
    startAfter: segment,
    claimed,
    claim,
    progress: () => done.reduce((a, b) => a + b, 0),
    started: () => (ran ? count : 0),
    stop: () => {
      stopped = true;
    },
    drain: () => {},
    run(run: Plan): Promise<StepCounts> {
      ran = true;
      const threads = Array.from({ length: count }, (_, i) => {
        const d: Disk = !failing ? dst : {
          name: dst.name,
          size: dst.size,
          write: () => Promise.reject(new Error("injected")),
          read: (o, b) => dst.read(o, b),
          flush: () => dst.flush(),
          close: () => dst.close(),
        };
        return runSteps(src, d, run, { ...options, signal }, { segment, claim }, (n) => {
          done[i] += n;
        });
      });
      return Promise.allSettled(threads).then((results) => {
        const sum = noCounts();
        for (const r of results) {
          if (r.status === "rejected") throw r.reason;
          addCounts(sum, r.value);
        }
        return sum;
      });
    },
  };
}

Deno.test("300 seeded random disks copy identically when 1 to 4 threads claim segments of the work", async () => {
  let othersWork = 0;
  for (let seed = 1; seed <= 300; seed++) {
    const r = new Prng(seed);
    const size = 4096 + r.int(200000);
    const { data, allocation } = randomDisk(r, size);
    const quantum = [16, 512, 4096][r.int(3)];
    const options = { quantum, chunkSize: quantum * (1 + r.int(8)), readAhead: 1 + r.int(4) };
    const prezeroed = r.chance(0.5);
    const canZero = r.chance(0.5);
    const fresh = () =>
      prezeroed
        ? new MemoryDisk(size, { canZero })
        : new MemoryDisk(new Prng(seed + 7).fill(new Uint8Array(size)), { canZero });
    const where = `seed ${seed} prezeroed=${prezeroed} canZero=${canZero}`;
    const alone = fresh();
    const single = await copy(MemoryDisk.from(data, { allocation }), alone, {
      size,
      allocation,
      prezeroed,
      ...options,
    });
    const src = MemoryDisk.from(data, { allocation });
    const dst = fresh();
    // Segments small enough that every thread gets some (the copier shares only when there are
    // at least two).
    const segment = Math.max(1, Math.floor(size / (2 + r.int(20))));
    const threads = inThreadLanes(src, dst, 1 + r.int(3), segment, options);
    const seen: number[] = [];
    const shared = await copy(src, dst, {
      size,
      allocation,
      prezeroed,
      ...options,
      threads,
      onProgress: (d) => seen.push(d),
    });
    ok(Buffer.from(dst.data).equals(Buffer.from(data)), `${where}: copy differs`);
    checkStats(shared, size, where);
    for (
      const k of [
        "reads",
        "bytesRead",
        "writes",
        "bytesWritten",
        "zeroCalls",
        "dataBytes",
        "zeroedBytes",
        "skippedBytes",
      ] as const
    ) {
      strictEqual(shared[k], single[k], `${where}: ${k} as with one thread`);
    }
    strictEqual(seen[seen.length - 1], planWork(planCopy({ size, allocation, prezeroed })), where);
    for (let i = 1; i < seen.length; i++) ok(seen[i] >= seen[i - 1], `${where}: progress`);
    // Segments were claimed in order, each once.
    deepStrictEqual(threads.claimed, threads.claimed.map((_, i) => i), where);
    othersWork += threads.progress();
  }
  ok(othersWork > 0, "the other threads did part of the work");
});

/** 1 MiB, mostly zeroes: the first 4 KiB of every 64 KiB holds data (threads pay off there). */
function mostlyZero(): MemoryDisk {
  const data = new Uint8Array(1 << 20);
  for (let at = 0; at < data.length; at += 65536) data.fill(5, at, at + 4096);
  return MemoryDisk.from(data);
}

Deno.test("a thread that fails stops the others and the copy reports its error", async () => {
  const size = 1 << 20;
  const src = mostlyZero();
  const dst = new MemoryDisk(size);
  const threads = inThreadLanes(src, dst, 2, 65536, {
    quantum: 4096,
    chunkSize: 16384,
    readAhead: 2,
  }, true);
  await rejects(
    copy(src, dst, { size, prezeroed: true, quantum: 4096, chunkSize: 16384, threads }),
    (e) => e instanceof Error && /injected/.test(e.message),
  );
  ok(!Buffer.from(dst.data).equals(Buffer.from(src.data)), "the failing thread's part is missing");
});

Deno.test("more threads start only when most of what is read is zeroes skipped", async () => {
  const options = { quantum: 4096, chunkSize: 16384, readAhead: 2 };
  for (const [src, expected] of [[mostlyZero(), true], [MemoryDisk.filled(1 << 20, 7), false]]) {
    const dst = new MemoryDisk(1 << 20);
    const threads = inThreadLanes(src as MemoryDisk, dst, 1, 65536, options);
    const stats = await copy(src as MemoryDisk, dst, {
      size: 1 << 20,
      prezeroed: true,
      threads,
      ...options,
    });
    strictEqual(threads.progress() > 0, expected);
    strictEqual(stats.threads, expected ? 2 : 1);
  }
});

Deno.test("an aborted copy stops every thread", async () => {
  const size = 1 << 20;
  const src = mostlyZero();
  const dst = new MemoryDisk(size);
  const ac = new AbortController();
  const threads = inThreadLanes(src, dst, 2, 65536, {
    quantum: 4096,
    chunkSize: 16384,
    readAhead: 2,
  });
  await rejects(
    copy(src, dst, {
      size,
      prezeroed: true,
      quantum: 4096,
      chunkSize: 16384,
      threads,
      signal: ac.signal,
      onProgress: (done) => {
        if (done >= size / 4) ac.abort("SIGTERM");
      },
    }),
    (e) => e instanceof CopyAborted,
  );
  ok(dst.counters.bytesWritten < 16 * 4096, "not all the data was written");
});
