/**
 * Remote destinations end to end: `main.ts` copying to xapi's side played by a raw-socket server
 * (tests/_support/xapi_http.ts): the chunked import into a file, and NBD over the HTTP upgrade
 * relayed to nbdkit and qemu-nbd; TLS through Deno's TLS server and through an OpenSSL front end
 * pinned to TLS 1.2 and xapi's ciphers, choosing its certificate by SNI; and the faults.
 */

import assert from "node:assert/strict";
import {
  readMachineStream,
  runMain,
  type RunResult,
  sh,
  withLoop,
  withTempDir,
} from "../_support/helpers.ts";
import { Prng } from "../_support/prng.ts";
import { pyvhdiRead, qemuRawToVhd } from "../_support/vhd_tools.ts";
import { blktapLocators, VhdWriter } from "../_support/vhd_writer.ts";
import { type Behaviour, makeCa, XapiSide } from "../_support/xapi_http.ts";

const MiB = 1024 * 1024;
const SECRET = "OpaqueRef:5ec7e7-5e55-10n";
const USER = "root";
const PASSWORD = "hunter2-pw";

/** The URL xapi would pass, with a session id and credentials that must never be shown. */
function url(scheme: string, port: number, path = "/import_raw_vdi"): string {
  return `${scheme}://${USER}:${PASSWORD}@127.0.0.1:${port}${path}?vdi=OpaqueRef:v&session_id=${SECRET}&task_id=t`;
}

/** Runs sparse_dd and checks that no secret leaked into stderr or the stats file. */
/** The stats a run wrote (`-stats-file`). */
interface Stats {
  dest: string;
  size: number;
  bytesWritten: number;
}

async function run(dir: string, args: string[]): Promise<RunResult & { stats?: Stats }> {
  const statsFile = `${dir}/stats-${crypto.randomUUID().slice(0, 6)}.json`;
  const r = await runMain([...args, "-stats-file", statsFile], { timeoutMs: 60_000 });
  for (const text of [r.stderr, await Deno.readTextFile(statsFile).catch(() => "")]) {
    assert.ok(!text.includes(SECRET), `session id leaked: ${text}`);
    assert.ok(!text.includes(PASSWORD), `password leaked: ${text}`);
  }
  const stats = await Deno.readTextFile(statsFile).then(JSON.parse).catch(() => undefined);
  return { ...r, stats };
}

/** A sparse source: `size` bytes with seeded random runs of data (sector aligned). */
async function makeSource(path: string, size: number, seed: number): Promise<Uint8Array> {
  const r = new Prng(seed);
  const data = new Uint8Array(size);
  for (let i = 0; i < 6; i++) {
    const len = (1 + r.int(512)) * 512;
    const at = r.int((size - len) / 512) * 512;
    r.fill(data.subarray(at, at + len));
  }
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  await f.truncate(size);
  // Written run by run so the file stays sparse.
  for (let at = 0; at < size; at += 64 * 1024) {
    const part = data.subarray(at, at + 64 * 1024);
    if (part.some((b) => b !== 0)) {
      await f.seek(at, Deno.SeekMode.Start);
      await f.write(part);
    }
  }
  f.close();
  return data;
}

function assertSame(got: Uint8Array, want: Uint8Array, size = want.length): void {
  assert.ok(got.length >= size, `destination holds ${got.length} bytes, want ${size}`);
  for (let at = 0; at < size; at += MiB) {
    const a = got.subarray(at, Math.min(size, at + MiB));
    const b = want.subarray(at, Math.min(size, at + MiB));
    if (!a.every((x, i) => x === b[i])) assert.fail(`destination differs in [${at}, ${at + MiB})`);
  }
}

async function withServer<T>(
  b: Behaviour,
  fn: (srv: XapiSide) => Promise<T>,
  tls?: { cert: string; key: string },
): Promise<T> {
  const srv = XapiSide.start(b, tls ? { tls } : {});
  try {
    return await fn(srv);
  } finally {
    await srv.stop();
  }
}

