/**
 * Files and block devices as {@linkcode Disk}s: libc descriptors through FFI (no shared file
 * position, so calls overlap freely), reads in place when the bytes are in memory and on Deno's
 * thread pool otherwise, and three ways to write (`-unbuffered` unset, `true`, `false`). Regular
 * files report allocation with `SEEK_DATA`/`SEEK_HOLE` and zero by punching holes; block devices
 * zero with `BLKZEROOUT` and give their size by seeking to the end. Why each choice, with the
 * measurements behind it: docs/performance.md.
 *
 * @module
 */

import { type Disk, DiskError, type DiskOp } from "../core/disk.ts";
import { type Extent, ExtentSet } from "../core/extent.ts";
import {
  EINVAL,
  ErrnoError,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  type Libc,
  libc,
  LOCK_EX,
  LOCK_NB,
  O_CREAT,
  O_DIRECT,
  O_EXCL,
  O_RDONLY,
  O_RDWR,
  POSIX_FADV_DONTNEED,
  POSIX_FADV_SEQUENTIAL,
  SYNC_FILE_RANGE_WAIT_AFTER,
  SYNC_FILE_RANGE_WAIT_BEFORE,
  SYNC_FILE_RANGE_WRITE,
} from "./libc.ts";
import { errorText } from "../core/error_text.ts";

/** How to open a {@linkcode FileDisk}. */
export interface FileOpenOptions {
  /** Open for writing (a destination). */
  write?: boolean;
  /** With `write`: create a missing regular file, and grow a smaller one, to this size. */
  createSize?: number;
  /** `O_DIRECT` for aligned requests (`-unbuffered true`), where the file system allows it. */
  unbuffered?: boolean;
  /**
   * With `write`: claim the disk for this writer alone. A block device is opened with `O_EXCL`
   * (the kernel refuses it while mounted or claimed by another), a regular file gets an
   * exclusive `flock`; either fails at once, never waits.
   */
  claim?: boolean;
}

function reasonOf(err: unknown): string {
  if (err instanceof ErrnoError) return err.message;
  // Deno's errors end with "(os error 5)": the strerror text is the reason.
  if (err instanceof Error && /\(os error \d+\)$/.test(err.message)) {
    return err.message.replace(/\s*\(os error \d+\)$/, "");
  }
  if (err instanceof Deno.errors.NotFound) return "No such file or directory";
  if (err instanceof Deno.errors.PermissionDenied) return "Permission denied";
  if (err instanceof Deno.errors.IsADirectory) return "Is a directory";
  const msg = errorText(err);
  // Deno appends the path ("..., open '/x'"); the caller names the path itself.
  return msg.replace(/,\s*(open|stat|lstat|read|write|seek|truncate)\s+'[^']*'$/, "");
}

/** The I/O underneath a FileDisk: libc descriptors, or a Deno.FsFile. */
interface Backend {
  /** Some requests bypass the page cache (and wait for the device). */
  readonly direct: boolean;
  /** How many reads are worth keeping in flight (see {@linkcode FileDisk.readQueueDepth}). */
  readonly readQueueDepth?: number;
  /** How many writes are worth keeping in flight. */
  readonly queueDepth: number;
  size(): Promise<number>;
  truncate(size: number): Promise<void>;
  read(offset: number, buf: Uint8Array): Promise<void>;
  write(offset: number, buf: Uint8Array): Promise<void>;
  /** Absent when there is no cheaper way than writing zeroes. */
  zero?(offset: number, length: number): Promise<void>;
  extents?(size: number): Extent[] | undefined;
  flush(): Promise<void>;
  /** Releases the descriptors; throws what closing a written one reports. */
  close(): void;
}

const ZERO_CHUNK = 1 << 20;
let zeroes: Uint8Array | undefined;
/** A shared, never-written buffer of zeroes for filling ranges. */
function zeroBuffer(): Uint8Array {
  return zeroes ??= new Uint8Array(ZERO_CHUNK);
}

