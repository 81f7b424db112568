import { deepStrictEqual, doesNotMatch, match, ok, strictEqual } from "node:assert/strict";
import {
  absoluteSpec,
  failureReport,
  plural,
  type Report,
  successReport,
  summary,
} from "../../src/cli/output.ts";
import type { CopyStats } from "../../src/copy/copier.ts";
import { VERSION } from "../../src/version.ts";

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

function stats(over: Partial<CopyStats>): CopyStats {
  return {
    size: 10 * GiB,
    allocatedBytes: 0,
    reads: 0,
    bytesRead: 0,
    writes: 0,
    bytesWritten: 0,
    zeroCalls: 0,
    dataBytes: 0,
    zeroedBytes: 0,
    skippedBytes: 10 * GiB,
    unchangedBytes: 0,
    threads: 1,
    seconds: 0.5,
    throughput: 20 * GiB,
    ...over,
  };
}

function report(over: Partial<CopyStats>, allocation = "seek-data", extents = 0): Report {
  return successReport({
    src: "/src.raw",
    dest: "/dst.raw",
    base: null,
    prezeroed: false,
    destinationKnownZero: true,
    allocation,
    allocatedExtents: extents,
    discovery: null,
  }, stats(over));
}

Deno.test("an all-hole copy reports no rate, not the logical size over the time", () => {
  const text = summary(report({}));
  doesNotMatch(text, /TiB\/s|GiB\/s/);
  match(text, /^copied 10\.00 GiB from \/src\.raw to \/dst\.raw in 0\.50 s \(1 thread\)\n/);
  match(text, /not written: 10\.00 GiB of zeroes, the destination being zero already/);
});

Deno.test("rates are of the bytes read and written; the logical rate stays in the JSON", () => {
  const r = report(
    {
      allocatedBytes: 100 * MiB,
      bytesRead: 100 * MiB,
      bytesWritten: 50 * MiB,
      dataBytes: 50 * MiB,
      writes: 25,
      reads: 50,
      skippedBytes: 10 * GiB - 50 * MiB,
      seconds: 2.00049,
    },
    "seek-data",
    3,
  );
  strictEqual(r.seconds, 2);
  strictEqual(r.readRate, Math.round(100 * MiB / 2.00049));
  strictEqual(r.writeRate, Math.round(50 * MiB / 2.00049));
  strictEqual(r.throughput, Math.round(10 * GiB / 2.00049));
  const text = summary(r);
  match(text, /read 100\.00 MiB at 49\.99 MiB\/s: the file's data, 3 extents/);
  match(text, /wrote 50\.00 MiB at 24\.99 MiB\/s in 25 writes/);
});

Deno.test("plurals: 1 thread, 1 write, 1 extent; 2 threads", () => {
  const one = summary(report({ writes: 1, bytesWritten: 4096, bytesRead: 4096 }, "vhd", 1));
  match(one, /\(1 thread\)/);
  match(one, /in 1 write\b/);
  match(one, /1 extent\b/);
  match(summary(report({ threads: 2 })), /\(2 threads\)/);
  strictEqual(plural(0, "write"), "0 writes");
});

Deno.test("the summary speaks of the disks, not of the program's insides", () => {
  const routes = [
    "vhd",
    "raw-seek-data",
    "seek-data",
    "nbd-block-status",
    "disk",
    "none",
    "ignored",
  ];
  for (const route of routes) {
    const text = summary(
      report({ bytesRead: MiB, bytesWritten: MiB, writes: 1, zeroedBytes: MiB }, route, 2),
    );
    doesNotMatch(text, /quant|lane|plan|seek-data|block-status|allocation:|extents\)/, route);
  }
});

Deno.test("the JSON carries version, exitCode and absolute paths; failures have the same head", () => {
  const r = report({});
  strictEqual(r.version, VERSION);
  strictEqual(r.exitCode, 0);
  strictEqual(r.error, null);
  strictEqual(absoluteSpec("nbd+unix:///x?socket=/s"), "nbd+unix:///x?socket=/s");
  strictEqual(absoluteSpec("https://h/x"), "https://h/x");
  strictEqual(absoluteSpec("a/b.raw"), `${Deno.cwd()}/a/b.raw`);
  const f = failureReport({ src: "s", dest: "/d", base: "b" }, 4, "cannot write /d", 1.23456);
  deepStrictEqual(f, {
    version: VERSION,
    exitCode: 4,
    error: "cannot write /d",
    src: `${Deno.cwd()}/s`,
    dest: "/d",
    base: `${Deno.cwd()}/b`,
    seconds: 1.235,
  });
  for (const k of Object.keys(f)) ok(k in r, `a success report has ${k} too`);
});

Deno.test("a failure's stats redact session ids and credentials, as the stderr line does", () => {
  const dest = "https://root:pw@h/import_raw_vdi?vdi=OpaqueRef:v&session_id=OpaqueRef:secret";
  const f = failureReport({ src: "/s", dest }, 4, `cannot write ${dest} at offset 0: 500`, 1);
  doesNotMatch(JSON.stringify(f), /secret|pw@/);
  match(f.dest, /^https:\/\/<redacted>@h\/import_raw_vdi\?vdi=OpaqueRef:v&session_id=<redacted>$/);
});
