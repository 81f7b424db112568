/**
 * Thin, typed bindings to the few libc calls Deno does not expose: `open` with `O_DIRECT`,
 * `pread`/`pwrite` that run on another thread (so a read overlaps a write on the second core),
 * `lseek` with `SEEK_DATA`/`SEEK_HOLE`, the block-device ioctls (`BLKGETSIZE64`, `BLKZEROOUT`,
 * `BLKDISCARD`), `fallocate`, `ftruncate`, `fdatasync`, `posix_fadvise`, page-aligned buffers and
 * `errno` with its `strerror` text.
 *
 * Everything is loaded lazily on first use: {@linkcode libc} returns `undefined` when FFI is not
 * permitted or `libc.so.6` cannot be opened, so callers fall back to `Deno.FsFile` without
 * paying for a `dlopen` they cannot use. Linux only (x86_64 and aarch64 flag values).
 *
 * Failures throw {@linkcode ErrnoError}, whose message is the `strerror` text ("No space left on
 * device"), so a caller can wrap it in a `DiskError` naming the disk and offset.
 *
 * @example Listing the data extents of a sparse file
 * ```ts
 * import { libc, O_RDONLY } from "./libc.ts";
 * const c = libc();
 * if (c) {
 *   const fd = c.open("/tmp/disk.raw", O_RDONLY);
 *   try {
 *     const end = c.size(fd);
 *     for (let at = c.seekData(fd, 0); at !== undefined && at < end;) {
 *       const hole = c.seekHole(fd, at);
 *       console.log(`data [${at}, ${hole})`);
 *       at = c.seekData(fd, hole);
 *     }
 *   } finally {
 *     c.close(fd);
 *   }
 * }
 * ```
 *
 * @module
 */

const AARCH64 = Deno.build.arch === "aarch64";

/** `open` flag: read only. */
export const O_RDONLY = 0;
/** `open` flag: read and write. */
export const O_RDWR = 2;
/** `open` flag: create the file when missing. */
export const O_CREAT = 0o100;
/** `open` flag: fail if `O_CREAT` and the file exists. */
export const O_EXCL = 0o200;
/** `open` flag: bypass the page cache (buffers, offsets and lengths must be block aligned). */
export const O_DIRECT = AARCH64 ? 0o200000 : 0o40000;
/** `open` flag: do not leak the descriptor into child processes. */
export const O_CLOEXEC = 0o2000000;

/** `lseek` whence: relative to the end. */
export const SEEK_END = 2;
/** `lseek` whence: the next offset at or after `offset` that holds data. */
export const SEEK_DATA = 3;
/** `lseek` whence: the next offset at or after `offset` that is in a hole (or the end). */
export const SEEK_HOLE = 4;

/** `fallocate` mode: do not change the file size. */
export const FALLOC_FL_KEEP_SIZE = 0x01;
/** `fallocate` mode: deallocate the range (needs `FALLOC_FL_KEEP_SIZE`). */
export const FALLOC_FL_PUNCH_HOLE = 0x02;
/** `fallocate` mode: make the range read as zero, keeping it allocated. */
export const FALLOC_FL_ZERO_RANGE = 0x10;

/** `posix_fadvise` advice: expect sequential access (larger read-ahead). */
export const POSIX_FADV_SEQUENTIAL = 2;
/** `posix_fadvise` advice: the range will not be needed again (drop it from the cache). */
export const POSIX_FADV_DONTNEED = 4;

/** `preadv2` flag: fail with EAGAIN instead of waiting for the device (data not cached). */
export const RWF_NOWAIT = 8;

/** `sync_file_range` flag: first wait for writeback already under way in the range. */
export const SYNC_FILE_RANGE_WAIT_BEFORE = 1;
/** `sync_file_range` flag: start writeback of the range's dirty pages, do not wait. */
export const SYNC_FILE_RANGE_WRITE = 2;
/** `sync_file_range` flag: then wait until the range's writeback has completed. */
export const SYNC_FILE_RANGE_WAIT_AFTER = 4;

