/**
 * The NBD client against real servers (nbdkit, qemu-nbd) on unix sockets and loopback TCP, in
 * process and end to end through `main.ts`; faults from nbdkit's error and delay filters, servers
 * killed mid-copy, and tiny listeners that break the handshake.
 */
import { deepStrictEqual, match, ok, rejects, strictEqual } from "node:assert/strict";
import { DiskError } from "../../src/core/disk.ts";
import { ExtentSet } from "../../src/core/extent.ts";
import { NbdDisk } from "../../src/nbd/nbd_disk.ts";
import {
  ChunkType,
  HandshakeFlag,
  Opt,
  Rep,
  ReplyFlag,
  type Request,
  TransmissionFlag,
} from "../../src/nbd/protocol.ts";
import {
  decodeClientFlags,
  decodeOptionHeader,
  decodeRequest,
  encodeChunk,
  encodeGreeting,
  encodeInfoReply,
  encodeMetaContextReply,
  encodeOffsetData,
  encodeOffsetHole,
  encodeOptionReply,
} from "../_support/nbd_server.ts";
import { ExitCode } from "../../src/core/errors.ts";
import { runMain, sameBytes, sh, withTempDir } from "../_support/helpers.ts";
import { qemuRawToVhd } from "../_support/vhd_tools.ts";
import { Prng } from "../_support/prng.ts";

const MiB = 1024 * 1024;
const NO_CONFIG = ["-config", "/nonexistent/sparse_dd.conf"];

// ---------------------------------------------------------------------------------------------
// Servers

