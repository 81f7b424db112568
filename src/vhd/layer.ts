/**
 * One VHD file, opened read-only: its footer, dynamic header and BAT (parsed by `vhd.ts`), and
 * on-demand sector bitmaps. A chain (`chain.ts`) stacks layers; `vhd_disk.ts` reads through them.
 *
 * File access goes through the small {@linkcode RandomAccess} interface so that tests can run
 * the same code over bytes in memory (the mutation fuzz does).
 *
 * @module
 */

import { DiskError } from "../core/disk.ts";
import { ExtentSet } from "../core/extent.ts";
import {
  BAT_UNUSED,
  bitmapRuns,
  checkBatEntries,
  checkLayout,
  decodeLocator,
  DiskType,
  diskTypeName,
  FOOTER_SIZE,
  hasPoisonCookie,
  hasVhdCookie,
  HEADER_SIZE,
  parseBat,
  parseFooter,
  parseHeader,
  SECTOR,
  VhdError,
  type VhdFooter,
  type VhdHeader,
  type VhdLayout,
} from "./format.ts";
import { errorText } from "../core/error_text.ts";

/** Positional, read-only access to a file's bytes. */
export interface RandomAccess {
  /** Name in messages. */
  readonly name: string;
  /** Bytes in the file (or block device). */
  readonly size: number;
  /** Reads exactly `buf.length` bytes at `offset`, or throws. */
  readAt(offset: number, buf: Uint8Array): Promise<void>;
  /** Releases the file. Idempotent. */
  close(): void;
  /** Bytes read so far (metadata and data), to prove how little was read. */
  readonly bytesRead: number;
}

/**
 * A {@linkcode RandomAccess} over a `Deno.FsFile`. Deno has no pread, so a seek and its read are
 * serialised per file: the copier may issue overlapping reads.
 *
 * @example
 * ```ts ignore
 * import { FileAccess } from "./layer.ts";
 * const f = await FileAccess.open("disk.vhd");
 * const head = new Uint8Array(512);
 * await f.readAt(0, head);
 * f.close();
 * ```
 */
export class FileAccess implements RandomAccess {
  #file: Deno.FsFile | undefined;
  #queue: Promise<unknown> = Promise.resolve();
  bytesRead = 0;

  private constructor(readonly name: string, file: Deno.FsFile, readonly size: number) {
    this.#file = file;
  }

  /** Opens `path` read-only; the size is found by seeking to the end (works for block devices). */
  static async open(path: string): Promise<FileAccess> {
    // Looked at before it is opened: opening a FIFO (a path a locator or tap-ctl may name) would
    // wait for a writer forever.
    let info: Deno.FileInfo;
    try {
      info = await Deno.stat(path);
    } catch (err) {
      throw new VhdError(path, undefined, errorText(err), { cause: err });
    }
    if (!info.isFile && !info.isBlockDevice) {
      const what = info.isDirectory
        ? "a directory"
        : info.isFifo
        ? "a FIFO"
        : info.isSocket
        ? "a socket"
        : "a character device";
      throw new VhdError(path, undefined, `is ${what}, not a VHD file`);
    }
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch (err) {
      throw new VhdError(path, undefined, errorText(err), { cause: err });
    }
    try {
      if ((await file.stat()).isDirectory) throw new Error("is a directory");
      const size = await file.seek(0, Deno.SeekMode.End);
      return new FileAccess(path, file, size);
    } catch (err) {
      file.close();
      throw new VhdError(path, undefined, errorText(err), { cause: err });
    }
  }

  readAt(offset: number, buf: Uint8Array): Promise<void> {
    const run = this.#queue.then(() => this.#readAt(offset, buf));
    this.#queue = run.catch(() => {});
    return run;
  }

