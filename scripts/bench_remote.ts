/**
 * Remote destinations benchmark (issue 16): a 4 GiB sparse source (10% data) copied with
 * `-prezeroed` over loopback TCP to xapi's side as the tests play it (tests/_support/xapi_http.ts):
 * the chunked import into a file on tmpfs, and the NBD upgrade relayed to `nbdkit memory`; over
 * http and https (Deno's TLS server on the receiving side). Next to them: `nbdcopy` straight to
 * the same nbdkit (the baseline for the NBD path: the OCaml tool's protocol without the proxy
 * hop) and sparse_dd straight to it (`nbd://`), and a Python sender of xapi's chunked frames (the
 * OCaml tool's protocol: SEEK_DATA extents in 2 MiB frames) for the chunked path.
 *
 * Each row is run BENCH_RUNS times (default 3) after one warm-up; the median wall time is
 * reported with the median CPU time (user + system) of the sending process, which the load of
 * a shared machine disturbs far less, and the load average. Prints a Markdown table on stdout.
 *
 * Usage: deno run -A scripts/bench_remote.ts   (see scripts/bench_remote.sh); BENCH_ONLY=REGEX
 * runs only the rows whose name matches.
 *
 * @module
 */

import { makeCa, XapiSide } from "../tests/_support/xapi_http.ts";

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const SIZE = Number(Deno.env.get("BENCH_REMOTE_SIZE") ?? 4 * GiB);
const RUNS = Number(Deno.env.get("BENCH_RUNS") ?? 3);
const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const SD =
  (Deno.env.get("SPARSE_DD") ?? `${Deno.execPath()} run -A --quiet --no-lock ${ROOT}/main.ts`)
    .split(" ");

/**
 * CPU seconds (user + system) a process has used; by default this one, where the receiving side
 * runs.
 */
function cpuOf(pid: number | "self" = "self"): number {
  const fields = Deno.readTextFileSync(`/proc/${pid}/stat`).replace(/^.*\) /, "").split(" ");
  // utime and stime are fields 14 and 15 (11 and 12 after the command name), in 1/100 s.
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** The NBD servers' processes (nbdkit), whose CPU time is counted apart. */
const servers: number[] = [];
function serverCpu(): number {
  return servers.reduce((sum, pid) => sum + cpuOf(pid), 0);
}

/**
 * Runs `argv` under /usr/bin/time: wall seconds, the CPU seconds (user + system) it used, and
 * the CPU seconds the receiving side (this process) used meanwhile.
 */
async function run(
  argv: string[],
): Promise<{ wall: number; cpu: number; receiver: number; server: number }> {
  const before = cpuOf();
  const serverBefore = serverCpu();
  const out = await new Deno.Command("/usr/bin/time", {
    args: ["-f", "TIME %e %U %S", ...argv],
    stdout: "null",
    stderr: "piped",
  }).output();
  const err = new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`${argv.join(" ")} failed: ${err}`);
  const m = /TIME ([\d.]+) ([\d.]+) ([\d.]+)\s*$/.exec(err);
  if (!m) throw new Error(`no timing from /usr/bin/time: ${err}`);
  return {
    wall: Number(m[1]),
    cpu: Number(m[2]) + Number(m[3]),
    receiver: cpuOf() - before,
    server: serverCpu() - serverBefore,
  };
}

/** A sparse file of SIZE bytes: 10% data in 1-8 MiB runs of random bytes. */
async function makeSource(path: string): Promise<number> {
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  await f.truncate(SIZE);
  const buf = new Uint8Array(8 * MiB);
  crypto.getRandomValues(buf.subarray(0, 65536));
  for (let i = 1; i < buf.length / 65536; i++) buf.copyWithin(i * 65536, 0, 65536);
  let data = 0;
  let seed = 16;
  const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  // Runs spread over the whole disk: one run of 1-8 MiB in every 10-80 MiB.
  for (let at = 0; at + 8 * MiB < SIZE && data < SIZE / 10;) {
    const len = (1 + Math.floor(rnd() * 8)) * MiB;
    await f.seek(at, Deno.SeekMode.Start);
    new DataView(buf.buffer).setUint32(0, at / MiB + 1);
    let w = 0;
    while (w < len) w += await f.write(buf.subarray(w, len));
    data += len;
    at += len * 10;
  }
  f.close();
  return data;
}

