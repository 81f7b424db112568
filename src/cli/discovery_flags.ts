/**
 * The command-line flags that steer device discovery (`-require-vhd`, where the tools and roots
 * are, `-discovery-timeout`), kept here so `flags.ts` only spreads them in.
 *
 * @module
 */

import type { SourceDiscoveryOptions } from "../discovery/source_allocation.ts";
import { parseSeconds } from "./values.ts";

/** The discovery flags, in the shape of `FLAGS` (`flags.ts`). */
export const DISCOVERY_FLAGS = {
  "require-vhd": {
    kind: "boolean",
    help: "fail (exit 3) unless a VHD is found behind the source device (or -src is a VHD file)",
  },
  "tap-ctl": {
    kind: "string",
    arg: "PATH",
    help: "the tap-ctl command (default tap-ctl on PATH; for tests and unusual hosts)",
  },
  "xenstore-read": {
    kind: "string",
    arg: "PATH",
    help: "the xenstore-read command (default xenstore-read on PATH; for tests)",
  },
  "sysfs-root": { kind: "string", arg: "DIR", help: "where sysfs is (default /sys; for tests)" },
  "procfs-root": { kind: "string", arg: "DIR", help: "where procfs is (default /proc; for tests)" },
  "run-root": {
    kind: "string",
    arg: "DIR",
    help: "runtime directory with nonpersistent/nbd/N (default /var/run; for tests)",
  },
  "discovery-timeout": {
    kind: "string",
    arg: "SECONDS",
    help: "limit for each tap-ctl / xenstore-read run during discovery (default 15)",
  },
} as const;

/**
 * Reads the discovery flags out of the parsed command-line values. Throws a usage error for a
 * bad `-discovery-timeout`.
 *
 * @example
 * ```ts
 * import { discoveryOptionsFrom } from "./discovery_flags.ts";
 * const o = discoveryOptionsFrom({ "tap-ctl": "/opt/bin/tap-ctl", "require-vhd": true });
 * o.tapCtl; // "/opt/bin/tap-ctl"
 * ```
 */
export function discoveryOptionsFrom(
  values: Record<string, string | boolean | undefined>,
): SourceDiscoveryOptions {
  const str = (k: string) => {
    const v = values[k];
    return typeof v === "string" && v !== "" ? v : undefined;
  };
  const o: SourceDiscoveryOptions = {
    requireVhd: values["require-vhd"] === true,
    tapCtl: str("tap-ctl"),
    xenstoreRead: str("xenstore-read"),
    sysfsRoot: str("sysfs-root"),
    procfsRoot: str("procfs-root"),
    runRoot: str("run-root"),
    searchDirs: ["/dev/mapper"],
  };
  const t = str("discovery-timeout");
  if (t !== undefined) {
    o.tapCtlTimeoutMs = o.xenstoreTimeoutMs = parseSeconds(t, "-discovery-timeout");
  }
  return o;
}