interface Server {
  /** The URI clients use. */
  uri: string;
  /** The server's stderr and debug output. */
  log: string;
  stop(): Promise<void>;
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/**
 * Starts `argv` (a server in the foreground) with stderr in `log`, waits until `probe` connects,
 * and returns a handle that kills it (TERM, then KILL) and removes its socket.
 */
async function startServer(
  dir: string,
  argv: string[],
  where: { socket: string } | { port: number },
  uri: string,
): Promise<Server> {
  const log = `${dir}/server-${crypto.randomUUID().slice(0, 8)}.log`;
  const child = new Deno.Command("sh", {
    args: ["-c", 'exec "$@" 2>"$0"', log, ...argv],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const stop = async () => {
    if (!exited) {
      try {
        child.kill("SIGTERM");
      } catch { /* gone */ }
      const timer = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch { /* gone */ }
      }, 5000);
      await status;
      clearTimeout(timer);
    }
    if ("socket" in where) await Deno.remove(where.socket).catch(() => {});
  };
  const deadline = Date.now() + 15_000;
  while (true) {
    if (exited) {
      const text = await Deno.readTextFile(log).catch(() => "");
      await stop();
      throw new Error(`${argv.join(" ")} exited early: ${text}`);
    }
    try {
      const c = "socket" in where
        ? await Deno.connect({ transport: "unix", path: where.socket })
        : await Deno.connect({ hostname: "127.0.0.1", port: where.port });
      c.close();
      break;
    } catch {
      if (Date.now() > deadline) {
        await stop();
        throw new Error(`${argv[0]} did not start listening`);
      }
      await new Promise((r) => setTimeout(r, 30));
    }
  }
  return { uri, log, stop };
}

type Transport = "unix" | "tcp";

/**
 * `nbdkit -f [flags] PLUGIN [plugin args] [filter args]` on a fresh unix socket or loopback
 * port; `extra` holds flags (`--filter=...`, `-r`) and filter parameters (`KEY=VALUE`), which
 * nbdkit wants after the plugin.
 */
async function nbdkit(
  dir: string,
  transport: Transport,
  pluginAndArgs: string[],
  extra: string[] = [],
): Promise<Server> {
  const flags = extra.filter((a) => a.startsWith("-"));
  const plugin = [...pluginAndArgs, ...extra.filter((a) => !a.startsWith("-"))];
  extra = flags;
  if (transport === "unix") {
    const socket = `${dir}/nbdkit-${crypto.randomUUID().slice(0, 8)}.sock`;
    return await startServer(
      dir,
      ["nbdkit", "-f", "--exit-with-parent", "-U", socket, ...extra, ...plugin],
      { socket },
      `nbd+unix:///?socket=${socket}`,
    );
  }
  const port = freePort();
  return await startServer(
    dir,
    [
      "nbdkit",
      "-f",
      "--exit-with-parent",
      "-i",
      "127.0.0.1",
      "-p",
      String(port),
      ...extra,
      ...plugin,
    ],
    { port },
    `nbd://127.0.0.1:${port}/`,
  );
}

/**
 * `qemu-nbd -t -f FORMAT FILE` (persistent, so probing does not end it), optionally `-x NAME`;
 * sources are served read-only (`-r`) so that several servers can share one image.
 */
async function qemuNbd(
  dir: string,
  transport: Transport,
  format: "raw" | "vpc",
  file: string,
  opts: { exportName?: string; writable?: boolean } = {},
): Promise<Server> {
  const exportName = opts.exportName;
  const name = [...(exportName ? ["-x", exportName] : []), ...(opts.writable ? [] : ["-r"])];
  const path = exportName ? encodeURIComponent(exportName) : "";
  if (transport === "unix") {
    const socket = `${dir}/qemu-${crypto.randomUUID().slice(0, 8)}.sock`;
    return await startServer(
      dir,
      ["qemu-nbd", "-t", "-f", format, "-k", socket, ...name, file],
      { socket },
      `nbd+unix:///${path}?socket=${socket}`,
    );
  }
  const port = freePort();
  return await startServer(
    dir,
    ["qemu-nbd", "-t", "-f", format, "-b", "127.0.0.1", "-p", String(port), ...name, file],
    { port },
    `nbd://127.0.0.1:${port}/${path}`,
  );
}

/** Runs `fn` with servers that are always stopped afterwards. */
async function withServers<T>(fn: (track: (s: Server) => Server) => Promise<T>): Promise<T> {
  const servers: Server[] = [];
  try {
    return await fn((s) => {
      servers.push(s);
      return s;
    });
  } finally {
    for (const s of servers) await s.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// Data

/**
 * A seeded sparse raw file: `size` bytes with a few random data runs (some 4 KiB aligned, some
 * not). Returns the runs written.
 */
async function makeSparse(path: string, size: number, seed: number): Promise<ExtentSet> {
  const r = new Prng(seed);
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  await f.truncate(size);
  const runs = [];
  const n = 3 + r.int(6);
  for (let i = 0; i < n; i++) {
    const length = r.chance(0.5) ? (1 + r.int(64)) * 4096 : 1 + r.int(300_000);
    const start = r.chance(0.5) ? r.int((size - length) / 4096) * 4096 : r.int(size - length);
    await f.seek(start, Deno.SeekMode.Start);
    const buf = r.fill(new Uint8Array(length));
    buf[0] = buf[0] || 1;
    let at = 0;
    while (at < buf.length) at += await f.write(buf.subarray(at));
    runs.push({ start, length });
  }
  f.close();
  return ExtentSet.of(runs);
}

/** The data extents `nbdinfo --map --json` reports (type without HOLE and ZERO). */
async function nbdinfoData(uri: string): Promise<ExtentSet> {
  const map = JSON.parse(await sh("nbdinfo", ["--map", "--json", uri])) as Array<
    { offset: number; length: number; type: number }
  >;
  return ExtentSet.of(
    map.filter((e) => (e.type & 3) === 0).map((e) => ({
      start: e.offset,
      length: e.length,
    })),
  );
}

/** `nbdcopy URI FILE`: the reference reader. */
async function nbdcopyOut(uri: string, file: string): Promise<void> {
  await sh("nbdcopy", [uri, file]);
}

/** `nbdkit --filter=log` lines for one command (Write, Zero, Trim, ...). */
async function logged(logfile: string, command: string, from = 0) {
  const text = (await Deno.readTextFile(logfile)).slice(from);
  const out: Array<{ offset: number; count: number; line: string }> = [];
  for (const line of text.split("\n")) {
    const m = new RegExp(` ${command} id=\\d+ offset=(0x[0-9a-f]+) count=(0x[0-9a-f]+)`).exec(line);
    if (m) out.push({ offset: Number(m[1]), count: Number(m[2]), line });
  }
  return out;
}

async function main(args: string[]) {
  return await runMain([...args, ...NO_CONFIG], { timeoutMs: 120_000 });
}

function offsetIn(stderr: string): number {
  const m = /at offset (\d+)/.exec(stderr);
  ok(m, `no offset in: ${stderr}`);
  return Number(m[1]);
}

// ---------------------------------------------------------------------------------------------
// In-process: the Disk against real servers

for (const transport of ["unix", "tcp"] as const) {
  Deno.test(`NbdDisk over ${transport}: nbdkit memory reads back what was written, zeroed and trimmed`, async () => {
    await withTempDir(async (dir) => {
      await withServers(async (track) => {
        const log = `${dir}/log.txt`;
        const srv = track(
          await nbdkit(dir, transport, ["memory", "8M"], ["--filter=log", `logfile=${log}`]),
        );
        const disk = await NbdDisk.open(srv.uri, { writable: true });
        try {
          strictEqual(disk.size, 8 * MiB);
          strictEqual(disk.knownZero, false);
          const r = new Prng(7);
          const model = new Uint8Array(8 * MiB);
          for (let i = 0; i < 40; i++) {
            const len = 1 + r.int(300_000);
            const at = r.int(model.length - len);
            const buf = r.fill(new Uint8Array(len));
            await disk.write(at, buf);
            model.set(buf, at);
            if (r.chance(0.3)) {
              const zlen = r.int(200_000);
              const zat = r.int(model.length - zlen);
              await disk.zero(zat, zlen);
              model.fill(0, zat, zat + zlen);
            }
          }
          await disk.flush();
          const back = new Uint8Array(model.length);
          await disk.read(0, back);
          ok(back.every((b, i) => b === model[i]), "content differs from the model");
          await disk.trim(0, 4096);
          await disk.flush();
        } finally {
          await disk.close();
        }
        ok((await logged(log, "Zero")).length > 0, "no WRITE_ZEROES reached the server");
        ok((await logged(log, "Trim")).length === 1, "TRIM did not reach the server");
        ok((await logged(log, "Write")).every((w) => w.count <= 300_000), "a zero became a write");
      });
    });
  });
}

Deno.test("NbdDisk splits requests at the server's maximum block size (the server refuses larger)", async () => {
  await withTempDir(async (dir) => {
    await withServers(async (track) => {
      const srv = track(
        await nbdkit(dir, "unix", ["memory", "4M"], [
          "--filter=blocksize-policy",
          "blocksize-maximum=65536",
          "blocksize-error-policy=error",
        ]),
      );
      const disk = await NbdDisk.open(srv.uri, { writable: true });
      try {
        strictEqual(disk.info.maximumBlock, 65536);
        const buf = new Prng(3).fill(new Uint8Array(3 * MiB + 123));
        await disk.write(1000, buf);
        await disk.flush();
        const back = new Uint8Array(buf.length);
        await disk.read(1000, back);
        deepStrictEqual(back, buf);
      } finally {
        await disk.close();
      }
    });
  });
});

Deno.test("a server with a 1 KiB maximum block size gets thousands of requests of at most 1 KiB, and the data is exact", async () => {
  await withTempDir(async (dir) => {
    await withServers(async (track) => {
      const log = `${dir}/log.txt`;
      const srv = track(
        await nbdkit(dir, "unix", ["memory", "4M"], [
          "--filter=log",
          "--filter=blocksize-policy",
          "blocksize-preferred=512",
          "blocksize-maximum=1024",
          "blocksize-error-policy=error",
          `logfile=${log}`,
        ]),
      );
      const disk = await NbdDisk.open(srv.uri, { writable: true, maxInFlight: 8 });
      try {
        deepStrictEqual(
          [disk.info.minimumBlock, disk.info.preferredBlock, disk.info.maximumBlock],
          [1, 512, 1024],
        );
        const buf = new Prng(5).fill(new Uint8Array(2 * MiB + 777));
        await disk.write(333, buf);
        await disk.flush();
        const back = new Uint8Array(buf.length);
        await disk.read(333, back);
        deepStrictEqual(back, buf);
      } finally {
        await disk.close();
      }
      const writes = await logged(log, "Write");
      strictEqual(writes.length, Math.ceil((2 * MiB + 777) / 1024));
      ok(writes.every((w) => w.count <= 1024));
    });
  });
});

Deno.test("NbdDisk keeps 64 concurrent reads apart, and takes replies out of order", async () => {
  await withTempDir(async (dir) => {
    const file = `${dir}/data.raw`;
    const data = new Prng(11).fill(new Uint8Array(2 * MiB));
    await Deno.writeFile(file, data);
    await withServers(async (track) => {
      // A server whose reads at offset 0 are slow: later requests are answered first.
      const srv = track(
        await nbdkit(dir, "unix", [
          "eval",
          "thread_model=echo parallel",
          `get_size=stat -c %s ${file}`,
          `pread=if [ $4 -eq 0 ]; then sleep 1; fi; tail -c +$(($4+1)) ${file} | head -c $3`,
        ]),
      );
      const disk = await NbdDisk.open(srv.uri);
      try {
        const order: string[] = [];
        const slow = new Uint8Array(4096);
        const fast = new Uint8Array(4096);
        await Promise.all([
          disk.read(0, slow).then(() => order.push("slow")),
          disk.read(8192, fast).then(() => order.push("fast")),
        ]);
        deepStrictEqual(order, ["fast", "slow"]);
        deepStrictEqual(slow, data.subarray(0, 4096));
        deepStrictEqual(fast, data.subarray(8192, 8192 + 4096));
        const r = new Prng(12);
        const reads = Array.from({ length: 64 }, () => {
          const len = 1 + r.int(20_000);
          const at = 4096 + r.int(data.length - len - 4096);
          return { at, buf: new Uint8Array(len) };
        });
        await Promise.all(reads.map((x) => disk.read(x.at, x.buf)));
        for (const x of reads) deepStrictEqual(x.buf, data.subarray(x.at, x.at + x.buf.length));
      } finally {
        await disk.close();
      }
    });
  });
});

for (const transport of ["unix", "tcp"] as const) {
  Deno.test(`allocation() over ${transport} matches nbdinfo --map for nbdkit file, qemu-nbd raw and vpc`, async () => {
    await withTempDir(async (dir) => {
      const raw = `${dir}/src.raw`;
      await makeSparse(raw, 24 * MiB, 21);
      const vhd = `${dir}/src.vhd`;
      await qemuRawToVhd(raw, vhd);
      await withServers(async (track) => {
        const servers = [
          track(await nbdkit(dir, transport, ["file", raw])),
          track(await qemuNbd(dir, transport, "raw", raw)),
          track(await qemuNbd(dir, transport, "vpc", vhd)),
        ];
        for (const srv of servers) {
          const expected = await nbdinfoData(srv.uri);
          ok(!expected.isEmpty, `${srv.uri}: nbdinfo found no data`);
          // Small windows force several BLOCK_STATUS requests and partial answers.
          for (const blockStatusRange of [undefined, MiB, 3 * MiB + 512]) {
            const disk = await NbdDisk.open(srv.uri, { blockStatusRange });
            try {
              const got = await disk.allocation();
              deepStrictEqual(got?.toJSON(), expected.toJSON(), `${srv.uri} ${blockStatusRange}`);
            } finally {
              await disk.close();
            }
          }
        }
      });
    });
  });
}

Deno.test("without structured replies (nbdkit --no-sr) reads work and allocation is unknown", async () => {
  await withTempDir(async (dir) => {
    const raw = `${dir}/src.raw`;
    await makeSparse(raw, 4 * MiB, 5);
    await withServers(async (track) => {
      const srv = track(await nbdkit(dir, "unix", ["file", raw], ["--no-sr"]));
      const disk = await NbdDisk.open(srv.uri);
      try {
        strictEqual(disk.info.structuredReplies, false);
        strictEqual(await disk.allocation(), undefined);
        const back = new Uint8Array(disk.size);
        await disk.read(0, back);
        deepStrictEqual(back, await Deno.readFile(raw));
      } finally {
        await disk.close();
      }
    });
  });
});

Deno.test("zero() falls back to writing zeroes only on a server without WRITE_ZEROES", async () => {
  await withTempDir(async (dir) => {
    await withServers(async (track) => {
      const log = `${dir}/log.txt`;
      const srv = track(
        await nbdkit(dir, "unix", ["memory", "2M"], [
          "--filter=log",
          "--filter=nozero",
          "zeromode=none",
          `logfile=${log}`,
        ]),
      );
      const disk = await NbdDisk.open(srv.uri, { writable: true });
      try {
        strictEqual(disk.canWriteZeroes, false);
        await disk.write(0, new Uint8Array(MiB).fill(9));
        await disk.zero(4096, 500_000);
        await disk.flush();
        const back = new Uint8Array(MiB);
        await disk.read(0, back);
        ok(back.subarray(4096, 504_096).every((b) => b === 0));
        ok(back[4095] === 9 && back[504_096] === 9);
      } finally {
        await disk.close();
      }
      strictEqual((await logged(log, "Zero")).length, 0);
      deepStrictEqual(
        (await logged(log, "Write")).filter((w) => w.offset === 4096).map((w) => w.count),
        [500_000],
      );
    });
  });
});

Deno.test("noHole sends WRITE_ZEROES with NBD_CMD_FLAG_NO_HOLE; the default lets the server punch holes", async () => {
  await withTempDir(async (dir) => {
    await withServers(async (track) => {
      const log = `${dir}/log.txt`;
      const srv = track(
        await nbdkit(dir, "unix", ["memory", "2M"], ["--filter=log", `logfile=${log}`]),
      );
      for (const noHole of [true, false]) {
        const disk = await NbdDisk.open(srv.uri, { writable: true, noHole });
        await disk.zero(0, MiB);
        await disk.close();
      }
      const zeroes = await logged(log, "Zero");
      deepStrictEqual(zeroes.map((z) => / trim=(\d)/.exec(z.line)?.[1]), ["0", "1"]);
    });
  });
});

Deno.test("close() ends with NBD_CMD_DISC, a soft disconnect", async () => {
  await withTempDir(async (dir) => {
    await withServers(async (track) => {
      const srv = track(await nbdkit(dir, "unix", ["memory", "1M"], ["-v"]));
      const disk = await NbdDisk.open(srv.uri, { writable: true });
      await disk.write(0, new Uint8Array(10));
      await disk.close();
      await disk.close();
      await new Promise((r) => setTimeout(r, 200));
      match(await Deno.readTextFile(srv.log), /NBD_CMD_DISC/);
      await rejects(disk.read(0, new Uint8Array(1)), /closed/);
    });
  });
});

Deno.test("open() names the server: read-only export as a destination, unknown export, refused connection", async () => {
  await withTempDir(async (dir) => {
    const raw = `${dir}/src.raw`;
    await makeSparse(raw, MiB, 2);
    await withServers(async (track) => {
      const ro = track(await nbdkit(dir, "unix", ["memory", "1M"], ["-r"]));
      await rejects(NbdDisk.open(ro.uri, { writable: true }), (e: DiskError) => {
        ok(e instanceof DiskError && e.nbd, String(e));
        match(e.message, /^cannot open nbd\+unix:.* the export is read-only$/);
        return true;
      });
      const named = track(await qemuNbd(dir, "unix", "raw", raw, { exportName: "disk one" }));
      const other = named.uri.replace("disk%20one", "nope");
      await rejects(NbdDisk.open(other), /cannot open nbd\+unix:\/\/\/nope\?.*no such export/);
      const d = await NbdDisk.open(other, { exportName: "disk one" });
      strictEqual(d.size, MiB);
      match(d.name, /^nbd\+unix:\/\/\/disk%20one\?socket=/);
      await d.close();
    });
    const port = freePort();
    await rejects(NbdDisk.open(`nbd://127.0.0.1:${port}/x`), (e: DiskError) => {
      ok(e.nbd);
      match(e.message, new RegExp(`^cannot open nbd://127.0.0.1:${port}/x: .*refused`, "i"));
      return true;
    });
  });
});

/** A TCP listener that does `serve` to each connection, for servers no real program plays. */
function fakeServer(serve: (c: Deno.Conn) => Promise<void>) {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Deno.Conn[] = [];
  const done = (async () => {
    for await (const c of l) {
      conns.push(c);
      serve(c).catch(() => {});
    }
  })();
  return {
    uri: `nbd://127.0.0.1:${(l.addr as Deno.NetAddr).port}/`,
    async close() {
      l.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      await done.catch(() => {});
    },
  };
}

Deno.test("a server that closes during the handshake, sends a bad magic, or says nothing fails fast", async () => {
  const closes = fakeServer((c) => {
    c.close();
    return Promise.resolve();
  });
  const http = fakeServer(async (c) => {
    await c.write(new TextEncoder().encode("HTTP/1.1 400 Bad Request\r\n\r\n"));
  });
  const silent = fakeServer(() => new Promise(() => {}));
  try {
    await rejects(NbdDisk.open(closes.uri), /closed the connection during the handshake/);
    await rejects(NbdDisk.open(http.uri), /not an NBD server \(bad greeting magic\)/);
    const t = Date.now();
    await rejects(
      NbdDisk.open(silent.uri, { connectTimeoutMs: 300 }),
      /no answer within 0.3 s while connecting/,
    );
    ok(Date.now() - t < 5000);
  } finally {
    await closes.close();
    await http.close();
    await silent.close();
  }
});

/** Reads exactly `n` bytes from `c` (null at end of stream). */
async function readFull(c: Deno.Conn, n: number): Promise<Uint8Array | null> {
  const b = new Uint8Array(n);
  let at = 0;
  while (at < n) {
    const k = await c.read(b.subarray(at));
    if (k === null) return null;
    at += k;
  }
  return b;
}

/**
 * A scripted server for what no real server does on purpose (replies that break the protocol):
 * a correct fixed newstyle handshake for a 1 MiB export, then `answer` for each request.
 */
function scriptedServer(answer: (c: Deno.Conn, r: Request) => Promise<void>) {
  return fakeServer(async (c) => {
    const write = async (b: Uint8Array) => {
      let at = 0;
      while (at < b.length) at += await c.write(b.subarray(at));
    };
    await write(encodeGreeting(HandshakeFlag.FixedNewstyle | HandshakeFlag.NoZeroes));
    decodeClientFlags((await readFull(c, 4))!);
    while (true) {
      const h = decodeOptionHeader((await readFull(c, 16))!);
      if (h.length) await readFull(c, h.length);
      if (h.option === Opt.SetMetaContext) {
        await write(
          encodeOptionReply(
            h.option,
            Rep.MetaContext,
            encodeMetaContextReply(1, "base:allocation"),
          ),
        );
      } else if (h.option === Opt.Go) {
        await write(encodeOptionReply(
          h.option,
          Rep.Info,
          encodeInfoReply({
            info: "export",
            size: MiB,
            transmissionFlags: TransmissionFlag.HasFlags | TransmissionFlag.SendFlush,
          }),
        ));
        await write(encodeOptionReply(h.option, Rep.Ack));
        break;
      }
      await write(encodeOptionReply(h.option, Rep.Ack));
    }
    while (true) {
      const head = await readFull(c, 28);
      if (!head) return;
      const r = decodeRequest(head);
      if (r.type === 1) await readFull(c, r.length);
      if (r.type === 2) return;
      await answer(c, r);
    }
  });
}

Deno.test("replies that break the protocol fail the request at once, without a hang", async () => {
  const pattern = (at: number, n: number) =>
    Uint8Array.from({ length: n }, (_, i) => (at + i) % 251);
  const send = (c: Deno.Conn, b: Uint8Array) => c.write(b).then(() => {});
  const servers = {
    // Fragments in reverse order, with a hole in the middle: a valid, unusual reply.
    fragmented: scriptedServer(async (c, r) => {
      const q = r.length / 4;
      await send(
        c,
        encodeChunk(
          0,
          ChunkType.OffsetData,
          r.cookie,
          encodeOffsetData(r.offset + 3 * q, pattern(r.offset + 3 * q, q)),
        ),
      );
      await send(
        c,
        encodeChunk(0, ChunkType.OffsetHole, r.cookie, encodeOffsetHole(r.offset + q, 2 * q)),
      );
      await send(
        c,
        encodeChunk(
          ReplyFlag.Done,
          ChunkType.OffsetData,
          r.cookie,
          encodeOffsetData(r.offset, pattern(r.offset, q)),
        ),
      );
    }),
    unknownCookie: scriptedServer(async (c, r) => {
      await send(c, encodeChunk(ReplyFlag.Done, ChunkType.None, r.cookie + 1000));
    }),
    short: scriptedServer(async (c, r) => {
      await send(
        c,
        encodeChunk(
          ReplyFlag.Done,
          ChunkType.OffsetData,
          r.cookie,
          encodeOffsetData(r.offset, pattern(r.offset, r.length / 2)),
        ),
      );
    }),
    outside: scriptedServer(async (c, r) => {
      await send(
        c,
        encodeChunk(
          ReplyFlag.Done,
          ChunkType.OffsetData,
          r.cookie,
          encodeOffsetData(r.offset + 8, pattern(0, r.length)),
        ),
      );
    }),
    garbage: scriptedServer(async (c) => {
      await send(c, new Uint8Array(20).fill(0x42));
    }),
  };
  try {
    const ok1 = await NbdDisk.open(servers.fragmented.uri);
    const buf = new Uint8Array(4096).fill(7);
    await ok1.read(8192, buf);
    const want = pattern(8192, 4096);
    want.fill(0, 1024, 3072);
    deepStrictEqual(buf, want);
    await ok1.close();
    const cases: Array<[keyof typeof servers, RegExp]> = [
      ["unknownCookie", /at offset 8192: protocol error: reply for unknown cookie/],
      ["short", /at offset 8192: protocol error: the server answered 2048 of 4096 bytes/],
      ["outside", /at offset 8192: protocol error: chunk \[8200, 12296\) outside the request/],
      ["garbage", /at offset 8192: protocol error: bad reply magic 0x42424242/],
    ];
    for (const [name, message] of cases) {
      const disk = await NbdDisk.open(servers[name].uri, { requestTimeoutMs: 60_000 });
      const t = Date.now();
      await rejects(disk.read(8192, new Uint8Array(4096)), (e: DiskError) => {
        ok(e.nbd, name);
        match(e.message, message, name);
        return true;
      });
      ok(Date.now() - t < 5000, `${name}: waited for the timeout`);
      await rejects(disk.read(0, new Uint8Array(1)), /protocol error/);
      await disk.close();
    }
  } finally {
    for (const s of Object.values(servers)) await s.close();
  }
});

Deno.test("a request without a reply times out naming the command and its offset", async () => {
  await withTempDir(async (dir) => {
    await withServers(async (track) => {
      const srv = track(
        await nbdkit(dir, "unix", ["memory", "1M"], ["--filter=delay", "delay-read=30"]),
      );
      const disk = await NbdDisk.open(srv.uri, { requestTimeoutMs: 400 });
      try {
        const t = Date.now();
        await rejects(disk.read(65536, new Uint8Array(4096)), (e: DiskError) => {
          ok(e.nbd);
          strictEqual(e.offset, 65536);
          match(e.message, /cannot read .* at offset 65536: no reply to NBD_CMD_READ within 0.4 s/);
          return true;
        });
        ok(Date.now() - t < 5000);
        // The connection is given up: later requests fail at once.
        await rejects(disk.read(0, new Uint8Array(1)), /no reply to NBD_CMD_READ/);
      } finally {
        await disk.close();
      }
    });
  });
});

Deno.test("server errors name the failing offset and the errno", async () => {
  await withTempDir(async (dir) => {
    await withServers(async (track) => {
      const srv = track(
        await nbdkit(dir, "unix", ["memory", "4M"], [
          "--filter=error",
          "error-pread-rate=100%",
          "error-pwrite=ENOSPC",
          "error-pwrite-rate=100%",
        ]),
      );
      const disk = await NbdDisk.open(srv.uri, { writable: true, writeBehind: false });
      try {
        await rejects(disk.read(3 * MiB, new Uint8Array(10)), (e: DiskError) => {
          match(e.message, /^cannot read nbd\+unix:.* at offset 3145728: server error EIO/);
          return e.nbd;
        });
        await rejects(
          disk.write(MiB, new Uint8Array(10)),
          /cannot write .* at offset 1048576: server error ENOSPC/,
        );
      } finally {
        await disk.close();
      }
      // With write-behind the failure comes back on a later call or on flush, still naming it.
      const behind = await NbdDisk.open(srv.uri, { writable: true });
      try {
        await behind.write(2 * MiB, new Uint8Array(10)).catch(() => {});
        await rejects(behind.flush(), /cannot write .* at offset 2097152: server error ENOSPC/);
      } finally {
        await behind.close();
      }
    });
  });
});

// ---------------------------------------------------------------------------------------------
// End to end: sparse_dd as a subprocess

Deno.test("file → nbdkit memory: same bytes as the file (cmp and nbdcopy), holes made with WRITE_ZEROES only", async () => {
  await withTempDir(async (dir) => {
    const raw = `${dir}/src.raw`;
    const data = await makeSparse(raw, 16 * MiB, 31);
    await withServers(async (track) => {
      for (const transport of ["unix", "tcp"] as const) {
        const log = `${dir}/log-${transport}.txt`;
        const srv = track(
          await nbdkit(dir, transport, ["memory", "16M"], ["--filter=log", `logfile=${log}`]),
        );
        // Something to overwrite: the destination does not start out zero.
        await sh("nbdcopy", ["--", "[", "nbdkit", "pattern", "16M", "]", srv.uri]);
        const from = (await Deno.readTextFile(log)).length;
        const r = await main(["-src", raw, "-dest", srv.uri, "-dest-proto", "nbd"]);
        strictEqual(r.code, 0, r.stderr);
        const out = `${dir}/out-${transport}.raw`;
        await nbdcopyOut(srv.uri, out);
        ok(await sameBytes(raw, out), `${transport}: content differs`);
        const writes = await logged(log, "Write", from);
        const zeroes = await logged(log, "Zero", from);
        const written = ExtentSet.of(writes.map((w) => ({ start: w.offset, length: w.count })));
        const zeroed = ExtentSet.of(zeroes.map((w) => ({ start: w.offset, length: w.count })));
        ok(written.difference(data.roundOut(16384)).isEmpty, "data writes outside the data");
        deepStrictEqual(written.union(zeroed).toJSON(), [[0, 16 * MiB]]);
        ok(zeroed.bytes > 8 * MiB, "holes were not zeroed with WRITE_ZEROES");
        match((await Deno.readTextFile(log)).slice(from), / Flush id=/);
      }
    });
  });
});

Deno.test("file → qemu-nbd raw over TCP, with -prezeroed: only data is written", async () => {
  await withTempDir(async (dir) => {
    const raw = `${dir}/src.raw`;
    await makeSparse(raw, 12 * MiB, 41);
    const target = `${dir}/target.raw`;
    await sh("truncate", ["-s", String(12 * MiB), target]);
    await withServers(async (track) => {
      const srv = track(await qemuNbd(dir, "tcp", "raw", target, { writable: true }));
      const r = await main(["-src", raw, "-dest", srv.uri, "-prezeroed"]);
      strictEqual(r.code, 0, r.stderr);
      const out = `${dir}/out.raw`;
      await nbdcopyOut(srv.uri, out);
      ok(await sameBytes(raw, out));
    });
    ok(await sameBytes(raw, target));
  });
});

Deno.test("NBD → file: nbdkit file and qemu-nbd vpc sources copy to a sparse file identical to nbdcopy's", async () => {
  await withTempDir(async (dir) => {
    const raw = `${dir}/src.raw`;
    await makeSparse(raw, 20 * MiB, 51);
    const vhd = `${dir}/src.vhd`;
    await qemuRawToVhd(raw, vhd);
    await withServers(async (track) => {
      const sources = [
        track(await nbdkit(dir, "unix", ["file", raw])),
        track(await qemuNbd(dir, "unix", "vpc", vhd)),
        track(await qemuNbd(dir, "tcp", "vpc", vhd)),
      ];
      for (const [i, srv] of sources.entries()) {
        const out = `${dir}/out${i}.raw`;
        const r = await main(["-src", srv.uri, "-dest", out, "-json"]);
        strictEqual(r.code, 0, r.stderr);
        const stats = JSON.parse(new TextDecoder().decode(r.stdout));
        strictEqual(stats.allocatedBytes, (await nbdinfoData(srv.uri)).bytes, srv.uri);
        ok(await sameBytes(raw, out), `${srv.uri}: content differs`);
        const ref = `${dir}/ref${i}.raw`;
        await nbdcopyOut(srv.uri, ref);
        ok(await sameBytes(ref, out));
        const st = await Deno.stat(out);
        ok((st.blocks ?? 0) * 512 < 8 * MiB, `${out} is not sparse`);
      }
    });
  });
});

Deno.test("NBD → NBD: qemu-nbd vpc to nbdkit memory over unix and TCP", async () => {
  await withTempDir(async (dir) => {
    const raw = `${dir}/src.raw`;
    await makeSparse(raw, 16 * MiB, 61);
    const vhd = `${dir}/src.vhd`;
    await qemuRawToVhd(raw, vhd);
    await withServers(async (track) => {
      const src = track(await qemuNbd(dir, "tcp", "vpc", vhd));
      const dst = track(await nbdkit(dir, "unix", ["memory", "32M"]));
      const r = await main(["-src", src.uri, "-dest", dst.uri, "-size", String(16 * MiB)]);
      strictEqual(r.code, 0, r.stderr);
      const out = `${dir}/out.raw`;
      await nbdcopyOut(dst.uri, out);
      ok(await sameBytes(raw, out, 16 * MiB));
      strictEqual((await Deno.stat(out)).size, 32 * MiB);
      // Nothing beyond -size was touched.
      ok(
        (await nbdinfoData(dst.uri)).difference(ExtentSet.range(0, 16 * MiB)).isEmpty,
        "data beyond -size",
      );
    });
  });
});

Deno.test("-nbd-export overrides the export name of an NBD destination", async () => {
  await withTempDir(async (dir) => {
    const raw = `${dir}/src.raw`;
    await makeSparse(raw, 4 * MiB, 71);
    const target = `${dir}/target.raw`;
    await sh("truncate", ["-s", String(4 * MiB), target]);
    await withServers(async (track) => {
      const srv = track(
        await qemuNbd(dir, "unix", "raw", target, { exportName: "vdi-1", writable: true }),
      );
      const wrong = srv.uri.replace("vdi-1", "other");
      const bad = await main(["-src", raw, "-dest", wrong]);
      strictEqual(bad.code, ExitCode.Nbd, bad.stderr);
      match(bad.stderr, /cannot open nbd\+unix:\/\/\/other\?.*no such export/);
      const good = await main(["-src", raw, "-dest", wrong, "-nbd-export", "vdi-1"]);
      strictEqual(good.code, 0, good.stderr);
    });
    ok(await sameBytes(raw, target));
  });
});

Deno.test("URIs and protocols sparse_dd refuses: nbds://, nbd+vsock://, -dest-proto nbd with a file", async () => {
  await withTempDir(async (dir) => {
    const raw = `${dir}/src.raw`;
    await makeSparse(raw, MiB, 81);
    const tls = await main(["-src", raw, "-dest", "nbds://127.0.0.1/x"]);
    strictEqual(tls.code, ExitCode.Usage);
    match(tls.stderr, /NBD over TLS \(nbds:\/\/\) is not supported/);
    const vsock = await main(["-src", "nbd+vsock:///x", "-dest", `${dir}/o.raw`]);
    strictEqual(vsock.code, ExitCode.Usage);
    match(vsock.stderr, /unsupported NBD transport/);
    const proto = await main(["-src", raw, "-dest", `${dir}/o.raw`, "-dest-proto", "nbd"]);
    strictEqual(proto.code, ExitCode.Usage);
    match(proto.stderr, /-dest-proto nbd needs an nbd:\/\/host\[:port\]\/export/);
    const other = await main(["-src", raw, "-dest", `${dir}/o.raw`, "-dest-proto", "chunked"]);
    strictEqual(other.code, ExitCode.Usage);
    // xapi's migration argv (an https destination upgraded to NBD): tests/http/remote_test.ts.
    const timeout = await main(["-src", raw, "-dest", "nbd://127.0.0.1/", "-nbd-timeout", "soon"]);
    strictEqual(timeout.code, ExitCode.Usage);
    match(timeout.stderr, /invalid -nbd-timeout value 'soon'/);
  });
});

Deno.test("faults: EIO on source reads and on destination writes exit 5 naming the offset", async () => {
  await withTempDir(async (dir) => {
    const raw = `${dir}/src.raw`;
    const data = await makeSparse(raw, 8 * MiB, 91);
    await withServers(async (track) => {
      const badSrc = track(
        await nbdkit(dir, "unix", ["file", raw], ["--filter=error", "error-pread-rate=100%"]),
      );
      const r1 = await main(["-src", badSrc.uri, "-dest", `${dir}/o1.raw`]);
      strictEqual(r1.code, ExitCode.Nbd, r1.stderr);
      match(r1.stderr, /cannot read nbd\+unix:.* at offset \d+: server error EIO/);
      // The copier reads in order: the first failure is at the first allocated byte.
      strictEqual(offsetIn(r1.stderr), (await nbdinfoData(badSrc.uri)).extents[0].start);

      const badDst = track(
        await nbdkit(dir, "tcp", ["memory", "8M"], ["--filter=error", "error-pwrite-rate=100%"]),
      );
      const r2 = await main(["-src", raw, "-dest", badDst.uri]);
      strictEqual(r2.code, ExitCode.Nbd, r2.stderr);
      match(r2.stderr, /cannot write nbd:\/\/127\.0\.0\.1:\d+\/ at offset \d+: server error EIO/);
      ok(data.roundOut(16384).has(offsetIn(r2.stderr)), r2.stderr);

      const noSpace = track(
        await nbdkit(dir, "unix", ["memory", "8M"], [
          "--filter=error",
          "error-zero=ENOSPC",
          "error-zero-rate=100%",
        ]),
      );
      const r3 = await main(["-src", raw, "-dest", noSpace.uri]);
      strictEqual(r3.code, ExitCode.Nbd, r3.stderr);
      match(r3.stderr, /cannot zero nbd\+unix:.* at offset \d+: server error ENOSPC/);
      ok(!data.has(offsetIn(r3.stderr)));
    });
  });
});

Deno.test("faults: a source or destination server killed mid-copy exits 5 naming the offset, without hanging", async () => {
  await withTempDir(async (dir) => {
    await withServers(async (track) => {
      for (const side of ["source", "destination"] as const) {
        // One server thread and a delay per request: the copy takes seconds, not milliseconds.
        const slow = track(
          side === "source"
            ? await nbdkit(dir, "unix", ["pattern", "64M"], [
              "--threads=1",
              "--filter=delay",
              "delay-read=200ms",
            ])
            : await nbdkit(dir, "unix", ["memory", "64M"], [
              "--threads=1",
              "--filter=delay",
              "delay-write=200ms",
            ]),
        );
        const fast = side === "destination"
          ? track(await nbdkit(dir, "unix", ["pattern", "64M"]))
          : undefined;
        const t = Date.now();
        const running = main(
          side === "source"
            ? ["-src", slow.uri, "-dest", `${dir}/o.raw`]
            : ["-src", fast!.uri, "-dest", slow.uri],
        );
        await new Promise((r) => setTimeout(r, 1500));
        await slow.stop();
        const r = await running;
        strictEqual(r.code, ExitCode.Nbd, `${side}: ${r.stderr}`);
        const op = side === "source" ? "read" : "write";
        match(r.stderr, new RegExp(`cannot ${op} nbd\\+unix:.* at offset \\d+: `), r.stderr);
        ok(offsetIn(r.stderr) > 0, "the copy should have made progress before the kill");
        ok(Date.now() - t < 30_000, "took too long to notice");
        await Deno.remove(`${dir}/o.raw`).catch(() => {});
      }
    });
  });
});

Deno.test("faults: a server that closes during the handshake or stops answering exits 5 quickly", async () => {
  await withTempDir(async (dir) => {
    const closes = fakeServer((c) => {
      c.close();
      return Promise.resolve();
    });
    const silent = fakeServer(() => new Promise(() => {}));
    try {
      const r1 = await main(["-src", closes.uri, "-dest", `${dir}/o.raw`]);
      strictEqual(r1.code, ExitCode.Nbd, r1.stderr);
      match(
        r1.stderr,
        /cannot open nbd:\/\/127\.0\.0\.1:\d+\/: the server closed the connection during the handshake/,
      );
      const t = Date.now();
      const r2 = await main(["-src", silent.uri, "-dest", `${dir}/o.raw`, "-nbd-timeout", "1"]);
      strictEqual(r2.code, ExitCode.Nbd, r2.stderr);
      match(r2.stderr, /no answer within 1 s while connecting/);
      ok(Date.now() - t < 15_000);
    } finally {
      await closes.close();
      await silent.close();
    }
    await withServers(async (track) => {
      const stuck = track(
        await nbdkit(dir, "unix", ["pattern", "8M"], ["--filter=delay", "delay-read=60"]),
      );
      const t = Date.now();
      const r = await main(["-src", stuck.uri, "-dest", `${dir}/o.raw`, "-nbd-timeout", "1"]);
      strictEqual(r.code, ExitCode.Nbd, r.stderr);
      match(r.stderr, /cannot read nbd\+unix:.* at offset 0: no reply to NBD_CMD_READ within 1 s/);
      ok(Date.now() - t < 20_000);
    });
  });
});
