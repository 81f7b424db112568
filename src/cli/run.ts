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
import { openDestination, openSource } from "../endpoint/open.ts";
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
    srcFormat: o.vhd.srcFormat,
    vhdBackend: o.vhd.backend,
    remote: await remoteOpenOptions(o),
  };
  const remote = isRemoteUrl(o.dest);
  if (o.nbdExport !== undefined && !isNbdUri(o.dest) && !remote) {
    note(`note: -nbd-export ${o.nbdExport} ignored: the destination is not an NBD URI`);
  }
  let src: Disk | undefined;
  let dst: Disk | undefined;
  let lanes: LaneGroup | undefined;
  try {
    // Other threads open the disks by name themselves, so only local disks are shared (an NBD
    // server may not take more connections).
    const threads = o.threads ?? (await isBlockDevice(o.dest) ? DEVICE_THREADS : 1);
    if (
      entry.laneWorker && threads > 1 && !isNbdUri(o.src) && !isNbdUri(o.dest) && !remote
    ) {
      lanes = startLanes({
        worker: entry.laneWorker,
        count: threads - 1,
        segment: LANE_SEGMENT,
        job: {
          src: o.src,
          dest: o.dest,
          open: openOpts,
          copy: { quantum: o.quantum },
        },
      });
    }
    src = await openSource(o.src, openOpts).catch((err) => {
      throw tag(err, "source");
    });
    // xapi's storage migration passes the remote VDI's size, which may exceed the source's.
    const size = remote ? Math.min(o.size ?? src.size, src.size) : o.size ?? src.size;
    if (size > src.size) {
      throw new SparseDdError(
        ExitCode.Usage,
        `-size ${size} is larger than the source ${o.src} (${src.size} bytes)`,
      );
    }
    // Notes wait until the destination is accepted, so a refused copy prints one line only.
    const alloc = await resolveAllocation(o.src, src, {
      ignore: o.ignoreAllocation,
      discovery: o.discovery,
      srcVhd: o.vhd.srcVhd,
      vhdBackend: o.vhd.backend,
    });
    const notes = [...alloc.notes];
    let unchanged;
    const base = o.base ?? o.vhd.baseVhd;
    if (base) {
      const b = await resolveBase(base, o.src, src, {
        baseVhd: o.vhd.baseVhd,
        srcVhd: o.vhd.srcVhd ?? alloc.discovery?.vhd ?? undefined,
        size,
        vhdBackend: o.vhd.backend,
        discovery: o.discovery,
      });
      notes.push(...b.notes);
      unchanged = b.unchanged;
    }
    dst = await openDestination(o.dest, size, openOpts).catch((err) => {
      throw tag(err, "destination");
    });
    if (dst.size < size) {
      throw new SparseDdError(
        ExitCode.Destination,
        `destination ${redactSecrets(o.dest)} is smaller (${dst.size} bytes) than -size ${size}`,
      );
    }
    for (const n of notes) note(n);
    const prezeroed = o.prezeroed || dst.knownZero === true;
    const reporter: ProgressReporter = machine
      ? new MachineProgress()
      : (o.progress === "bar" || (o.progress === "auto" && Deno.stderr.isTerminal()))
      ? new HumanProgress()
      : new NoProgress();
    const stats = await copy(src, dst, {
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
    await src.close().catch((err) => {
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
    await src?.close().catch(() => {});
    await dst?.close().catch(() => {});
  }
}

/** True when `path` is a block device; false for anything else, or when it cannot be told. */
async function isBlockDevice(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isBlockDevice === true;
  } catch {
    return false;
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
