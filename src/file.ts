/**
 * Files and block devices as {@linkcode Disk}s.
 *
 * With FFI (the tool runs with `-A`) every disk is a libc file descriptor: `pread`/`pwrite` run on
 * Deno's blocking thread pool, so the copier's next read proceeds on the second core while the
 * current block is written; there is no shared file position, so calls may overlap freely.
 * `-unbuffered true` adds an `O_DIRECT` descriptor used for every aligned request (the page cache
 * of dom0 is then left alone); unaligned requests take the buffered descriptor. Regular files
 * report their allocation through `SEEK_DATA`/`SEEK_HOLE` and zero ranges by punching holes;
 * block devices zero through `BLKZEROOUT`. Without FFI, `Deno.FsFile` does the I/O, one request at
 * a time.
 *
 * A regular file's size is its length; a block device's comes from seeking to its end
 * (`stat().size` is 0 for devices).
 *
 * @module
 */

import { type Disk, DiskError, type DiskOp } from "./disk.ts";
import { type Extent, ExtentSet } from "./extent.ts";
import {
  EINVAL,
  ErrnoError,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  type Libc,
  libc,
  O_CREAT,
  O_DIRECT,
  O_RDONLY,
  O_RDWR,
  POSIX_FADV_SEQUENTIAL,
} from "./libc.ts";

/** How to open a {@linkcode FileDisk}. */
export interface FileOpenOptions {
  /** Open for writing (a destination). */
  write?: boolean;
  /** With `write`: create a missing regular file, and grow a smaller one, to this size. */
  createSize?: number;
  /** `O_DIRECT` for aligned requests (`-unbuffered true`), where the file system allows it. */
  unbuffered?: boolean;
}

function reasonOf(err: unknown): string {
  if (err instanceof ErrnoError) return err.message;
  if (err instanceof Deno.errors.NotFound) return "No such file or directory";
  if (err instanceof Deno.errors.PermissionDenied) return "Permission denied";
  if (err instanceof Deno.errors.IsADirectory) return "Is a directory";
  const msg = err instanceof Error ? err.message : String(err);
  // Deno appends the path ("..., open '/x'"); the caller names the path itself.
  return msg.replace(/,\s*(open|stat|lstat|read|write|seek|truncate)\s+'[^']*'$/, "");
}

/** The I/O underneath a FileDisk: libc descriptors, or a Deno.FsFile. */
interface Backend {
  size(): Promise<number>;
  truncate(size: number): Promise<void>;
  read(offset: number, buf: Uint8Array): Promise<void>;
  write(offset: number, buf: Uint8Array): Promise<void>;
  /** Absent when there is no cheaper way than writing zeroes. */
  zero?(offset: number, length: number): Promise<void>;
  extents?(size: number): Extent[] | undefined;
  flush(): Promise<void>;
  close(): void;
}

const ZERO_CHUNK = 1 << 20;
let zeroes: Uint8Array | undefined;
/** A shared, never-written buffer of zeroes for filling ranges. */
function zeroBuffer(): Uint8Array {
  return zeroes ??= new Uint8Array(ZERO_CHUNK);
}

class FdBackend implements Backend {
  /** Sector size of a block device, for BLKZEROOUT's alignment. */
  readonly #sector: number;
  #punch = true;

  constructor(
    readonly c: Libc,
    readonly fd: number,
    /** An `O_DIRECT` descriptor for aligned requests, when asked for and allowed. */
    readonly directFd: number | undefined,
    readonly directAlign: number,
    readonly isBlock: boolean,
    /** Reads use `directFd` too (else only writes do). */
    readonly directReads: boolean,
    /** Writes smaller than this stay buffered: the page cache merges them. */
    readonly directMinWrite: number,
  ) {
    this.#sector = isBlock ? safe(() => c.blkSectorSize(fd), 512) : 512;
  }

  size(): Promise<number> {
    return Promise.resolve(this.c.size(this.fd));
  }

  truncate(size: number): Promise<void> {
    this.c.ftruncate(this.fd, size);
    return Promise.resolve();
  }