/** A process that is killed afterwards (nbdkit, qemu-nbd, the TLS front end). */
async function withProcess<T>(
  cmd: string,
  args: string[],
  ready: (stdout: ReadableStreamDefaultReader<Uint8Array>) => Promise<string | void>,
  fn: (out: string | void) => Promise<T>,
): Promise<T> {
  const p = new Deno.Command(cmd, { args, stdout: "piped", stderr: "null", stdin: "null" })
    .spawn();
  const reader = p.stdout.getReader();
  try {
    return await fn(await ready(reader));
  } finally {
    try {
      p.kill("SIGKILL");
    } catch { /* gone */ }
    reader.releaseLock();
    await p.stdout.cancel().catch(() => {});
    await p.status;
  }
}

/** Waits until a unix socket accepts connections. */
async function socketReady(path: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    try {
      (await Deno.connect({ transport: "unix", path })).close();
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 25));
    }
  }
  throw new Error(`${path} never accepted connections`);
}

/** An NBD server on a unix socket for the length of `fn`. */
function withNbd<T>(dir: string, argv: string[], fn: (socket: string) => Promise<T>): Promise<T> {
  const socket = `${dir}/nbd-${crypto.randomUUID().slice(0, 6)}.sock`;
  const [cmd, ...rest] = argv;
  const args = cmd === "nbdkit"
    ? ["-f", "--exit-with-parent", "-U", socket, ...rest]
    : ["-t", "-k", socket, ...rest];
  return withProcess(cmd, args, () => socketReady(socket), () => fn(socket));
}

// ---------------------------------------------------------------------------------------------
// The chunked import

for (const prezeroed of [false, true]) {
  Deno.test(`chunked import over http from a sparse file${prezeroed ? " (-prezeroed)" : ""}: the receiver's file equals the source`, async () => {
    await withTempDir(async (dir) => {
      const size = 24 * MiB;
      const want = await makeSource(`${dir}/src.raw`, size, 16);
      // Without -prezeroed the destination holds junk: only frames of zeroes clear it.
      const dest = `${dir}/dest.raw`;
      await Deno.writeFile(dest, new Uint8Array(size + MiB).fill(prezeroed ? 0 : 0xaa));
      await withServer({ kind: "chunked", file: dest }, async (srv) => {
        const r = await run(dir, [
          "-machine",
          "-src",
          `${dir}/src.raw`,
          "-dest",
          url("http", srv.port),
          "-good-ciphersuites",
          "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256",
          ...(prezeroed ? ["-prezeroed"] : []),
        ]);
        assert.equal(r.code, 0, r.stderr);
        assert.equal(r.stderr, "");
        const m = readMachineStream(r.stdout);
        assert.ok(m.ended && m.percents[0] === 0 && m.percents.at(-1) === 100, String(m.percents));
        await srv.done();
        const got = srv.received[0];
        assert.equal(srv.received.length, 1);
        assert.match(
          got.head,
          /^PUT \/import_raw_vdi\?vdi=OpaqueRef:v&session_id=.*&task_id=t HTTP\/1\.1\r\n/,
        );
        assert.equal(got.headers.get("cookie"), "chunked=true");
        assert.equal(got.headers.get("host"), `127.0.0.1:${srv.port}`);
        assert.equal(got.headers.get("authorization"), `Basic ${btoa(`${USER}:${PASSWORD}`)}`);
        assert.ok(!got.headers.has("content-length") && !got.headers.has("transfer-encoding"));
        assert.equal(got.error, undefined);
        assert.ok(got.ended, "no end frame");
        assert.ok(got.maxFrame <= 2 * MiB);
        // Progress is bytes sent: with -prezeroed only the data quanta travel.
        if (prezeroed) assert.ok(got.bytes < size / 4, `${got.bytes} bytes sent`);
        else assert.equal(got.bytes, size);
        assert.equal(r.stats!.dest.includes("<redacted>"), true);
        const out = await Deno.readFile(dest);
        assertSame(out, want);
        // Nothing past -size: the byte after the copy is untouched.
        assert.equal(out[size], prezeroed ? 0 : 0xaa);
      });
    });
  });
}

Deno.test("chunked import from a block device (loop), and from a VHD", async () => {
  await withTempDir(async (dir) => {
    const size = 8 * MiB;
    const want = await makeSource(`${dir}/src.raw`, size, 7);
    await qemuRawToVhd(`${dir}/src.raw`, `${dir}/src.vhd`);
    await withLoop(`${dir}/src.raw`, async (dev) => {
      for (const src of [dev, `${dir}/src.vhd`]) {
        const dest = `${dir}/dest.raw`;
        await Deno.writeFile(dest, new Uint8Array(size).fill(0x11));
        await withServer({ kind: "chunked", file: dest }, async (srv) => {
          const r = await run(dir, ["-src", src, "-dest", url("http", srv.port)]);
          assert.equal(r.code, 0, r.stderr);
          await srv.done();
          assert.ok(srv.received[0].ended);
          assertSame(await Deno.readFile(dest), want);
        });
      }
    });
  });
});

