/**
 * libvhd (blktap's VHD library) through Deno FFI, as an optional second reader of VHD metadata:
 * footer, dynamic header and BAT come from `vhd_open`/`vhd_read_*` when `libvhd.so.0` can be
 * loaded, and from the TypeScript reader (`layer.ts`) otherwise. Bitmaps and data are always
 * read by sparse_dd itself.
 *
 * The binding needs no field offsets inside `vhd_context_t`: the context is an opaque 8 KiB buffer
 * (2144 bytes on x86_64), and the footer, header and BAT come back in caller-owned structs whose
 * layout is the on-disk one with integers in host order.
 *
 * libvhd hard-codes 2 MiB blocks in places (it reads ceil(size / 2 MiB) BAT entries and returns
 * wrong data for smaller blocks), so this path refuses any other block size.
 *
 * @module
 */

import {
  type LayerMetadata,
  type MetadataBackend,
  type RandomAccess,
  readMetadata,
  validateMetadata,
} from "./layer.ts";
import {
  DEFAULT_BLOCK_SIZE,
  DiskType,
  FOOTER_SIZE,
  HEADER_SIZE,
  parseFooter,
  parseHeader,
  VhdError,
} from "./format.ts";
import { errorText } from "../core/error_text.ts";

/** Which reader to use for VHD metadata: libvhd when loadable (`auto`), or forced. */
export type VhdBackend = "auto" | "ts" | "ffi";

/** Environment variable naming the libvhd shared object to load. */
export const LIBVHD_ENV = "SPARSE_DD_LIBVHD";

/** Where libvhd is looked for after the environment variable: the loader's search, then usual places. */
export const LIBVHD_PATHS: readonly string[] = [
  "libvhd.so.0",
  "/usr/lib64/libvhd.so.0",
  "/usr/lib/libvhd.so.0",
  "/usr/lib/x86_64-linux-gnu/libvhd.so.0",
  "/usr/local/lib64/libvhd.so.0",
  "/usr/local/lib/libvhd.so.0",
];

const VHD_OPEN_RDONLY = 0x1;
/** Upper bound on sizeof(vhd_context_t) (2144 on x86_64). */
const CONTEXT_BYTES = 8192;

const SYMBOLS = {
  vhd_open: { parameters: ["buffer", "buffer", "i32"], result: "i32" },
  vhd_close: { parameters: ["buffer"], result: "void" },
  vhd_read_footer: { parameters: ["buffer", "buffer", "bool"], result: "i32" },
  vhd_read_header: { parameters: ["buffer", "buffer"], result: "i32" },
  vhd_read_bat: { parameters: ["buffer", "buffer"], result: "i32" },
} as const;

const LIBC_SYMBOLS = {
  free: { parameters: ["pointer"], result: "void" },
} as const;

const ERRNO: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  5: "EIO",
  9: "EBADF",
  12: "ENOMEM",
  13: "EACCES",
  22: "EINVAL",
  75: "EOVERFLOW",
};

function errnoText(rc: number): string {
  const name = ERRNO[-rc];
  return name ? `${rc} (${name})` : String(rc);
}

/** Footer and header from libvhd, converted back to on-disk (big-endian) bytes, and the BAT. */
export interface LibvhdMetadata {
  /** 512 bytes in on-disk order. */
  footer: Uint8Array;
  /** True when libvhd had to use the footer copy at offset 0. */
  backupFooter: boolean;
  /** 1024 bytes in on-disk order; absent for fixed disks. */
  header?: Uint8Array;
  /** Host-order BAT entries as libvhd read them; absent for fixed disks. */
  bat?: Uint32Array;
}

/**
 * A loaded libvhd.
 *
 * @example
 * ```ts ignore
 * import { Libvhd } from "./libvhd.ts";
 * const lib = Libvhd.load();            // throws when libvhd.so.0 cannot be loaded
 * const meta = lib.readMetadata("disk.vhd");
 * meta.bat?.length;
 * ```
 */
export class Libvhd {
  private constructor(
    readonly path: string,
    readonly lib: Deno.DynamicLibrary<typeof SYMBOLS>,
    readonly libc: Deno.DynamicLibrary<typeof LIBC_SYMBOLS>,
  ) {}