  #fdFor(offset: number, buf: Uint8Array, reading: boolean): number {
    const d = this.directFd;
    if (d === undefined) return this.fd;
    if (reading ? !this.directReads : buf.length < this.directMinWrite) return this.fd;
    const a = this.directAlign;
    if (offset % a !== 0 || buf.length % a !== 0 || buf.byteOffset % a !== 0) return this.fd;
    // The view's offset is aligned; its ArrayBuffer must be too (wasm memory and alignedBuffer
    // are page aligned). An unaligned one fails with EINVAL, handled below.
    return d;
  }

  async read(offset: number, buf: Uint8Array): Promise<void> {
    const fd = this.#fdFor(offset, buf, true);
    try {
      await this.c.preadAll(fd, buf, offset);
    } catch (err) {
      if (fd !== this.fd && err instanceof ErrnoError && err.errno === EINVAL) {
        return await this.c.preadAll(this.fd, buf, offset);
      }
      throw err;
    }
  }

  async write(offset: number, buf: Uint8Array): Promise<void> {
    const fd = this.#fdFor(offset, buf, false);
    try {
      await this.c.pwriteAll(fd, buf, offset);
    } catch (err) {
      if (fd !== this.fd && err instanceof ErrnoError && err.errno === EINVAL) {
        return await this.c.pwriteAll(this.fd, buf, offset);
      }
      throw err;
    }
  }

  async zero(offset: number, length: number): Promise<void> {
    const end = offset + length;
    if (this.isBlock) {
      // BLKZEROOUT needs sector alignment: write the ragged edges.
      const s = this.#sector;
      const a = Math.ceil(offset / s) * s;
      const b = Math.floor(end / s) * s;
      if (a < b) {
        await this.#fill(offset, a);
        await this.c.blkZeroOut(this.fd, a, b - a);
        await this.#fill(b, end);
        return;
      }
      return await this.#fill(offset, end);
    }
    if (this.#punch) {
      try {
        // A hole reads as zero and frees the space: the destination stays sparse.
        return await this.c.fallocate(
          this.fd,
          FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
          offset,
          length,
        );
      } catch (err) {
        if (!(err instanceof ErrnoError) || err.code !== "EOPNOTSUPP") throw err;
        this.#punch = false;
      }
    }
    try {
      return await this.c.fallocate(this.fd, FALLOC_FL_ZERO_RANGE, offset, length);
    } catch (err) {
      if (!(err instanceof ErrnoError) || err.code !== "EOPNOTSUPP") throw err;
    }
    await this.#fill(offset, end);
  }

  async #fill(from: number, to: number): Promise<void> {
    const z = zeroBuffer();
    for (let at = from; at < to; at += z.length) {
      await this.c.pwriteAll(this.fd, z.subarray(0, Math.min(z.length, to - at)), at);
    }
  }

  extents(size: number): Extent[] | undefined {
    return this.isBlock ? undefined : walkExtents(this.c, this.fd, size);
  }

  async flush(): Promise<void> {
    await this.c.fdatasync(this.fd);
  }

  close(): void {
    if (this.directFd !== undefined) safe(() => this.c.close(this.directFd!), undefined);
    this.c.close(this.fd);
  }
}

/** Deno.FsFile has one file position: seek+read pairs must not interleave. */
class FsFileBackend implements Backend {
  #lock: Promise<unknown> = Promise.resolve();
  constructor(readonly file: Deno.FsFile) {}

  #serial<T>(op: () => Promise<T>): Promise<T> {
    const run = this.#lock.then(op, op);
    this.#lock = run.catch(() => {});
    return run;
  }

  size(): Promise<number> {
    return this.#serial(() => this.file.seek(0, Deno.SeekMode.End));
  }

  truncate(size: number): Promise<void> {
    return this.#serial(() => this.file.truncate(size));
  }

  read(offset: number, buf: Uint8Array): Promise<void> {
    return this.#serial(async () => {
      await this.file.seek(offset, Deno.SeekMode.Start);
      let got = 0;
      while (got < buf.length) {
        const n = await this.file.read(buf.subarray(got));
        if (n === null || n === 0) throw new ErrnoError("read", 0, "unexpected end of file");
        got += n;
      }
    });
  }

  write(offset: number, buf: Uint8Array): Promise<void> {
    return this.#serial(async () => {
      await this.file.seek(offset, Deno.SeekMode.Start);
      let put = 0;
      while (put < buf.length) {
        const n = await this.file.write(buf.subarray(put));
        if (n === 0) throw new ErrnoError("write", 0, "no space left");
        put += n;
      }
    });
  }

  flush(): Promise<void> {
    return this.#serial(() => this.file.syncData());
  }

  close(): void {
    this.file.close();
  }
}

