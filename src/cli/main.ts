/**
 * The whole program: parse, copy, report, exit code.
 *
 * @module
 */

import { ExitCode, exitCodeOf, messageOf } from "../core/errors.ts";
import { CopyAborted } from "../copy/copier.ts";
import { parse, type ParseResult, usage } from "./flags.ts";
import {
  failure,
  failureReport,
  flushNotes,
  holdNotes,
  note,
  summary,
  writeAllSync,
} from "./output.ts";
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

  // A failed copy's stats say how it failed, so a stats file never shows an older success.
  const started = performance.now();
  const statsFileChecked = { ok: false };
  const fail = (code: number, message: string): number => {
    failure(message);
    const json = JSON.stringify(
      failureReport(o, code, message, (performance.now() - started) / 1000),
    );
    try {
      // Only a stats file checked to be no disk, FIFO or the like (never onto a disk).
      if (o.statsFile && statsFileChecked.ok) Deno.writeTextFileSync(o.statsFile, json + "\n");
    } catch (err) {
      failure(`cannot write the stats file ${o.statsFile}: ${messageOf(err)}`);
    }
    // With -machine, stderr keeps its one error line: the JSON goes to the stats file only.
    if (o.json && !o.machine) writeAllSync(Deno.stdout, json + "\n");
    return code;
  };

  // SIGTERM (xapi's cancel) and SIGINT stop the copy between two steps: no end record is sent.
  const abort = new AbortController();
  let stoppedBy: "SIGINT" | "SIGTERM" | undefined;
  const signalCode = (sig: string | undefined) =>
    sig === "SIGINT" ? ExitCode.Interrupted : ExitCode.Terminated;
  const handlers = (["SIGINT", "SIGTERM"] as const).map((sig) => {
    const h = () => {
      stoppedBy ??= sig;
      abort.abort(sig);
      // The copy stops between steps; anything else (discovery waiting on tap-ctl, a stalled
      // NBD request) must not keep xapi waiting: leave after a grace period regardless.
      setTimeout(() => {
        Deno.exit(fail(signalCode(sig), `stopped by ${sig}; ${o.dest} is incomplete`));
      }, 2000);
    };
    Deno.addSignalListener(sig, h);
    return [sig, h] as const;
  });
  try {
    const report = await runCopy(o, abort.signal, entry, statsFileChecked);
    const json = JSON.stringify(report);
    if (o.statsFile) {
      try {
        await Deno.writeTextFile(o.statsFile, json + "\n");
      } catch (err) {
        // Not a source error: the copy is done; only the stats are missing.
        failure(
          `the copy to ${o.dest} is complete, but the stats file ${o.statsFile} cannot be ` +
            `written: ${messageOf(err)}`,
        );
        return ExitCode.Usage;
      }
    }
    try {
      if (o.json) writeAllSync(o.machine ? Deno.stderr : Deno.stdout, json + "\n");
      else if (!o.machine) writeAllSync(Deno.stdout, summary(report));
    } catch (err) {
      // Not a source error either: the copy is done; only its report cannot be printed.
      failure(
        `the copy to ${o.dest} is complete, but its report cannot be written: ${messageOf(err)}`,
      );
      return ExitCode.Usage;
    }
    return ExitCode.Ok;
  } catch (err) {
    if (err instanceof CopyAborted || stoppedBy) {
      const at = err instanceof CopyAborted ? ` at offset ${err.offset}` : "";
      return fail(
        signalCode(stoppedBy),
        `stopped by ${stoppedBy ?? "signal"}${at}; ${o.dest} is incomplete`,
      );
    }
    return fail(exitCodeOf(err), messageOf(err));
  } finally {
    for (const [sig, h] of handlers) Deno.removeSignalListener(sig, h);
    await flushNotes();
  }
}
