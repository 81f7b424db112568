/**
 * How much work a copy asks of the system per MiB copied: calls into libc (FFI), system calls
 * and page faults. Counted, not timed (issue 18): a change that makes the copy call libc per
 * quantum instead of per run (the zero scan of mapped pages made 64 `memcmp` calls per MiB, 68 FFI
 * calls per MiB in all), hop to the thread pool per write, or take fresh buffers per step, fails
 * here even where a benchmark could not tell it from noise.
 *
 * Both counts are marginal: the difference between copying SMALL and LARGE bytes of the same
 * fixed input, per MiB, so start-up and the end of the copy cancel out.
 */
import { ok } from "node:assert/strict";
import { main } from "../../src/cli/main.ts";
import { MAIN, sh, withTempDir } from "../_support/helpers.ts";
import { Prng } from "../_support/prng.ts";

const MiB = 1024 * 1024;
const SMALL = 16 * MiB;
const LARGE = 80 * MiB;

/**
 * The fixed input: fully allocated, 70% of its 64 KiB regions zero (the benchmark's S2 shape):
 * every byte is read and scanned, and 30% of them are written, in runs of 64 KiB or more.
 */
async function fixedInput(path: string, size: number): Promise<void> {
  const r = new Prng(18);
  const data = new Uint8Array(size);
  for (let at = 0; at < size; at += 65536) {
    if (!r.chance(0.7)) r.fill(data.subarray(at, at + 65536));
  }
  await Deno.writeFile(path, data);
}

/** The bounds, per MiB copied, on the fixed input (measured: see BENCHMARKS.md). */
const FFI_PER_MIB = 8;
const SYSCALLS_PER_MIB = 12;
const FAULTS_PER_MIB = 8;

// Every FFI call goes through a symbol of a library opened with Deno.dlopen: count them by name.
const ffiCalls = new Map<string, number>();
const dlopen = Deno.dlopen;
// deno-lint-ignore no-explicit-any
(Deno as any).dlopen = (path: string, symbols: Deno.ForeignLibraryInterface) => {
  const lib = dlopen(path, symbols);
  // deno-lint-ignore no-explicit-any
  const counted: Record<string, any> = {};
  for (const [name, fn] of Object.entries(lib.symbols)) {
    counted[name] = typeof fn === "function"
      // deno-lint-ignore no-explicit-any
      ? (...args: any[]) => {
        ffiCalls.set(name, (ffiCalls.get(name) ?? 0) + 1);
        return fn(...args);
      }
      : fn;
  }
  return { symbols: counted, close: () => lib.close() };
};

function total(counts: Map<string, number>): number {
  let n = 0;
  for (const v of counts.values()) n += v;
  return n;
}

/** Per-name difference `b - a`, per MiB of `bytes`. */
function perMiB(a: Map<string, number>, b: Map<string, number>, bytes: number) {
  const out = new Map<string, number>();
  for (const k of new Set([...a.keys(), ...b.keys()])) {
    out.set(k, ((b.get(k) ?? 0) - (a.get(k) ?? 0)) / (bytes / MiB));
  }
  return out;
}

/** The argv of the measured copy of `size` bytes of `src`, into a new file in `dir`. */
const copyArgs = (dir: string, src: string, size: number) => [
  "-src",
  src,
  "-dest",
  `${dir}/dest${size}.raw`,
  "-size",
  String(size),
  "-config",
  "/nonexistent/sparse_dd.conf",
];

const show = (m: Map<string, number>) =>
  [...m].filter(([, v]) => v !== 0).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(", ");

Deno.test("a copy into a file makes at most 8 FFI calls per MiB copied", async () => {
  await withTempDir(async (dir) => {
    const src = `${dir}/src.raw`;
    await fixedInput(src, LARGE);
    const counts: Map<string, number>[] = [];
    for (const size of [SMALL, LARGE]) {
      ffiCalls.clear();
      const code = await main([...copyArgs(dir, src, size), "-progress", "none"]);
      ok(code === 0, `exit ${code}`);
      counts.push(new Map(ffiCalls));
    }
    ok(total(counts[1]) > 0, "FFI calls were counted (libc was loaded by this test)");
    const per = perMiB(counts[0], counts[1], LARGE - SMALL);
    const sum = total(per);
    ok(sum <= FFI_PER_MIB, `${sum.toFixed(2)} FFI calls per MiB > ${FFI_PER_MIB}: ${show(per)}`);
  });
});

const program = [Deno.execPath(), "run", "-A", "--no-lock", MAIN];

/** `strace -c -f` of one run of the program: calls per system call name. */
async function syscalls(args: string[], out: string): Promise<Map<string, number>> {
  await sh("strace", ["-f", "-c", "-o", out, ...program, ...args]);
  const counts = new Map<string, number>();
  for (const line of (await Deno.readTextFile(out)).split("\n")) {
    // % time, seconds, usecs/call, calls, [errors,] syscall
    const f = line.trim().split(/\s+/);
    if (f.length < 5 || !/^\d+(\.\d+)?$/.test(f[0]) || f[f.length - 1] === "total") continue;
    counts.set(f[f.length - 1], Number(f[3]));
  }
  return counts;
}

Deno.test("a copy into a file makes at most 12 system calls per MiB copied, on every thread", async () => {
  await withTempDir(async (dir) => {
    const src = `${dir}/src.raw`;
    await fixedInput(src, LARGE);
    const counts: Map<string, number>[] = [];
    for (const size of [SMALL, LARGE]) {
      counts.push(
        await syscalls(copyArgs(dir, src, size), `${dir}/strace${size}.txt`),
      );
    }
    ok((counts[1].get("pwrite64") ?? 0) > 0, "the writes were counted");
    const per = perMiB(counts[0], counts[1], LARGE - SMALL);
    const sum = total(per);
    ok(
      sum <= SYSCALLS_PER_MIB,
      `${sum.toFixed(2)} system calls per MiB > ${SYSCALLS_PER_MIB}: ${show(per)}`,
    );
  });
});

/** Page faults of one run of the program (`/usr/bin/time`: minor and major). */
async function faults(args: string[], out: string): Promise<number> {
  await sh("/usr/bin/time", ["-f", "%R %F", "-o", out, ...program, ...args]);
  const [minor, major] = (await Deno.readTextFile(out)).trim().split("\n").pop()!.split(" ");
  return Number(minor) + Number(major);
}

Deno.test("a copy into a file takes at most 8 page faults per MiB copied", async () => {
  await withTempDir(async (dir) => {
    const src = `${dir}/src.raw`;
    await fixedInput(src, LARGE);
    const counts: number[] = [];
    for (const size of [SMALL, LARGE]) {
      counts.push(
        await faults(copyArgs(dir, src, size), `${dir}/time${size}.txt`),
      );
    }
    const per = (counts[1] - counts[0]) / ((LARGE - SMALL) / MiB);
    ok(per <= FAULTS_PER_MIB, `${per.toFixed(2)} page faults per MiB > ${FAULTS_PER_MIB}`);
  });
});
