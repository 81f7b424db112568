import assert from "node:assert/strict";
import { ChunkedDisk, encodeFrameHeader, MAX_FRAME } from "../../src/http/chunked_disk.ts";
import { DEFAULT_HTTP_TIMEOUT_S, openRemote } from "../../src/http/remote.ts";
import type { ByteStream } from "../../src/http/stream.ts";
import { copy } from "../../src/copy/copier.ts";
import { DiskError, MemoryDisk } from "../../src/core/disk.ts";
import { ExtentSet } from "../../src/core/extent.ts";
import { Prng } from "../_support/prng.ts";
import { XapiSide } from "../_support/xapi_http.ts";

/** A stream that keeps what is written, split at random write sizes. */
class Recorder implements ByteStream {
  chunks: Uint8Array[] = [];
  get length(): number {
    return this.chunks.reduce((n, c) => n + c.length, 0);
  }
  ended = false;
  closed = false;
  constructor(readonly r: Prng) {}
  read(): Promise<number | null> {
    return Promise.resolve(null);
  }
  write(buf: Uint8Array): Promise<number> {
    const n = Math.min(buf.length, 1 + this.r.int(256 * 1024));
    this.chunks.push(buf.slice(0, n));
    return Promise.resolve(n);
  }
  closeWrite(): Promise<void> {
    this.ended = true;
    return Promise.resolve();
  }
  close(): void {
    this.closed = true;
  }
  /** The frames, as xapi's receiver reads them, applied onto `into`. */
  apply(into: Uint8Array): { frames: number; end: boolean } {
    const b = new Uint8Array(this.length);
    let o = 0;
    for (const c of this.chunks) {
      b.set(c, o);
      o += c.length;
    }
    const v = new DataView(b.buffer);
    let at = 0;
    let frames = 0;
    while (at + 12 <= b.length) {
      const offset = Number(v.getBigUint64(at, true));
      const length = v.getUint32(at + 8, true);
      at += 12;
      if (offset === 0 && length === 0) return { frames, end: at === b.length };
      assert.ok(offset % 512 === 0 && length % 512 === 0 && length > 0 && length <= MAX_FRAME);
      into.set(b.subarray(at, at + length), offset);
      at += length;
      frames++;
    }
    return { frames, end: false };
  }
}

Deno.test("frame header: u64 LE offset, u32 LE length", () => {
  assert.deepEqual(
    [...encodeFrameHeader(0x1_0000_0200, 0x0020_0000)],
    [0, 2, 0, 0, 1, 0, 0, 0, 0, 0, 0x20, 0],
  );
});

for (const seed of [1, 2, 3]) {
  for (const prezeroed of [false, true]) {
    Deno.test(`the copier into a chunked import (seed ${seed}${prezeroed ? ", -prezeroed" : ""}): the receiver's image equals the source`, async () => {
      const r = new Prng(seed);
      const size = (64 + r.int(64)) * 64 * 1024;
      const src = new Uint8Array(size);
      const runs = [];
      for (let i = 0; i < 5; i++) {
        const len = (1 + r.int(300)) * 512;
        const at = r.int((size - len) / 512) * 512;
        r.fill(src.subarray(at, at + len));
        runs.push({ start: at, length: len });
      }
      const stream = new Recorder(r);
      const dst = new ChunkedDisk(stream, "http://h/x", size, { timeoutMs: 0 });
      const stats = await copy(MemoryDisk.from(src), dst, {
        size,
        allocation: ExtentSet.of(runs),
        prezeroed,
      });
      await dst.flush();
      assert.ok(stream.ended);
      const image = new Uint8Array(size).fill(prezeroed ? 0 : 0xee);
      const { end } = stream.apply(image);
      assert.ok(end, "the stream ends with the 12 zero bytes and nothing after");
      assert.deepEqual(image, src);
      if (prezeroed) assert.equal(stats.zeroedBytes, 0);
    });
  }
}

Deno.test("unaligned or out-of-range writes and reads are refused before anything is sent", async () => {
  const stream = new Recorder(new Prng(9));
  const d = new ChunkedDisk(stream, "http://h/x", 1 << 20, { timeoutMs: 0 });
  await assert.rejects(() => d.write(100, new Uint8Array(512)), /sector boundaries/);
  await assert.rejects(() => d.write(0, new Uint8Array(100)), /sector boundaries/);
  await assert.rejects(() => d.zero(1 << 20, 512), /outside \[0, 1048576\)/);
  await assert.rejects(() => d.read(0, new Uint8Array(512)), /cannot be read back/);
  assert.equal(stream.length, 0);
  await d.write(0, new Uint8Array(0));
  assert.equal(
    stream.length,
    0,
    "no frame of length 0 at offset 0 (it would end the stream)",
  );
  await d.flush();
  await assert.rejects(() => d.write(0, new Uint8Array(512)), /the stream has ended/);
  const e = await d.read(0, new Uint8Array(512)).catch((x) => x);
  assert.ok(e instanceof DiskError && e.role === "destination");
});

Deno.test(`a server that never answers fails after the default ${DEFAULT_HTTP_TIMEOUT_S} s`, async () => {
  const srv = XapiSide.start({ kind: "stall-head" });
  // The default timer fires at once: the test proves it is armed, not how long a minute is.
  const real = globalThis.setTimeout;
  const armed: number[] = [];
  globalThis.setTimeout = ((fn: () => void, ms?: number) => {
    if (ms === DEFAULT_HTTP_TIMEOUT_S * 1000) {
      armed.push(ms);
      return real(fn, 50);
    }
    return real(fn, ms);
  }) as typeof setTimeout;
  try {
    await assert.rejects(
      () =>
        openRemote(`http://127.0.0.1:${srv.port}/x?session_id=s`, 1 << 20, {
          tls: { verify: false },
        }),
      (e: Error) => {
        assert.match(
          e.message,
          /cannot open http:\/\/127\.0\.0\.1:\d+\/x\?session_id=<redacted>: no response within 60 s/,
        );
        return true;
      },
    );
    assert.ok(armed.length >= 1);
  } finally {
    globalThis.setTimeout = real;
    await srv.stop();
  }
});