  async #readAt(offset: number, buf: Uint8Array): Promise<void> {
    const file = this.#file;
    if (file === undefined) throw new DiskError(this.name, "read", offset, "file is closed");
    if (offset + buf.length > this.size) {
      throw new DiskError(
        this.name,
        "read",
        offset,
        `read of ${buf.length} bytes past end of file (${this.size} bytes)`,
      );
    }
    try {
      await file.seek(offset, Deno.SeekMode.Start);
      let done = 0;
      while (done < buf.length) {
        const n = await file.read(buf.subarray(done));
        if (n === null) {
          throw new Error(`unexpected end of file after ${done} of ${buf.length} bytes`);
        }
        done += n;
      }
      this.bytesRead += buf.length;
    } catch (err) {
      if (err instanceof DiskError) throw err;
      throw new DiskError(this.name, "read", offset, errorText(err), { cause: err });
    }
  }

  close(): void {
    const f = this.#file;
    this.#file = undefined;
    try {
      f?.close();
    } catch {
      // Already closed: close is idempotent.
    }
  }
}

/**
 * A {@linkcode RandomAccess} over bytes in memory, for tests.
 *
 * @example
 * ```ts
 * import { MemoryAccess } from "./layer.ts";
 * const m = new MemoryAccess("mem.vhd", new Uint8Array(1024));
 * await m.readAt(512, new Uint8Array(512));
 * ```
 */
export class MemoryAccess implements RandomAccess {
  bytesRead = 0;
  constructor(readonly name: string, readonly bytes: Uint8Array) {}

  get size(): number {
    return this.bytes.length;
  }

  readAt(offset: number, buf: Uint8Array): Promise<void> {
    if (offset < 0 || offset + buf.length > this.bytes.length) {
      return Promise.reject(
        new DiskError(
          this.name,
          "read",
          offset,
          `read of ${buf.length} bytes past end of file (${this.bytes.length} bytes)`,
        ),
      );
    }
    buf.set(this.bytes.subarray(offset, offset + buf.length));
    this.bytesRead += buf.length;
    return Promise.resolve();
  }

  close(): void {}
}

/**
 * True when the file at `path` is a VHD: a regular file (or block device) whose last 512 bytes,
 * or first 512 bytes (the footer copy), start with the cookie `conectix`.
 *
 * @example
 * ```ts ignore
 * import { isVhdFile } from "./layer.ts";
 * await isVhdFile("disk.vhd"); // true
 * await isVhdFile("disk.raw"); // false
 * ```
 */
export async function isVhdFile(path: string): Promise<boolean> {
  let file: FileAccess;
  try {
    file = await FileAccess.open(path);
  } catch {
    return false;
  }
  try {
    if (file.size < FOOTER_SIZE) return false;
    const buf = new Uint8Array(FOOTER_SIZE);
    await file.readAt(file.size - FOOTER_SIZE, buf);
    if (hasVhdCookie(buf)) return true;
    await file.readAt(0, buf);
    return hasVhdCookie(buf);
  } catch {
    return false;
  } finally {
    file.close();
  }
}

/** Footer, header and BAT of one file, however they were read (TypeScript or libvhd). */
export interface LayerMetadata {
  footer: VhdFooter;
  /** Where the footer in use was read (end of file, or 0 for the copy). */
  footerOffset: number;
  /** Absent for fixed disks. */
  header?: VhdHeader;
  layout?: VhdLayout;
  /** Host-order entries for the blocks the virtual size uses. Absent for fixed disks. */
  bat?: Uint32Array;
}

/** Which reader produced a layer's metadata. */
export type MetadataBackend = "ts" | "ffi";

/**
 * Reads footer, header and BAT with the pure TypeScript parser. The footer is the last 512
 * bytes; when that one is damaged (or the file was cut short) the copy at offset 0 is used.
 *
 * @example
 * ```ts ignore
 * import { FileAccess, readMetadata } from "./layer.ts";
 * const meta = await readMetadata(await FileAccess.open("disk.vhd"));
 * meta.footer.currentSize;
 * ```
 */
