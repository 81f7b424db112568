/**
 * NBD servers that lie: every field a server sends is untrusted. For each lie of the hostile
 * server (`tests/_support/hostile_nbd.ts`), used as the source and, where it applies, as the
 * destination, sparse_dd exits 5 with one stderr line naming the URI (and the offset for a
 * request), within its timeout and a small heap, and writes nothing outside `[0, size)`.
 */
import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { type Lie, LIES, startHostileNbd } from "../_support/hostile_nbd.ts";
import { MAIN, sameBytes, withTempDir, xapiCommand } from "../_support/helpers.ts";
import { Prng } from "../_support/prng.ts";

const KiB = 1024;
const SIZE = 2 * 1024 * KiB + 3 * 4096;
const PAST = 64 * KiB;
const SENTINEL = 0xee;

/**
 * Lies a source cannot tell from the truth, or that are about writes: the copy must succeed
 * and be exact.
 */
const HONEST: ReadonlySet<Lie> = new Set<Lie>([
  "none",
  "export-size-odd",
  "export-size-zero",
  "extents-1-byte-many",
  "read-only",
  "data-chunk-for-write",
  "write-error",
]);

/** Lies found during the handshake: the message names the URI but no offset. */
const HANDSHAKE: ReadonlySet<Lie> = new Set<Lie>([
  "greeting-oldstyle",
  "no-fixed-newstyle",
  "export-size-huge",
  "size-not-multiple-of-minimum",
  "max-block-1",
  "max-block-below-minimum",
  "minimum-block-not-power-of-2",
  "option-reply-huge",
  "option-reply-wrong-option",
  "no-export-info",
  "export-info-bad-length",
  "read-only",
]);

/** Lies about reads and block status do not matter to a destination. */
const DESTINATION_LIES: ReadonlySet<Lie> = new Set<Lie>([
  "none",
  ...HANDSHAKE,
  "unknown-cookie",
  "reply-not-in-flight",
  "trickle",
  "data-chunk-for-write",
  "write-error",
]);

/** Content with holes, zero runs inside data, and data in the last sector. */
function content(seed: number): Uint8Array {
  const r = new Prng(seed);
  const b = new Uint8Array(SIZE);
  for (let i = 0; i < 12; i++) {
    const n = 1 + r.int(100 * KiB);
    const at = r.int(SIZE - n);
    r.fill(b.subarray(at, at + n));
    b.fill(0, at + (n >> 2), at + (n >> 1));
  }
  r.fill(b.subarray(SIZE - 300));
  return b;
}