  /**
   * Loads libvhd from `path`, or else from `$SPARSE_DD_LIBVHD`, or else from
   * {@linkcode LIBVHD_PATHS}. Throws an Error listing what was tried.
   */
  static load(path?: string): Libvhd {
    const candidates = path !== undefined ? [path] : defaultCandidates();
    const failures: string[] = [];
    for (const p of candidates) {
      let lib: Deno.DynamicLibrary<typeof SYMBOLS>;
      try {
        lib = Deno.dlopen(p, SYMBOLS);
      } catch (err) {
        failures.push(`${p}: ${firstLine(err)}`);
        continue;
      }
      try {
        return new Libvhd(p, lib, Deno.dlopen("libc.so.6", LIBC_SYMBOLS));
      } catch (err) {
        lib.close();
        failures.push(`libc.so.6: ${firstLine(err)}`);
      }
    }
    throw new Error(
      `cannot load libvhd (set ${LIBVHD_ENV} or use -vhd-backend ts): ${failures.join("; ")}`,
    );
  }

  /**
   * Opens `file` read-only with libvhd and reads its footer, header and BAT. Throws a
   * {@linkcode VhdError} when libvhd fails or the block size is not 2 MiB.
   */
  readMetadata(file: string): LibvhdMetadata {
    const s = this.lib.symbols;
    const ctx = new Uint8Array(CONTEXT_BYTES);
    const rc = s.vhd_open(ctx, cString(file), VHD_OPEN_RDONLY);
    if (rc !== 0) throw new VhdError(file, undefined, `libvhd vhd_open failed: ${errnoText(rc)}`);
    try {
      const foot = new Uint8Array(FOOTER_SIZE);
      let backupFooter = false;
      let r = s.vhd_read_footer(ctx, foot, false);
      if (r !== 0) {
        backupFooter = true;
        r = s.vhd_read_footer(ctx, foot, true);
      }
      if (r !== 0) {
        throw new VhdError(file, undefined, `libvhd vhd_read_footer failed: ${errnoText(r)}`);
      }
      const footer = footerToDisk(foot);
      const type = new DataView(foot.buffer).getUint32(60, true);
      if (type === DiskType.Fixed) return { footer, backupFooter };
      const hdr = new Uint8Array(HEADER_SIZE);
      r = s.vhd_read_header(ctx, hdr);
      if (r !== 0) {
        throw new VhdError(file, undefined, `libvhd vhd_read_header failed: ${errnoText(r)}`);
      }
      const blockSize = new DataView(hdr.buffer).getUint32(32, true);
      if (blockSize !== DEFAULT_BLOCK_SIZE) {
        throw new VhdError(
          file,
          undefined,
          `the libvhd backend reads only 2 MiB blocks, this VHD has ${blockSize}-byte blocks ` +
            `(use -vhd-backend ts or auto)`,
        );
      }
      const header = headerToDisk(hdr);
      const batStruct = new Uint8Array(16);
      r = s.vhd_read_bat(ctx, batStruct);
      if (r !== 0) {
        throw new VhdError(file, undefined, `libvhd vhd_read_bat failed: ${errnoText(r)}`);
      }
      const view = new DataView(batStruct.buffer);
      const entries = view.getUint32(4, true);
      const ptr = Deno.UnsafePointer.create(view.getBigUint64(8, true));
      if (ptr === null) throw new VhdError(file, undefined, "libvhd vhd_read_bat returned no BAT");
      try {
        const copy = new Uint32Array(
          new Deno.UnsafePointerView(ptr).getArrayBuffer(entries * 4).slice(0),
        );
        return { footer, backupFooter, header, bat: copy };
      } finally {
        this.libc.symbols.free(ptr);
      }
    } finally {
      s.vhd_close(ctx);
    }
  }

  /** Unloads the library. */
  close(): void {
    this.lib.close();
    this.libc.close();
  }
}

function defaultCandidates(): string[] {
  let env: string | undefined;
  try {
    env = Deno.env.get(LIBVHD_ENV);
  } catch {
    env = undefined; // no --allow-env: use the standard paths
  }
  return env ? [env] : [...LIBVHD_PATHS];
}

function firstLine(err: unknown): string {
  return errorText(err).split("\n")[0];
}

function cString(s: string): Uint8Array {
  return new TextEncoder().encode(s + "\0");
}

function swap(b: Uint8Array, off: number, width: 4 | 8): void {
  b.subarray(off, off + width).reverse();
}

/**
 * Turns libvhd's host-order `vhd_footer_t` back into on-disk bytes (vhd_footer_in converts
 * features, version, data offset, timestamp, creator version and OS, sizes, geometry, type and
 * checksum), so the same parser and checks apply to both backends.
 *
 * @example
 * ```ts ignore
 * import { footerToDisk } from "./libvhd.ts";
 * import { parseFooter } from "./format.ts";
 * const footer = parseFooter(footerToDisk(struct512), "disk.vhd", 0);
 * ```
 */
export function footerToDisk(struct: Uint8Array): Uint8Array {
  const b = struct.slice(0, FOOTER_SIZE);
  for (const off of [8, 12, 24, 32, 36, 56, 60, 64]) swap(b, off, 4);
  for (const off of [16, 40, 48]) swap(b, off, 8);
  return b;
}

