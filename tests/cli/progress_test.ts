import { deepStrictEqual, match, ok, strictEqual } from "node:assert/strict";
import { ExitCode } from "../../src/core/errors.ts";
import {
  encodeRecord,
  END_RECORD,
  endProgressLine,
  formatBar,
  formatBytes,
  formatDuration,
  HumanProgress,
  MachineProgress,
  percentOf,
  RecordDecoder,
} from "../../src/cli/progress.ts";
import { Prng } from "../_support/prng.ts";
import { mainCommand, readMachineStream, ROOT, sh, withTempDir } from "../_support/helpers.ts";

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

Deno.test("a record is a 12-byte little-endian header (offset 0, length) and the ASCII payload", () => {
  const r = encodeRecord("Progress: 7");
  deepStrictEqual([...r.subarray(0, 12)], [0, 0, 0, 0, 0, 0, 0, 0, 11, 0, 0, 0]);
  strictEqual(new TextDecoder().decode(r.subarray(12)), "Progress: 7");
  deepStrictEqual([...END_RECORD], new Array(12).fill(0));
});

Deno.test("machine progress: 0 first, one record per whole percent, 100 and the end record", () => {
  const out: Uint8Array[] = [];
  const p = new MachineProgress((b) => out.push(b));
  const total = 1000;
  for (let done = 0; done <= total; done += 3) p.update(done, total);
  p.finish();
  const stream = readMachineStream(concat(out));
  strictEqual(stream.ended, true);
  deepStrictEqual(stream.percents, Array.from({ length: 101 }, (_, i) => i));
  deepStrictEqual(stream.percents[0], 0);
});

Deno.test("percentOf never says 100 before the end and counts empty work as done", () => {
  strictEqual(percentOf(999, 1000), 99);
  strictEqual(percentOf(1000, 1000), 100);
  strictEqual(percentOf(0, 0), 100);
  strictEqual(formatBytes(3 * 1024 ** 3), "3.00 GiB");
});

const GiB = 1024 ** 3;

Deno.test("the bar line never reaches the last column, at any width and state", () => {
  const prng = new Prng(17);
  const rand = () => prng.next();
  for (let columns = 1; columns <= 200; columns++) {
    for (let k = 0; k < 5; k++) {
      const size = Math.floor(rand() * 20 * GiB);
      const covered = Math.floor(rand() * size);
      const text = formatBar({
        covered,
        size,
        percent: percentOf(covered, size),
        rate: k === 0 ? undefined : rand() * GiB,
        elapsed: rand() * 100000,
        columns,
      });
      ok(text.length <= Math.max(1, columns - 1), `${columns} columns: '${text}'`);
      ok(!text.includes("\n") && !text.includes("\r"));
    }
  }
});