export async function readMetadata(file: RandomAccess): Promise<LayerMetadata> {
  const name = file.name;
  if (file.size < FOOTER_SIZE) {
    throw new VhdError(
      name,
      0,
      `not a VHD: ${file.size} bytes is smaller than a ${FOOTER_SIZE}-byte footer`,
    );
  }
  const { footer, footerOffset } = await readFooter(file);
  if (footer.diskType === DiskType.Fixed) {
    checkFixedSize(footer, footerOffset, file.size, name);
    return { footer, footerOffset };
  }
  const headerOffset = footer.dataOffset!;
  if (headerOffset + HEADER_SIZE > file.size) {
    throw new VhdError(
      name,
      headerOffset,
      `dynamic header past end of file (file has ${file.size} bytes)`,
    );
  }
  const hbuf = new Uint8Array(HEADER_SIZE);
  await file.readAt(headerOffset, hbuf);
  const header = parseHeader(hbuf, name, headerOffset);
  const layout = checkLayout(footer, header, file.size, name);
  const bbuf = new Uint8Array(layout.batBytes);
  await file.readAt(layout.tableOffset, bbuf);
  const bat = parseBat(bbuf, layout, dataEnd(file.size, footerOffset), name);
  return { footer, footerOffset, header, layout, bat };
}

/**
 * Where block data must end: before the trailing footer, or the file's end if it has none.
 *
 * @example
 * ```ts
 * import { dataEnd } from "./layer.ts";
 * dataEnd(10240, 9728); // 9728: blocks end where the footer starts
 * dataEnd(10240, 0);    // 10240: only the copy at offset 0 was usable
 * ```
 */
export function dataEnd(fileSize: number, footerOffset: number): number {
  return footerOffset === 0 ? fileSize : footerOffset;
}

/**
 * Checks metadata obtained elsewhere (libvhd) with the same rules the TypeScript reader applies,
 * so both backends refuse the same broken files. Trims the BAT to the entries the size uses.
 *
 * @example
 * ```ts ignore
 * import { validateMetadata } from "./layer.ts";
 * validateMetadata(metaFromLibvhd, file.size, file.name); // throws VhdError when broken
 * ```
 */
export function validateMetadata(meta: LayerMetadata, fileSize: number, name: string): void {
  if (meta.footer.diskType === DiskType.Fixed) {
    checkFixedSize(meta.footer, meta.footerOffset, fileSize, name);
    return;
  }
  if (meta.header === undefined || meta.bat === undefined) return;
  const layout = checkLayout(meta.footer, meta.header, fileSize, name);
  if (meta.bat.length < layout.entries) {
    throw new VhdError(
      name,
      layout.tableOffset,
      `BAT has ${meta.bat.length} entries, the virtual size needs ${layout.entries}`,
    );
  }
  meta.bat = meta.bat.subarray(0, layout.entries);
  meta.layout = layout;
  checkBatEntries(meta.bat, layout, dataEnd(fileSize, meta.footerOffset), name);
}

/** A fixed VHD must hold its whole virtual size in front of the footer. */
function checkFixedSize(footer: VhdFooter, footerOffset: number, fileSize: number, name: string) {
  const needed = footer.currentSize + FOOTER_SIZE;
  if (fileSize < needed) {
    throw new VhdError(
      name,
      footerOffset,
      `fixed VHD truncated: virtual size ${footer.currentSize} needs ${needed} bytes, ` +
        `the file has ${fileSize}`,
    );
  }
}

async function readFooter(
  file: RandomAccess,
): Promise<{ footer: VhdFooter; footerOffset: number }> {
  const name = file.name;
  // Very old Microsoft tools wrote a 511-byte footer; libvhd probes for it the same way.
  const tail = file.size % SECTOR === SECTOR - 1 ? FOOTER_SIZE - 1 : FOOTER_SIZE;
  const endOffset = file.size - tail;
  const end = new Uint8Array(tail);
  await file.readAt(endOffset, end);
  let endError: VhdError;
  try {
    return { footer: parseFooter(end, name, endOffset), footerOffset: endOffset };
  } catch (err) {
    if (!(err instanceof VhdError)) throw err;
    // Disabled by blktap: refused, whatever the copy at offset 0 still says.
    if (hasPoisonCookie(end)) throw err;
    endError = err;
  }
  // The copy at offset 0 exists only for dynamic and differencing disks.
  const head = new Uint8Array(FOOTER_SIZE);
  await file.readAt(0, head);
  if (hasPoisonCookie(head)) parseFooter(head, name, 0); // throws: disabled
  if (!hasVhdCookie(head)) throw endError;
  let footer: VhdFooter;
  try {
    footer = parseFooter(head, name, 0);
  } catch {
    throw endError;
  }
  if (footer.diskType === DiskType.Fixed) throw endError;
  return { footer, footerOffset: 0 };
}