/** ioctl: size of a block device in bytes (u64). */
export const BLKGETSIZE64 = 0x80081272;
/** ioctl: logical sector size of a block device (int). */
export const BLKSSZGET = 0x1268;
/** ioctl: make a byte range `{start, length}` (u64[2]) of a block device read as zero. */
export const BLKZEROOUT = 0x127f;
/** ioctl: discard a byte range `{start, length}` (u64[2]) of a block device. */
export const BLKDISCARD = 0x1277;

/** `statfs` `f_type` of tmpfs. */
const TMPFS_MAGIC = 0x01021994n;
/** `statfs` `f_type` of ramfs. */
const RAMFS_MAGIC = 0x858458f6n;

/** flock(2): exclusive lock. */
export const LOCK_EX = 2;
/** flock(2): fail with EWOULDBLOCK instead of waiting. */
export const LOCK_NB = 4;

/** errno: interrupted system call. */
export const EINTR = 4;
/** errno: no such device or address (`SEEK_DATA` past the last data). */
export const ENXIO = 6;
/** errno: try again (`RWF_NOWAIT`: the data is not cached). */
export const EAGAIN = 11;
/** errno: invalid argument. */
export const EINVAL = 22;
/** errno: not a tty (an ioctl the file does not support). */
export const ENOTTY = 25;
/** errno: operation not supported. */
export const EOPNOTSUPP = 95;

const ERRNO_NAMES: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  4: "EINTR",
  5: "EIO",
  6: "ENXIO",
  9: "EBADF",
  11: "EAGAIN",
  12: "ENOMEM",
  13: "EACCES",
  16: "EBUSY",
  17: "EEXIST",
  19: "ENODEV",
  20: "ENOTDIR",
  21: "EISDIR",
  22: "EINVAL",
  25: "ENOTTY",
  27: "EFBIG",
  28: "ENOSPC",
  29: "ESPIPE",
  30: "EROFS",
  37: "ENOLCK",
  38: "ENOSYS",
  95: "EOPNOTSUPP",
};

/**
 * A failed libc call. `message` is the `strerror` text; `code` the symbolic name when known.
 *
 * @example
 * ```ts
 * import { ErrnoError } from "./libc.ts";
 * const e = new ErrnoError("pwrite", 28, "No space left on device");
 * e.code; // "ENOSPC"
 * ```
 */
export class ErrnoError extends Error {
  /** Symbolic errno name ("ENOSPC"), or `E<number>` when not in the table. */
  readonly code: string;

  constructor(
    /** The libc function that failed. */
    readonly syscall: string,
    /** The errno value. */
    readonly errno: number,
    text: string,
  ) {
    super(text);
    this.name = "ErrnoError";
    this.code = ERRNO_NAMES[errno] ?? `E${errno}`;
  }
}

