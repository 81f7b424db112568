/**
 * A small VHD writer for tests: dynamic, differencing and fixed disks with any power-of-two block
 * size, per-sector bitmaps, parent locators (MacX, W2ku, W2ru) and a choice of placement (qemu
 * packs blocks after the BAT; blktap aligns block data to 4 KiB). qemu cannot write differencing
 * disks correctly, and libvhd is not available here, so chains for tests come from this.
 *
 * The writer is independent of `src/vhd/format.ts` on purpose (it shares no code), so a test reading
 * its output with the parser is a real check of both, and pyvhdi/qemu check the writer.
 *
 * @module
 */

const SECTOR = 512;
const enc = new TextEncoder();

/** A parent locator to write: a path in the platform's encoding, or raw bytes. */
export interface LocatorSpec {
  platform: "MacX" | "W2ku" | "W2ru" | "Wi2k" | "Mac ";
  /** For MacX: the path after `file://` (e.g. `./base.vhd`); W2ku/W2ru: a path (`/` or `\`). */
  path?: string;
  /** Exact data bytes instead of an encoded path. */
  raw?: Uint8Array;
  /** Write the data space in sectors (the spec) instead of bytes (blktap). */
  spaceInSectors?: boolean;
}

/** Options of {@linkcode VhdWriter}. */
export interface VhdWriterOptions {
  /** Virtual size in bytes. */
  size: number;
  /** Default 2 MiB. */
  blockSize?: number;
  /** Default: differencing when `parent` is given, else dynamic. */
  type?: "fixed" | "dynamic" | "differencing";
  /** Footer UUID (16 bytes or a UUID string); default random. */
  uuid?: Uint8Array | string;
  /** For differencing disks. */
  parent?: {
    uuid: Uint8Array | string;
    /** Header parent unicode name (UTF-16BE). */
    name?: string;
    locators?: LocatorSpec[];
  };
  /** BAT capacity; default ceil(size / blockSize). */
  maxTableEntries?: number;
  /** Align block *data* to this many bytes (blktap: 4096); default 512 (packed, like qemu). */
  dataAlign?: number;
  /** Four-character creator application; default `win ` (qemu then trusts the footer size, not CHS). */
  creator?: string;
  /** Write the footer copy at offset 0 (default true). */
  footerCopy?: boolean;
}

/** Parses a UUID string or passes bytes through. */
export function uuidBytes(u: Uint8Array | string): Uint8Array {
  if (typeof u !== "string") return u;
  const hex = u.replaceAll("-", "");
  const out = new Uint8Array(16);
  for (let i = 0; i < 16; i++) out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return out;
}