/**
 * Turns libvhd's host-order `vhd_header_t` back into on-disk bytes (see vhd_header_in).
 *
 * @example
 * ```ts ignore
 * import { headerToDisk } from "./libvhd.ts";
 * import { parseHeader } from "./format.ts";
 * const header = parseHeader(headerToDisk(struct1024), "disk.vhd", 512);
 * ```
 */
export function headerToDisk(struct: Uint8Array): Uint8Array {
  const b = struct.slice(0, HEADER_SIZE);
  for (const off of [8, 16]) swap(b, off, 8);
  for (const off of [24, 28, 32, 36, 56]) swap(b, off, 4);
  for (let i = 0; i < 8; i++) {
    const at = 576 + i * 24;
    swap(b, at, 4);
    swap(b, at + 4, 4);
    swap(b, at + 8, 4);
    swap(b, at + 16, 8);
  }
  return b;
}

const loaded = new Map<string, Libvhd | Error>();

function cachedLoad(path?: string): Libvhd | Error {
  const key = path ?? "";
  let lib = loaded.get(key);
  if (lib === undefined) {
    try {
      lib = Libvhd.load(path);
    } catch (err) {
      lib = err instanceof Error ? err : new Error(String(err));
    }
    loaded.set(key, lib);
  }
  return lib;
}

/**
 * True when libvhd can be loaded (from `path`, `$SPARSE_DD_LIBVHD` or the standard paths).
 *
 * @example
 * ```ts
 * import { libvhdAvailable } from "./libvhd.ts";
 * libvhdAvailable(); // false where libvhd.so.0 is not installed (tests use it for `ignore`)
 * ```
 */
export function libvhdAvailable(path?: string): boolean {
  return !(cachedLoad(path) instanceof Error);
}

/** Converts what libvhd returned into checked {@linkcode LayerMetadata}. */
function fromLibvhd(raw: LibvhdMetadata, file: RandomAccess): LayerMetadata {
  const name = file.name;
  const footerOffset = raw.backupFooter ? 0 : file.size - FOOTER_SIZE;
  const footer = parseFooter(raw.footer, name, footerOffset);
  if (raw.header === undefined || raw.bat === undefined) {
    if (footer.diskType !== DiskType.Fixed) {
      throw new VhdError(name, footerOffset, "libvhd returned no header for a sparse VHD");
    }
    // The same checks as the TypeScript reader (the file holds the whole virtual size).
    const fixed: LayerMetadata = { footer, footerOffset };
    validateMetadata(fixed, file.size, name);
    return fixed;
  }
  const header = parseHeader(raw.header, name, footer.dataOffset ?? 0);
  const meta: LayerMetadata = { footer, footerOffset, header, bat: raw.bat };
  validateMetadata(meta, file.size, name);
  return meta;
}

/**
 * The metadata reader for a backend, for `VhdLayer.open`:
 * - `ts`: the TypeScript reader;
 * - `ffi`: libvhd, failing clearly when it cannot be loaded or refuses the file;
 * - `auto`: libvhd when it loads and accepts the file (2 MiB blocks), else the TypeScript reader,
 *   which then gives its own, more precise, error for a broken file.
 *
 * @param backend which reader
 * @param libvhdPath load libvhd from this path instead of the environment / standard paths
 * @example
 * ```ts ignore
 * import { metadataReader } from "./libvhd.ts";
 * import { VhdLayer } from "./layer.ts";
 * const layer = await VhdLayer.open("disk.vhd", { metadata: metadataReader("auto") });
 * layer.backend; // "ffi" when libvhd is installed
 * ```
 */
export function metadataReader(
  backend: VhdBackend,
  libvhdPath?: string,
): (file: RandomAccess) => Promise<{ meta: LayerMetadata; backend: MetadataBackend }> {
  const ts = async (file: RandomAccess) => ({
    meta: await readMetadata(file),
    backend: "ts" as const,
  });
  if (backend === "ts") return ts;
  return (file: RandomAccess) => {
    const lib = cachedLoad(libvhdPath);
    if (lib instanceof Error) {
      if (backend === "auto") return ts(file);
      return Promise.reject(
        new VhdError(file.name, undefined, `-vhd-backend ffi: ${lib.message}`, { cause: lib }),
      );
    }
    try {
      const meta = fromLibvhd(lib.readMetadata(file.name), file);
      return Promise.resolve({ meta, backend: "ffi" as const });
    } catch (err) {
      if (backend === "auto") return ts(file);
      return Promise.reject(err);
    }
  };
}
