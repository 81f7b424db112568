/**
 * One copy as the parsed command line says: open the disks, resolve allocation and `-base`,
 * copy with progress, flush.
 *
 * @module
 */

import { resolveAllocation, resolveBase } from "../endpoint/allocation.ts";
import { ExitCode, messageOf, SparseDdError } from "../core/errors.ts";
import { copy } from "../copy/copier.ts";
import type { Disk } from "../core/disk.ts";
import {
  checkDistinct,
  checkStatsFile,
  type Endpoint,
  resolveEndpoint,
} from "../endpoint/endpoint.ts";
import { openDestination, type OpenedSource, openSource } from "../endpoint/open.ts";
import { type LaneGroup, startLanes } from "../copy/threads.ts";
import { isNbdUri } from "../nbd/protocol.ts";
import { HumanProgress, MachineProgress, NoProgress, type ProgressReporter } from "./progress.ts";
import { DEVICE_THREADS, LANE_SEGMENT, type Options } from "./flags.ts";
import { note, type Report } from "./output.ts";
import { isRemoteUrl, redactSecrets } from "../http/url.ts";
import { remoteOpenOptions } from "./remote_flags.ts";

async function applyPriorities(o: Options): Promise<void> {
  const run = async (cmd: string, args: string[]) => {
    try {
      const out = await new Deno.Command(cmd, {
        args,
        stdin: "null",
        stdout: "null",
        stderr: "piped",
        signal: AbortSignal.timeout(5000),
      }).output();
      if (!out.success) {
        note(
          `warning: ${cmd} ${args.join(" ")} failed: ${
            new TextDecoder().decode(out.stderr).trim()
          }`,
        );
      }
    } catch (err) {
      note(`warning: cannot run ${cmd}: ${messageOf(err)}`);
    }
  };
  const pid = String(Deno.pid);
  if (o.nice !== undefined) await run("renice", ["-n", String(o.nice), "-p", pid]);
  if (o.ioniceClass !== undefined) {
    const args = ["-c", String(o.ioniceClass)];
    if ((o.ioniceClass === 1 || o.ioniceClass === 2) && o.ioniceClassData !== undefined) {
      args.push("-n", String(o.ioniceClassData));
    }
    await run("ionice", [...args, "-p", pid]);
  }
}

/** Where the program runs from, for what it starts in other threads. */
export interface Entry {
  /** The module a copy thread runs (main.ts, or the bundle or binary made of it); without it,
   * copies run in the calling thread alone. */
  laneWorker?: string | URL;
}