function safe<T>(f: () => T, fallback: T): T {
  try {
    return f();
  } catch {
    return fallback;
  }
}

/** True when the block device `rdev` zeroes without writing: `write_zeroes_max_bytes` > 0. */
function offloadsZeroes(rdev: number | null): boolean {
  if (rdev === null) return false;
  const major = (rdev >> 8) & 0xfff;
  const minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
  try {
    const text = Deno.readTextFileSync(
      `/sys/dev/block/${major}:${minor}/queue/write_zeroes_max_bytes`,
    );
    return Number(text.trim()) > 0;
  } catch {
    return false;
  }
}

/**
 * A regular file or block device.
 *
 * @example
 * ```ts
 * import { FileDisk } from "./file.ts";
 * const src = await FileDisk.open("/tmp/disk.raw");
 * const dst = await FileDisk.open("/tmp/copy.raw", { write: true, createSize: src.size });
 * dst.knownZero; // true when copy.raw did not exist or was empty
 * ```
 */
export class FileDisk implements Disk {
  /** Any buffer is accepted; aligned ones (see {@linkcode scanBuffer}) go through O_DIRECT. */
  readonly alignment = 1;
  /**
   * Present when ranges can be made zero without writing them: holes punched in a file,
   * BLKZEROOUT on a device.
   */
  readonly zero?: (offset: number, length: number) => Promise<void>;
  /**
   * True when zeroing the whole destination first and then writing only non-zero data is the
   * fastest way to overwrite it: a file (hole punching is metadata only) or a device that offloads
   * write-zeroes (loop devices, most SSDs and SANs). False on a device that would write every
   * zero byte.
   */
  readonly zeroIsCheap: boolean;
  #closed = false;

  private constructor(
    readonly name: string,
    readonly backend: Backend,
    readonly size: number,
    /** True for block devices. */
    readonly isBlockDevice: boolean,
    readonly knownZero: boolean,
    writable: boolean,
    zeroOffloaded: boolean,
  ) {
    const zero = backend.zero?.bind(backend);
    if (writable && zero) {
      this.zero = (offset, length) =>
        zero(offset, length).catch((err) => {
          throw new DiskError(this.name, "zero", offset, reasonOf(err), { cause: err });
        });
    }
    this.zeroIsCheap = this.zero !== undefined && (!isBlockDevice || zeroOffloaded);
  }

  /** Opens `path`; throws a {@linkcode DiskError} naming it on failure. */
  static async open(path: string, options: FileOpenOptions = {}): Promise<FileDisk> {
    let info: Deno.FileInfo | undefined;
    try {
      info = await Deno.stat(path);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound) || options.createSize === undefined) {
        throw new DiskError(path, "open", undefined, reasonOf(err), { cause: err });
      }
    }
    if (info?.isDirectory) throw new DiskError(path, "open", undefined, "Is a directory");
    if (info && !info.isFile && !info.isBlockDevice && !info.isCharDevice) {
      throw new DiskError(path, "open", undefined, "not a regular file or block device");
    }
    const write = options.write ?? false;
    const create = write && options.createSize !== undefined;
    const isBlock = info?.isBlockDevice ?? false;
    let backend: Backend;
    try {
      backend = openBackend(path, write, create, options.unbuffered, isBlock);
    } catch (err) {
      throw new DiskError(path, "open", undefined, reasonOf(err), { cause: err });
    }
    try {
      let size: number;
      if (info === undefined || info.isFile) size = info?.size ?? 0;
      else size = await backend.size();
      let knownZero = false;
      if (write && options.createSize !== undefined && !isBlock && info?.isCharDevice !== true) {
        // A new or empty file is all holes once extended: it reads as zero.
        knownZero = size === 0;
        if (size < options.createSize) {
          await backend.truncate(options.createSize);
          size = options.createSize;
        }
      }
      const offload = isBlock && write && offloadsZeroes(info?.rdev ?? null);
      return new FileDisk(path, backend, size, isBlock, knownZero, write, offload);
    } catch (err) {
      backend.close();
      throw new DiskError(path, "open", undefined, reasonOf(err), { cause: err });
    }
  }

  #fail(op: DiskOp, offset: number | undefined, err: unknown): never {
    if (err instanceof DiskError) throw err;
    const e = new DiskError(this.name, op, offset, reasonOf(err), { cause: err });
    throw e;
  }

  async read(offset: number, buf: Uint8Array): Promise<void> {
    try {
      await this.backend.read(offset, buf);
    } catch (err) {
      this.#fail("read", offset, err);
    }
  }

  async write(offset: number, buf: Uint8Array): Promise<void> {
    try {
      await this.backend.write(offset, buf);
    } catch (err) {
      this.#fail("write", offset, err);
    }
  }

  /** Data extents from `SEEK_DATA`/`SEEK_HOLE`; `undefined` on devices or without FFI. */
  allocation(): Promise<ExtentSet | undefined> {
    if (this.isBlockDevice) return Promise.resolve(undefined);
    let extents: Extent[] | undefined;
    try {
      extents = this.backend.extents?.(this.size) ?? seekDataExtents(this.name, this.size);
    } catch {
      extents = undefined;
    }
    return Promise.resolve(extents === undefined ? undefined : ExtentSet.of(extents));
  }

  async flush(): Promise<void> {
    try {
      await this.backend.flush();
    } catch (err) {
      this.#fail("flush", undefined, err);
    }
  }

  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#closed = true;
    try {
      this.backend.close();
    } catch {
      // Closing cannot lose data that flush() did not already report.
    }
    return Promise.resolve();
  }
}

