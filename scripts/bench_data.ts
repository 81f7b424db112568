/**
 * Makes the benchmark's disk images, reproducibly (seeded), for scripts/bench.sh.
 *
 * ```sh
 * deno run -A scripts/bench_data.ts sparse   PATH SIZE BLOCK FRACTION SEED  # holes + random blocks
 * deno run -A scripts/bench_data.ts regions  PATH SIZE REGION ZERO_FRACTION SEED  # dense, zero regions
 * deno run -A scripts/bench_data.ts fill     PATH SIZE BYTE                  # dense, one byte value
 * deno run -A scripts/bench_data.ts random   PATH SIZE SEED                  # dense random bytes
 * deno run -A scripts/bench_data.ts offsets  SIZE BLOCK FRACTION SEED       # chosen block offsets
 * deno run -A scripts/bench_data.ts vm       PATH SIZE FRACTION SEED        # VM-shaped, see below
 * deno run -A scripts/bench_data.ts touch    SIZE                           # write SIZE of memory once
 * ```
 *
 * `sparse` leaves every unchosen block a hole; `regions` writes every byte (zero regions too), so
 * the file is fully allocated and only scanning can find its zeroes. `vm` is shaped like a used
 * VM's disk: data in scattered extents of 4 KiB to 1 MiB (log-uniform sizes, 4 KiB aligned,
 * `FRACTION` of the disk in all), each written whole but a third of it zero runs of 4-64 KiB.
 * `touch` writes one byte in every page of `SIZE` bytes of fresh memory and exits, giving it back:
 * on a virtual machine whose balloon took free memory back, the guest's free pages are then
 * backed by the host again (see bench.sh).
 *
 * @module
 */

const MiB = 1 << 20;

/** xorshift128: fast seeded bytes (not cryptographic, not meant to be). */
class Bytes {
  #s = new Uint32Array(4);
  constructor(seed: number) {
    this.#s.set([seed ^ 0x9e3779b9, 0x243f6a88, 0x85a308d3, 0x13198a2e ^ (seed * 31)]);
    for (let i = 0; i < 16; i++) this.next();
  }
  next(): number {
    const s = this.#s;
    let t = s[3];
    const x = s[0];
    s[3] = s[2];
    s[2] = s[1];
    s[1] = x;
    t ^= t << 11;
    t ^= t >>> 8;
    s[0] = t ^ x ^ (x >>> 19);
    return s[0];
  }
  fill(buf: Uint8Array): Uint8Array {
    const w = new Uint32Array(buf.buffer, buf.byteOffset, buf.length >>> 2);
    for (let i = 0; i < w.length; i++) w[i] = this.next() | 1; // never an all-zero word
    return buf;
  }
  /** A float in [0, 1). */
  unit(): number {
    return this.next() / 4294967296;
  }
}

/** The offsets of the chosen blocks: `round(fraction * blocks)` distinct blocks, sorted. */
function chooseBlocks(size: number, block: number, fraction: number, seed: number): number[] {
  const blocks = Math.floor(size / block);
  const want = Math.round(blocks * fraction);
  const r = new Bytes(seed);
  const idx = Array.from({ length: blocks }, (_, i) => i);
  for (let i = 0; i < want; i++) {
    const j = i + Math.floor(r.unit() * (blocks - i));
    [idx[i], idx[j]] = [idx[j], idx[i]];
  }
  return idx.slice(0, want).sort((a, b) => a - b).map((i) => i * block);
}

async function writeAll(f: Deno.FsFile, buf: Uint8Array): Promise<void> {
  for (let n = 0; n < buf.length;) n += await f.write(buf.subarray(n));
}

const [cmd, ...args] = Deno.args;
const num = (i: number) => {
  const n = Number(args[i]);
  if (!Number.isFinite(n)) throw new Error(`argument ${i + 2} must be a number: ${args[i]}`);
  return n;
};