/**
 * Keeps a buffered destination's dirty data small and moving: every 8 MiB of data written is
 * handed to the device at once (`sync_file_range` WRITE over the range it spans), and once more
 * than 64 MiB of data is in flight the oldest range is waited for and dropped from the page cache
 * (`POSIX_FADV_DONTNEED`). (2 and 32 MiB, measured on ext4 against 8 and 64: 12-14% slower to
 * durable on the S2 and VM shapes, more CPU in `sync_file_range` calls, more extents; the same on
 * whole 2 MiB blocks.) Counted in data, not in the span of the file it covers: on a sparse copy
 * (the VM shape: 1 GiB of scattered extents over 16 GiB) counting the span made 1,365 ranges of
 * ~0.5 MiB of data each, two thread-pool calls apiece; counting data, 13% faster to durable and
 * 16% less CPU there, the same on S1, S2 and BIG (5 interleaved runs, 2026-12-05).
 * So writeback overlaps the copy, the final `fdatasync` has little left, and the copy does not
 * fill dom0's page cache with a VDI nobody reads back. Used by {@linkcode FileDisk}; exported
 * for tests.
 *
 * @example
 * ```ts
 * import { libc, O_CREAT, O_RDWR } from "./libc.ts";
 * import { Writeback } from "./file_disk.ts";
 * const c = libc()!;
 * const fd = c.open("/tmp/x.raw", O_RDWR | O_CREAT);
 * const wb = new Writeback(c, fd);
 * c.pwriteSync(fd, new Uint8Array(4096).fill(1), 0);
 * await wb.written(0, 4096);
 * await wb.settle(); // handed out and on the device
 * c.close(fd);
 * ```
 */
export class Writeback {
  static readonly KICK = 8 << 20;
  static readonly WINDOW = 64 << 20;
  /**
   * Writes this close to the open range join it (plans write front to back, a few at once); a
   * write further away hands out the open range first. Far, so that a sparse copy's scattered
   * writes share ranges.
   */
  static readonly GAP = 64 << 20;
  #start = -1;
  #end = -1;
  /** Bytes written into the open range (its span may be much larger on a sparse copy). */
  #openBytes = 0;
  /** Ranges handed out, oldest first, each with the call that hands it out. */
  readonly #kicked: Array<Extent & { bytes: number; kicked: Promise<void> }> = [];
  #kickedBytes = 0;
  /** The latest `sync_file_range` WRITE: the next one starts after it returns. */
  #lastKick: Promise<void> = Promise.resolve();
  readonly #pending = new Set<Promise<void>>();
  #error: unknown;

  constructor(readonly c: Libc, readonly fd: number) {}

  /** Records a completed buffered write; may wait for older ranges to reach the device. */
  async written(offset: number, length: number): Promise<void> {
    this.#throwIfFailed();
    const end = offset + length;
    if (
      this.#start >= 0 && offset <= this.#end + Writeback.GAP && end >= this.#start - Writeback.GAP
    ) {
      this.#start = Math.min(this.#start, offset);
      this.#end = Math.max(this.#end, end);
    } else {
      this.#kick();
      this.#start = offset;
      this.#end = end;
    }
    this.#openBytes += length;
    if (this.#openBytes >= Writeback.KICK) this.#kick();
    while (this.#kickedBytes > Writeback.WINDOW) await this.#retireOldest();
    this.#throwIfFailed();
  }

  /**
   * Starts writeback of the open range, without waiting. One call at a time, in the order the
   * ranges were written: the file system picks the blocks of delayed-allocation pages as they
   * are written back, and two calls at once (on two threads of the pool, when the device is
   * slow to take the first) record their extents in interleaved order: ext4 then splits extent
   * tree leaves, and the file takes a few more blocks than `cp`'s copy.
   */
  #kick(): void {
    if (this.#start < 0) return;
    const start = this.#start;
    const length = this.#end - this.#start;
    const bytes = this.#openBytes;
    this.#start = this.#end = -1;
    this.#openBytes = 0;
    const kicked = this.#lastKick.then(() =>
      this.c.syncFileRangeAsync(this.fd, start, length, SYNC_FILE_RANGE_WRITE)
    );
    this.#lastKick = kicked.catch(() => {});
    this.#kicked.push({ start, length, bytes, kicked });
    this.#kickedBytes += bytes;
    this.#track(kicked);
  }

  async #retireOldest(): Promise<void> {
    const r = this.#kicked.shift();
    if (!r) return;
    this.#kickedBytes -= r.bytes;
    const wait = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER;
    // Its own call first, so that this one never starts writing the range back itself. (Its
    // failure is reported through #track.)
    await r.kicked.catch(() => {});
    // A writeback error seen here is consumed from the file: it must be reported, by the write
    // that waited and by every later write and flush. (Waiting here rather than in the
    // background measured faster: more writeback in flight only slowed the device.)
    await this.#track(this.c.syncFileRangeAsync(this.fd, r.start, r.length, wait));
    this.c.fadvise(this.fd, r.start, r.length, POSIX_FADV_DONTNEED);
  }