function openBackend(
  path: string,
  write: boolean,
  create: boolean,
  unbuffered: boolean | undefined,
  isBlock: boolean,
): Backend {
  const c = libc();
  if (c === undefined) {
    return new FsFileBackend(
      Deno.openSync(path, { read: true, write, create, mode: 0o644 }),
    );
  }
  const flags = (write ? O_RDWR : O_RDONLY) | (create ? O_CREAT : 0);
  const fd = c.open(path, flags, 0o644);
  const policy = ioPolicy(unbuffered, write);
  let directFd: number | undefined;
  if (policy.direct) {
    try {
      directFd = c.open(path, (write ? O_RDWR : O_RDONLY) | O_DIRECT);
    } catch {
      // tmpfs and some FUSE file systems refuse O_DIRECT: stay buffered.
      directFd = undefined;
    }
  }
  if (!write) c.fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  // 4096 satisfies every logical block size in use (512 and 4096).
  return new FdBackend(
    c,
    fd,
    directFd,
    4096,
    isBlock,
    policy.directReads,
    policy.directMinWrite,
  );
}

/**
 * Which requests bypass the page cache. `-unbuffered true`: every aligned one. `false`: none.
 * Unset: large aligned writes only; reads stay buffered.
 */
function ioPolicy(unbuffered: boolean | undefined, write: boolean) {
  const env = (k: string) => {
    try {
      return Deno.env.get(k);
    } catch {
      return undefined;
    }
  };
  if (unbuffered === true) return { direct: true, directReads: true, directMinWrite: 0 };
  if (unbuffered === false || !write) {
    return { direct: false, directReads: false, directMinWrite: Infinity };
  }
  const min = Number(env("SPARSE_DD_DIRECT_MIN") ?? 1 << 20);
  return { direct: min !== Infinity && min >= 0, directReads: false, directMinWrite: min };
}

/** Walks SEEK_DATA/SEEK_HOLE on an open descriptor; `undefined` where unsupported. */
function walkExtents(c: Libc, fd: number, size: number): Extent[] | undefined {
  const out: Extent[] = [];
  let pos = 0;
  try {
    while (pos < size) {
      const data = c.seekData(fd, pos);
      if (data === undefined || data >= size) break;
      const hole = Math.min(size, c.seekHole(fd, data));
      out.push({ start: data, length: hole - data });
      pos = hole;
    }
  } catch {
    return undefined;
  }
  return out;
}

/**
 * The data extents of a regular file below `size`, walking `SEEK_DATA`/`SEEK_HOLE`; `undefined`
 * when they cannot be had (no FFI permission, or a file system that answers EINVAL).
 *
 * @example
 * ```ts
 * import { seekDataExtents } from "./file.ts";
 * seekDataExtents("/tmp/disk.raw", 1 << 30); // [{ start: 1048576, length: 8192 }, ...]
 * ```
 */
export function seekDataExtents(path: string, size: number): Extent[] | undefined {
  const c = libc();
  if (!c) return undefined;
  let fd: number;
  try {
    fd = c.open(path, O_RDONLY);
  } catch {
    return undefined;
  }
  try {
    return walkExtents(c, fd, size);
  } finally {
    safe(() => c.close(fd), undefined);
  }
}