/** Runs one copy as the options say; returns the report. Throws on failure. */
export async function runCopy(
  o: Options,
  signal?: AbortSignal,
  entry: Entry = {},
): Promise<Report> {
  const machine = o.machine;
  if (o.inert.length > 0) note(`note: accepted but not applicable here: ${o.inert.join(", ")}`);
  await applyPriorities(o);
  const openOpts = {
    unbuffered: o.unbuffered,
    nbdExport: o.nbdExport,
    nbdTimeoutMs: o.nbdTimeoutMs,
    vhdBackend: o.vhd.backend,
    remote: await remoteOpenOptions(o),
  };
  const remote = isRemoteUrl(o.dest);
  if (o.nbdExport !== undefined && !isNbdUri(o.dest) && !remote) {
    note(`note: -nbd-export ${o.nbdExport} ignored: the destination is not an NBD URI`);
  }
  // Each operand is resolved once (stat, format); everything below uses these descriptions.
  const sysfsRoot = o.discovery.sysfsRoot;
  const srcEnd = await resolveEndpoint(o.src, "source", { format: o.vhd.srcFormat, sysfsRoot });
  const baseSpec = o.base ?? o.vhd.baseVhd;
  const baseEnd = baseSpec === undefined ? undefined : await resolveEndpoint(baseSpec, "base", {
    // -base-vhd alone names the base's VHD itself.
    format: o.base === undefined ? "vhd" : o.vhd.baseFormat,
    sysfsRoot,
  });
  const destEnd = await resolveEndpoint(o.dest, "destination", { sysfsRoot });
  const checkOperands = async () => {
    checkDistinct(srcEnd, destEnd, baseEnd);
    if (o.statsFile !== undefined) {
      await checkStatsFile(o.statsFile, [srcEnd, destEnd, ...baseEnd ? [baseEnd] : []]);
    }
  };
  // Refused before anything is opened (and again below, once the VHD chains are known).
  await checkOperands();
  let src: OpenedSource | undefined;
  let dst: Disk | undefined;
  let lanes: LaneGroup | undefined;
  try {
    src = await openSource(srcEnd, openOpts).catch((err) => {
      throw tag(err, "source");
    });
    // xapi's storage migration passes the remote VDI's size, which may be rounded up past the
    // source's: xapi's own sparse_dd then copies the source's size, and so does this one.
    const size = Math.min(o.size ?? src.disk.size, src.disk.size);
    const sizeNote = o.size !== undefined && o.size > src.disk.size
      ? `-size ${o.size} is larger than the source ${o.src}: copying its ${src.disk.size} bytes`
      : undefined;
    // Notes wait until the destination is accepted, so a refused copy prints one line only.
    const alloc = await resolveAllocation(srcEnd, src.disk, {
      ignore: o.ignoreAllocation,
      discovery: o.discovery,
      srcVhd: o.vhd.srcVhd,
      vhdBackend: o.vhd.backend,
    });
    const notes = [...(sizeNote ? [sizeNote] : []), ...alloc.notes];
    let unchanged;
    if (baseEnd) {
      const b = await resolveBase(baseEnd, srcEnd, src, {
        baseVhd: o.vhd.baseVhd,
        srcVhd: o.vhd.srcVhd ?? alloc.discovery?.vhd ?? undefined,
        size,
        vhdBackend: o.vhd.backend,
        discovery: o.discovery,
      });
      notes.push(...b.notes);
      unchanged = b.unchanged;
    }
    // Every file of every VHD chain is known now: none of them may be the destination.
    await checkOperands();
    dst = await openDestination(destEnd, size, openOpts).catch((err) => {
      throw tag(err, "destination");
    });
    if (dst.size < size) {
      throw new SparseDdError(
        ExitCode.Destination,
        `destination ${redactSecrets(o.dest)} is smaller (${dst.size} bytes) than -size ${size}`,
      );
    }
    for (const n of notes) note(n);
    // Other threads open the disks from their descriptions themselves, so only local disks are
    // shared (an NBD server may not take more connections).
    const threads = o.threads ?? (destEnd.kind === "block" ? DEVICE_THREADS : 1);
    const local = (e: Endpoint) => e.kind !== "nbd" && e.kind !== "http";
    if (entry.laneWorker && threads > 1 && local(srcEnd) && local(destEnd)) {
      lanes = startLanes({
        worker: entry.laneWorker,
        count: threads - 1,
        segment: LANE_SEGMENT,
        job: { src: srcEnd, dest: destEnd, open: openOpts, copy: { quantum: o.quantum } },
      });
    }
    const prezeroed = o.prezeroed || dst.knownZero === true;
    const reporter: ProgressReporter = machine
      ? new MachineProgress()
      : (o.progress === "bar" || (o.progress === "auto" && Deno.stderr.isTerminal()))
      ? new HumanProgress()
      : new NoProgress();
    const stats = await copy(src.disk, dst, {
      size,
      allocation: alloc.extents,
      prezeroed,
      unchanged,
      quantum: o.quantum,
      signal,
      lanes,
      onProgress: (done, total) => reporter.update(done, total),
    });
    try {
      await dst.flush();
    } catch (err) {
      throw tag(err, "destination");
    }
    // A disk can still fail after its last request (an NBD server's stray reply): its close
    // reports that, and a copy over a broken connection is no clean copy.
    await src.disk.close().catch((err) => {
      throw tag(err, "source");
    });
    await dst.close().catch((err) => {
      throw tag(err, "destination");
    });
    const report: Report = {
      src: o.src,
      dest: redactSecrets(o.dest),
      prezeroed,
      base: o.base ?? o.vhd.baseVhd ?? null,
      allocation: alloc.route,
      allocatedExtents: alloc.extents?.count ?? null,
      discovery: alloc.discovery ?? null,
      ...stats,
    };
    reporter.finish();
    return report;
  } finally {
    lanes?.close();
    await src?.disk.close().catch(() => {});
    await dst?.close().catch(() => {});
  }
}

function tag(err: unknown, role: "source" | "destination"): unknown {
  if (
    err && typeof err === "object" && "role" in err && (err as { role?: string }).role === undefined
  ) {
    (err as { role?: string }).role = role;
  }
  return err;
}