  #track(p: Promise<void>): Promise<void> {
    const t = p.catch((err) => {
      this.#error ??= err;
    }).finally(() => this.#pending.delete(t));
    this.#pending.add(t);
    return t;
  }

  #throwIfFailed(): void {
    if (this.#error !== undefined) throw this.#error;
  }

  /** Waits for every range handed out so far; throws the first writeback error. */
  async settle(): Promise<void> {
    this.#kick();
    await Promise.all([...this.#pending]);
    this.#throwIfFailed();
  }
}

class FdBackend implements Backend {
  /** Sector size of a block device, for BLKZEROOUT's alignment. */
  readonly #sector: number;
  #punch = true;
  /** Cached bytes are read in place (`RWF_NOWAIT`) until the kernel says it cannot. */
  #cachedReads = true;
  /** The latest read was served from memory on this thread. */
  #readInPlace = false;

  constructor(
    readonly c: Libc,
    readonly fd: number,
    /** An `O_DIRECT` descriptor for aligned requests (`-unbuffered true`), when allowed. */
    readonly directFd: number | undefined,
    readonly directAlign: number,
    readonly isBlock: boolean,
    /** Buffered writes are pushed to the device as they go (see {@linkcode Writeback}). */
    readonly writeback: Writeback | undefined,
    /**
     * A writable disk's second descriptor, opened before anything is written, that only flushes.
     * The kernel reports a writeback error once to each open descriptor: whatever the others
     * saw (a `sync_file_range` on another thread, whose errno is lost), this one still reports
     * it at the end, with its reason, through Deno's own `fdatasync`.
     */
    readonly witness: Deno.FsFile | undefined,
    /** The file lives in memory (tmpfs): reads never wait for a device. */
    readonly inMemory = false,
  ) {
    this.#sector = isBlock ? safe(() => c.blkSectorSize(fd), 512) : 512;
  }

  get direct(): boolean {
    return this.directFd !== undefined;
  }

  /** Reads worth keeping in flight: one while they are served from memory here, else four. */
  get readQueueDepth(): number {
    return this.inMemory || this.#readInPlace ? 1 : 4;
  }

  /** Writes worth keeping in flight: several O_DIRECT ones (each waits for the device). */
  get queueDepth(): number {
    return this.directFd !== undefined ? 4 : 1;
  }

  size(): Promise<number> {
    return Promise.resolve(this.c.size(this.fd));
  }

  truncate(size: number): Promise<void> {
    this.c.ftruncate(this.fd, size);
    return Promise.resolve();
  }

  #fdFor(offset: number, buf: Uint8Array): number {
    const d = this.directFd;
    if (d === undefined) return this.fd;
    const a = this.directAlign;
    if (offset % a !== 0 || buf.length % a !== 0 || buf.byteOffset % a !== 0) return this.fd;
    // The view's offset is aligned; its ArrayBuffer must be too (wasm memory and alignedBuffer
    // are page aligned). An unaligned one fails with EINVAL, handled below.
    return d;
  }

  /**
   * Reads what can be read without waiting for a device into `buf`, on this thread: all of it
   * from a memory file system, else what the page cache holds (`RWF_NOWAIT`). Returns the bytes
   * read (0 at end of file).
   */
  #readHere(buf: Uint8Array, offset: number): number {
    let done = 0;
    while (done < buf.length) {
      let n: number | undefined;
      if (this.inMemory) {
        n = this.c.preadSync(this.fd, buf.subarray(done), offset + done);
      } else if (this.#cachedReads) {
        n = this.c.preadCached(this.fd, buf.subarray(done), offset + done);
        if (n === undefined) this.#cachedReads = false;
      }
      if (!n) break;
      done += n;
    }
    return done;
  }

