/**
 * Pure parsing of the VHD on-disk format (Microsoft's VHD specification as written by blktap,
 * qemu and Hyper-V): the 512-byte footer, the 1024-byte dynamic disk header, the block
 * allocation table (BAT), per-block sector bitmaps and parent locators.
 *
 * Nothing here does I/O: every function takes bytes that a caller has read (see `layer.ts`) and
 * either returns plain data or throws a {@linkcode VhdError} naming the file and the byte offset
 * of the structure that is wrong. All integers on disk are big-endian.
 *
 * @module
 */

import { basename, dirname, join, normalize } from "../core/path.ts";
import { DiskError } from "../core/disk.ts";

/** Bytes per VHD sector; bitmaps, BAT entries and locator spaces count in these. */
export const SECTOR = 512;
/** Size of the footer (and of its copy at offset 0 of dynamic and differencing disks). */
export const FOOTER_SIZE = 512;
/** Size of the dynamic disk header. */
export const HEADER_SIZE = 1024;
/** A BAT entry meaning "block not allocated in this file". */
export const BAT_UNUSED = 0xffffffff;
/** The default (and, for libvhd, the only) block size. */
export const DEFAULT_BLOCK_SIZE = 2 * 1024 * 1024;
/**
 * Largest BAT we accept: 2^28 entries (a 1 GiB table, 512 TiB of 2 MiB blocks). Anything larger
 * is a damaged header, and believing it would make us allocate gigabytes before failing.
 */
export const MAX_TABLE_ENTRIES = 2 ** 28;

const FOOTER_COOKIE = "conectix";
const POISON_COOKIE = "v_poison";
const HEADER_COOKIE = "cxsparse";
const HEADER_VERSION = 0x00010000;

/** VHD disk types that carry data (the others are deprecated and never written). */
export const DiskType = {
  /** Raw data followed by the footer. */
  Fixed: 2,
  /** Sparse: header, BAT and blocks; unallocated reads as zero. */
  Dynamic: 3,
  /** Sparse over a parent: unallocated reads from the parent. */
  Differencing: 4,
} as const;

/** One of {@linkcode DiskType}'s values. */
export type DiskTypeValue = typeof DiskType[keyof typeof DiskType];

/**
 * A malformed or unsupported VHD: the message names the file and the byte offset of the
 * structure at fault, e.g. `cannot open a.vhd at offset 512: bad dynamic header checksum ...`.
 * It is a {@linkcode DiskError} (operation `open`), so the CLI maps it to the source exit code.
 *
 * @example
 * ```ts
 * import { VhdError } from "./format.ts";
 * const e = new VhdError("a.vhd", 0, "bad footer cookie");
 * e.message; // "cannot open a.vhd at offset 0: bad footer cookie"
 * ```
 */
export class VhdError extends DiskError {
  constructor(file: string, offset: number | undefined, reason: string, options?: ErrorOptions) {
    super(file, "open", offset, reason, options);
    this.name = "VhdError";
  }

  /** The VHD file at fault (same as `disk`). */
  get file(): string {
    return this.disk;
  }
}

/** Cylinders, heads and sectors per track from the footer (informational only). */
export interface Geometry {
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
}

/** The decoded 512-byte footer. */
export interface VhdFooter {
  /** `conectix`. */
  cookie: string;
  features: number;
  formatVersion: number;
  /** Absolute offset of the dynamic header; `undefined` for fixed disks (all-ones on disk). */
  dataOffset: number | undefined;
  /** Seconds since 2000-01-01 00:00:00 UTC. */
  timestamp: number;
  /** Four characters: `tap\0`, `qemu`, `qem2`, `win `, ... */
  creatorApp: string;
  creatorVersion: number;
  creatorOs: number;
  originalSize: number;
  /** The virtual size in bytes: the only size sparse_dd trusts (not the CHS geometry). */
  currentSize: number;
  geometry: Geometry;
  diskType: DiskTypeValue;
  checksum: number;
  /** The disk's UUID, lower-case with dashes; a child's header names its parent by it. */
  uuid: string;
  savedState: number;
  /** blktap's "hidden" flag (byte 85). */
  hidden: number;
}