/** A range of a layer's virtual bytes: stored in this file at `fileOffset`, or not stored. */
export interface LayerRun {
  /** First virtual byte. */
  start: number;
  /** Bytes in the run. */
  length: number;
  /** File offset of the first byte when the layer stores the run; `undefined` when it does not. */
  fileOffset: number | undefined;
}

/** Options for {@linkcode VhdLayer.open}. */
export interface LayerOpenOptions {
  /** Supplies the file (default: {@linkcode FileAccess.open}). */
  access?: (path: string) => Promise<RandomAccess>;
  /** Reads metadata (default: the TypeScript reader); `chain.ts` passes libvhd here. */
  metadata?: (file: RandomAccess) => Promise<{ meta: LayerMetadata; backend: MetadataBackend }>;
  /** How many block bitmaps to keep in memory (default 4096). */
  bitmapCache?: number;
}

/**
 * One VHD file of a chain.
 *
 * @example
 * ```ts ignore
 * import { VhdLayer } from "./layer.ts";
 * const layer = await VhdLayer.open("disk.vhd");
 * layer.allocation().bytes; // bytes in allocated blocks
 * layer.close();
 * ```
 */
export class VhdLayer {
  readonly #bitmaps = new Map<number, Promise<Uint8Array>>();
  readonly #bitmapCache: number;

  private constructor(
    readonly path: string,
    readonly file: RandomAccess,
    readonly meta: LayerMetadata,
    readonly backend: MetadataBackend,
    bitmapCache: number,
  ) {
    this.#bitmapCache = bitmapCache;
  }

  /** Opens and parses one VHD file. */
  static async open(path: string, options: LayerOpenOptions = {}): Promise<VhdLayer> {
    const file = await (options.access ?? FileAccess.open)(path);
    try {
      const { meta, backend } = options.metadata
        ? await options.metadata(file)
        : { meta: await readMetadata(file), backend: "ts" as const };
      return new VhdLayer(path, file, meta, backend, options.bitmapCache ?? 4096);
    } catch (err) {
      file.close();
      throw err;
    }
  }

  /** The parsed footer. */
  get footer(): VhdFooter {
    return this.meta.footer;
  }

  /** The parsed dynamic header (absent for fixed disks). */
  get header(): VhdHeader | undefined {
    return this.meta.header;
  }

  /** Virtual size in bytes (footer.currentSize). */
  get size(): number {
    return this.meta.footer.currentSize;
  }

  /** The footer UUID. */
  get uuid(): string {
    return this.meta.footer.uuid;
  }

  /** `fixed`, `dynamic` or `differencing`. */
  get kind(): "fixed" | "dynamic" | "differencing" {
    return diskTypeName(this.meta.footer.diskType);
  }

  /** Block size, or `undefined` for fixed disks. */
  get blockSize(): number | undefined {
    return this.meta.layout?.blockSize;
  }

  /** Indices of the blocks allocated in this file (none for fixed disks). */
  allocatedBlocks(): number[] {
    const out: number[] = [];
    const bat = this.meta.bat;
    if (bat === undefined) return out;
    for (let i = 0; i < bat.length; i++) if (bat[i] !== BAT_UNUSED) out.push(i);
    return out;
  }

  /**
   * The virtual byte ranges this file may store: its allocated blocks, clipped to the virtual
   * size; the whole disk for a fixed VHD.
   */
  allocation(): ExtentSet {
    const layout = this.meta.layout;
    if (layout === undefined) return ExtentSet.range(0, this.size);
    return ExtentSet.fromBlocks(this.allocatedBlocks(), layout.blockSize).clip(this.size);
  }