switch (cmd) {
  case "sparse": {
    const [path] = args;
    const size = num(1), block = num(2), fraction = num(3), seed = num(4);
    await Deno.remove(path).catch(() => {});
    const f = await Deno.open(path, { write: true, create: true, truncate: true });
    await f.truncate(size);
    const r = new Bytes(seed + 1);
    const buf = new Uint8Array(block);
    for (const at of chooseBlocks(size, block, fraction, seed)) {
      await f.seek(at, Deno.SeekMode.Start);
      await writeAll(f, r.fill(buf));
    }
    f.close();
    break;
  }
  case "regions": {
    const [path] = args;
    const size = num(1), region = num(2), zeroFraction = num(3), seed = num(4);
    const f = await Deno.open(path, { write: true, create: true, truncate: true });
    const r = new Bytes(seed);
    const data = new Bytes(seed + 1);
    const buf = new Uint8Array(4 * MiB);
    for (let off = 0; off < size; off += buf.length) {
      const n = Math.min(buf.length, size - off);
      for (let q = 0; q < n; q += region) {
        const part = buf.subarray(q, Math.min(n, q + region));
        if (r.unit() < zeroFraction) part.fill(0);
        else data.fill(part);
      }
      await writeAll(f, buf.subarray(0, n));
    }
    f.close();
    break;
  }
  case "fill":
  case "random": {
    const [path] = args;
    const size = num(1);
    const r = new Bytes(cmd === "random" ? num(2) : 0);
    const buf = new Uint8Array(4 * MiB);
    if (cmd === "fill") buf.fill(num(2));
    const f = await Deno.open(path, { write: true, create: true, truncate: true });
    for (let off = 0; off < size; off += buf.length) {
      const n = Math.min(buf.length, size - off);
      await writeAll(f, cmd === "random" ? r.fill(buf.subarray(0, n)) : buf.subarray(0, n));
    }
    f.close();
    break;
  }
  case "vm": {
    const [path] = args;
    const size = num(1), fraction = num(2), seed = num(3);
    const K4 = 4096;
    await Deno.remove(path).catch(() => {});
    const f = await Deno.open(path, { write: true, create: true, truncate: true });
    await f.truncate(size);
    const r = new Bytes(seed);
    const data = new Bytes(seed + 1);
    const buf = new Uint8Array(MiB);
    // Mean extent: (1 MiB - 4 KiB) / ln(256), about 189 KiB; gaps keep `fraction` of the disk.
    const meanExtent = (MiB - K4) / Math.log(256);
    const meanGap = meanExtent * (1 - fraction) / fraction;
    for (let pos = 0;;) {
      pos += Math.floor((r.unit() * 2 * meanGap) / K4) * K4;
      const len = Math.min(MiB, Math.max(K4, Math.floor(K4 * 256 ** r.unit() / K4) * K4));
      if (pos + len > size) break;
      const ext = buf.subarray(0, len);
      for (let at = 0; at < len;) {
        const piece = ext.subarray(at, Math.min(len, at + K4 * (1 + Math.floor(r.unit() * 16))));
        if (r.unit() < 1 / 3) piece.fill(0);
        else data.fill(piece);
        at += piece.length;
      }
      await f.seek(pos, Deno.SeekMode.Start);
      await writeAll(f, ext);
      pos += len;
    }
    f.close();
    break;
  }
  case "touch": {
    const size = num(0);
    const held: Uint8Array[] = [];
    for (let left = size; left > 0; left -= 256 * MiB) {
      const a = new Uint8Array(Math.min(left, 256 * MiB));
      for (let i = 0; i < a.length; i += 4096) a[i] = 1;
      held.push(a); // all of it at once, so that every page is a different one
    }
    console.log(held.length);
    break;
  }
  case "offsets": {
    console.log(chooseBlocks(num(0), num(1), num(2), num(3)).join("\n"));
    break;
  }
  default:
    console.error("usage: bench_data.ts sparse|regions|fill|random|offsets|vm|touch ...");
    Deno.exit(1);
}