/** The SXM picture (as tests/vhd/delta_test.ts): leaf A and base S are siblings on B. */
async function deltaChains(dir: string) {
  const BS = MiB;
  const fill = (w: VhdWriter, block: number, value: number, at = 0, len = 64 * 1024) =>
    w.write(block * BS + at, new Uint8Array(len).fill(value));
  const child = (parent: VhdWriter, name: string) =>
    new VhdWriter({
      size: 16 * MiB,
      blockSize: BS,
      parent: { uuid: parent.uuid, name, locators: blktapLocators(name) },
    });
  const b = new VhdWriter({ size: 16 * MiB, blockSize: BS });
  fill(b, 1, 0xb1, 0, BS);
  fill(b, 9, 0xb9);
  await b.save(`${dir}/b.vhd`);
  const a = child(b, "b.vhd");
  fill(a, 2, 0xa2, 128 * 1024);
  fill(a, 3, 0xa3);
  await a.save(`${dir}/a.vhd`);
  const s = child(b, "b.vhd");
  fill(s, 5, 0x55, 8 * 1024);
  fill(s, 9, 0x59);
  await s.save(`${dir}/s.vhd`);
  await pyvhdiRead([`${dir}/a.vhd`, `${dir}/b.vhd`], `${dir}/want.raw`);
  await pyvhdiRead([`${dir}/s.vhd`, `${dir}/b.vhd`], `${dir}/base.raw`);
  // Blocks 2, 3 (source only) and 5, 9 (base only) differ.
  return { want: await Deno.readFile(`${dir}/want.raw`), changed: 4 * BS };
}

Deno.test("-base over the chunked import: only the differing blocks travel", async () => {
  await withTempDir(async (dir) => {
    const { want, changed } = await deltaChains(dir);
    const dest = `${dir}/dest.raw`;
    await Deno.copyFile(`${dir}/base.raw`, dest);
    await withServer({ kind: "chunked", file: dest }, async (srv) => {
      const r = await run(dir, [
        "-src",
        `${dir}/a.vhd`,
        "-dest",
        url("http", srv.port),
        "-base",
        `${dir}/s.vhd`,
      ]);
      assert.equal(r.code, 0, r.stderr);
      await srv.done();
      assert.ok(srv.received[0].bytes <= changed, `${srv.received[0].bytes} bytes sent`);
      assertSame(await Deno.readFile(dest), want);
    });
  });
});

Deno.test("a source whose size is not whole sectors is refused before connecting (exit 1)", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeFile(`${dir}/odd.raw`, new Uint8Array(1000).fill(3));
    await withServer({ kind: "chunked", file: `${dir}/x` }, async (srv) => {
      const r = await run(dir, ["-src", `${dir}/odd.raw`, "-dest", url("http", srv.port)]);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /not a multiple of 512/);
      assert.equal(srv.received.length, 0);
    });
  });
});

// ---------------------------------------------------------------------------------------------
// NBD over the HTTP upgrade

Deno.test("NBD upgrade to nbdkit memory: -machine, -size larger than the source copies the source", async () => {
  await withTempDir(async (dir) => {
    const size = 12 * MiB;
    const want = await makeSource(`${dir}/src.raw`, size, 3);
    await withNbd(dir, ["nbdkit", "memory", "32M"], async (socket) => {
      // Junk where the source has zeroes: without -prezeroed they are overwritten.
      await sh("nbdkit", [
        "-U",
        "-",
        "pattern",
        "32M",
        "--run",
        `nbdcopy -- "$uri" nbd+unix:///?socket=${socket}`,
      ]);
      await withServer({ kind: "nbd", socket, headerName: "TRANSFER-ENCODING" }, async (srv) => {
        const r = await run(dir, [
          "-machine",
          "-src",
          `${dir}/src.raw`,
          "-dest",
          url("http", srv.port, "/services/SM/nbdproxy/import/vm/sr/vdi/dp"),
          "-dest-proto",
          "nbd",
          "-nbd-export",
          "exp",
          "-size",
          String(32 * MiB),
        ]);
        assert.equal(r.code, 0, r.stderr);
        assert.equal(r.stderr, "");
        assert.ok(readMachineStream(r.stdout).ended);
        assert.equal(r.stats!.size, size);
      });
      await sh("nbdcopy", [`nbd+unix:///?socket=${socket}`, `${dir}/back.raw`]);
      assertSame(await Deno.readFile(`${dir}/back.raw`), want);
    });
  });
});