  async read(offset: number, buf: Uint8Array): Promise<void> {
    const fd = this.#fdFor(offset, buf);
    // Buffered reads of what is in memory are done here and now: a trip through the thread pool
    // costs this thread more than the copy itself (BENCHMARKS.md). The rest is read on the pool,
    // so that a read from the device overlaps the copier's work.
    const here = fd === this.fd ? this.#readHere(buf, offset) : 0;
    this.#readInPlace = here === buf.length;
    if (here === buf.length) return;
    if (here > 0) return await this.c.preadAll(fd, buf.subarray(here), offset + here);
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
    const fd = this.#fdFor(offset, buf);
    try {
      if (fd === this.fd) {
        // A buffered write is a copy into the page cache: done in place it costs less than a
        // trip through the thread pool (measured 20-25% faster), and reads still run ahead on
        // the pool meanwhile.
        for (let done = 0; done < buf.length;) {
          const n = this.c.pwriteSync(fd, buf.subarray(done), offset + done);
          if (n === 0) throw new ErrnoError("pwrite", 0, "no space left");
          done += n;
        }
      } else {
        await this.c.pwriteAll(fd, buf, offset);
      }
    } catch (err) {
      if (fd !== this.fd && err instanceof ErrnoError && err.errno === EINVAL) {
        await this.c.pwriteAll(this.fd, buf, offset);
      } else {
        throw err;
      }
    }
    if (fd === this.fd && this.writeback) {
      try {
        await this.writeback.written(offset, buf.length);
      } catch (err) {
        throw await this.#why(err);
      }
    }
  }

  /** A writeback error with its reason, when the witness can tell it (see `witness`). */
  async #why(err: unknown): Promise<unknown> {
    if (!(err instanceof ErrnoError) || this.witness === undefined) return err;
    try {
      await this.witness.syncData();
    } catch (reason) {
      return reason;
    }
    return err;
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
        await this.#zeroDevice(a, b - a);
        await this.#fill(b, end);
        return;
      }
      return await this.#fill(offset, end);
    }
    // A hole reads as zero and frees the space: the destination stays sparse.
    if (await this.#punchHole(offset, length, ["EOPNOTSUPP"])) return;
    try {
      return await this.c.fallocate(this.fd, FALLOC_FL_ZERO_RANGE, offset, length);
    } catch (err) {
      if (!(err instanceof ErrnoError) || err.code !== "EOPNOTSUPP") throw err;
    }
    await this.#fill(offset, end);
  }

  /**
   * Zeroes a sector-aligned range of a block device. Punching a hole (`fallocate` on the device)
   * lets it unmap, so a thin device or a loop device's backing file gives the space back;
   * BLKZEROOUT (which keeps the blocks mapped, and writes zeroes itself where the device cannot)
   * is the fallback.
   */
  async #zeroDevice(offset: number, length: number): Promise<void> {
    if (await this.#punchHole(offset, length, ["EOPNOTSUPP", "EINVAL", "ENODEV"])) return;
    await this.c.blkZeroOut(this.fd, offset, length);
  }

  /**
   * Punches a hole over the range; false (and no more tries on this disk) when the kernel says
   * the file or device cannot, with one of the `unsupported` errno names.
   */
  async #punchHole(offset: number, length: number, unsupported: string[]): Promise<boolean> {
    if (!this.#punch) return false;
    try {
      await this.c.fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
      return true;
    } catch (err) {
      if (!(err instanceof ErrnoError) || !unsupported.includes(err.code)) throw err;
      this.#punch = false;
      return false;
    }
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
    // Every error counts, from the writeback calls or the final sync: none is retried away.
    let failed: unknown;
    await this.writeback?.settle().catch((err) => failed = err);
    if (this.witness) {
      // Deno's fdatasync keeps its errno; it reports any writeback error since the disk was
      // opened, whichever descriptor's pages (or another thread's) failed.
      await this.witness.syncData();
    } else {
      await this.c.fdatasync(this.fd);
    }
    if (failed !== undefined) throw failed;
  }

  close(): void {
    let failed: unknown;
    const close = (f: () => void) => {
      try {
        f();
      } catch (err) {
        failed ??= err;
      }
    };
    if (this.directFd !== undefined) close(() => this.c.close(this.directFd!));
    close(() => this.c.close(this.fd));
    if (this.witness) close(() => this.witness!.close());
    if (failed !== undefined) throw failed;
  }
}

