/**
 * Files and block devices as {@linkcode Disk}s, over `Deno.FsFile`.
 *
 * A regular file's size is its length; a block device's comes from seeking to its end
 * (`stat().size` is 0 for devices). The allocation of a regular file comes from
 * `SEEK_DATA`/`SEEK_HOLE`, which `Deno.FsFile.seek` refuses, so it goes through libc.
 *
 * @module
 */

import { type Disk, DiskError } from "./disk.ts";
import { type Extent, ExtentSet } from "./extent.ts";

/** How to open a {@linkcode FileDisk}. */
export interface FileOpenOptions {
  /** Open for writing (a destination). */
  write?: boolean;
  /** With `write`: create a missing regular file, and grow a smaller one, to this size. */
  createSize?: number;
}

function reasonOf(err: unknown): string {
  if (err instanceof Deno.errors.NotFound) return "No such file or directory";
  if (err instanceof Deno.errors.PermissionDenied) return "Permission denied";
  if (err instanceof Deno.errors.IsADirectory) return "Is a directory";
  const msg = err instanceof Error ? err.message : String(err);
  // Deno appends the path ("..., open '/x'"); the caller names the path itself.
  return msg.replace(/,\s*(open|stat|lstat|read|write|seek|truncate)\s+'[^']*'$/, "");
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
  readonly alignment = 1;
  #lock: Promise<unknown> = Promise.resolve();
  #closed = false;

  private constructor(
    readonly name: string,
    readonly file: Deno.FsFile,
    readonly size: number,
    /** True for block devices. */
    readonly isBlockDevice: boolean,
    readonly knownZero: boolean,
  ) {}

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
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, {
        read: true,
        write: options.write ?? false,
        create: options.write === true && options.createSize !== undefined,
        mode: 0o644,
      });
    } catch (err) {
      throw new DiskError(path, "open", undefined, reasonOf(err), { cause: err });
    }
    try {
      const isBlock = info?.isBlockDevice ?? false;
      let size: number;
      if (info === undefined || info.isFile) size = info?.size ?? 0;
      else size = await file.seek(0, Deno.SeekMode.End);
      let knownZero = false;
      if (
        options.write && options.createSize !== undefined && !isBlock && info?.isCharDevice !== true
      ) {
        // A new or empty file is all holes once extended: it reads as zero.
        knownZero = size === 0;
        if (size < options.createSize) {
          await file.truncate(options.createSize);
          size = options.createSize;
        }
      }
      return new FileDisk(path, file, size, isBlock, knownZero);
    } catch (err) {
      file.close();
      throw new DiskError(path, "open", undefined, reasonOf(err), { cause: err });
    }
  }

  // Deno.FsFile has one file position: seek+read pairs must not interleave.
  #serial<T>(op: () => Promise<T>): Promise<T> {
    const run = this.#lock.then(op, op);
    this.#lock = run.catch(() => {});
    return run;
  }

  read(offset: number, buf: Uint8Array): Promise<void> {
    return this.#serial(async () => {
      try {
        await this.file.seek(offset, Deno.SeekMode.Start);
        let got = 0;
        while (got < buf.length) {
          const n = await this.file.read(buf.subarray(got));
          if (n === null || n === 0) {
            throw new DiskError(this.name, "read", offset + got, "unexpected end of file");
          }
          got += n;
        }
      } catch (err) {
        if (err instanceof DiskError) throw err;
        throw new DiskError(this.name, "read", offset, reasonOf(err), { cause: err });
      }
    });
  }

  write(offset: number, buf: Uint8Array): Promise<void> {
    return this.#serial(async () => {
      try {
        await this.file.seek(offset, Deno.SeekMode.Start);
        let put = 0;
        while (put < buf.length) {
          const n = await this.file.write(buf.subarray(put));
          if (n === 0) throw new DiskError(this.name, "write", offset + put, "no space left");
          put += n;
        }
      } catch (err) {
        if (err instanceof DiskError) throw err;
        throw new DiskError(this.name, "write", offset, reasonOf(err), { cause: err });
      }
    });
  }

  /** Data extents from `SEEK_DATA`/`SEEK_HOLE`; `undefined` on devices or without FFI. */
  allocation(): Promise<ExtentSet | undefined> {
    if (this.isBlockDevice) return Promise.resolve(undefined);
    const extents = seekDataExtents(this.name, this.size);
    return Promise.resolve(extents === undefined ? undefined : ExtentSet.of(extents));
  }

  flush(): Promise<void> {
    return this.#serial(async () => {
      try {
        await this.file.syncData();
      } catch (err) {
        throw new DiskError(this.name, "flush", undefined, reasonOf(err), { cause: err });
      }
    });
  }

  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#closed = true;
    return this.#serial(() => {
      this.file.close();
      return Promise.resolve();
    });
  }
}

const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const O_RDONLY_CLOEXEC = 0o2000000;
const ENXIO = 6;

let libc:
  | Deno.DynamicLibrary<{
    open: { parameters: ["buffer", "i32"]; result: "i32" };
    close: { parameters: ["i32"]; result: "i32" };
    lseek: { parameters: ["i32", "i64", "i32"]; result: "i64" };
    __errno_location: { parameters: []; result: "pointer" };
  }>
  | null
  | undefined;

function loadLibc() {
  if (libc !== undefined) return libc;
  try {
    libc = Deno.dlopen("libc.so.6", {
      open: { parameters: ["buffer", "i32"], result: "i32" },
      close: { parameters: ["i32"], result: "i32" },
      lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
      __errno_location: { parameters: [], result: "pointer" },
    });
  } catch {
    libc = null;
  }
  return libc;
}

/**
 * The data extents of a regular file below `size`, walking `SEEK_DATA`/`SEEK_HOLE`; `undefined`
 * when they cannot be had (no FFI permission, or a filesystem that answers EINVAL).
 */
export function seekDataExtents(path: string, size: number): Extent[] | undefined {
  const c = loadLibc();
  if (!c) return undefined;
  const fd = c.symbols.open(new TextEncoder().encode(path + "\0"), O_RDONLY_CLOEXEC);
  if (fd < 0) return undefined;
  try {
    const errno = () => {
      const p = c.symbols.__errno_location();
      return p ? new Deno.UnsafePointerView(p).getInt32() : 0;
    };
    const out: Extent[] = [];
    let pos = 0;
    while (pos < size) {
      const data = Number(c.symbols.lseek(fd, BigInt(pos), SEEK_DATA));
      if (data < 0) {
        if (errno() === ENXIO) break; // no more data
        return undefined;
      }
      if (data >= size) break;
      let hole = Number(c.symbols.lseek(fd, BigInt(data), SEEK_HOLE));
      if (hole < 0) return undefined;
      if (hole > size) hole = size;
      out.push({ start: data, length: hole - data });
      pos = hole;
    }
    return out;
  } finally {
    c.symbols.close(fd);
  }
}