  /** The sector bitmap of an allocated block (cached). */
  bitmap(block: number): Promise<Uint8Array> {
    const cached = this.#bitmaps.get(block);
    if (cached !== undefined) return cached;
    const layout = this.meta.layout!;
    const entry = this.meta.bat![block];
    const buf = new Uint8Array(layout.bitmapBytes);
    const p = this.file.readAt(entry * SECTOR, buf).then(() => buf);
    if (this.#bitmaps.size >= this.#bitmapCache) {
      const oldest = this.#bitmaps.keys().next().value;
      if (oldest !== undefined) this.#bitmaps.delete(oldest);
    }
    this.#bitmaps.set(block, p);
    p.catch(() => this.#bitmaps.delete(block));
    return p;
  }

  /**
   * Splits virtual bytes `[start, end)` into runs this file stores (with their file offsets) and
   * runs it does not, following the BAT and sector bitmaps. Bytes past the virtual size are
   * reported as not stored. Adjacent runs that are not stored are merged.
   */
  async runs(start: number, end: number): Promise<LayerRun[]> {
    const out: LayerRun[] = [];
    const push = (s: number, e: number, fileOffset: number | undefined) => {
      if (e <= s) return;
      const last = out[out.length - 1];
      if (
        last !== undefined && last.fileOffset === undefined && fileOffset === undefined &&
        last.start + last.length === s
      ) {
        last.length += e - s;
      } else {
        out.push({ start: s, length: e - s, fileOffset });
      }
    };
    const size = this.size;
    const stored = Math.min(end, size);
    const layout = this.meta.layout;
    if (layout === undefined) {
      push(start, stored, start); // fixed: virtual byte = file byte
    } else {
      const bs = layout.blockSize;
      const bat = this.meta.bat!;
      let pos = start;
      while (pos < stored) {
        const block = Math.floor(pos / bs);
        const blockStart = block * bs;
        const blockEnd = Math.min(blockStart + bs, stored);
        const entry = bat[block];
        if (entry === BAT_UNUSED) {
          push(pos, blockEnd, undefined);
        } else {
          const bitmap = await this.bitmap(block);
          const dataStart = entry * SECTOR + layout.bitmapBytes;
          const first = Math.floor((pos - blockStart) / SECTOR);
          const last = Math.ceil((blockEnd - blockStart) / SECTOR);
          for (const run of bitmapRuns(bitmap, first, last)) {
            const s = Math.max(pos, blockStart + run.start * SECTOR);
            const e = Math.min(blockEnd, blockStart + (run.start + run.count) * SECTOR);
            push(s, e, run.present ? dataStart + (s - blockStart) : undefined);
          }
        }
        pos = blockEnd;
      }
    }
    push(Math.max(start, stored), end, undefined);
    return out;
  }

  /** Reads parent locator data and decodes it to paths, in header order. */
  async locatorPaths(): Promise<string[]> {
    const header = this.meta.header;
    if (header === undefined) return [];
    const out: string[] = [];
    for (const loc of header.locators) {
      if (loc.platform !== "MacX" && loc.platform !== "W2ku" && loc.platform !== "W2ru") continue;
      // Locator data is a path: a few KiB at most; anything larger is damage.
      if (loc.dataLength === 0 || loc.dataLength > 64 * 1024) continue;
      if (loc.dataOffset + loc.dataLength > this.file.size) continue;
      const data = new Uint8Array(loc.dataLength);
      await this.file.readAt(loc.dataOffset, data);
      const path = decodeLocator(loc, data);
      if (path !== undefined) out.push(path);
    }
    return out;
  }

  /** Reads stored bytes at a file offset (from {@linkcode runs}). */
  readData(fileOffset: number, buf: Uint8Array): Promise<void> {
    return this.file.readAt(fileOffset, buf);
  }

  /** Closes the file. Idempotent. */
  close(): void {
    this.file.close();
  }
}