/** Deno.FsFile has one file position: seek+read pairs must not interleave. */
class FsFileBackend implements Backend {
  readonly direct = false;
  readonly queueDepth = 1;
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
 * import { FileDisk } from "./file_disk.ts";
 * const src = await FileDisk.open("/tmp/disk.raw");
 * const dst = await FileDisk.open("/tmp/copy.raw", { write: true, createSize: src.size });
 * dst.knownZero; // true when copy.raw did not exist or was empty
 * ```
 */
export class FileDisk implements Disk {
  /** Any buffer is accepted; aligned ones (see {@linkcode scanBuffer}) go through O_DIRECT. */
  readonly alignment = 1;
  /** Allocation comes from `SEEK_DATA`/`SEEK_HOLE`. */
  readonly allocationRoute = "seek-data";
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
  /**
   * Writes the copier keeps in flight: several with `O_DIRECT` (each waits for the device, which
   * serves them in parallel), else one (a buffered write is a copy done in place, and writeback
   * is paced by {@linkcode Writeback}).
   */
  readonly writeQueueDepth: number;
  /**
   * Reads the copier keeps in flight ahead of its writes: one while they are served from memory
   * on its thread (tmpfs, or the page cache), where a read ahead only holds one more buffer;
   * four when they wait for the device.
   */
  get readQueueDepth(): number {
    return this.#io.readQueueDepth ?? 4;
  }
  #closed = false;
  readonly #io: Backend;

  private constructor(
    readonly name: string,
    backend: Backend,
    readonly size: number,
    /** True for block devices. */
    readonly isBlockDevice: boolean,
    readonly knownZero: boolean,
    writable: boolean,
    zeroOffloaded: boolean,
  ) {
    this.#io = backend;
    const zero = backend.zero?.bind(backend);
    if (writable && zero) {
      this.zero = (offset, length) =>
        zero(offset, length).catch((err) => {
          throw new DiskError(this.name, "zero", offset, reasonOf(err), { cause: err });
        });
    }
    this.zeroIsCheap = this.zero !== undefined && (!isBlockDevice || zeroOffloaded);
    this.writeQueueDepth = writable ? backend.queueDepth : 1;
    this.#writable = writable;
  }

  readonly #writable: boolean;

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
    const claim = write && options.claim === true;
    try {
      backend = openBackend(path, write, create, options.unbuffered, isBlock, claim);
    } catch (err) {
      throw new DiskError(path, "open", undefined, claimReason(err, isBlock) ?? reasonOf(err), {
        cause: err,
      });
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
      safe(() => backend.close(), undefined);
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
      await this.#io.read(offset, buf);
    } catch (err) {
      this.#fail("read", offset, err);
    }
  }

  async write(offset: number, buf: Uint8Array): Promise<void> {
    try {
      await this.#io.write(offset, buf);
    } catch (err) {
      this.#fail("write", offset, err);
    }
  }

  /**
   * Throws a {@linkcode DiskError} when a regular file is now shorter than `size`: it was cut
   * short while being copied, perhaps where the copy read nothing (a hole), so no read failed.
   *
   * @example
   * ```ts ignore
   * await src.assertSize(size); // after the copy, before reporting success
   * ```
   */
  async assertSize(size: number): Promise<void> {
    if (this.isBlockDevice) return;
    let now: number;
    try {
      now = await this.#io.size();
    } catch (err) {
      this.#fail("stat", undefined, err);
    }
    if (now < size) {
      throw new DiskError(
        this.name,
        "read",
        now,
        `the file was cut to ${now} bytes during the copy`,
      );
    }
  }

  /** Data extents from `SEEK_DATA`/`SEEK_HOLE`; `undefined` on devices or without FFI. */
  allocation(): Promise<ExtentSet | undefined> {
    if (this.isBlockDevice) return Promise.resolve(undefined);
    let extents: Extent[] | undefined;
    try {
      extents = this.#io.extents?.(this.size) ?? seekDataExtents(this.name, this.size);
    } catch {
      extents = undefined;
    }
    return Promise.resolve(extents === undefined ? undefined : ExtentSet.of(extents));
  }

  async flush(): Promise<void> {
    try {
      await this.#io.flush();
    } catch (err) {
      this.#fail("flush", undefined, err);
    }
  }

  /**
   * Releases the disk. On a destination, what closing reports (NFS reports write errors there)
   * is an error naming it: the caller closes it before it reports success.
   */
  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#closed = true;
    try {
      this.#io.close();
    } catch (err) {
      if (this.#writable) {
        return Promise.reject(
          new DiskError(this.name, "close", undefined, reasonOf(err), { cause: err }),
        );
      }
    }
    return Promise.resolve();
  }
}

/** Why a claimed open failed, when it failed because another writer has the disk. */
function claimReason(err: unknown, isBlock: boolean): string | undefined {
  if (err instanceof ClaimError) return err.message;
  if (isBlock && err instanceof ErrnoError && err.code === "EBUSY") {
    return "the device is in use (mounted, or being written by another sparse_dd or program " +
      "that claimed it): refusing to write to it";
  }
  return undefined;
}

/** Another writer holds the destination's lock. */
class ClaimError extends Error {}

const LOCKED = "another sparse_dd (or another program holding a lock on it) is writing to it: " +
  "wait for that copy to finish, or give another destination";

function openBackend(
  path: string,
  write: boolean,
  create: boolean,
  unbuffered: boolean | undefined,
  isBlock: boolean,
  claim = false,
): Backend {
  const c = libc();
  if (c === undefined) {
    const file = Deno.openSync(path, { read: true, write, create, mode: 0o644 });
    if (claim && !isBlock && !file.tryLockSync(true)) {
      file.close();
      throw new ClaimError(LOCKED);
    }
    return new FsFileBackend(file);
  }
  // O_EXCL without O_CREAT claims a block device: EBUSY while it is mounted or claimed.
  const flags = (write ? O_RDWR : O_RDONLY) | (create && !isBlock ? O_CREAT : 0) |
    (claim && isBlock ? O_EXCL : 0);
  const fd = c.open(path, flags, 0o644);
  if (claim && !isBlock) {
    try {
      c.flock(fd, LOCK_EX | LOCK_NB);
    } catch (err) {
      safe(() => c.close(fd), undefined);
      if (err instanceof ErrnoError && err.code === "EAGAIN") throw new ClaimError(LOCKED);
      // A file system without flock support: nobody can lock it, so nobody is refused.
      if (!(err instanceof ErrnoError) || (err.code !== "ENOLCK" && err.code !== "EOPNOTSUPP")) {
        throw err;
      }
      return openBackend(path, write, create, unbuffered, isBlock, false);
    }
  }
  let directFd: number | undefined;
  // Block devices default to O_DIRECT: device-to-device through the page cache measured 2.4x
  // slower (two caches, and writeback of the device's cache at the end); O_DIRECT requests to a
  // device run in parallel, unlike O_DIRECT writes into a new file.
  if (unbuffered === true || (unbuffered === undefined && isBlock)) {
    try {
      directFd = c.open(path, (write ? O_RDWR : O_RDONLY) | O_DIRECT);
    } catch {
      // tmpfs and some FUSE file systems refuse O_DIRECT: stay buffered.
      directFd = undefined;
    }
  }
  if (!write) c.fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  // Unset -unbuffered: buffered writes that are pushed out as they go. Measured on ext4: 30%
  // faster to durable than O_DIRECT (whose writes into holes serialise on the inode lock) and
  // 3-4x faster than writing everything and then one fdatasync.
  const inMemory = !isBlock && c.inMemory(fd);
  const writeback = write && unbuffered === undefined && directFd === undefined && !inMemory
    ? new Writeback(c, fd)
    : undefined;
  // 4096 satisfies every logical block size in use (512 and 4096).
  let witness: Deno.FsFile | undefined;
  if (write) {
    try {
      // The same file as `fd`, whatever happens to the path meanwhile.
      witness = Deno.openSync(`/proc/self/fd/${fd}`, { read: true });
    } catch {
      // No /proc: libc's fdatasync, whose failures are final too (see Libc.fdatasync).
      witness = undefined;
    }
  }
  return new FdBackend(c, fd, directFd, 4096, isBlock, writeback, witness, inMemory);
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
 * import { seekDataExtents } from "./file_disk.ts";
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
