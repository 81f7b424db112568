/**
 * Helpers shared by the VHD tests: an in-memory file system for chains, the independent oracles
 * (qemu-img, pyvhdi through Debian's /usr/bin/python3), and a reader of a whole Disk.
 *
 * @module
 */

import type { ChainFs } from "../../src/vhd/chain.ts";
import type { Disk } from "../../src/core/disk.ts";
import { ExtentSet } from "../../src/core/extent.ts";
import { MemoryAccess } from "../../src/vhd/layer.ts";
import { seekDataExtents } from "../../src/file/file_disk.ts";
import { sameBytes, sh } from "./helpers.ts";

/** A file system over bytes in memory, for chains in tests and the fuzz. */
export function memFs(files: Record<string, Uint8Array>): ChainFs {
  return {
    open: (path) => {
      const bytes = files[path];
      if (bytes === undefined) return Promise.reject(new Error(`no such file: ${path}`));
      return Promise.resolve(new MemoryAccess(path, bytes));
    },
    realPath: (path) =>
      files[path] === undefined
        ? Promise.reject(new Error(`no such file: ${path}`))
        : Promise.resolve(path),
  };
}

/** Reads a whole disk into memory (small disks only). */
export async function readAll(disk: Disk, chunk = 1 << 20): Promise<Uint8Array> {
  const out = new Uint8Array(disk.size);
  for (let off = 0; off < disk.size; off += chunk) {
    await disk.read(off, out.subarray(off, Math.min(disk.size, off + chunk)));
  }
  return out;
}

/**
 * The logical content of a VHD chain according to libvhdi (pyvhdi), written to `out`.
 * `chain` is leaf first. Debian's python3-libvhdi is installed for /usr/bin/python3 only.
 *
 * Reads go in 64 KiB pieces: libvhdi 20210425 returns zeroes for parent data in some reads that
 * span several small (32-128 KiB) blocks, while the same bytes read in smaller pieces are right.
 */
export async function pyvhdiRead(chain: string[], out: string): Promise<void> {
  const script = `
import sys, pyvhdi
out, paths = sys.argv[1], sys.argv[2:]
files = []
for p in paths:
    f = pyvhdi.file()
    f.open(p)
    files.append(f)
for i in range(len(files) - 2, -1, -1):
    files[i].set_parent(files[i + 1])
leaf = files[0]
size = leaf.get_media_size()
with open(out, "wb") as o:
    off = 0
    while off < size:
        n = min(1 << 16, size - off)
        o.write(leaf.read_buffer_at_offset(n, off))
        off += n
`;
  await sh("/usr/bin/python3", ["-c", script, out, ...chain]);
}

/** `qemu-img map -f vpc --output=json`: the ranges qemu says hold data (one layer's BAT). */
export async function qemuMap(path: string): Promise<ExtentSet> {
  const json = JSON.parse(await sh("qemu-img", ["map", "-f", "vpc", "--output=json", path]));
  return ExtentSet.of(
    (json as Array<{ start: number; length: number; data: boolean }>)
      .filter((e) => e.data)
      .map((e) => ({ start: e.start, length: e.length })),
  );
}

/** `qemu-img info`'s virtual size of a vpc image. */
export async function qemuVirtualSize(path: string): Promise<number> {
  const json = JSON.parse(await sh("qemu-img", ["info", "-f", "vpc", "--output=json", path]));
  return json["virtual-size"];
}

/** `qemu-img create -f vpc` with `-o options` (default: a dynamic disk keeping the exact size). */
export async function qemuCreateVhd(
  path: string,
  size: string,
  options = "subformat=dynamic,force_size=on",
): Promise<void> {
  await sh("qemu-img", ["create", "-q", "-f", "vpc", "-o", options, path, size]);
}

/** `qemu-img convert` of a raw image into a dynamic VHD keeping the exact size. */
export async function qemuRawToVhd(raw: string, vhd: string): Promise<void> {
  await sh("qemu-img", [
    "convert",
    "-f",
    "raw",
    "-O",
    "vpc",
    "-o",
    "subformat=dynamic,force_size=on",
    raw,
    vhd,
  ]);
}

/** Runs qemu-io commands on a vpc image. */
export async function qemuIo(path: string, commands: string[]): Promise<void> {
  await sh("qemu-io", ["-f", "vpc", ...commands.flatMap((c) => ["-c", c]), path]);
}

/** sha256 of bytes as hex, for compact comparisons. */
export async function sha256(bytes: Uint8Array): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
  return [...d].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function readAt(file: Deno.FsFile, offset: number, buf: Uint8Array): Promise<void> {
  await file.seek(offset, Deno.SeekMode.Start);
  let done = 0;
  while (done < buf.length) {
    const n = await file.read(buf.subarray(done));
    if (n === null) throw new Error(`short read at ${offset + done}`);
    done += n;
  }
}

/**
 * Like `cmp`, for big sparse files: compares the bytes inside either file's data extents
 * (SEEK_DATA/SEEK_HOLE) and relies on holes reading as zero elsewhere. Falls back to `cmp`
 * where SEEK_DATA does not work.
 */
export async function sameSparseFiles(a: string, b: string): Promise<boolean> {
  const size = (await Deno.stat(a)).size;
  if ((await Deno.stat(b)).size !== size) return false;
  const ea = seekDataExtents(a, size);
  const eb = seekDataExtents(b, size);
  if (ea === undefined || eb === undefined) return await sameBytes(a, b);
  const data = ExtentSet.of(ea).union(ExtentSet.of(eb));
  const fa = await Deno.open(a);
  const fb = await Deno.open(b);
  try {
    for (const e of data.chunks(4 << 20)) {
      const x = new Uint8Array(e.length);
      const y = new Uint8Array(e.length);
      await readAt(fa, e.start, x);
      await readAt(fb, e.start, y);
      for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
    }
    return true;
  } finally {
    fa.close();
    fb.close();
  }
}
