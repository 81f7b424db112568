/**
 * Exit-code honesty, as a property over hundreds of seeded random copies run the way the binary
 * runs: whenever sparse_dd exits 0, the destination holds the source's bytes over `[0, size)`
 * (`cmp -n SIZE`) and every byte past `-size` is as it was; whenever it does not, stderr names
 * what failed. Sources: raw files with holes, zero runs inside data and data in the last sector,
 * odd sizes, qemu-img VHDs, VHD chains, nbdkit exports, loop devices. Destinations: absent,
 * shorter, longer, 0xFF-filled files, loop devices full of garbage or zeroes; `-prezeroed` only
 * where it is true; `-threads 1|2`, `-unbuffered true|false`; `-size` past the source (copies
 * the source's size, as xapi's sparse_dd); and copies that cannot be done (a device too small, a
 * missing source), refused untouched.
 * `HONESTY_CASES` and `HONESTY_SEED` choose other runs.
 */
import { ok } from "node:assert/strict";
import { mainCommand, sameBytes, sh, withTempDir } from "./_support/helpers.ts";
import { Prng } from "./_support/prng.ts";
import { chainWriters } from "./_support/vhd_writer.ts";

const CASES = Number(Deno.env.get("HONESTY_CASES") ?? 500);
const SEED = Number(Deno.env.get("HONESTY_SEED") ?? 20261204);
const CONCURRENCY = 4;
const LOOPS = 4;
const LOOP_SIZE = 4 << 20;
const KiB = 1024;

type SourceKind = "raw" | "vhd" | "chain" | "nbd" | "device";
type DestKind = "absent" | "shorter" | "longer" | "ff" | "zero" | "loop" | "loopzero";

interface Case {
  seed: number;
  source: SourceKind;
  dest: DestKind;
  /** Bytes of the source disk. */
  diskSize: number;
  /** `-size`, or undefined to let it default to the source's size. */
  size?: number;
  threads: 1 | 2;
  unbuffered: boolean;
  prezeroed: boolean;
  /** A copy that must be refused before anything is written, naming why. */
  fault?: "size-too-large" | "device-too-small" | "missing-source";
}

/** Source sizes: odd ones, sector multiples, tiny and a few MiB. */
function pickSize(r: Prng, sectorMultiple: boolean): number {
  const n = [
    () => 1 + r.int(4 * KiB),
    () => 1 + r.int(300 * KiB),
    () => 1 + r.int(3 << 20),
    () => (1 + r.int(64)) * 64 * KiB,
    () => (1 + r.int(2048)) * 512 + (r.chance(0.5) ? 0 : 1 + r.int(511)),
  ][r.int(5)]();
  return sectorMultiple ? Math.max(512, Math.ceil(n / 512) * 512) : n;
}

function pickCase(seed: number): Case {
  const r = new Prng(seed);
  const source = (["raw", "raw", "raw", "vhd", "chain", "nbd", "device"] as const)[r.int(7)];
  const dest = (["absent", "shorter", "longer", "ff", "zero", "loop", "loop", "loopzero"] as const)[
    r.int(8)
  ];
  // VHDs and block devices hold whole sectors.
  let diskSize = pickSize(r, source !== "raw" && source !== "nbd");
  if (dest === "loop" || dest === "loopzero") diskSize = Math.min(diskSize, LOOP_SIZE);
  let size = r.chance(0.02)
    ? 0
    : r.chance(0.2)
    ? r.int(diskSize + 1)
    : r.chance(0.5)
    ? diskSize
    : undefined;
  let fault: Case["fault"];
  if (r.chance(0.08)) {
    fault = (["size-too-large", "device-too-small", "missing-source"] as const)[r.int(3)];
    if (fault === "size-too-large") size = diskSize + 1 + r.int(4096);
    if (fault === "device-too-small") {
      diskSize = LOOP_SIZE + 512 * (1 + r.int(2048));
      size = diskSize;
      return {
        seed,
        source,
        dest: "loop",
        diskSize,
        size,
        threads: 1,
        unbuffered: false,
        prezeroed: false,
        fault,
      };
    }
  }
  return {
    fault,
    seed,
    source,
    dest,
    diskSize,
    size,
    threads: r.chance(0.5) ? 1 : 2,
    unbuffered: r.chance(0.5),
    // Only where it is true: a destination that reads as zero.
    prezeroed: (dest === "zero" || dest === "absent" || dest === "loopzero") && r.chance(0.6),
  };
}

