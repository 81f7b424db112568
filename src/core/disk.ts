/**
 * The one interface every kind of disk implements — files, block devices, VHD chains, NBD
 * exports, memory — like nbdcopy's `struct rw_ops` or the seed's `DD(S : Stream)` functor.
 * The copier sees nothing else.
 *
 * @module
 */

import type { ExtentSet } from "./extent.ts";
import { errorText } from "./error_text.ts";

/**
 * A random-access disk of `size` bytes.
 *
 * Contract:
 * - `read` fills the whole buffer or throws; `write` writes the whole buffer or throws.
 * - Calls may overlap (the copier reads ahead while it writes); an implementation that cannot do
 *   two things at once serialises internally.
 * - No operation touches bytes outside `[0, size)`; callers never ask it to.
 *
 * @example Copying one block between two in-memory disks
 * ```ts
 * import { MemoryDisk } from "./disk.ts";
 * const a = MemoryDisk.filled(4096, 7);
 * const b = new MemoryDisk(4096);
 * const buf = new Uint8Array(4096);
 * await a.read(0, buf);
 * await b.write(0, buf);
 * ```
 */
export interface Disk {
  /** What to call this disk in messages: a path or a URI. */
  readonly name: string;
  /** Size in bytes. */
  readonly size: number;
  /** Reads exactly `buf.length` bytes at `offset`. */
  read(offset: number, buf: Uint8Array): Promise<void>;
  /** Writes all of `buf` at `offset`. */
  write(offset: number, buf: Uint8Array): Promise<void>;
  /**
   * The ranges that may hold non-zero data; everything else reads as zero. `undefined` means
   * unknown (treat everything as allocated). Absent on disks that cannot tell.
   */
  allocation?(): Promise<ExtentSet | undefined>;
  /**
   * Makes `[offset, offset + length)` read as zero, more cheaply than writing zero buffers
   * (BLKZEROOUT, fallocate, NBD WRITE_ZEROES). Absent when there is no cheaper way.
   */
  zero?(offset: number, length: number): Promise<void>;
  /** True when the disk is known to read as all zeroes right now (a freshly created file). */
  readonly knownZero?: boolean;
  /** Buffers passed to read/write must be aligned to this many bytes (O_DIRECT); default 1. */
  readonly alignment?: number;
  /**
   * True when one `zero(0, size)` costs far less than writing `size` bytes (hole punching on a
   * file, offloaded BLKZEROOUT on a device). The copier then overwrites the disk by zeroing all
   * of it in one call and writing only the non-zero quanta. Absent: false.
   */
  readonly zeroIsCheap?: boolean;
  /**
   * How many writes the copier keeps in flight to keep the disk busy (O_DIRECT writes, NBD
   * requests). Absent: one at a time.
   */
  readonly writeQueueDepth?: number;
  /**
   * How many reads the copier keeps in flight ahead of its writes, as things stand now (it may
   * change as the copy goes): 1 while reads are served from memory on the calling thread (nothing
   * would overlap, and every read ahead holds one more buffer). Absent: four.
   */
  readonly readQueueDepth?: number;
  /**
   * Where `allocation()` comes from, for the stats: `seek-data` (SEEK_DATA/SEEK_HOLE), `vhd` (a
   * VHD chain's BAT), `nbd-block-status`, ... Absent: `disk`.
   */
  readonly allocationRoute?: string;
  /** Makes written data durable. */
  flush(): Promise<void>;
  /** Releases the disk. Idempotent. */
  close(): Promise<void>;
}

/** What went wrong, for the exit code: see `ExitCode` in `errors.ts`. */
export type DiskOp =
  | "open"
  | "read"
  | "write"
  | "zero"
  | "flush"
  | "close"
  | "stat"
  | "allocation";

/** How each operation reads in a message: `cannot read /dev/sdb ...`. */
const OP_WORDS: Record<DiskOp, string> = {
  open: "open",
  read: "read",
  write: "write",
  zero: "zero",
  flush: "flush",
  close: "close",
  stat: "stat",
  allocation: "get the allocation of",
};

/**
 * An I/O failure on a named disk, at an offset when there is one. Its message is the one line a
 * user sees: `cannot read /dev/sdb at offset 1048576: Input/output error`.
 *
 * @example
 * ```ts
 * import { DiskError } from "./disk.ts";
 * const e = new DiskError("/dev/sdb", "read", 1048576, "Input/output error");
 * e.message; // "cannot read /dev/sdb at offset 1048576: Input/output error"
 * ```
 */
export class DiskError extends Error {
  /** Set by the copier: which end of the copy failed. */
  role?: "source" | "destination" | "base";
  /** True for NBD protocol and server errors (exit code 5, which xapi reports as an NBD error). */
  nbd = false;