/** Formats 16 bytes as a UUID string. */
export function uuidString(b: Uint8Array): string {
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function put32(b: Uint8Array, off: number, v: number): void {
  new DataView(b.buffer, b.byteOffset, b.byteLength).setUint32(off, v >>> 0, false);
}

function put64(b: Uint8Array, off: number, v: number | bigint): void {
  new DataView(b.buffer, b.byteOffset, b.byteLength).setBigUint64(off, BigInt(v), false);
}

/** One's complement of the byte sum, skipping the 4-byte checksum field. */
export function checksumOf(b: Uint8Array, skip: number): number {
  let sum = 0;
  for (let i = 0; i < b.length; i++) if (i < skip || i >= skip + 4) sum += b[i];
  return (~sum) >>> 0;
}

/** Recomputes and stores the checksum of a footer (at 64) or header (at 36) in place. */
export function fixChecksum(b: Uint8Array, field: 64 | 36): void {
  put32(b, field, checksumOf(b, field));
}

/** CHS geometry by the VHD specification's algorithm. */
function chs(size: number): number {
  const secs = Math.min(Math.ceil(size / SECTOR), 65535 * 16 * 255);
  let spt: number, heads: number, cth: number;
  if (secs >= 65535 * 16 * 63) {
    spt = 255;
    heads = 16;
    cth = Math.floor(secs / spt);
  } else {
    spt = 17;
    cth = Math.floor(secs / spt);
    heads = Math.max(4, Math.floor((cth + 1023) / 1024));
    if (cth >= heads * 1024 || heads > 16) {
      spt = 31;
      heads = 16;
      cth = Math.floor(secs / spt);
    }
    if (cth >= heads * 1024) {
      spt = 63;
      heads = 16;
      cth = Math.floor(secs / spt);
    }
  }
  const cyl = Math.floor(cth / heads);
  return ((cyl & 0xffff) << 16 | (heads & 0xff) << 8 | (spt & 0xff)) >>> 0;
}

function encodeLocator(l: LocatorSpec): Uint8Array {
  if (l.raw) return l.raw;
  const path = l.path ?? "";
  if (l.platform === "MacX") return enc.encode(`file://${path}`);
  const win = path.replaceAll("/", "\\");
  const out = new Uint8Array(win.length * 2);
  for (let i = 0; i < win.length; i++) {
    out[i * 2] = win.charCodeAt(i) & 0xff;
    out[i * 2 + 1] = win.charCodeAt(i) >> 8;
  }
  return out;
}

const PLATFORM_CODES: Record<LocatorSpec["platform"], number> = {
  MacX: 0x4d616358,
  W2ku: 0x57326b75,
  W2ru: 0x57327275,
  Wi2k: 0x5769326b,
  "Mac ": 0x4d616320,
};

/**
 * Builds a VHD in memory.
 *
 * @example
 * ```ts
 * import { VhdWriter } from "./vhd_writer.ts";
 * const w = new VhdWriter({ size: 4 << 20, blockSize: 1 << 20 });
 * w.write(512, new Uint8Array(1024).fill(7));
 * await w.save("/tmp/example.vhd");
 * ```
 */
export class VhdWriter {
  readonly size: number;
  readonly blockSize: number;
  readonly type: "fixed" | "dynamic" | "differencing";
  readonly uuid: Uint8Array;
  readonly #blocks = new Map<number, { bitmap: Uint8Array; data: Uint8Array }>();
  #fixed?: Uint8Array;

  constructor(readonly options: VhdWriterOptions) {
    this.size = options.size;
    this.blockSize = options.blockSize ?? 2 * 1024 * 1024;
    this.type = options.type ?? (options.parent ? "differencing" : "dynamic");
    this.uuid = options.uuid ? uuidBytes(options.uuid) : crypto.getRandomValues(new Uint8Array(16));
    if (this.type === "fixed") this.#fixed = new Uint8Array(this.size);
  }

  /** The footer UUID as a string. */
  get uuidString(): string {
    return uuidString(this.uuid);
  }

  get #bitmapBytes(): number {
    return Math.ceil(Math.ceil(this.blockSize / SECTOR / 8) / SECTOR) * SECTOR;
  }

  #block(b: number) {
    let blk = this.#blocks.get(b);
    if (!blk) {
      blk = {
        bitmap: new Uint8Array(this.#bitmapBytes),
        data: new Uint8Array(this.blockSize),
      };
      this.#blocks.set(b, blk);
    }
    return blk;
  }

  /** Allocates a block without marking any sector present. */
  allocate(block: number): this {
    this.#block(block);
    return this;
  }

  /** Writes `data` at `offset` (sector-aligned) and marks its sectors present. */
  write(offset: number, data: Uint8Array): this {
    if (offset % SECTOR !== 0 || data.length % SECTOR !== 0) {
      throw new Error(`unaligned write at ${offset} of ${data.length}`);
    }
    if (offset + data.length > this.size) throw new Error("write past the virtual size");
    if (this.#fixed) {
      this.#fixed.set(data, offset);
      return this;
    }
    let pos = 0;
    while (pos < data.length) {
      const at = offset + pos;
      const b = Math.floor(at / this.blockSize);
      const inBlock = at - b * this.blockSize;
      const n = Math.min(data.length - pos, this.blockSize - inBlock);
      const blk = this.#block(b);
      blk.data.set(data.subarray(pos, pos + n), inBlock);
      for (let s = inBlock / SECTOR; s < (inBlock + n) / SECTOR; s++) {
        blk.bitmap[s >> 3] |= 0x80 >> (s & 7);
      }
      pos += n;
    }
    return this;
  }

  /** Marks sectors present without changing their data (they read as whatever is stored). */
  mark(offset: number, length: number): this {
    for (let at = offset; at < offset + length; at += SECTOR) {
      const b = Math.floor(at / this.blockSize);
      const s = (at - b * this.blockSize) / SECTOR;
      this.#block(b).bitmap[s >> 3] |= 0x80 >> (s & 7);
    }
    return this;
  }

  /** Indices of allocated blocks. */
  get blocks(): number[] {
    return [...this.#blocks.keys()].sort((a, b) => a - b);
  }

  /** The logical content this file alone gives, where its bitmap has sectors (else undefined). */
  sectorAt(offset: number): Uint8Array | undefined {
    const b = Math.floor(offset / this.blockSize);
    const blk = this.#blocks.get(b);
    if (!blk) return undefined;
    const inBlock = offset - b * this.blockSize;
    const s = inBlock / SECTOR;
    if (!(blk.bitmap[s >> 3] & (0x80 >> (s & 7)))) return undefined;
    return blk.data.subarray(inBlock, inBlock + SECTOR);
  }

  /** The footer bytes. */
  footer(): Uint8Array {
    const f = new Uint8Array(512);
    f.set(enc.encode("conectix"), 0);
    put32(f, 8, 2);
    put32(f, 12, 0x00010000);
    if (this.type === "fixed") put64(f, 16, 0xffffffffffffffffn);
    else put64(f, 16, 512);
    put32(f, 24, Math.max(0, Math.floor(Date.now() / 1000) - 946684800));
    f.set(enc.encode((this.options.creator ?? "win ").padEnd(4, "\0").slice(0, 4)), 28);
    put32(f, 32, 0x00010000);
    put32(f, 36, 0x5769326b);
    put64(f, 40, this.size);
    put64(f, 48, this.size);
    put32(f, 56, chs(this.size));
    put32(f, 60, this.type === "fixed" ? 2 : this.type === "dynamic" ? 3 : 4);
    f.set(this.uuid, 68);
    fixChecksum(f, 64);
    return f;
  }

  /** The whole file. */
  build(): Uint8Array {
    if (this.#fixed) {
      const out = new Uint8Array(this.size + 512);
      out.set(this.#fixed);
      out.set(this.footer(), this.size);
      return out;
    }
    const bs = this.blockSize;
    const needed = Math.ceil(this.size / bs);
    const maxEntries = this.options.maxTableEntries ?? needed;
    const batBytes = Math.ceil((maxEntries * 4) / SECTOR) * SECTOR;
    const tableOffset = 1536;
    let pos = tableOffset + batBytes;
    const header = new Uint8Array(1024);
    header.set(enc.encode("cxsparse"), 0);
    put64(header, 8, 0xffffffffffffffffn);
    put64(header, 16, tableOffset);
    put32(header, 24, 0x00010000);
    put32(header, 28, maxEntries);
    put32(header, 32, bs);
    const locData: Array<{ at: number; bytes: Uint8Array }> = [];
    const parent = this.options.parent;
    if (this.type === "differencing" && parent) {
      header.set(uuidBytes(parent.uuid), 40);
      put32(header, 56, 0);
      const name = parent.name ?? "";
      for (let i = 0; i < name.length && i < 256; i++) {
        header[64 + i * 2] = name.charCodeAt(i) >> 8;
        header[64 + i * 2 + 1] = name.charCodeAt(i) & 0xff;
      }
      (parent.locators ?? []).forEach((l, i) => {
        const bytes = encodeLocator(l);
        const space = Math.max(SECTOR, Math.ceil(bytes.length / SECTOR) * SECTOR);
        const at = 576 + i * 24;
        put32(header, at, PLATFORM_CODES[l.platform]);
        put32(header, at + 4, l.spaceInSectors ? space / SECTOR : space);
        put32(header, at + 8, bytes.length);
        put64(header, at + 16, pos);
        locData.push({ at: pos, bytes });
        pos += space;
      });
    }
    fixChecksum(header, 36);
    const bat = new Uint8Array(batBytes).fill(0xff);
    const align = this.options.dataAlign ?? SECTOR;
    const bm = this.#bitmapBytes;
    const placed: Array<{ at: number; b: number }> = [];
    for (const b of this.blocks) {
      let start = pos;
      const misalign = (start + bm) % align;
      if (misalign !== 0) start += align - misalign;
      put32(bat, b * 4, start / SECTOR);
      placed.push({ at: start, b });
      pos = start + bm + bs;
    }
    const out = new Uint8Array(pos + 512);
    const footer = this.footer();
    if (this.options.footerCopy ?? true) out.set(footer, 0);
    out.set(header, 512);
    out.set(bat, tableOffset);
    for (const l of locData) out.set(l.bytes, l.at);
    for (const { at, b } of placed) {
      const blk = this.#blocks.get(b)!;
      out.set(blk.bitmap, at);
      out.set(blk.data, at + bm);
    }
    out.set(footer, pos);
    return out;
  }

  /** Writes the file. */
  async save(path: string): Promise<Uint8Array> {
    const bytes = this.build();
    await Deno.writeFile(path, bytes);
    return bytes;
  }
}

/** The standard blktap locators for a parent beside the child: MacX, W2ku and W2ru. */
export function blktapLocators(parentBasename: string): LocatorSpec[] {
  return [
    { platform: "MacX", path: `./${parentBasename}` },
    { platform: "W2ku", path: `./${parentBasename}` },
    { platform: "W2ru", path: `./${parentBasename}` },
  ];
}

/**
 * A chain for tests: the root (dynamic) first. `layers[i].parent` is set from `layers[i-1]`.
 *
 * @example
 * ```ts ignore
 * import { chainWriters } from "./vhd_writer.ts";
 * const [root, child] = chainWriters(["a.vhd", "b.vhd"], { size: 8 << 20, blockSize: 1 << 20 });
 * ```
 */
export function chainWriters(
  names: string[],
  common: Omit<VhdWriterOptions, "parent" | "type" | "uuid">,
): VhdWriter[] {
  const out: VhdWriter[] = [];
  for (let i = 0; i < names.length; i++) {
    const parent = out[i - 1];
    out.push(
      new VhdWriter({
        ...common,
        parent: parent
          ? {
            uuid: parent.uuid,
            name: names[i - 1],
            locators: blktapLocators(names[i - 1]),
          }
          : undefined,
      }),
    );
  }
  return out;
}