/** Source content: data runs, zero runs inside data, sometimes data in the last sector. */
function content(r: Prng, size: number): Array<{ at: number; bytes: Uint8Array }> {
  const runs: Array<{ at: number; bytes: Uint8Array }> = [];
  for (let i = r.int(8); i > 0; i--) {
    const n = 1 + r.int(Math.min(size, 200 * KiB));
    const at = r.int(size - n + 1);
    const bytes = r.fill(new Uint8Array(n));
    // A zero run inside the data: allocated, but zero.
    if (r.chance(0.5) && n > 16) bytes.fill(0, r.int(n >> 1), (n >> 1) + r.int(n >> 1));
    runs.push({ at, bytes });
  }
  if (r.chance(0.5)) {
    const n = Math.min(size, 1 + r.int(512));
    runs.push({ at: size - n, bytes: r.fill(new Uint8Array(n)) });
  }
  return runs;
}

async function writeRuns(
  path: string,
  size: number,
  runs: Array<{ at: number; bytes: Uint8Array }>,
) {
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  try {
    await f.truncate(size);
    for (const run of runs) {
      await f.seek(run.at, Deno.SeekMode.Start);
      let done = 0;
      while (done < run.bytes.length) done += await f.write(run.bytes.subarray(done));
    }
  } finally {
    f.close();
  }
}

/** A pool of loop devices over files, lent one at a time. */
class LoopPool {
  #free: string[] = [];
  #waiting: Array<(dev: string) => void> = [];
  readonly all: string[] = [];

  async open(dir: string, n: number): Promise<void> {
    for (let i = 0; i < n; i++) {
      const file = `${dir}/loop${i}.img`;
      await Deno.writeFile(file, new Uint8Array(0));
      await Deno.truncate(file, LOOP_SIZE);
      const dev = (await sh("losetup", ["-f", "--show", file])).trim();
      this.all.push(dev);
      this.#free.push(dev);
    }
  }