/** Python sending xapi's chunked frames of a sparse file (SEEK_DATA/SEEK_HOLE, 2 MiB frames). */
const PY_SENDER = `
import os, socket, ssl, struct, sys
path, port, tls = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
s = socket.create_connection(("127.0.0.1", port))
if tls:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    s = ctx.wrap_socket(s)
s.sendall(b"PUT /import_raw_vdi?vdi=x HTTP/1.1\\r\\nhost: 127.0.0.1\\r\\ncookie: chunked=true\\r\\n\\r\\n")
head = b""
while b"\\r\\n\\r\\n" not in head:
    head += s.recv(1)
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
at = 0
while at < size:
    try:
        data = os.lseek(fd, at, os.SEEK_DATA)
    except OSError:
        break
    hole = os.lseek(fd, data, os.SEEK_HOLE)
    while data < hole:
        n = min(2 << 20, hole - data)
        s.sendall(struct.pack("<QI", data, n) + os.pread(fd, n, data))
        data += n
    at = hole
s.sendall(bytes(12))
s.shutdown(socket.SHUT_WR)
s.recv(1)
`;

async function main() {
  const work = await Deno.makeTempDir({ dir: "/dev/shm", prefix: "bench_remote_" });
  const cleanup: Array<() => Promise<void> | void> = [];
  try {
    const src = `${work}/src.raw`;
    const data = await makeSource(src);
    const ca = await makeCa(work, "bench", ["localhost"]);
    const tls = {
      cert: await Deno.readTextFile(ca.certs.localhost.cert),
      key: await Deno.readTextFile(ca.certs.localhost.key),
    };
    const dest = `${work}/dest.raw`;
    const freshDest = async () => {
      await Deno.remove(dest).catch(() => {});
      const f = await Deno.open(dest, { write: true, create: true });
      await f.truncate(SIZE);
      f.close();
    };
    // nbdkit memory on loopback TCP for the baseline and the direct row; on a unix socket
    // behind the relay.
    const nbdPort = 20000 + Math.floor(Math.random() * 20000);
    const sock = `${work}/nbdkit.sock`;
    const nbdkit = new Deno.Command("nbdkit", {
      args: [
        "-f",
        "--exit-with-parent",
        "-U",
        sock,
        "memory",
        String(SIZE),
      ],
      stdout: "null",
      stderr: "null",
    }).spawn();
    const nbdkitTcp = new Deno.Command("nbdkit", {
      args: [
        "-f",
        "--exit-with-parent",
        "-i",
        "127.0.0.1",
        "-p",
        String(nbdPort),
        "memory",
        String(SIZE),
      ],
      stdout: "null",
      stderr: "null",
    }).spawn();
    servers.push(nbdkit.pid, nbdkitTcp.pid);
    cleanup.push(async () => {
      nbdkit.kill("SIGKILL");
      nbdkitTcp.kill("SIGKILL");
      await nbdkit.status;
      await nbdkitTcp.status;
    });
    await new Promise((r) => setTimeout(r, 1000));

    const chunkedHttp = XapiSide.start({ kind: "chunked", file: dest });
    const chunkedHttps = XapiSide.start({ kind: "chunked", file: dest }, { tls });
    const nbdHttp = XapiSide.start({ kind: "nbd", socket: sock });
    const nbdHttps = XapiSide.start({ kind: "nbd", socket: sock }, { tls });
    for (const s of [chunkedHttp, chunkedHttps, nbdHttp, nbdHttps]) cleanup.push(() => s.stop());
    const url = (scheme: string, srv: XapiSide, path: string) =>
      `${scheme}://127.0.0.1:${srv.port}${path}?vdi=OpaqueRef:x&session_id=OpaqueRef:s`;
    const sd = (dest: string, ...more: string[]) => [
      ...SD,
      "-machine",
      "-src",
      src,
      "-dest",
      dest,
      "-prezeroed",
      ...more,
    ];
    const rows: Array<{ name: string; argv: string[]; prep?: () => Promise<void> }> = [
      {
        name: "chunked, http: sparse_dd",
        argv: sd(url("http", chunkedHttp, "/import_raw_vdi")),
        prep: freshDest,
      },
      {
        name: "chunked, http: Python sender (xapi's frames)",
        argv: ["python3", "-c", PY_SENDER, src, String(chunkedHttp.port), "0"],
        prep: freshDest,
      },
      {
        name: "chunked, https: sparse_dd",
        argv: sd(url("https", chunkedHttps, "/import_raw_vdi")),
        prep: freshDest,
      },
      {
        name: "chunked, https: Python sender (xapi's frames)",
        argv: ["python3", "-c", PY_SENDER, src, String(chunkedHttps.port), "1"],
        prep: freshDest,
      },
      {
        name: "NBD upgrade, http: sparse_dd",
        argv: sd(url("http", nbdHttp, "/services/SM/nbdproxy/import/a"), "-dest-proto", "nbd"),
      },
      {
        name: "NBD upgrade, https: sparse_dd",
        argv: sd(url("https", nbdHttps, "/services/SM/nbdproxy/import/a"), "-dest-proto", "nbd"),
      },
      { name: "NBD direct (nbd://, no proxy): sparse_dd", argv: sd(`nbd://127.0.0.1:${nbdPort}/`) },
      {
        name: "NBD direct (nbd://, no proxy): nbdcopy --destination-is-zero",
        argv: ["nbdcopy", "--destination-is-zero", src, `nbd://127.0.0.1:${nbdPort}/`],
      },
    ];
    const load = (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3).join(" ");
    const results: Array<
      {
        name: string;
        median: number;
        all: number[];
        cpu: number;
        receiver: number;
        server: number;
      }
    > = [];
    const only = Deno.env.get("BENCH_ONLY");
    for (const row of rows) {
      if (only && !new RegExp(only).test(row.name)) continue;
      const times: number[] = [];
      const cpus: number[] = [];
      const receivers: number[] = [];
      const serverCpus: number[] = [];
      for (let i = 0; i <= RUNS; i++) {
        await row.prep?.();
        const t = await run(row.argv);
        if (i > 0) {
          times.push(t.wall);
          cpus.push(t.cpu);
          receivers.push(t.receiver);
          serverCpus.push(t.server);
        }
      }
      const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
      results.push({
        name: row.name,
        median: median(times),
        all: times,
        cpu: median(cpus),
        receiver: median(receivers),
        server: median(serverCpus),
      });
      console.error(
        `${row.name}: ${times.map((t) => t.toFixed(2)).join(" ")} s, cpu ${
          cpus.map((t) => t.toFixed(2)).join(" ")
        } s`,
      );
    }
    const endLoad = (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3).join(" ");
    const lines = [
      `Source: ${(SIZE / GiB).toFixed(1)} GiB sparse file on tmpfs, ${
        (data / MiB).toFixed(0)
      } MiB ` +
      `of data (${((100 * data) / SIZE).toFixed(0)}%), -prezeroed; loopback TCP; ${RUNS} runs ` +
      `after a warm-up, medians of the wall time and of the sender's CPU time (user + system; the ` +
      `process's start included), and of the CPU time of the receiving side (the test's xapi ` +
      `side in the benchmark's own process: HTTP, TLS, frames into a file or the relay to nbdkit) ` +
      `and of nbdkit (the NBD rows' server), all on the same CPUs. Load average ${load} ` +
      `before, ${endLoad} after (${navigator.hardwareConcurrency} CPUs, shared).`,
      "",
      "| destination | wall (s) | CPU of the sender (s) | CPU of the receiving side (s) | CPU of nbdkit (s) | wall, each run (s) |",
      "| --- | ---: | ---: | ---: | ---: | --- |",
      ...results.map((r) =>
        `| ${r.name} | ${r.median.toFixed(2)} | ${r.cpu.toFixed(2)} | ${r.receiver.toFixed(2)} | ${
          r.server.toFixed(2)
        } | ${r.all.map((t) => t.toFixed(2)).join(", ")} |`
      ),
    ];
    const get = (n: string, cpu = false) => {
      const r = results.find((r) => r.name === n);
      return r ? (cpu ? r.cpu : r.median) : NaN;
    };
    const pct = (a: string, b: string, cpu = false) =>
      ((100 * (get(b, cpu) - get(a, cpu))) / get(a, cpu)).toFixed(0);
    lines.push(
      "",
      `TLS cost over http (sparse_dd), wall / CPU: chunked ${
        pct("chunked, http: sparse_dd", "chunked, https: sparse_dd")
      }% / ${pct("chunked, http: sparse_dd", "chunked, https: sparse_dd", true)}%, NBD upgrade ${
        pct("NBD upgrade, http: sparse_dd", "NBD upgrade, https: sparse_dd")
      }% / ${pct("NBD upgrade, http: sparse_dd", "NBD upgrade, https: sparse_dd", true)}%.`,
    );
    console.log(lines.join("\n"));
  } finally {
    for (const c of cleanup.reverse()) await c();
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}

await main();