Deno.test("a wide bar shows done / total, percent, rate, ETA and elapsed; a narrow one the percent", () => {
  const st = { covered: 4 * GiB, size: 10 * GiB, percent: 40, rate: 512 * 1024 ** 2, elapsed: 8 };
  const wide = formatBar({ ...st, columns: 120 });
  match(
    wide,
    /^\[#{16}\.{24}\] {2}40% {2}4\.00 GiB \/ 10\.00 GiB {2}512\.00 MiB\/s {2}ETA 0:12 {2}0:08$/,
  );
  const narrow = formatBar({ ...st, columns: 30 });
  match(narrow, /^\[#+\.+\] {2}40% {2}ETA 0:12$/);
  strictEqual(formatBar({ ...st, columns: 6 }), " 40%");
  match(formatBar({ ...st, rate: undefined, columns: 120 }), /--\/s {2}ETA --:--/);
  strictEqual(formatDuration(3725), "1:02:05");
});

function recorder(columns: { n: number }) {
  const out: string[] = [];
  let t = 0;
  const p = new HumanProgress({
    size: 10 * GiB,
    sink: (b) => out.push(new TextDecoder().decode(b)),
    columns: () => columns.n,
    now: () => t,
  });
  return { out, p, tick: (ms: number) => (t += ms) };
}

Deno.test("each redraw returns to the line start and clears to its end (no debris)", () => {
  const r = recorder({ n: 120 });
  for (let i = 0; i <= 10; i++) {
    r.tick(200);
    r.p.update(i, 10);
  }
  r.p.finish();
  ok(r.out.length >= 11);
  for (const draw of r.out.slice(0, -1)) {
    ok(draw.startsWith("\r") && draw.endsWith("\x1b[K"), JSON.stringify(draw));
    ok(!/[\r\n]/.test(draw.slice(1)), JSON.stringify(draw));
  }
  strictEqual(r.out.at(-1), "\n");
  match(r.out.at(-2)!, /100% {2}10\.00 GiB \/ 10\.00 GiB/);
});

Deno.test("the count is bytes of the disk covered, whatever part of it is work", () => {
  const r = recorder({ n: 120 });
  r.tick(200);
  r.p.update(1, 4); // a quarter of the work: a quarter of the 10 GiB disk
  match(r.out.at(-1)!, / 25% {2}2\.50 GiB \/ 10\.00 GiB/);
  r.p.close();
});

Deno.test("any other stderr line first ends the bar's line; the bar comes back below it", () => {
  const r = recorder({ n: 80 });
  r.tick(200);
  r.p.update(3, 10);
  endProgressLine();
  strictEqual(r.out.at(-1), "\n");
  endProgressLine();
  strictEqual(r.out.filter((x) => x === "\n").length, 1, "only one newline for an open line");
  r.tick(200);
  r.p.update(4, 10);
  match(r.out.at(-1)!, /^\r.* 40%/);
  r.p.close();
  strictEqual(r.out.at(-1), "\n");
  const before = r.out.length;
  endProgressLine();
  strictEqual(r.out.length, before, "a closed bar writes nothing more");
});

Deno.test("the progress reader follows xapi's framing across arbitrary chunk boundaries", () => {
  const records: number[] = [];
  const enc = (p: number) => {
    const body = new TextEncoder().encode(`Progress: ${p}`);
    const out = new Uint8Array(12 + body.length);
    new DataView(out.buffer).setUint32(8, body.length, true);
    out.set(body, 12);
    return out;
  };
  const parts = [0, 1, 50, 99, 100].map(enc);
  const all = new Uint8Array([...parts.flatMap((p) => [...p]), ...new Uint8Array(12)]);
  const r = new RecordDecoder();
  for (let i = 0; i < all.length; i += 5) records.push(...r.push(all.subarray(i, i + 5)));
  deepStrictEqual(records, [0, 1, 50, 99, 100]);
  strictEqual(r.ended, true);
});

Deno.test("the decoder refuses what xapi refuses: other payloads, an offset end record, a cut record", () => {
  const bad = (bytes: Uint8Array) => {
    let threw = false;
    try {
      const d = new RecordDecoder();
      d.push(bytes);
      d.finish();
    } catch {
      threw = true;
    }
    strictEqual(threw, true);
  };
  bad(encodeRecord("Progress: ten"));
  bad(encodeRecord("note: hello"));
  const offsetEnd = new Uint8Array(12);
  offsetEnd[0] = 1;
  bad(offsetEnd);
  bad(encodeRecord("Progress: 5").subarray(0, 20));
  const d = new RecordDecoder();
  deepStrictEqual(d.push(concat([encodeRecord("Progress: 5"), END_RECORD, new Uint8Array(3)])), [
    5,
  ]);
  strictEqual(d.trailing, 3);
});

Deno.test("-machine: a progress reader that goes away is reported as such, not as a source error", async () => {
  await withTempDir(async (dir) => {
    // Real data (zeroes written, not holes): the copy reads and reports every percent.
    await sh("dd", ["if=/dev/zero", `of=${dir}/src`, "bs=1M", "count=256", "status=none"]);
    const child = mainCommand(
      ["-machine", "-src", `${dir}/src`, "-dest", `${dir}/out`, "-config", "/dev/null"],
    ).spawn();
    const reader = child.stdout.getReader();
    await reader.read(); // Progress: 0
    await reader.cancel(); // xapi is gone: the pipe has no reader any more
    const [status, stderr] = await Promise.all([
      child.status,
      new Response(child.stderr).text(),
    ]);
    strictEqual(status.code, ExitCode.Usage, stderr);
    match(stderr, /^sparse_dd: cannot write the progress records to stdout: Broken pipe/);
    match(stderr, new RegExp(`${dir}/out is incomplete`));
  });
});

Deno.test("a summary that cannot be printed after a complete copy says so (exit 1, not a source error)", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeFile(`${dir}/src`, new Uint8Array(4096).fill(3));
    // stdout on a full device: writing the summary fails with ENOSPC.
    const res = await new Deno.Command("sh", {
      args: [
        "-c",
        `"$0" run -A --quiet --no-lock "$1" -src "$2" -dest "$3" -config /dev/null > /dev/full`,
        Deno.execPath(),
        `${ROOT}/main.ts`,
        `${dir}/src`,
        `${dir}/out`,
      ],
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(res.stderr);
    strictEqual(res.code, ExitCode.Usage, stderr);
    match(stderr, /the copy to .* is complete, but its report cannot be written: No space left/);
    strictEqual((await Deno.readFile(`${dir}/out`)).every((b) => b === 3), true);
  });
});