  take(): Promise<string> {
    const dev = this.#free.pop();
    if (dev) return Promise.resolve(dev);
    return new Promise((resolve) => this.#waiting.push(resolve));
  }

  give(dev: string): void {
    const next = this.#waiting.shift();
    if (next) next(dev);
    else this.#free.push(dev);
  }

  async close(): Promise<void> {
    for (const dev of this.all) await sh("losetup", ["-d", dev]).catch(() => {});
  }
}

async function writeWhole(path: string, bytes: Uint8Array): Promise<void> {
  const f = await Deno.open(path, { write: true });
  try {
    let done = 0;
    while (done < bytes.length) done += await f.write(bytes.subarray(done));
    await f.syncData();
  } finally {
    f.close();
  }
}

async function readPrefix(path: string, n: number): Promise<Uint8Array> {
  const f = await Deno.open(path);
  try {
    const out = new Uint8Array(n);
    let done = 0;
    while (done < n) {
      const k = await f.read(out.subarray(done));
      if (k === null) break;
      done += k;
    }
    return out.subarray(0, done);
  } finally {
    f.close();
  }
}

/** An nbdkit serving `file` read-only on a fresh socket; stopped by the returned function. */
async function nbdkitFile(
  dir: string,
  file: string,
): Promise<{ uri: string; stop(): Promise<void> }> {
  const socket = `${dir}/nbd.sock`;
  const child = new Deno.Command("nbdkit", {
    args: ["-f", "--exit-with-parent", "-r", "-U", socket, "file", file],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch { /* gone */ }
    await child.status;
  };
  for (let i = 0; i < 500; i++) {
    try {
      (await Deno.connect({ transport: "unix", path: socket })).close();
      return { uri: `nbd+unix:///?socket=${socket}`, stop };
    } catch {
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  await stop();
  throw new Error("nbdkit did not start");
}

/** What runCase returns for a faulty copy refused as it must be. */
const REFUSED = "refused";

interface Outcome {
  code: number;
  stderr: string;
}

/** Runs one case; returns a failure description, or undefined when it was honest. */
async function runCase(root: string, c: Case, loops: LoopPool): Promise<string | undefined> {
  const dir = `${root}/case${c.seed}`;
  await Deno.mkdir(dir);
  const r = new Prng(c.seed ^ 0x5eed);
  const runs = content(r, c.diskSize);
  // The reference: the disk's bytes as raw.
  const raw = `${dir}/ref.raw`;
  await writeRuns(raw, c.diskSize, runs);
  let src = raw;
  let stopServer: (() => Promise<void>) | undefined;
  if (c.source === "vhd") {
    src = `${dir}/src.vhd`;
    await sh("qemu-img", [
      "convert",
      "-f",
      "raw",
      "-O",
      "vpc",
      "-o",
      "subformat=dynamic,force_size=on",
      raw,
      src,
    ]);
  } else if (c.source === "chain") {
    // qemu-img cannot make differencing VHDs: the chain comes from the tests' VHD writer, with
    // sector-aligned runs, the child's written over (and zeroing) the parent's.
    const aligned = runs.map((run) => {
      const at = Math.floor(run.at / 512) * 512;
      const end = Math.min(c.diskSize, Math.ceil((run.at + run.bytes.length) / 512) * 512);
      const bytes = new Uint8Array(end - at);
      bytes.set(run.bytes.subarray(0, end - at), run.at - at);
      return { at, bytes };
    });
    await writeRuns(raw, c.diskSize, aligned);
    const [parent, child] = chainWriters(["parent.vhd", "child.vhd"], {
      size: c.diskSize,
      blockSize: r.chance(0.5) ? 1 << 16 : 1 << 21,
    });
    aligned.forEach((run, i) =>
      (i < aligned.length >> 1 ? parent : child).write(run.at, run.bytes)
    );
    await parent.save(`${dir}/parent.vhd`);
    await child.save(`${dir}/child.vhd`);
    src = `${dir}/child.vhd`;
  } else if (c.source === "nbd") {
    const s = await nbdkitFile(dir, raw);
    src = s.uri;
    stopServer = s.stop;
  } else if (c.source === "device") {
    // A loop device over the reference, as xapi copies device to device.
    const dev = (await sh("losetup", ["-f", "--show", "-r", raw])).trim();
    src = dev;
    stopServer = () => sh("losetup", ["-d", dev]).then(() => {});
  }

  // A -size past the source copies the source's size, as xapi's sparse_dd does (storage
  // migration passes the remote VDI's rounded-up size): that copy can be done.
  const size = Math.min(c.size ?? c.diskSize, c.diskSize);
  const fault = c.fault === "size-too-large" ? undefined : c.fault;
  let dest = `${dir}/dest.raw`;
  let before: Uint8Array | undefined; // the destination's bytes before the copy
  let loop: string | undefined;
  const garbage = (n: number) => new Prng(c.seed * 7 + 1).fill(new Uint8Array(n));
  switch (c.dest) {
    case "absent":
      break;
    case "shorter":
      before = garbage(r.int(size));
      await Deno.writeFile(dest, before);
      break;
    case "longer":
      before = garbage(size + 1 + r.int(64 * KiB));
      await Deno.writeFile(dest, before);
      break;
    case "ff":
      before = new Uint8Array(size + r.int(8 * KiB)).fill(0xff);
      await Deno.writeFile(dest, before);
      break;
    case "zero":
      before = new Uint8Array(size + r.int(8 * KiB));
      await Deno.writeFile(dest, new Uint8Array(0));
      await Deno.truncate(dest, before.length);
      break;
    case "loop":
    case "loopzero":
      loop = await loops.take();
      dest = loop;
      before = c.dest === "loop" ? garbage(LOOP_SIZE) : new Uint8Array(LOOP_SIZE);
      await writeWhole(dest, before);
      break;
  }

  if (c.fault === "missing-source") src = `${dir}/missing.raw`;
  const args = ["-src", src, "-dest", dest];
  if (c.size !== undefined) args.push("-size", String(c.size));
  if (c.prezeroed) args.push("-prezeroed");
  args.push("-threads", String(c.threads), "-unbuffered", String(c.unbuffered));
  args.push("-config", "/nonexistent/sparse_dd.conf", "-progress", "none");
  let out: Outcome;
  try {
    const o = await mainCommand(args, { timeoutMs: 120_000 }).output();
    out = { code: o.code, stderr: new TextDecoder().decode(o.stderr) };
  } finally {
    await stopServer?.();
  }
  try {
    const what = `case ${JSON.stringify(c)} (sparse_dd ${args.join(" ")})`;
    if (out.code !== 0) {
      const lines = out.stderr.split("\n").filter((l) => l.trim() !== "");
      const named = lines.some((l) => l.includes(src) || l.includes(dest) || l.includes("-size"));
      if (!named) return `exit ${out.code} without naming what failed: ${out.stderr} — ${what}`;
      if (fault) {
        // Refused before the first write: the destination is as it was.
        const now = await readPrefix(dest, (before?.length ?? 0) + 1).catch(() => undefined);
        const same = before === undefined
          ? now === undefined
          : now !== undefined && now.length >= before.length &&
            before.every((b, i) => now[i] === b);
        return same ? REFUSED : `exit ${out.code} but the destination changed — ${what}`;
      }
      return `exit ${out.code}: ${lines.join(" | ")} — ${what}`;
    }
    if (fault) return `exit 0 for a copy that cannot be done (${fault}) — ${what}`;
    if (!(await sameBytes(raw, dest, size))) return `exit 0 but [0, ${size}) differs — ${what}`;
    if (before && before.length > size) {
      const after = await readPrefix(dest, before.length);
      for (let i = size; i < before.length; i++) {
        if (after[i] !== before[i]) return `exit 0 but byte ${i} past -size changed — ${what}`;
      }
    }
    if (!loop) {
      const st = await Deno.stat(dest);
      const want = Math.max(size, before?.length ?? 0);
      if (st.size !== want) {
        return `exit 0 but the destination is ${st.size} bytes, not ${want} — ${what}`;
      }
    }
    return undefined;
  } finally {
    if (loop) loops.give(loop);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

Deno.test(`exit 0 means the destination equals the source over [0, size) and nothing past it changed (${CASES} seeded random copies)`, async () => {
  await withTempDir(async (root) => {
    const loops = new LoopPool();
    try {
      await loops.open(root, LOOPS);
      const cases = Array.from({ length: CASES }, (_, i) => pickCase(SEED + i));
      const dishonest: string[] = [];
      const failedNamed: string[] = [];
      let run = 0;
      let refused = 0;
      const queue = [...cases];
      await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
        for (let c = queue.shift(); c !== undefined; c = queue.shift()) {
          const problem = await runCase(root, c, loops);
          run++;
          if (problem === undefined) continue;
          if (problem === REFUSED) {
            refused++;
            continue;
          }
          if (
            problem.startsWith("exit ") && !problem.startsWith("exit 0") &&
            !problem.includes("without naming")
          ) {
            failedNamed.push(problem);
          } else {
            dishonest.push(problem);
          }
        }
      }));
      const kinds = (key: "source" | "dest") => {
        const n: Record<string, number> = {};
        for (const c of cases) n[c[key]] = (n[c[key]] ?? 0) + 1;
        return Object.entries(n).map(([k, v]) => `${k} ${v}`).join(", ");
      };
      console.log(
        `honesty: ${run} cases run (seed ${SEED}), ${
          run - failedNamed.length - dishonest.length - refused
        } copied exactly, ${refused} impossible ones refused untouched, ${failedNamed.length} failed naming the cause; sources: ${
          kinds("source")
        }; destinations: ${kinds("dest")}`,
      );
      for (const f of failedNamed) console.log(`  ${f}`);
      ok(
        dishonest.length === 0,
        `${dishonest.length} dishonest outcomes:\n${dishonest.join("\n")}`,
      );
      // Every case is a valid copy: a failure, even an honest one, is a bug to look at.
      ok(
        failedNamed.length === 0,
        `${failedNamed.length} valid copies failed:\n${failedNamed.join("\n")}`,
      );
    } finally {
      await loops.close();
    }
  });
});
