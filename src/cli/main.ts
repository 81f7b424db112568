/**
 * The whole program: parse, copy, report, exit code.
 *
 * @module
 */

import { ExitCode, exitCodeOf, messageOf } from "../core/errors.ts";
import { CopyAborted } from "../copy/copier.ts";
import { parse, type ParseResult, usage } from "./flags.ts";
import { failure, flushNotes, holdNotes, note, summary, writeAllSync } from "./output.ts";
import { type Entry, runCopy } from "./run.ts";
import { VERSION } from "../version.ts";

/**
 * The whole program: parses `argv`, copies, reports; returns the exit code. Never throws.
 *
 * @example
 * ```ts
 * import { main } from "./main.ts";
 * const code = await main(["-src", "a.raw", "-dest", "b.raw"]);
 * ```
 */
export async function main(argv: string[], entry: Entry = {}): Promise<number> {
  let parsed: ParseResult;
  try {
    parsed = await parse(argv);
  } catch (err) {
    failure(messageOf(err));
    return exitCodeOf(err);
  }
  if (parsed.action === "help") {
    writeAllSync(Deno.stdout, usage());
    return ExitCode.Ok;
  }
  if (parsed.action === "version") {
    writeAllSync(Deno.stdout, `sparse_dd ${VERSION} (deno ${Deno.version.deno})\n`);
    return ExitCode.Ok;
  }
  const o = parsed.options;
  if (o.machine) holdNotes();
  for (const n of parsed.configNotes) note(n);

  // SIGTERM (xapi's cancel) and SIGINT stop the copy between two steps: no end record is sent.
  const abort = new AbortController();
  let stoppedBy: "SIGINT" | "SIGTERM" | undefined;
  const handlers = (["SIGINT", "SIGTERM"] as const).map((sig) => {
    const h = () => {
      stoppedBy ??= sig;
      abort.abort(sig);
      // The copy stops between steps; anything else (discovery waiting on tap-ctl, a stalled
      // NBD request) must not keep xapi waiting: leave after a grace period regardless.
      setTimeout(() => {
        failure(`stopped by ${sig}; ${o.dest} is incomplete`);
        Deno.exit(sig === "SIGINT" ? ExitCode.Interrupted : ExitCode.Terminated);
      }, 2000);
    };
    Deno.addSignalListener(sig, h);
    return [sig, h] as const;
  });
  try {
    const report = await runCopy(o, abort.signal, entry);
    const json = JSON.stringify(report);
    if (o.statsFile) {
      try {
        await Deno.writeTextFile(o.statsFile, json + "\n");
      } catch (err) {
        // Not a source error: the copy is done; only the stats are missing.
        note(
          `the copy to ${o.dest} is complete, but the stats file ${o.statsFile} cannot be ` +
            `written: ${messageOf(err)}`,
        );
        return ExitCode.Usage;
      }
    }
    if (o.json) writeAllSync(o.machine ? Deno.stderr : Deno.stdout, json + "\n");
    else if (!o.machine) writeAllSync(Deno.stdout, summary(report));
    return ExitCode.Ok;
  } catch (err) {
    if (err instanceof CopyAborted || stoppedBy) {
      const at = err instanceof CopyAborted ? ` at offset ${err.offset}` : "";
      failure(`stopped by ${stoppedBy ?? "signal"}${at}; ${o.dest} is incomplete`);
      return stoppedBy === "SIGINT" ? ExitCode.Interrupted : ExitCode.Terminated;
    }
    failure(messageOf(err));
    return exitCodeOf(err);
  } finally {
    for (const [sig, h] of handlers) Deno.removeSignalListener(sig, h);
    await flushNotes();
  }
}