const SYMBOLS = {
  open: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  pread: { name: "pread64", parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  preadAsync: {
    name: "pread64",
    parameters: ["i32", "buffer", "usize", "i64"],
    result: "isize",
    nonblocking: true,
  },
  preadv2: {
    name: "preadv64v2",
    parameters: ["i32", "buffer", "i32", "i64", "i32"],
    result: "isize",
  },
  pwrite: { name: "pwrite64", parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  pwriteAsync: {
    name: "pwrite64",
    parameters: ["i32", "buffer", "usize", "i64"],
    result: "isize",
    nonblocking: true,
  },
  fstatfs: { name: "fstatfs64", parameters: ["i32", "buffer"], result: "i32" },
  lseek: { name: "lseek64", parameters: ["i32", "i64", "i32"], result: "i64" },
  ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
  ioctlAsync: {
    name: "ioctl",
    parameters: ["i32", "u64", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  fallocate: { name: "fallocate64", parameters: ["i32", "i32", "i64", "i64"], result: "i32" },
  fallocateAsync: {
    name: "fallocate64",
    parameters: ["i32", "i32", "i64", "i64"],
    result: "i32",
    nonblocking: true,
  },
  ftruncate: { name: "ftruncate64", parameters: ["i32", "i64"], result: "i32" },
  fdatasync: { parameters: ["i32"], result: "i32" },
  flock: { parameters: ["i32", "i32"], result: "i32" },
  fdatasyncAsync: { name: "fdatasync", parameters: ["i32"], result: "i32", nonblocking: true },
  sync_file_range: { parameters: ["i32", "i64", "i64", "u32"], result: "i32" },
  syncFileRangeAsync: {
    name: "sync_file_range",
    parameters: ["i32", "i64", "i64", "u32"],
    result: "i32",
    nonblocking: true,
  },
  posix_fadvise: {
    name: "posix_fadvise64",
    parameters: ["i32", "i64", "i64", "i32"],
    result: "i32",
  },
  __errno_location: { parameters: [], result: "pointer" },
  strerror: { parameters: ["i32"], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

type Symbols = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

const encoder = new TextEncoder();

/**
 * The libc calls, bound to one `dlopen` handle. Obtain it with {@linkcode libc}.
 *
 * Calls named `…Async` run on Deno's blocking thread pool and resolve when done, so the
 * JavaScript thread can scan and submit the next request meanwhile. A nonblocking call loses
 * its thread's `errno`; on failure it is repeated once synchronously to learn why (an I/O error
 * is persistent; if the repeat succeeds, its result stands).
 *
 * @example
 * ```ts
 * import { libc, O_CREAT, O_RDWR, alignedBuffer } from "./libc.ts";
 * const c = libc()!;
 * const fd = c.open("/tmp/x.raw", O_RDWR | O_CREAT);
 * const buf = alignedBuffer(4096).fill(1);
 * await c.pwriteAll(fd, buf, 0);
 * c.close(fd);
 * ```
 */
export class Libc {
  readonly #s: Symbols;
  readonly #range = new BigUint64Array(2);
  readonly #u64 = new BigUint64Array(1);
  /** One `struct iovec`: base address, length. */
  readonly #iov = new BigUint64Array(2);

  /** @internal Use {@linkcode libc}. */
  constructor(symbols: Symbols) {
    this.#s = symbols;
  }

  /** The calling thread's current `errno`. Read it immediately after the failed call. */
  errno(): number {
    const p = this.#s.__errno_location();
    return p === null ? 0 : new Deno.UnsafePointerView(p).getInt32();
  }

  /** The `strerror` text of an errno value ("No such device or address"). */
  strerror(errno: number): string {
    const p = this.#s.strerror(errno);
    return p === null ? `errno ${errno}` : Deno.UnsafePointerView.getCString(p);
  }

  #fail(syscall: string, errno = this.errno()): never {
    throw new ErrnoError(syscall, errno, this.strerror(errno));
  }

  /**
   * `open(2)`; returns the descriptor. `O_CLOEXEC` is always added.
   *
   * @example
   * ```ts
   * import { libc, O_DIRECT, O_RDONLY } from "./libc.ts";
   * const fd = libc()!.open("/dev/loop0", O_RDONLY | O_DIRECT);
   * ```
   */
  open(path: string, flags: number, mode = 0o644): number {
    const cpath = encoder.encode(path + "\0");
    for (;;) {
      const fd = this.#s.open(cpath, flags | O_CLOEXEC, mode);
      if (fd >= 0) return fd;
      const e = this.errno();
      if (e !== EINTR) this.#fail("open", e);
    }
  }

  /** `close(2)`. Errors other than EINTR are thrown. */
  close(fd: number): void {
    if (this.#s.close(fd) !== 0) {
      const e = this.errno();
      if (e !== EINTR) this.#fail("close", e);
    }
  }

  /** One synchronous `pread(2)`; returns the byte count (0 at end of file). */
  preadSync(fd: number, buf: Uint8Array, offset: number): number {
    for (;;) {
      const n = this.#s.pread(fd, buf, BigInt(buf.length), BigInt(offset));
      if (n >= 0) return Number(n);
      const e = this.errno();
      if (e !== EINTR) this.#fail("pread", e);
    }
  }

  /**
   * One `preadv2(2)` with {@linkcode RWF_NOWAIT}, on this thread: the bytes the page cache holds
   * at `offset` (a short count), 0 when the first of them is not cached (or at end of file), and
   * `undefined` when the file or kernel cannot tell (then read with {@linkcode Libc.pread}).
   * Reading cached data in place costs less than a trip through the thread pool.
   */
  preadCached(fd: number, buf: Uint8Array, offset: number): number | undefined {
    const iov = this.#iov;
    iov[0] = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf)));
    iov[1] = BigInt(buf.length);
    for (;;) {
      const n = this.#s.preadv2(fd, iov, 1, BigInt(offset), RWF_NOWAIT);
      if (n >= 0) return Number(n);
      const e = this.errno();
      if (e === EAGAIN) return 0;
      if (e !== EINTR) return undefined;
    }
  }

  /** One synchronous `pwrite(2)`; returns the byte count. */
  pwriteSync(fd: number, buf: Uint8Array, offset: number): number {
    for (;;) {
      const n = this.#s.pwrite(fd, buf, BigInt(buf.length), BigInt(offset));
      if (n >= 0) return Number(n);
      const e = this.errno();
      if (e !== EINTR) this.#fail("pwrite", e);
    }
  }

  /** One `pread(2)` on another thread; resolves to the byte count (0 at end of file). */
  async pread(fd: number, buf: Uint8Array, offset: number): Promise<number> {
    const n = await this.#s.preadAsync(fd, buf, BigInt(buf.length), BigInt(offset));
    return n >= 0 ? Number(n) : this.preadSync(fd, buf, offset);
  }

  /** One `pwrite(2)` on another thread; resolves to the byte count. */
  async pwrite(fd: number, buf: Uint8Array, offset: number): Promise<number> {
    const n = await this.#s.pwriteAsync(fd, buf, BigInt(buf.length), BigInt(offset));
    return n >= 0 ? Number(n) : this.pwriteSync(fd, buf, offset);
  }

  /**
   * Reads exactly `buf.length` bytes at `offset` (repeating short reads) on another thread.
   * Throws an ErrnoError with errno 0 ("unexpected end of file") when the file ends first.
   */
  async preadAll(fd: number, buf: Uint8Array, offset: number): Promise<void> {
    let done = await this.pread(fd, buf, offset);
    while (done < buf.length) {
      if (done === 0) throw new ErrnoError("pread", 0, "unexpected end of file");
      const n = await this.pread(fd, buf.subarray(done), offset + done);
      if (n === 0) throw new ErrnoError("pread", 0, "unexpected end of file");
      done += n;
    }
  }

  /** Writes all of `buf` at `offset` (repeating short writes) on another thread. */
  async pwriteAll(fd: number, buf: Uint8Array, offset: number): Promise<void> {
    let done = await this.pwrite(fd, buf, offset);
    while (done < buf.length) {
      done += await this.pwrite(fd, buf.subarray(done), offset + done);
    }
  }

  /**
   * True when `fd`'s file system keeps files in memory (tmpfs, ramfs: `fstatfs`'s `f_type`): a
   * read never waits for a device, and there is no writeback to pace.
   */
  inMemory(fd: number): boolean {
    // struct statfs64 starts with f_type (a long) on x86_64 and aarch64; 120 bytes in all.
    const st = new BigInt64Array(16);
    if (this.#s.fstatfs(fd, st) !== 0) return false;
    return st[0] === TMPFS_MAGIC || st[0] === RAMFS_MAGIC;
  }

  /** `lseek(2)`; returns the new offset. */
  lseek(fd: number, offset: number, whence: number): number {
    const r = this.#s.lseek(fd, BigInt(offset), whence);
    if (r < 0) this.#fail("lseek");
    return Number(r);
  }

  /**
   * The first offset at or after `offset` holding data, or `undefined` when only a hole (or
   * nothing) follows. Throws EINVAL on block devices and file systems without support.
   */
  seekData(fd: number, offset: number): number | undefined {
    const r = this.#s.lseek(fd, BigInt(offset), SEEK_DATA);
    if (r >= 0) return Number(r);
    const e = this.errno();
    if (e === ENXIO) return undefined;
    this.#fail("lseek(SEEK_DATA)", e);
  }

  /** The first offset at or after `offset` in a hole; the file size when data runs to the end. */
  seekHole(fd: number, offset: number): number {
    const r = this.#s.lseek(fd, BigInt(offset), SEEK_HOLE);
    if (r < 0) this.#fail("lseek(SEEK_HOLE)");
    return Number(r);
  }

  /** The size of a file or block device: `lseek(fd, 0, SEEK_END)` (moves the file offset). */
  size(fd: number): number {
    return this.lseek(fd, 0, SEEK_END);
  }

  /** `ioctl(BLKGETSIZE64)`: a block device's size in bytes. ENOTTY on regular files. */
  blkGetSize64(fd: number): number {
    if (this.#s.ioctl(fd, BigInt(BLKGETSIZE64), this.#u64) !== 0) this.#fail("ioctl(BLKGETSIZE64)");
    return Number(this.#u64[0]);
  }

  /** `ioctl(BLKSSZGET)`: a block device's logical sector size (512 or 4096). */
  blkSectorSize(fd: number): number {
    const v = new Int32Array(1);
    if (this.#s.ioctl(fd, BigInt(BLKSSZGET), v) !== 0) this.#fail("ioctl(BLKSSZGET)");
    return v[0];
  }

  async #rangeIoctl(name: string, request: number, fd: number, offset: number, length: number) {
    const range = new BigUint64Array([BigInt(offset), BigInt(length)]);
    if (await this.#s.ioctlAsync(fd, BigInt(request), range) === 0) return;
    // Learn errno by repeating synchronously (the range ioctls are idempotent).
    this.#range[0] = BigInt(offset);
    this.#range[1] = BigInt(length);
    if (this.#s.ioctl(fd, BigInt(request), this.#range) !== 0) this.#fail(name);
  }

  /**
   * `ioctl(BLKZEROOUT)`: makes `[offset, offset + length)` of a block device read as zero (the
   * device may use WRITE ZEROES or unmap). Offset and length must be sector aligned.
   */
  blkZeroOut(fd: number, offset: number, length: number): Promise<void> {
    return this.#rangeIoctl("ioctl(BLKZEROOUT)", BLKZEROOUT, fd, offset, length);
  }

  /** `ioctl(BLKDISCARD)`: discards a sector-aligned range; its later contents are unspecified. */
  blkDiscard(fd: number, offset: number, length: number): Promise<void> {
    return this.#rangeIoctl("ioctl(BLKDISCARD)", BLKDISCARD, fd, offset, length);
  }

  /** `fallocate(2)` synchronously, e.g. `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`. */
  fallocateSync(fd: number, mode: number, offset: number, length: number): void {
    if (this.#s.fallocate(fd, mode, BigInt(offset), BigInt(length)) !== 0) this.#fail("fallocate");
  }

  /** `fallocate(2)` on another thread. */
  async fallocate(fd: number, mode: number, offset: number, length: number): Promise<void> {
    const r = await this.#s.fallocateAsync(fd, mode, BigInt(offset), BigInt(length));
    if (r !== 0) this.fallocateSync(fd, mode, offset, length);
  }

  /** `ftruncate(2)`: sets the file size. */
  ftruncate(fd: number, length: number): void {
    if (this.#s.ftruncate(fd, BigInt(length)) !== 0) this.#fail("ftruncate");
  }

  /**
   * `flock(2)`: takes an advisory lock on the open file description; with `LOCK_NB`, fails with
   * `EAGAIN` (EWOULDBLOCK) when another one holds it.
   *
   * @example
   * ```ts ignore
   * import { libc, LOCK_EX, LOCK_NB } from "./libc.ts";
   * libc()!.flock(fd, LOCK_EX | LOCK_NB); // throws ErrnoError EAGAIN when locked elsewhere
   * ```
   */
  flock(fd: number, operation: number): void {
    for (;;) {
      if (this.#s.flock(fd, operation) === 0) return;
      const e = this.errno();
      if (e !== EINTR) this.#fail("flock", e);
    }
  }

  /**
   * `fdatasync(2)` on another thread. A failure is final: the kernel reports a writeback error
   * once per descriptor (and may have dropped the pages), so a repeat that returns 0 proves
   * nothing. The repeat only serves to learn errno; when it succeeds the reason is unknown.
   */
  async fdatasync(fd: number): Promise<void> {
    if (await this.#s.fdatasyncAsync(fd) === 0) return;
    if (this.#s.fdatasync(fd) !== 0) this.#fail("fdatasync");
    throw lostReason("fdatasync");
  }

  /**
   * `sync_file_range(2)`: with {@linkcode SYNC_FILE_RANGE_WRITE}, starts writeback of a range
   * without waiting, so a final `fdatasync` has less left to do. Advice only: errors are ignored.
   */
  syncFileRange(fd: number, offset: number, length: number, flags: number): void {
    this.#s.sync_file_range(fd, BigInt(offset), BigInt(length), flags);
  }

  /**
   * `sync_file_range(2)` on another thread (with the WAIT flags it blocks until the range is on
   * the device). Errors are thrown: a failed writeback is a failed write, and, as with
   * {@linkcode Libc.fdatasync}, a repeat that succeeds does not undo it.
   */
  async syncFileRangeAsync(fd: number, offset: number, length: number, flags: number) {
    const r = await this.#s.syncFileRangeAsync(fd, BigInt(offset), BigInt(length), flags);
    if (r === 0) return;
    if (this.#s.sync_file_range(fd, BigInt(offset), BigInt(length), flags) !== 0) {
      this.#fail("sync_file_range");
    }
    throw lostReason("sync_file_range");
  }

  /** `posix_fadvise(2)`; advice only, so failures are ignored. `length` 0 means to the end. */
  fadvise(fd: number, offset: number, length: number, advice: number): void {
    this.#s.posix_fadvise(fd, BigInt(offset), BigInt(length), advice);
  }
}

/**
 * A call on another thread failed, and its errno went with that thread; repeated here, it
 * succeeded (a writeback error is reported once). The failure stands.
 */
function lostReason(syscall: string): ErrnoError {
  return new ErrnoError(syscall, 5, "writeback failed (Input/output error or no space)");
}

let loaded: Libc | null | undefined;

/**
 * The libc bindings, loaded on first call; `undefined` when FFI is not permitted or libc cannot
 * be opened (then use `Deno.FsFile`).
 *
 * @example
 * ```ts
 * import { libc } from "./libc.ts";
 * const c = libc();
 * console.log(c ? "FFI available" : "falling back to Deno.FsFile");
 * ```
 */
export function libc(): Libc | undefined {
  if (loaded === undefined) {
    loaded = null;
    try {
      if (
        Deno.build.os === "linux" && Deno.permissions.querySync({ name: "ffi" }).state === "granted"
      ) {
        loaded = new Libc(Deno.dlopen("libc.so.6", SYMBOLS).symbols);
      }
    } catch {
      loaded = null;
    }
  }
  return loaded ?? undefined;
}

/**
 * A zero-filled buffer of `size` bytes whose first byte sits at a multiple of `alignment`
 * (a power of two), as `O_DIRECT` needs and as the kernel copies fastest. It is a view into a
 * slightly larger `ArrayBuffer` (the `posix_memalign` trick without leaving the JS heap). Without
 * FFI the address cannot be seen; the buffer is then returned unaligned (O_DIRECT is unavailable
 * in that case anyway).
 *
 * @example
 * ```ts
 * import { alignedBuffer, addressOf } from "./libc.ts";
 * const buf = alignedBuffer(2 << 20);
 * addressOf(buf)! % 4096n; // 0n
 * ```
 */
export function alignedBuffer(size: number, alignment = 4096): Uint8Array {
  if (alignment <= 0 || (alignment & (alignment - 1)) !== 0) {
    throw new RangeError(`alignment must be a power of two: ${alignment}`);
  }
  const raw = new ArrayBuffer(size + alignment);
  const base = addressOf(new Uint8Array(raw));
  if (base === undefined) return new Uint8Array(raw, 0, size);
  const skip = Number((BigInt(alignment) - (base % BigInt(alignment))) % BigInt(alignment));
  return new Uint8Array(raw, skip, size);
}

/**
 * The memory address of a view's first byte, or `undefined` when FFI is not permitted.
 *
 * @example
 * ```ts
 * import { addressOf } from "./libc.ts";
 * addressOf(new Uint8Array(16)); // 140126676578320n (or undefined without --allow-ffi)
 * ```
 */
export function addressOf(view: ArrayBufferView): bigint | undefined {
  if (libc() === undefined) return undefined;
  try {
    return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(view)));
  } catch {
    return undefined;
  }
}
