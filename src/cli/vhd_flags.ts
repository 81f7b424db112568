/**
 * The command-line flags of the VHD feature, kept here so `cli.ts` only spreads them in:
 * `-src-format raw|vhd|auto`, `-base-format raw|vhd|auto`, `-src-vhd PATH`, `-base-vhd PATH`,
 * `-vhd-backend auto|ts|ffi`.
 *
 * @module
 */

import { ExitCode, SparseDdError } from "../core/errors.ts";
import type { VhdBackend } from "../vhd/libvhd.ts";

/** What the VHD flags say. */
export interface VhdOptions {
  /** How to read a `-src` file: by its name (`auto`: VHD when it ends in `.vhd`), or forced. */
  srcFormat: "auto" | "raw" | "vhd";
  /** How to read a `-base` file, as `srcFormat`. */
  baseFormat: "auto" | "raw" | "vhd";
  /** The VHD behind a `-src` device: its chain gives the allocation; data comes from the device. */
  srcVhd?: string;
  /** The VHD behind a `-base` device (or the base itself): enables `-base` delta planning. */
  baseVhd?: string;
  /** Reader of VHD metadata. */
  backend: VhdBackend;
}

/** Flag specs in the shape of `cli.ts`'s `FLAGS`. */
export const VHD_FLAGS = {
  "src-format": {
    kind: "string",
    arg: "auto|raw|vhd",
    help: "read -src as raw bytes or as a VHD chain (default auto: VHD when its name ends in " +
      ".vhd; never decided by the file's content)",
  },
  "base-format": {
    kind: "string",
    arg: "auto|raw|vhd",
    help: "read -base as raw bytes or as a VHD chain (default auto: as -src-format)",
  },
  "src-vhd": {
    kind: "string",
    arg: "PATH",
    help: "the VHD file behind a -src device: its chain's blocks say what to read",
  },
  "base-vhd": {
    kind: "string",
    arg: "PATH",
    help: "the VHD file behind the -base device: copy only blocks whose layers differ",
  },
  "vhd-backend": {
    kind: "string",
    arg: "auto|ts|ffi",
    help: "VHD metadata reader: libvhd.so.0 via FFI, TypeScript, or auto (libvhd if loadable)",
  },
} as const;

/**
 * Reads and checks the VHD flags from parsed argv values; a bad value is a usage error (exit 1).
 *
 * @example
 * ```ts
 * import { vhdOptionsFrom } from "./vhd_flags.ts";
 * vhdOptionsFrom({ "src-format": "vhd" }); // { srcFormat: "vhd", backend: "auto", ... }
 * ```
 */
export function vhdOptionsFrom(values: Record<string, string | boolean | undefined>): VhdOptions {
  const str = (k: string) => {
    const v = values[k];
    return typeof v === "string" && v !== "" ? v : undefined;
  };
  const format = (flag: string): "auto" | "raw" | "vhd" => {
    const v = str(flag) ?? "auto";
    if (v !== "auto" && v !== "raw" && v !== "vhd") {
      throw new SparseDdError(
        ExitCode.Usage,
        `invalid -${flag} value '${v}': expected auto, raw or vhd`,
      );
    }
    return v;
  };
  const srcFormat = format("src-format");
  const baseFormat = format("base-format");
  const backend = str("vhd-backend") ?? "auto";
  if (backend !== "auto" && backend !== "ts" && backend !== "ffi") {
    throw new SparseDdError(
      ExitCode.Usage,
      `invalid -vhd-backend value '${backend}': expected auto, ts or ffi`,
    );
  }
  return { srcFormat, baseFormat, srcVhd: str("src-vhd"), baseVhd: str("base-vhd"), backend };
}