Deno.test("NBD upgrade to qemu-nbd with its export name, -base -prezeroed from a VHD chain", async () => {
  await withTempDir(async (dir) => {
    const { want, changed } = await deltaChains(dir);
    const dest = `${dir}/dest.raw`;
    await Deno.copyFile(`${dir}/base.raw`, dest);
    await withNbd(dir, ["qemu-nbd", "-f", "raw", "-x", "vdi-export", dest], async (socket) => {
      await withServer({ kind: "nbd", socket }, async (srv) => {
        const r = await run(dir, [
          "-src",
          `${dir}/a.vhd`,
          "-dest",
          url("http", srv.port, "/services/SM/nbdproxy/import/vm/sr/vdi/dp"),
          "-dest-proto",
          "nbd",
          "-nbd-export",
          "vdi-export",
          "-base",
          `${dir}/s.vhd`,
          "-prezeroed",
        ]);
        assert.equal(r.code, 0, r.stderr);
        assert.ok(r.stats!.bytesWritten <= changed, `${r.stats!.bytesWritten} bytes written`);
      });
    });
    assertSame(await Deno.readFile(dest), want);
  });
});

Deno.test("NBD upgrade to an oldstyle server: only WRITE and FLUSH, the file equals the source", async () => {
  await withTempDir(async (dir) => {
    const size = 4 * MiB;
    const want = await makeSource(`${dir}/src.raw`, size, 11);
    const dest = `${dir}/dest.raw`;
    await Deno.writeFile(dest, new Uint8Array(size).fill(0x77));
    await withServer({ kind: "nbd-oldstyle", file: dest }, async (srv) => {
      const r = await run(dir, [
        "-src",
        `${dir}/src.raw`,
        "-dest",
        url("http", srv.port, "/services/SM/nbdproxy/import/x"),
        "-dest-proto",
        "nbd",
      ]);
      assert.equal(r.code, 0, r.stderr);
      await srv.done();
      assert.equal(srv.received[0].error, undefined);
      assert.ok(srv.received[0].ended, "no NBD_CMD_DISC");
      // Zeroes too are written: the server offers nothing else.
      assert.equal(srv.received[0].bytes, size);
    });
    assertSame(await Deno.readFile(dest), want);
  });
});

Deno.test("NBD upgrade: an unknown export and a server dying mid-copy are NBD errors (exit 5)", async () => {
  await withTempDir(async (dir) => {
    await makeSource(`${dir}/src.raw`, 8 * MiB, 5);
    const dest = `${dir}/dest.raw`;
    await Deno.writeFile(dest, new Uint8Array(8 * MiB));
    await withNbd(dir, ["qemu-nbd", "-f", "raw", "-x", "right", dest], async (socket) => {
      await withServer({ kind: "nbd", socket }, async (srv) => {
        const r = await run(dir, [
          "-src",
          `${dir}/src.raw`,
          "-dest",
          url("http", srv.port, "/services/SM/nbdproxy/import/x"),
          "-dest-proto",
          "nbd",
          "-nbd-export",
          "wrong",
        ]);
        assert.equal(r.code, 5, r.stderr);
        assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
        assert.match(
          r.stderr,
          /http:\/\/<redacted>@127\.0\.0\.1:\d+\/services.*session_id=<redacted>/,
        );
      });
    });
    // nbdkit's error filter fails every write.
    await withNbd(dir, [
      "nbdkit",
      "--filter=error",
      "memory",
      "8M",
      "error-pwrite=EIO",
      "error-pwrite-rate=100%",
    ], async (socket) => {
      await withServer({ kind: "nbd", socket }, async (srv) => {
        const r = await run(dir, [
          "-src",
          `${dir}/src.raw`,
          "-dest",
          url("http", srv.port, "/services/SM/nbdproxy/import/x"),
          "-dest-proto",
          "nbd",
        ]);
        assert.equal(r.code, 5, r.stderr);
        assert.match(r.stderr, /cannot write .* at offset \d+: server error/);
      });
    });
  });
});

