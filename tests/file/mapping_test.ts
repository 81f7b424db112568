import { Buffer } from "node:buffer";
import { ok, strictEqual } from "node:assert/strict";
import { libc, O_RDONLY } from "../../src/file/libc.ts";
import { MappedFile } from "../../src/file/mapping.ts";
import { isZero } from "../../src/copy/quantum.ts";
import { withTempDir } from "../_support/helpers.ts";
import { Prng } from "../_support/prng.ts";

const MiB = 1024 * 1024;
const c = libc()!;

/** A file of `size` bytes: random runs and zero runs. */
async function mixedFile(path: string, r: Prng, size: number): Promise<Uint8Array> {
  const data = new Uint8Array(size);
  for (let at = 0; at < size;) {
    const run = 1 + r.int(200000);
    if (r.chance(0.5)) r.fill(data.subarray(at, Math.min(size, at + run)));
    at += run;
  }
  await Deno.writeFile(path, data);
  return data;
}

/** Runs `fn` on `path` mapped as a MappedFile (with its constructor's tuning), then closes both. */
async function withMapped(
  path: string,
  size: number,
  tuning: number[],
  fn: (file: MappedFile) => Promise<void>,
): Promise<void> {
  const fd = c.open(path, O_RDONLY);
  try {
    const file = new MappedFile(c, fd, size, ...tuning);
    try {
      await fn(file);
    } finally {
      file.close();
    }
  } finally {
    c.close(fd);
  }
}

function rssFileKiB(): number {
  const m = Deno.readTextFileSync("/proc/self/status").match(/RssFile:\s+(\d+)/);
  return m ? Number(m[1]) : 0;
}

Deno.test("lent views hold the file's bytes at any offset and length, across windows", async () => {
  await withTempDir(async (dir) => {
    const r = new Prng(5);
    const size = 24 * MiB + 12345;
    const data = await mixedFile(`${dir}/f`, r, size);
    // Small windows, overlap and batches, so views cross windows, get mappings of their own,
    // and released pages are dropped while others are lent.
    await withMapped(`${dir}/f`, size, [2 * MiB, 256 * 1024, 512 * 1024, MiB], async (file) => {
      const held: Array<{ release(): void }> = [];
      for (let i = 0; i < 400; i++) {
        const offset = r.int(size);
        const length = 1 + r.int(Math.min(size - offset, r.chance(0.1) ? 3 * MiB : 300000));
        const v = await file.view(offset, length);
        ok(v, `view ${offset}+${length}`);
        ok(
          Buffer.from(v.bytes).equals(Buffer.from(data.subarray(offset, offset + length))),
          `bytes of ${offset}+${length}`,
        );
        // The mapping's zero test agrees with the copier's own.
        const a = r.int(length);
        const b = a + r.int(length - a + 1);
        strictEqual(v.isZero!(v.bytes, a, b), isZero(data.subarray(offset, offset + length), a, b));
        held.push(v);
        // Release some now, some later, out of order.
        while (held.length > r.int(6)) held.splice(r.int(held.length), 1)[0].release();
      }
      for (const v of held) v.release();
      // A long view starting at a window's start has a mapping of its own; a later short view
      // there must get the window, not that mapping.
      const long = await file.view(4 * MiB, 3 * MiB);
      const short = await file.view(4 * MiB + 1000, 2 * MiB);
      ok(long && short);
      ok(
        Buffer.from(short.bytes).equals(Buffer.from(data.subarray(4 * MiB + 1000, 6 * MiB + 1000))),
      );
      strictEqual(short.bytes.length, 2 * MiB);
      long.release();
      short.release();
    });
  });
});

Deno.test("nothing past the end of the file is lent, nor a file cut short after opening", async () => {
  await withTempDir(async (dir) => {
    const p = `${dir}/f`;
    await Deno.writeFile(p, new Uint8Array(4 * MiB).fill(9));
    await withMapped(p, 4 * MiB, [], async (file) => {
      strictEqual(await file.view(4 * MiB - 10, 20), undefined);
      strictEqual(await file.view(-1, 20), undefined);
      // Pages past the new end would raise SIGBUS if touched: they must not be lent.
      await Deno.truncate(p, MiB);
      strictEqual(await file.view(2 * MiB, 65536), undefined);
      const v = await file.view(0, 65536);
      ok(v && v.bytes.every((b) => b === 9));
      v.release();
    });
  });
});

Deno.test("pages lent and released leave the mapping: the process's RSS stays bounded", async () => {
  await withTempDir(async (dir) => {
    const size = 256 * MiB;
    const p = `${dir}/f`;
    const f = await Deno.open(p, { write: true, create: true });
    const block = new Uint8Array(MiB).fill(1);
    for (let i = 0; i < size / MiB; i++) await f.write(block);
    f.close();
    await withMapped(p, size, [], async (file) => {
      const before = rssFileKiB();
      let peak = before;
      const lent: Array<{ release(): void }> = [];
      for (let at = 0; at < size; at += 2 * MiB) {
        const v = await file.view(at, 2 * MiB);
        ok(v && v.bytes[0] === 1 && v.bytes[2 * MiB - 1] === 1);
        lent.push(v);
        if (lent.length > 4) lent.shift()!.release();
        peak = Math.max(peak, rssFileKiB());
      }
      for (const v of lent) v.release();
      // The copier's read-ahead (4 views) plus a drop batch and a populate batch, not 256 MiB.
      ok((peak - before) * 1024 < 48 * MiB, `RssFile grew by ${peak - before} KiB`);
    });
  });
});