  constructor(
    /** The disk's name (path or URI). */
    readonly disk: string,
    /** The operation that failed. */
    readonly op: DiskOp,
    /** Byte offset of the failed operation, when it has one. */
    readonly offset: number | undefined,
    /** Why it failed, without the disk name. */
    readonly reason: string,
    options?: ErrorOptions,
  ) {
    super(
      `cannot ${OP_WORDS[op]} ${disk}${
        offset === undefined ? "" : ` at offset ${offset}`
      }: ${reason}`,
      options,
    );
    this.name = "DiskError";
  }
}

/** Turns any thrown value into a {@linkcode DiskError} naming the disk and offset. */
export function asDiskError(
  err: unknown,
  disk: string,
  op: DiskOp,
  offset?: number,
): DiskError {
  if (err instanceof DiskError) return err;
  const reason = errorText(err);
  return new DiskError(disk, op, offset, reason, { cause: err });
}

/** Counters a {@linkcode MemoryDisk} keeps, so tests can prove what was touched. */
export interface IoCounters {
  reads: number;
  bytesRead: number;
  writes: number;
  bytesWritten: number;
  zeroCalls: number;
  bytesZeroed: number;
}

/** Options for {@linkcode MemoryDisk}. */
export interface MemoryDiskOptions {
  /** Reported allocation; omit for a disk that cannot tell. */
  allocation?: ExtentSet;
  /** Offer a `zero` operation. */
  canZero?: boolean;
  /** Report `knownZero`. */
  knownZero?: boolean;
  /** Name in messages. */
  name?: string;
}

/**
 * A disk in memory, for tests and for pure planning. It refuses any access outside `[0, size)`
 * so that a test proves the copier never asks for one.
 *
 * @example
 * ```ts
 * import { MemoryDisk } from "./disk.ts";
 * const d = MemoryDisk.from(new Uint8Array([1, 2, 3, 4]));
 * const b = new Uint8Array(2);
 * await d.read(1, b); // b = [2, 3]
 * ```
 */
export class MemoryDisk implements Disk {
  readonly name: string;
  readonly data: Uint8Array;
  readonly counters: IoCounters = {
    reads: 0,
    bytesRead: 0,
    writes: 0,
    bytesWritten: 0,
    zeroCalls: 0,
    bytesZeroed: 0,
  };
  readonly knownZero: boolean;
  readonly zero?: (offset: number, length: number) => Promise<void>;
  readonly #allocation?: ExtentSet;
  closed = false;

  constructor(sizeOrData: number | Uint8Array, options: MemoryDiskOptions = {}) {
    this.data = typeof sizeOrData === "number" ? new Uint8Array(sizeOrData) : sizeOrData;
    this.name = options.name ?? "memory";
    this.knownZero = options.knownZero ?? false;
    this.#allocation = options.allocation;
    if (options.canZero) {
      this.zero = (offset, length) => {
        this.#check("zero", offset, length);
        this.counters.zeroCalls++;
        this.counters.bytesZeroed += length;
        this.data.fill(0, offset, offset + length);
        return Promise.resolve();
      };
    }
  }

  /** A disk holding a copy of `bytes`. */
  static from(bytes: Uint8Array, options?: MemoryDiskOptions): MemoryDisk {
    return new MemoryDisk(bytes.slice(), options);
  }

  /** A disk of `size` bytes all equal to `value`. */
  static filled(size: number, value: number, options?: MemoryDiskOptions): MemoryDisk {
    return new MemoryDisk(new Uint8Array(size).fill(value), options);
  }

  get size(): number {
    return this.data.length;
  }

  #check(op: DiskOp, offset: number, length: number): void {
    if (this.closed) throw new DiskError(this.name, op, offset, "disk is closed");
    if (offset < 0 || length < 0 || offset + length > this.data.length) {
      throw new DiskError(
        this.name,
        op,
        offset,
        `access of ${length} bytes outside [0, ${this.data.length})`,
      );
    }
  }

  read(offset: number, buf: Uint8Array): Promise<void> {
    this.#check("read", offset, buf.length);
    this.counters.reads++;
    this.counters.bytesRead += buf.length;
    buf.set(this.data.subarray(offset, offset + buf.length));
    return Promise.resolve();
  }

  write(offset: number, buf: Uint8Array): Promise<void> {
    this.#check("write", offset, buf.length);
    this.counters.writes++;
    this.counters.bytesWritten += buf.length;
    this.data.set(buf, offset);
    return Promise.resolve();
  }

  allocation(): Promise<ExtentSet | undefined> {
    return Promise.resolve(this.#allocation);
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  close(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }
}