/** sparse_dd as the binary runs, with a small heap: running out of memory is a failure. */
async function sparseDd(args: string[]) {
  const out = await xapiCommand(Deno.execPath(), [
    "run",
    "-A",
    "--quiet",
    "--no-lock",
    "--v8-flags=--max-old-space-size=160",
    MAIN,
    ...args,
    "-nbd-timeout",
    "5",
    "-config",
    "/nonexistent/sparse_dd.conf",
  ], { timeoutMs: 60_000 }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

/** What one failing run must show: exit 5 and one line naming the server (and an offset). */
function checkFailure(lie: Lie, role: string, uri: string, size: number, r: {
  code: number;
  stderr: string;
}) {
  const what = `${lie} as ${role}: ${r.stderr}`;
  strictEqual(r.code, 5, what);
  const lines = r.stderr.split("\n").filter((l) => l.trim() !== "");
  strictEqual(lines.length, 1, what);
  ok(lines[0].includes(uri), `${what}: the line does not name ${uri}`);
  if (!HANDSHAKE.has(lie)) {
    const m = / at offset (\d+)/.exec(lines[0]);
    ok(m, `${what}: no offset`);
    ok(Number(m[1]) >= 0 && Number(m[1]) < size, `${what}: offset outside the disk`);
  }
}

async function asSource(dir: string, lie: Lie): Promise<void> {
  const data = content(lie.length * 31 + lie.charCodeAt(0));
  const srv = await startHostileNbd({ data: data.slice(), lie });
  try {
    const size = lie === "export-size-odd" ? SIZE - 1 : lie === "export-size-zero" ? 0 : SIZE;
    const out = `${dir}/${lie}.raw`;
    // A destination longer than the copy, full of bytes that must survive past the size.
    await Deno.writeFile(out, new Uint8Array(SIZE + PAST).fill(SENTINEL));
    const r = await sparseDd(["-src", srv.uri, "-dest", out]);
    const back = await Deno.readFile(out);
    ok(back.subarray(size).every((b) => b === SENTINEL), `${lie}: bytes past ${size} changed`);
    if (HONEST.has(lie)) {
      strictEqual(r.code, 0, `${lie} as source: ${r.stderr}`);
      ok(back.subarray(0, size).every((b, i) => b === data[i]), `${lie}: content differs`);
      return;
    }
    checkFailure(lie, "source", srv.uri, size, r);
  } finally {
    await srv.close();
  }
}

async function asDestination(dir: string, lie: Lie): Promise<void> {
  const src = `${dir}/${lie}.src.raw`;
  const data = content(lie.length * 17 + 5);
  await Deno.writeFile(src, data);
  const target = new Uint8Array(SIZE + PAST).fill(SENTINEL);
  const srv = await startHostileNbd({ data: target, lie });
  try {
    const r = await sparseDd(["-src", src, "-dest", srv.uri, "-size", String(SIZE)]);
    for (const w of srv.writes) {
      ok(w.offset + w.length <= SIZE, `${lie}: a request reached past -size: ${JSON.stringify(w)}`);
    }
    ok(target.subarray(SIZE).every((b) => b === SENTINEL), `${lie}: bytes past -size changed`);
    if (lie === "none") {
      strictEqual(r.code, 0, r.stderr);
      ok(target.subarray(0, SIZE).every((b, i) => b === data[i]), "content differs");
      return;
    }
    checkFailure(lie, "destination", srv.uri, SIZE, r);
  } finally {
    await srv.close();
  }
}

/** Runs `fn` over `items`, `n` at a time. */
async function pool<T>(items: readonly T[], n: number, fn: (t: T) => Promise<void>) {
  const queue = [...items];
  const failures: unknown[] = [];
  await Promise.all(Array.from({ length: n }, async () => {
    for (let t = queue.shift(); t !== undefined; t = queue.shift()) {
      await fn(t).catch((e) => failures.push(e));
    }
  }));
  if (failures.length > 0) {
    throw new Error(failures.map((e) => (e instanceof Error ? e.message : String(e))).join("\n\n"));
  }
}

Deno.test("every lie of a hostile NBD source ends in exit 5 naming the URI and offset, nothing written past the size", async () => {
  await withTempDir(async (dir) => {
    await pool(LIES, 4, (lie) => asSource(dir, lie));
  });
});

Deno.test("every lie of a hostile NBD destination ends in exit 5, no request reaching past -size", async () => {
  await withTempDir(async (dir) => {
    await pool([...DESTINATION_LIES], 4, (lie) => asDestination(dir, lie));
  });
});

Deno.test("the hostile server's honest mode copies exactly, as a source and as a destination", async () => {
  // The fixture itself must be right for its lies to mean anything.
  await withTempDir(async (dir) => {
    const data = content(99);
    const srv = await startHostileNbd({ data: data.slice() });
    try {
      const r = await sparseDd(["-src", srv.uri, "-dest", `${dir}/a.raw`]);
      strictEqual(r.code, 0, r.stderr);
      await Deno.writeFile(`${dir}/want.raw`, data);
      ok(await sameBytes(`${dir}/want.raw`, `${dir}/a.raw`));
      ok((srv.counts.status ?? 0) > 0, "block status was not used");
      const dst = await startHostileNbd({ data: new Uint8Array(SIZE).fill(1) });
      try {
        const w = await sparseDd(["-src", `${dir}/want.raw`, "-dest", dst.uri]);
        strictEqual(w.code, 0, w.stderr);
        deepStrictEqual(dst.data, data);
      } finally {
        await dst.close();
      }
    } finally {
      await srv.close();
    }
  });
});

Deno.test("a stray reply after the last read still fails the copy (exit 5), though every byte arrived", async () => {
  await withTempDir(async (dir) => {
    // One data region: one read, whose repeated reply comes when nothing is in flight.
    const data = new Uint8Array(SIZE);
    data.fill(9, 8192, 12288);
    const srv = await startHostileNbd({ data, lie: "reply-not-in-flight" });
    try {
      const r = await sparseDd(["-src", srv.uri, "-dest", `${dir}/o.raw`]);
      strictEqual(srv.counts.read, 1);
      strictEqual(r.code, 5, r.stderr);
      ok(r.stderr.includes(srv.uri) && /reply for unknown cookie/.test(r.stderr), r.stderr);
    } finally {
      await srv.close();
    }
  });
});