/** One parent locator entry from the dynamic header. */
export interface ParentLocator {
  /** Index of the entry (0-7) in the header. */
  index: number;
  /** Platform code as four characters: `W2ku`, `W2ru`, `MacX`, `Wi2k`, ... */
  platform: string;
  /** Raw platform code. */
  code: number;
  /** Space reserved for the data, in bytes (normalised from sectors where needed). */
  dataSpace: number;
  /** Bytes of locator data actually used. */
  dataLength: number;
  /** Absolute file offset of the locator data. */
  dataOffset: number;
}

/** The decoded 1024-byte dynamic disk header. */
export interface VhdHeader {
  /** Absolute offset of the BAT. */
  tableOffset: number;
  headerVersion: number;
  /** BAT capacity (may exceed what the virtual size needs). */
  maxTableEntries: number;
  /** Bytes of data per block (excluding the sector bitmap); a power of two. */
  blockSize: number;
  checksum: number;
  /** UUID of the parent's footer; all zeroes when there is no parent. */
  parentUuid: string;
  parentTimestamp: number;
  /** The parent's name (UTF-16BE on disk); blktap stores the basename. */
  parentName: string;
  /** Non-empty locator entries, in header order. */
  locators: ParentLocator[];
}

/** Geometry of the BAT and blocks, derived from footer and header and checked against the file. */
export interface VhdLayout {
  blockSize: number;
  /** Sectors of data per block. */
  sectorsPerBlock: number;
  /** Bytes of sector bitmap in front of each block's data, padded to a whole sector. */
  bitmapBytes: number;
  /** BAT entries that the virtual size uses: ceil(currentSize / blockSize). */
  entries: number;
  /** Absolute offset of the BAT. */
  tableOffset: number;
  /** Bytes to read for the used part of the BAT (entries * 4). */
  batBytes: number;
  /**
   * Byte ranges `[start, end)` of the file's own metadata (the footer copy, the dynamic header,
   * the whole declared BAT): no block may lie in them.
   */
  metadata?: Array<[number, number]>;
}

const NIL_UUID = "00000000-0000-0000-0000-000000000000";

function u32(b: Uint8Array, off: number): number {
  return ((b[off] << 24) >>> 0) + (b[off + 1] << 16) + (b[off + 2] << 8) + b[off + 3];
}

/** A u64 as a number, or undefined when it does not fit in 2^53. */
function u64(b: Uint8Array, off: number): number | undefined {
  const hi = u32(b, off);
  const lo = u32(b, off + 4);
  if (hi >= 0x200000) return undefined;
  return hi * 0x100000000 + lo;
}

function ascii(b: Uint8Array, off: number, len: number): string {
  let s = "";
  for (let i = 0; i < len; i++) s += String.fromCharCode(b[off + i]);
  return s;
}

function printable(s: string): string {
  return JSON.stringify(s);
}

/**
 * Four-character code of a 32-bit platform / creator value.
 *
 * @example
 * ```ts
 * import { fourCC } from "./format.ts";
 * fourCC(0x4d616358); // "MacX"
 * ```
 */
export function fourCC(code: number): string {
  return String.fromCharCode(code >>> 24, (code >>> 16) & 0xff, (code >>> 8) & 0xff, code & 0xff);
}

/**
 * The VHD checksum: one's complement of the 32-bit sum of all bytes, with the four bytes of the
 * checksum field itself taken as zero.
 *
 * @example
 * ```ts
 * import { vhdChecksum } from "./format.ts";
 * vhdChecksum(new Uint8Array(512), 64); // 0xffffffff
 * ```
 */
export function vhdChecksum(bytes: Uint8Array, checksumOffset: number): number {
  let sum = 0;
  for (let i = 0; i < bytes.length; i++) {
    if (i >= checksumOffset && i < checksumOffset + 4) continue;
    sum += bytes[i];
  }
  return (~sum) >>> 0;
}

/**
 * Formats 16 bytes as a lower-case UUID with dashes.
 *
 * @example
 * ```ts
 * import { formatUuid } from "./format.ts";
 * formatUuid(new Uint8Array(16)); // "00000000-0000-0000-0000-000000000000"
 * ```
 */