Deno.test("-dest-proto nbd against a server that does not upgrade fails naming the URL (exit 4)", async () => {
  await withTempDir(async (dir) => {
    await makeSource(`${dir}/src.raw`, MiB, 1);
    await withServer({ kind: "chunked", file: `${dir}/d` }, async (srv) => {
      const r = await run(dir, [
        "-src",
        `${dir}/src.raw`,
        "-dest",
        url("http", srv.port),
        "-dest-proto",
        "nbd",
      ]);
      assert.equal(r.code, 4, r.stderr);
      assert.match(r.stderr, /without 'Transfer-encoding: nbd'/);
    });
  });
});

// ---------------------------------------------------------------------------------------------
// TLS

Deno.test("https: TLS 1.2 with -verify-dest against the bundle, no host name check; a wrong CA fails; no verification without -verify-dest", async () => {
  await withTempDir(async (dir) => {
    const size = 6 * MiB;
    const want = await makeSource(`${dir}/src.raw`, size, 21);
    const good = await makeCa(dir, "good", ["some-other-host"]);
    const wrong = await makeCa(dir, "wrong", []);
    const tls = {
      cert: await Deno.readTextFile(good.certs["some-other-host"].cert),
      key: await Deno.readTextFile(good.certs["some-other-host"].key),
    };
    const dest = `${dir}/dest.raw`;
    const cases: Array<[string[], number]> = [
      [["-verify-dest", "-cert-bundle-path", good.ca], 0],
      [["-verify-dest", "-cert-bundle-path", wrong.ca], 4],
      [[], 0],
    ];
    for (const [flags, code] of cases) {
      await Deno.writeFile(dest, new Uint8Array(size).fill(0x5a));
      await withServer({ kind: "chunked", file: dest }, async (srv) => {
        const r = await run(dir, [
          "-src",
          `${dir}/src.raw`,
          "-dest",
          url("https", srv.port),
          ...flags,
        ]);
        assert.equal(r.code, code, `${flags}: ${r.stderr}`);
        if (code === 0) {
          await srv.done();
          assertSame(await Deno.readFile(dest), want);
          assert.match(r.stderr, /^sparse_dd: note: TLS 1\.2 /);
        } else {
          const lines = r.stderr.trim().split("\n").filter((l) => !/note: TLS/.test(l));
          assert.equal(lines.length, 1, r.stderr);
          assert.match(
            lines[0],
            /cannot open https:\/\/<redacted>@127\.0\.0\.1:\d+\/import_raw_vdi.*TLS handshake failed/,
          );
        }
      }, tls);
    }
  });
});

Deno.test("https through an OpenSSL front end: TLS 1.2 with xapi's cipher, SNI only with -sni, the certificate it selects verified", async () => {
  await withTempDir(async (dir) => {
    const size = 4 * MiB;
    const want = await makeSource(`${dir}/src.raw`, size, 33);
    const host = await makeCa(dir, "host", ["host-a"]);
    const pool = await makeCa(dir, "pool", ["pool"]);
    const dest = `${dir}/dest.raw`;
    const log = `${dir}/front.log`;
    await withServer({ kind: "chunked", file: dest }, async (srv) => {
      await withProcess(
        "python3",
        [
          new URL("../fixtures/tls_front.py", import.meta.url).pathname,
          String(srv.port),
          host.certs["host-a"].cert,
          host.certs["host-a"].key,
          log,
          "pool",
          pool.certs.pool.cert,
          pool.certs.pool.key,
        ],
        async (out) => {
          const { value } = await out.read();
          return new TextDecoder().decode(value).trim();
        },
        async (port) => {
          // Without -sni: no server name, the default (host) certificate.
          // With -sni pool: the pool certificate, which only the pool CA verifies.
          const cases: Array<[string[], number, string]> = [
            [["-verify-dest", "-cert-bundle-path", host.ca], 0, "-"],
            [["-verify-dest", "-cert-bundle-path", pool.ca, "-sni", "pool"], 0, "pool"],
            [["-verify-dest", "-cert-bundle-path", host.ca, "-sni", "pool"], 4, "pool"],
          ];
          for (const [flags, code, sni] of cases) {
            await Deno.writeFile(dest, new Uint8Array(size).fill(0x42));
            const r = await run(dir, [
              "-src",
              `${dir}/src.raw`,
              "-dest",
              url("https", Number(port)),
              ...flags,
            ]);
            assert.equal(r.code, code, `${flags}: ${r.stderr}`);
            const last = (await Deno.readTextFile(log)).trim().split("\n").at(-1)!;
            if (code === 0) {
              assert.equal(last, `${sni} TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384`);
              assertSame(await Deno.readFile(dest), want);
            }
          }
        },
      );
    });
  });
});

