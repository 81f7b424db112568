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
  checkNotOwnOutput,
  checkStatsFile,
  type Endpoint,
  resolveEndpoint,
} from "../endpoint/endpoint.ts";
import { openDestination, type OpenedSource, openSource } from "../endpoint/open.ts";
import { startThreads, type ThreadGroup } from "../copy/threads.ts";
import { FileDisk } from "../file/file_disk.ts";
import { isNbdUri } from "../nbd/protocol.ts";
import { HumanProgress, MachineProgress, NoProgress, type ProgressReporter } from "./progress.ts";
import { DEVICE_THREADS, type Options, THREAD_SEGMENT } from "./flags.ts";
import { note, type Report, successReport } from "./output.ts";
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
  threadWorker?: string | URL;
}

/** Runs one copy as the options say; returns the report. Throws on failure. */
export async function runCopy(
  o: Options,
  signal?: AbortSignal,
  entry: Entry = {},
  /** Set once `-stats-file` is known to be no operand and safe to write (a failure's stats are
   * written only then). */
  statsFileChecked: { ok: boolean } = { ok: false },
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
    statsFileChecked.ok = false;
    checkDistinct(srcEnd, destEnd, baseEnd);
    await checkNotOwnOutput(destEnd);
    if (o.statsFile !== undefined) {
      await checkStatsFile(o.statsFile, [srcEnd, destEnd, ...baseEnd ? [baseEnd] : []]);
    }
    statsFileChecked.ok = true;
  };
  // Refused before anything is opened (and again below, once the VHD chains are known).
  await checkOperands();
  let src: OpenedSource | undefined;
  let dst: Disk | undefined;
  let group: ThreadGroup | undefined;
  let reporter: ProgressReporter | undefined;
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
    // With -base the destination holds the base's data, usable or not: never zero. Unless it
    // was just created (or empty): then it holds nothing of the base, and only a full copy onto
    // its zeroes is right.
    let holdsBase = baseEnd !== undefined;
    if (holdsBase && dst.knownZero === true) {
      if (unchanged !== undefined) {
        notes.push(
          `warning: ${o.dest} is new or empty, so it does not hold -base ${
            o.base ?? o.vhd.baseVhd
          }: doing a full copy`,
        );
      }
      holdsBase = false;
      unchanged = undefined;
    }
    for (const n of notes) note(n);
    // Other threads open the disks from their descriptions themselves, so only local disks are
    // shared (an NBD server may not take more connections).
    const threads = o.threads ?? (destEnd.kind === "block" ? DEVICE_THREADS : 1);
    const local = (e: Endpoint) => e.kind !== "nbd" && e.kind !== "http";
    if (entry.threadWorker && threads > 1 && local(srcEnd) && local(destEnd)) {
      group = startThreads({
        worker: entry.threadWorker,
        count: threads - 1,
        segment: THREAD_SEGMENT,
        job: { src: srcEnd, dest: destEnd, open: openOpts, copy: { quantum: o.quantum } },
      });
    }
    const prezeroed = !holdsBase && (o.prezeroed || dst.knownZero === true);
    reporter = machine
      ? new MachineProgress((b) => {
        try {
          for (let off = 0; off < b.length;) off += Deno.stdout.writeSync(b.subarray(off));
        } catch (err) {
          // xapi reading the records is gone (EPIPE): not the source's fault.
          throw new SparseDdError(
            ExitCode.Usage,
            `cannot write the progress records to stdout: ${messageOf(err)}; ` +
              `${redactSecrets(o.dest)} is incomplete`,
          );
        }
      })
      : (o.progress === "bar" || (o.progress === "auto" && Deno.stderr.isTerminal()))
      ? new HumanProgress({ size, followResizes: true })
      : new NoProgress();
    const stats = await copy(src.disk, dst, {
      size,
      allocation: alloc.extents,
      prezeroed,
      unchanged,
      holdsBase,
      quantum: o.quantum,
      signal,
      threads: group,
      onProgress: (done, total) => reporter?.update(done, total),
    });
    if (src.disk instanceof FileDisk) {
      // A file cut short where the copy read nothing (a hole) fails no read: it is still no copy.
      await src.disk.assertSize(size).catch((err) => {
        throw tag(err, "source");
      });
    }
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
    const report = successReport({
      src: o.src,
      dest: redactSecrets(o.dest),
      base: o.base ?? o.vhd.baseVhd ?? null,
      prezeroed: o.prezeroed,
      destinationKnownZero: prezeroed,
      allocation: alloc.route,
      allocatedExtents: alloc.extents?.count ?? null,
      discovery: alloc.discovery ?? null,
    }, stats);
    reporter?.finish();
    return report;
  } finally {
    reporter?.close?.();
    group?.close();
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