export function formatUuid(b: Uint8Array, off = 0): string {
  const hex: string[] = [];
  for (let i = 0; i < 16; i++) hex.push(b[off + i].toString(16).padStart(2, "0"));
  const h = hex.join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * True when the UUID is all zeroes (a differencing disk over a raw parent, in blktap).
 *
 * @example
 * ```ts
 * import { isNilUuid } from "./format.ts";
 * isNilUuid("00000000-0000-0000-0000-000000000000"); // true
 * ```
 */
export function isNilUuid(uuid: string): boolean {
  return uuid === NIL_UUID;
}

/**
 * True when `bytes` start with the footer cookie `conectix`: the cheap test used to detect a VHD
 * source (on the last 512 bytes of a file, or its first 512 for the footer copy).
 *
 * @example
 * ```ts
 * import { hasVhdCookie } from "./format.ts";
 * hasVhdCookie(new TextEncoder().encode("conectix")); // true
 * ```
 */
export function hasVhdCookie(bytes: Uint8Array): boolean {
  return bytes.length >= 8 && ascii(bytes, 0, 8) === FOOTER_COOKIE;
}

/**
 * True when `bytes` start with `v_poison`: the footer cookie blktap writes to disable a VHD (an
 * interrupted `vhd-util resize` leaves it). Such a file is a VHD, and one that must not be read.
 *
 * @example
 * ```ts
 * import { hasPoisonCookie } from "./format.ts";
 * hasPoisonCookie(new TextEncoder().encode("v_poison")); // true
 * ```
 */
export function hasPoisonCookie(bytes: Uint8Array): boolean {
  return bytes.length >= 8 && ascii(bytes, 0, 8) === POISON_COOKIE;
}

/**
 * Parses and validates a footer (512 bytes; a 511-byte footer from very old Microsoft tools is
 * accepted too). Checks the cookie, the checksum (accepting old tapdisk footers whose `hidden`
 * flag was set without re-checksumming, as libvhd does) and the disk type.
 *
 * @param bytes the footer bytes
 * @param file the file name, for errors
 * @param offset where in the file the footer was read, for errors
 * @example
 * ```ts ignore
 * import { parseFooter } from "./format.ts";
 * const footer = parseFooter(last512Bytes, "disk.vhd", fileSize - 512);
 * footer.currentSize; // virtual size in bytes
 * ```
 */
export function parseFooter(bytes: Uint8Array, file: string, offset: number): VhdFooter {
  if (bytes.length === FOOTER_SIZE - 1) {
    const padded = new Uint8Array(FOOTER_SIZE);
    padded.set(bytes);
    bytes = padded;
  }
  if (bytes.length < FOOTER_SIZE) {
    throw new VhdError(file, offset, `footer truncated: ${bytes.length} of ${FOOTER_SIZE} bytes`);
  }
  const b = bytes.subarray(0, FOOTER_SIZE);
  const cookie = ascii(b, 0, 8);
  if (cookie === POISON_COOKIE) {
    throw new VhdError(
      file,
      offset,
      `VHD is marked disabled (footer cookie "v_poison", left by an interrupted vhd-util ` +
        `resize): repair it with vhd-util before copying it`,
    );
  }
  if (cookie !== FOOTER_COOKIE) {
    throw new VhdError(
      file,
      offset,
      `not a VHD: bad footer cookie ${printable(cookie)} (expected "conectix")`,
    );
  }
  const checksum = u32(b, 64);
  const creatorApp = ascii(b, 28, 4);
  const creatorVersion = u32(b, 32);
  const hidden = b[85];
  let computed = vhdChecksum(b, 64);
  if (
    computed !== checksum && hidden !== 0 && creatorApp.startsWith("tap") &&
    (creatorVersion === 0x00000001 || creatorVersion === 0x00010001)
  ) {
    computed = (computed + hidden) >>> 0; // the sum without the hidden byte
  }
  if (computed !== checksum) {
    throw new VhdError(
      file,
      offset,
      `bad footer checksum 0x${hex32(checksum)} (computed 0x${hex32(computed)})`,
    );
  }
  const diskType = u32(b, 60);
  if (
    diskType !== DiskType.Fixed && diskType !== DiskType.Dynamic &&
    diskType !== DiskType.Differencing
  ) {
    throw new VhdError(
      file,
      offset,
      `unsupported VHD disk type ${diskType} (expected 2 fixed, 3 dynamic or 4 differencing)`,
    );
  }
  const currentSize = u64(b, 48);
  if (currentSize === undefined) {
    throw new VhdError(file, offset, "virtual size in the footer is larger than 2^53 bytes");
  }
  const geometry = u32(b, 56);
  let dataOffset: number | undefined = u64(b, 16);
  if (diskType === DiskType.Fixed) {
    dataOffset = undefined;
  } else if (dataOffset === undefined) {
    throw new VhdError(file, offset, "dynamic header offset in the footer is out of range");
  }
  return {
    cookie,
    features: u32(b, 8),
    formatVersion: u32(b, 12),
    dataOffset,
    timestamp: u32(b, 24),
    creatorApp,
    creatorVersion,
    creatorOs: u32(b, 36),
    originalSize: u64(b, 40) ?? Number.MAX_SAFE_INTEGER,
    currentSize,
    geometry: {
      cylinders: geometry >>> 16,
      heads: (geometry >>> 8) & 0xff,
      sectorsPerTrack: geometry & 0xff,
    },
    diskType: diskType as DiskTypeValue,
    checksum,
    uuid: formatUuid(b, 68),
    savedState: b[84],
    hidden,
  };
}

function hex32(n: number): string {
  return n.toString(16).padStart(8, "0");
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

/**
 * Parses and validates the 1024-byte dynamic disk header: cookie `cxsparse`, checksum, version,
 * a power-of-two block size of at least one sector, and the parent locator table.
 *
 * @param bytes the header bytes (at least 1024)
 * @param file the file name, for errors
 * @param offset the header's offset in the file (footer.dataOffset), for errors
 * @example
 * ```ts ignore
 * import { parseHeader } from "./format.ts";
 * const header = parseHeader(bytes1024, "disk.vhd", 512);
 * header.blockSize; // 2097152
 * ```
 */
export function parseHeader(bytes: Uint8Array, file: string, offset: number): VhdHeader {
  if (bytes.length < HEADER_SIZE) {
    throw new VhdError(
      file,
      offset,
      `dynamic header truncated: ${bytes.length} of ${HEADER_SIZE} bytes`,
    );
  }
  const b = bytes.subarray(0, HEADER_SIZE);
  const cookie = ascii(b, 0, 8);
  if (cookie !== HEADER_COOKIE) {
    throw new VhdError(
      file,
      offset,
      `bad dynamic header cookie ${printable(cookie)} (expected "cxsparse")`,
    );
  }
  const checksum = u32(b, 36);
  const computed = vhdChecksum(b, 36);
  if (computed !== checksum) {
    throw new VhdError(
      file,
      offset,
      `bad dynamic header checksum 0x${hex32(checksum)} (computed 0x${hex32(computed)})`,
    );
  }
  const headerVersion = u32(b, 24);
  if (headerVersion !== HEADER_VERSION) {
    throw new VhdError(
      file,
      offset + 24,
      `unsupported dynamic header version 0x${hex32(headerVersion)} (expected 0x00010000)`,
    );
  }
  const tableOffset = u64(b, 16);
  if (tableOffset === undefined) {
    throw new VhdError(file, offset + 16, "BAT offset is out of range");
  }
  const blockSize = u32(b, 32);
  if (!isPowerOfTwo(blockSize) || blockSize < SECTOR) {
    throw new VhdError(
      file,
      offset + 32,
      `block size ${blockSize} is not a power of two of at least ${SECTOR} bytes`,
    );
  }
  const locators: ParentLocator[] = [];
  for (let i = 0; i < 8; i++) {
    const at = 576 + i * 24;
    const code = u32(b, at);
    if (code === 0) continue;
    const space = u32(b, at + 4);
    const dataOffset = u64(b, at + 16);
    if (dataOffset === undefined) {
      throw new VhdError(file, offset + at + 16, `parent locator ${i} offset is out of range`);
    }
    locators.push({
      index: i,
      platform: fourCC(code),
      code,
      // The spec says sectors, blktap writes bytes; libvhd's rule tells them apart.
      dataSpace: space < SECTOR ? space * SECTOR : space,
      dataLength: u32(b, at + 8),
      dataOffset,
    });
  }
  return {
    tableOffset,
    headerVersion,
    maxTableEntries: u32(b, 28),
    blockSize,
    checksum,
    parentUuid: formatUuid(b, 40),
    parentTimestamp: u32(b, 56),
    parentName: decodeUtf16(b.subarray(64, 576), false),
    locators,
  };
}

/** Decodes UTF-16 (BE or LE), stopping at the first NUL; a BOM, if any, decides the order. */
function decodeUtf16(b: Uint8Array, littleEndian: boolean): string {
  let start = 0;
  if (b.length >= 2) {
    if (b[0] === 0xfe && b[1] === 0xff) [littleEndian, start] = [false, 2];
    else if (b[0] === 0xff && b[1] === 0xfe) [littleEndian, start] = [true, 2];
  }
  let end = start;
  while (end + 1 < b.length && (b[end] !== 0 || b[end + 1] !== 0)) end += 2;
  return new TextDecoder(littleEndian ? "utf-16le" : "utf-16be").decode(b.subarray(start, end));
}

/**
 * Bytes of sector bitmap in front of each block of `blockSize` bytes (a whole sector or more).
 *
 * @example
 * ```ts
 * import { bitmapBytesFor } from "./format.ts";
 * bitmapBytesFor(2 * 1024 * 1024); // 512 (4096 sectors, 512 bytes of bits)
 * ```
 */
export function bitmapBytesFor(blockSize: number): number {
  const bytes = Math.ceil(blockSize / SECTOR / 8);
  return Math.ceil(bytes / SECTOR) * SECTOR;
}

/**
 * Derives the block layout from footer and header and checks it against the file: the BAT must
 * cover the virtual size, must not be absurdly large, and must lie inside the file.
 *
 * @param footer the parsed footer
 * @param header the parsed dynamic header
 * @param fileSize bytes in the file (or block device)
 * @param file the file name, for errors
 * @example
 * ```ts ignore
 * import { checkLayout } from "./format.ts";
 * const layout = checkLayout(footer, header, fileSize, "disk.vhd");
 * layout.entries; // BAT entries to read
 * ```
 */
export function checkLayout(
  footer: VhdFooter,
  header: VhdHeader,
  fileSize: number,
  file: string,
): VhdLayout {
  const headerOffset = footer.dataOffset ?? 0;
  const blockSize = header.blockSize;
  if (header.maxTableEntries > MAX_TABLE_ENTRIES) {
    throw new VhdError(
      file,
      headerOffset + 28,
      `absurd max_table_entries ${header.maxTableEntries} (limit ${MAX_TABLE_ENTRIES})`,
    );
  }
  const entries = Math.ceil(footer.currentSize / blockSize);
  if (entries > header.maxTableEntries) {
    throw new VhdError(
      file,
      headerOffset + 28,
      `BAT has ${header.maxTableEntries} entries but the virtual size ${footer.currentSize} ` +
        `needs ${entries} blocks of ${blockSize} bytes`,
    );
  }
  const declaredEnd = header.tableOffset + header.maxTableEntries * 4;
  if (declaredEnd > fileSize) {
    throw new VhdError(
      file,
      header.tableOffset,
      `BAT past end of file: ${header.maxTableEntries} entries at offset ${header.tableOffset} ` +
        `end at ${declaredEnd}, the file has ${fileSize} bytes`,
    );
  }
  return {
    blockSize,
    sectorsPerBlock: blockSize / SECTOR,
    bitmapBytes: bitmapBytesFor(blockSize),
    entries,
    tableOffset: header.tableOffset,
    batBytes: entries * 4,
    metadata: [
      [0, FOOTER_SIZE],
      [headerOffset, headerOffset + HEADER_SIZE],
      [header.tableOffset, declaredEnd],
    ],
  };
}

/**
 * Decodes the used part of the BAT and checks that every allocated block (its bitmap and data)
 * lies inside `[0, dataEnd)`, i.e. before the trailing footer.
 *
 * @param bytes at least `layout.batBytes` bytes read at `layout.tableOffset`
 * @param layout from {@linkcode checkLayout}
 * @param dataEnd where block data must end (the offset of the trailing footer)
 * @param file the file name, for errors
 * @returns the entries: sector offsets of each block's bitmap, or {@linkcode BAT_UNUSED}
 * @example
 * ```ts ignore
 * import { parseBat } from "./format.ts";
 * const bat = parseBat(batBytes, layout, fileSize - 512, "disk.vhd");
 * bat[0] === 0xffffffff; // block 0 unallocated
 * ```
 */
export function parseBat(
  bytes: Uint8Array,
  layout: VhdLayout,
  dataEnd: number,
  file: string,
): Uint32Array {
  if (bytes.length < layout.batBytes) {
    throw new VhdError(
      file,
      layout.tableOffset,
      `BAT truncated: ${bytes.length} of ${layout.batBytes} bytes`,
    );
  }
  const bat = new Uint32Array(layout.entries);
  for (let i = 0; i < layout.entries; i++) bat[i] = u32(bytes, i * 4);
  checkBatEntries(bat, layout, dataEnd, file);
  return bat;
}

/**
 * Checks BAT entries already in host order (e.g. from libvhd) against the file: each block's
 * bitmap and data must end by `dataEnd`.
 *
 * @example
 * ```ts ignore
 * import { checkBatEntries } from "./format.ts";
 * checkBatEntries(batFromLibvhd, layout, fileSize - 512, "disk.vhd"); // throws VhdError if not
 * ```
 */
export function checkBatEntries(
  bat: Uint32Array,
  layout: VhdLayout,
  dataEnd: number,
  file: string,
): void {
  const span = layout.bitmapBytes + layout.blockSize;
  let used = 0;
  for (let i = 0; i < bat.length; i++) {
    if (bat[i] !== BAT_UNUSED) {
      checkBlock(i, bat[i], span, dataEnd, layout, file);
      used++;
    }
  }
  // Two entries whose blocks overlap would make one write show through the other: refuse.
  const sorted = new Float64Array(used);
  let n = 0;
  for (let i = 0; i < bat.length; i++) if (bat[i] !== BAT_UNUSED) sorted[n++] = bat[i];
  sorted.sort();
  for (let k = 1; k < sorted.length; k++) {
    if ((sorted[k] - sorted[k - 1]) * SECTOR < span) {
      const i = bat.indexOf(sorted[k - 1]);
      const j = bat.indexOf(sorted[k], sorted[k] === sorted[k - 1] ? i + 1 : 0);
      throw new VhdError(
        file,
        layout.tableOffset + j * 4,
        `BAT entries ${i} and ${j} share file space (blocks at offsets ${sorted[k - 1] * SECTOR} ` +
          `and ${sorted[k] * SECTOR}, each ${span} bytes): the VHD is broken`,
      );
    }
  }
}

function checkBlock(
  i: number,
  entry: number,
  span: number,
  dataEnd: number,
  layout: VhdLayout,
  file: string,
): void {
  const start = entry * SECTOR;
  for (const [from, to] of layout.metadata ?? []) {
    if (start < to && start + span > from) {
      throw new VhdError(
        file,
        layout.tableOffset + i * 4,
        `BAT entry ${i} points into the file's own metadata: block at offset ${start} overlaps ` +
          `[${from}, ${to}) (footer copy, header or BAT): the VHD is broken`,
      );
    }
  }
  if (start + span > dataEnd) {
    throw new VhdError(
      file,
      layout.tableOffset + i * 4,
      `BAT entry ${i} points past end of file: block at offset ${start} needs ${span} bytes, ` +
        `data ends at ${dataEnd}`,
    );
  }
}

/**
 * True when sector `s` of a block is present according to its MSB-first sector bitmap.
 *
 * @example
 * ```ts
 * import { bitmapHas } from "./format.ts";
 * bitmapHas(new Uint8Array([0x80]), 0); // true
 * bitmapHas(new Uint8Array([0x80]), 1); // false
 * ```
 */
export function bitmapHas(bitmap: Uint8Array, s: number): boolean {
  return (bitmap[s >> 3] & (0x80 >> (s & 7))) !== 0;
}

/** A run of sectors of one block that are all present or all absent. */
export interface SectorRun {
  /** First sector (relative to the block). */
  start: number;
  /** Number of sectors. */
  count: number;
  /** Whether the bitmap marks them present. */
  present: boolean;
}

/**
 * Splits sectors `[from, to)` of a block into maximal runs of present / absent sectors, reading
 * the MSB-first bitmap a byte at a time where it can (0x00 and 0xff bytes are whole runs).
 *
 * @example
 * ```ts
 * import { bitmapRuns } from "./format.ts";
 * bitmapRuns(new Uint8Array([0xf0, 0x00]), 0, 16);
 * // [{ start: 0, count: 4, present: true }, { start: 4, count: 12, present: false }]
 * ```
 */
export function bitmapRuns(bitmap: Uint8Array, from: number, to: number): SectorRun[] {
  const runs: SectorRun[] = [];
  let s = from;
  while (s < to) {
    const present = bitmapHas(bitmap, s);
    const full = present ? 0xff : 0x00;
    let e = s + 1;
    while (e < to) {
      if ((e & 7) === 0 && e + 8 <= to && bitmap[e >> 3] === full) {
        e += 8;
        continue;
      }
      if (bitmapHas(bitmap, e) !== present) break;
      e++;
    }
    runs.push({ start: s, count: e - s, present });
    s = e;
  }
  return runs;
}

/**
 * Decodes one parent locator's data into a path, as libvhd does: `MacX` is a UTF-8 `file://`
 * URL, `W2ku`/`W2ru` are UTF-16LE Windows paths (backslashes become slashes, a `C:` prefix is
 * dropped). Other platforms (`Wi2k`, `Wi2r`, `Mac ` aliases) are not decodable: `undefined`.
 *
 * @param locator the entry
 * @param data `locator.dataLength` bytes read at `locator.dataOffset`
 * @example
 * ```ts
 * import { decodeLocator } from "./format.ts";
 * const data = new TextEncoder().encode("file://./base.vhd");
 * decodeLocator({ index: 0, platform: "MacX", code: 0x4d616358, dataSpace: 512,
 *   dataLength: data.length, dataOffset: 0 }, data); // "./base.vhd"
 * ```
 */
export function decodeLocator(locator: ParentLocator, data: Uint8Array): string | undefined {
  const bytes = data.subarray(0, locator.dataLength);
  if (locator.platform === "MacX") {
    let text: string;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch {
      return undefined;
    }
    text = text.replace(/\0+$/, "");
    if (!text.startsWith("file://")) return undefined;
    let path = text.slice("file://".length);
    // A file URL with a host part ("file://localhost/x") is not what blktap writes; a URL
    // "file:///abs" leaves "/abs", and blktap's "file://./base.vhd" leaves a relative path.
    try {
      path = decodeURIComponent(path);
    } catch {
      // Not percent-encoded after all (blktap does not encode): keep it as is.
    }
    return path.length > 0 ? path : undefined;
  }
  if (locator.platform === "W2ku" || locator.platform === "W2ru") {
    let path = decodeUtf16(bytes, true).replaceAll("\\", "/");
    if (/^[a-zA-Z]:/.test(path)) path = path.slice(2);
    return path.length > 0 ? path : undefined;
  }
  return undefined;
}

/**
 * The paths to try for a child's parent, in order: first everything relative to the child's
 * directory (relative locators joined to it, then the basenames of absolute locators and of the
 * header's parent name beside the child), then absolute locators as written, then the basenames in
 * any extra search directories (xapi adds `/dev/mapper`). Duplicates are dropped. The caller
 * checks each existing candidate's UUID, so a stale path cannot pick the wrong parent.
 *
 * @param childPath the child's path
 * @param locatorPaths decoded locator paths in header order
 * @param parentName the header's parent unicode name
 * @param searchDirs extra directories to look in
 * @example
 * ```ts
 * import { parentCandidates } from "./format.ts";
 * parentCandidates("/sr/child.vhd", ["./base.vhd", "/old/base.vhd"], "base.vhd");
 * // ["/sr/base.vhd", "/old/base.vhd"]
 * ```
 */
export function parentCandidates(
  childPath: string,
  locatorPaths: readonly string[],
  parentName: string,
  searchDirs: readonly string[] = [],
): string[] {
  const dir = dirname(childPath);
  const out: string[] = [];
  const add = (p: string) => {
    const n = normalize(p);
    if (!out.includes(n)) out.push(n);
  };
  const names: string[] = [];
  const addName = (p: string) => {
    const base = basename(p.replaceAll("\\", "/"));
    if (base.length > 0 && base !== "." && base !== ".." && !names.includes(base)) {
      names.push(base);
    }
  };
  for (const p of locatorPaths) {
    if (p.startsWith("/")) addName(p);
    else add(join(dir, p));
  }
  addName(parentName);
  for (const n of names) add(join(dir, n));
  for (const p of locatorPaths) if (p.startsWith("/")) add(p);
  for (const d of searchDirs) for (const n of names) add(join(d, n));
  return out;
}

/**
 * Human name of a disk type.
 *
 * @example
 * ```ts
 * import { DiskType, diskTypeName } from "./format.ts";
 * diskTypeName(DiskType.Differencing); // "differencing"
 * ```
 */
export function diskTypeName(t: DiskTypeValue): "fixed" | "dynamic" | "differencing" {
  return t === DiskType.Fixed ? "fixed" : t === DiskType.Dynamic ? "dynamic" : "differencing";
}