Deno.test("-encryption-mode always turns http into https, never turns https into http", async () => {
  await withTempDir(async (dir) => {
    const size = 2 * MiB;
    const want = await makeSource(`${dir}/src.raw`, size, 8);
    const ca = await makeCa(dir, "enc", ["x"]);
    const tls = {
      cert: await Deno.readTextFile(ca.certs.x.cert),
      key: await Deno.readTextFile(ca.certs.x.key),
    };
    const dest = `${dir}/dest.raw`;
    for (
      const [mode, scheme, withTls] of [["always", "http", true], [
        "never",
        "https",
        false,
      ]] as const
    ) {
      await Deno.writeFile(dest, new Uint8Array(size).fill(1));
      await withServer({ kind: "chunked", file: dest }, async (srv) => {
        const r = await run(dir, [
          "-src",
          `${dir}/src.raw`,
          "-dest",
          url(scheme, srv.port),
          "-encryption-mode",
          mode,
        ]);
        assert.equal(r.code, 0, `${mode}: ${r.stderr}`);
        await srv.done();
        assertSame(await Deno.readFile(dest), want);
      }, withTls ? tls : undefined);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Faults

Deno.test("non-2xx answers fail with their status and reason, redirects not followed (exit 4)", async () => {
  await withTempDir(async (dir) => {
    await makeSource(`${dir}/src.raw`, MiB, 2);
    const answers: Array<[string, string[], RegExp]> = [
      [
        "302 Found",
        [`Location: https://10.0.0.2/import_raw_vdi?session_id=${SECRET}`],
        /answered 302 Found \(redirect to https:\/\/10\.0\.0\.2\/import_raw_vdi\?session_id=<redacted> not followed\)/,
      ],
      ["401 Unauthorized", [], /answered 401 Unauthorized$/],
      ["403 Forbidden", [], /answered 403 Forbidden$/],
      ["500 Internal Error", [], /answered 500 Internal Error$/],
    ];
    for (const [line, headers, re] of answers) {
      await withServer({ kind: "status", line, headers }, async (srv) => {
        const r = await run(dir, [
          "-machine",
          "-src",
          `${dir}/src.raw`,
          "-dest",
          url("http", srv.port),
        ]);
        assert.equal(r.code, 4, r.stderr);
        const lines = r.stderr.trim().split("\n");
        assert.equal(lines.length, 1, r.stderr);
        assert.match(
          lines[0],
          /^sparse_dd: cannot open http:\/\/<redacted>@127\.0\.0\.1:\d+\/import_raw_vdi\?vdi=OpaqueRef:v&session_id=<redacted>&task_id=t: /,
        );
        assert.match(lines[0], re);
        assert.equal(srv.received.length, 1, "a redirect was followed");
        assert.ok(!readMachineStream(r.stdout).ended);
      });
    }
  });
});

Deno.test("a server closing mid-stream, a truncated response header, and a refused connection fail with exit 4", async () => {
  await withTempDir(async (dir) => {
    await makeSource(`${dir}/src.raw`, 16 * MiB, 4);
    const dest = `${dir}/dest.raw`;
    await Deno.writeFile(dest, new Uint8Array(16 * MiB));
    const cases: Array<[Behaviour, RegExp]> = [
      [
        { kind: "chunked", file: dest, closeAfter: 2 * MiB },
        /cannot (write|zero|flush) http:\/\/<redacted>@.*(at offset \d+)?: .*(reset|closed|Broken pipe)/i,
      ],
      [
        { kind: "truncated-head" },
        /closed the connection in the response header \(after \d+ bytes\)/,
      ],
    ];
    for (const [b, re] of cases) {
      await withServer(b, async (srv) => {
        const r = await run(dir, ["-src", `${dir}/src.raw`, "-dest", url("http", srv.port)]);
        assert.equal(r.code, 4, r.stderr);
        assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
        assert.match(r.stderr, re);
      });
    }
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (l.addr as Deno.NetAddr).port;
    l.close();
    const r = await run(dir, ["-src", `${dir}/src.raw`, "-dest", url("http", port)]);
    assert.equal(r.code, 4, r.stderr);
    assert.match(
      r.stderr,
      /cannot open http:\/\/<redacted>@127\.0\.0\.1:\d+\/.*: connection refused/,
    );
  });
});

Deno.test("a stalled server: no answer, or no more data taken, fails after -http-timeout (exit 4)", async () => {
  await withTempDir(async (dir) => {
    await makeSource(`${dir}/src.raw`, 64 * MiB, 9);
    const dest = `${dir}/dest.raw`;
    await Deno.writeFile(dest, new Uint8Array(64 * MiB));
    const cases: Array<[Behaviour, RegExp]> = [
      [{ kind: "stall-head" }, /cannot open .*: no response within 1 s/],
      [
        { kind: "chunked", file: dest, stallAfter: 4 * MiB },
        /cannot (write|zero) .* at offset \d+: the server took no data for 1 s/,
      ],
    ];
    for (const [b, re] of cases) {
      await withServer(b, async (srv) => {
        const t0 = performance.now();
        const r = await run(dir, [
          "-src",
          `${dir}/src.raw`,
          "-dest",
          url("http", srv.port),
          "-http-timeout",
          "1",
        ]);
        assert.equal(r.code, 4, r.stderr);
        assert.match(r.stderr, re);
        assert.ok(performance.now() - t0 < 30_000);
      });
    }
  });
});

Deno.test("usage errors: an http source, a bad -encryption-mode, -dest-proto none with a URL (exit 1)", async () => {
  await withTempDir(async (dir) => {
    await makeSource(`${dir}/src.raw`, MiB, 1);
    const cases: string[][] = [
      ["-src", url("http", 1), "-dest", `${dir}/d.raw`],
      ["-src", `${dir}/src.raw`, "-dest", url("http", 1), "-encryption-mode", "sometimes"],
      ["-src", `${dir}/src.raw`, "-dest", url("http", 1), "-dest-proto", "none"],
      ["-src", `${dir}/src.raw`, "-dest", url("http", 1), "-http-timeout", "soon"],
    ];
    for (const args of cases) {
      const r = await run(dir, args);
      assert.equal(r.code, 1, `${args}: ${r.stderr}`);
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    }
  });
});

Deno.test("a source that cannot be opened exits 3 before anything is sent", async () => {
  await withTempDir(async (dir) => {
    await withServer({ kind: "chunked", file: `${dir}/d` }, async (srv) => {
      const r = await run(dir, ["-src", `${dir}/missing.raw`, "-dest", url("http", srv.port)]);
      assert.equal(r.code, 3, r.stderr);
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
      assert.equal(srv.received.length, 0);
    });
  });
});

Deno.test("a TLS server that accepts none of the offered suites: exit 4, the line says what was offered", async () => {
  await withTempDir(async (dir) => {
    await makeSource(`${dir}/src.raw`, MiB, 12);
    const ca = await makeCa(dir, "rsa", ["h"]);
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (l.addr as Deno.NetAddr).port;
    l.close();
    // RSA key exchange only (no forward secrecy): outside what rustls offers.
    const server = new Deno.Command("openssl", {
      args: [
        "s_server",
        "-accept",
        `127.0.0.1:${port}`,
        "-cert",
        ca.certs.h.cert,
        "-key",
        ca.certs.h.key,
        "-tls1_2",
        "-cipher",
        "AES256-SHA256",
        "-quiet",
      ],
      stdin: "piped",
      stdout: "null",
      stderr: "null",
    }).spawn();
    try {
      await new Promise((r) => setTimeout(r, 500));
      const r = await run(dir, ["-machine", "-src", `${dir}/src.raw`, "-dest", url("https", port)]);
      assert.equal(r.code, 4, r.stderr);
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
      assert.match(r.stderr, /TLS handshake failed: .*\(sparse_dd offers TLS 1\.2 with rustls's/);
    } finally {
      server.kill("SIGKILL");
      await server.stdin.close().catch(() => {});
      await server.status;
    }
  });
});
