/**
 * The XAPI host plugin, driven the way xapi drives it: `env -i PATH=/sbin:/usr/sbin:/bin:/usr/bin`,
 * the whole methodCall as argv[1] (in xapi's own one-line form and in Python's
 * `xmlrpc.client.dumps` form), stdout parsed by Python's `xmlrpc.client.loads`, exit status 0
 * every time. Copies are real (files, loop devices); the XenAPI endpoint is a Python
 * `xmlrpc.server` on a unix socket.
 */

import { deepStrictEqual, ok as assert, strictEqual } from "node:assert/strict";
import { VERSION } from "../../src/version.ts";
import { handleRequest } from "../../plugin/main.ts";
import { type OpState, OpStore } from "../../plugin/ops.ts";
import type { PluginConfig } from "../../plugin/config.ts";
import { MAIN, sameBytes, withLoop, withTempDir } from "../_support/helpers.ts";
import {
  denseFile,
  expectFailure,
  expectSuccess,
  plugin,
  PYTHON,
  pythonForm,
  readAnswer,
  sparseFile,
  TEST_CONF,
  xapiForm,
} from "./harness.ts";

// ---------------------------------------------------------------------------------------------
// Success.

Deno.test("version answers in both request forms, as a string", async () => {
  strictEqual(expectSuccess(await plugin(xapiForm("version", {}))), VERSION);
  strictEqual(expectSuccess(await plugin(await pythonForm("version", {}))), VERSION);
});

Deno.test("copy file to new file (xapi form): Success with the stats as JSON, same bytes", async () => {
  await withTempDir(async (dir) => {
    const size = 64 << 20;
    await sparseFile(`${dir}/src.raw`, size, 1);
    const value = expectSuccess(
      await plugin(xapiForm("copy", { src: `${dir}/src.raw`, dest: `${dir}/dst.raw` })),
    );
    const stats = JSON.parse(value);
    strictEqual(stats.size, size);
    strictEqual(stats.src, `${dir}/src.raw`);
    assert(stats.bytesRead < size, `only allocated data is read: ${stats.bytesRead}`);
    assert(await sameBytes(`${dir}/src.raw`, `${dir}/dst.raw`));
  });
});

Deno.test("copy onto an existing dirty file (Python form, size, prezeroed=false): zeroes the holes", async () => {
  await withTempDir(async (dir) => {
    const size = 32 << 20;
    await sparseFile(`${dir}/src.raw`, size, 2);
    await denseFile(`${dir}/dst.raw`, size);
    const value = expectSuccess(
      await plugin(
        await pythonForm("copy", {
          src: `${dir}/src.raw`,
          dest: `${dir}/dst.raw`,
          size: String(size),
          prezeroed: "false",
        }),
      ),
    );
    strictEqual(JSON.parse(value).prezeroed, false);
    assert(await sameBytes(`${dir}/src.raw`, `${dir}/dst.raw`));
  });
});

Deno.test("copy with an empty optional argument (<value/>) and a partial size", async () => {
  await withTempDir(async (dir) => {
    await sparseFile(`${dir}/src.raw`, 16 << 20, 3);
    const value = expectSuccess(
      await plugin(
        xapiForm("copy", {
          src: `${dir}/src.raw`,
          dest: `${dir}/dst.raw`,
          base: "",
          size: String(8 << 20),
        }),
      ),
    );
    strictEqual(JSON.parse(value).size, 8 << 20);
    assert(await sameBytes(`${dir}/src.raw`, `${dir}/dst.raw`, 8 << 20));
  });
});

Deno.test("copy from a loop device to a file, and from a file to a loop device", async () => {
  await withTempDir(async (dir) => {
    const size = 32 << 20;
    await sparseFile(`${dir}/src.raw`, size, 4);
    await withLoop(`${dir}/src.raw`, async (srcDev) => {
      expectSuccess(await plugin(xapiForm("copy", { src: srcDev, dest: `${dir}/out.raw` })));
      assert(await sameBytes(`${dir}/src.raw`, `${dir}/out.raw`));
    });
    await denseFile(`${dir}/disk.img`, size);
    await withLoop(`${dir}/disk.img`, async (dstDev) => {
      const value = expectSuccess(
        await plugin(
          await pythonForm("copy", { src: `${dir}/src.raw`, dest: dstDev, size: String(size) }),
        ),
      );
      strictEqual(JSON.parse(value).dest, dstDev);
      assert(await sameBytes(`${dir}/src.raw`, dstDev, size));
    });
  });
});

Deno.test("discover on a loop device says which route found nothing, and why", async () => {
  await withTempDir(async (dir) => {
    await sparseFile(`${dir}/src.raw`, 4 << 20, 5);
    await withLoop(`${dir}/src.raw`, async (dev) => {
      const d = JSON.parse(expectSuccess(await plugin(xapiForm("discover", { device: dev }))));
      strictEqual(d.device, dev);
      strictEqual(d.route, "none");
      assert(typeof d.reason === "string" && d.reason.length > 0);
    });
  });
  expectFailure(
    await plugin(xapiForm("discover", { device: "/dev/no-such-device" })),
    "SPARSE_DD_INVALID_ARGUMENT",
    "device",
    "/dev/no-such-device",
  );
});

// ---------------------------------------------------------------------------------------------
// Failure, always as an answer with exit status 0.

Deno.test("unknown function: UNKNOWN_XENAPI_PLUGIN_FUNCTION [fn]", async () => {
  const e = expectFailure(
    await plugin(xapiForm("frobnicate", {})),
    "UNKNOWN_XENAPI_PLUGIN_FUNCTION",
  );
  deepStrictEqual(e, ["UNKNOWN_XENAPI_PLUGIN_FUNCTION", "frobnicate"]);
  // Names of Object.prototype members are not functions either.
  expectFailure(await plugin(xapiForm("constructor", {})), "UNKNOWN_XENAPI_PLUGIN_FUNCTION");
  expectFailure(await plugin(await pythonForm("toString", {})), "UNKNOWN_XENAPI_PLUGIN_FUNCTION");
});

Deno.test("missing and empty required arguments: SPARSE_DD_MISSING_ARGUMENT [name]", async () => {
  await withTempDir(async (dir) => {
    await sparseFile(`${dir}/src.raw`, 1 << 20, 6);
    deepStrictEqual(
      expectFailure(await plugin(xapiForm("copy", { dest: `${dir}/d` }))),
      ["SPARSE_DD_MISSING_ARGUMENT", "src"],
    );
    deepStrictEqual(
      expectFailure(await plugin(await pythonForm("copy", { src: `${dir}/src.raw` }))),
      ["SPARSE_DD_MISSING_ARGUMENT", "dest"],
    );
    deepStrictEqual(
      expectFailure(await plugin(xapiForm("copy", { src: "", dest: `${dir}/d` }))),
      ["SPARSE_DD_MISSING_ARGUMENT", "src"],
    );
    deepStrictEqual(expectFailure(await plugin(xapiForm("status", {}))), [
      "SPARSE_DD_MISSING_ARGUMENT",
      "id",
    ]);
  });
});

Deno.test("invalid arguments: SPARSE_DD_INVALID_ARGUMENT [name, value, reason]", async () => {
  await withTempDir(async (dir) => {
    const src = `${dir}/src.raw`;
    await sparseFile(src, 1 << 20, 7);
    const cases: [Record<string, string>, string, string][] = [
      [{ src: "src.raw", dest: `${dir}/d` }, "src", "src.raw"],
      [{ src, dest: "d.raw" }, "dest", "d.raw"],
      [{ src: "../x", dest: `${dir}/d` }, "src", "../x"],
      [{ src, dest: `${dir}/d`, size: "12abc" }, "size", "12abc"],
      [{ src, dest: `${dir}/d`, size: "-1" }, "size", "-1"],
      [{ src, dest: `${dir}/d`, size: "1e9" }, "size", "1e9"],
      [{ src, dest: `${dir}/d`, size: "99999999999999999" }, "size", "99999999999999999"],
      [{ src, dest: `${dir}/d`, prezeroed: "maybe" }, "prezeroed", "maybe"],
      [{ src: `${dir}/missing.raw`, dest: `${dir}/d` }, "src", `${dir}/missing.raw`],
      [{ src: dir, dest: `${dir}/d` }, "src", dir],
      [{ src: "/dev/null", dest: `${dir}/d` }, "src", "/dev/null"],
      [{ src, dest: `${dir}/no/such/dir/d` }, "dest", `${dir}/no/such/dir/d`],
      [{ src, dest: dir }, "dest", dir],
      [{ src, dest: src }, "dest", src],
      [{ src, dest: `${dir}/d`, base: "base.raw" }, "base", "base.raw"],
      [{ src, dest: `${dir}/d`, task_ref: "task; rm -rf /" }, "task_ref", "task; rm -rf /"],
      [{ src, dest: `${dir}/d`, prezerod: "true" }, "prezerod", "true"],
    ];
    for (const [args, name, value] of cases) {
      const e = expectFailure(await plugin(xapiForm("copy", args)), "SPARSE_DD_INVALID_ARGUMENT");
      deepStrictEqual(e.slice(1, 3), [name, value], JSON.stringify(args));
      strictEqual(e.length, 4, "a reason follows name and value");
    }
    deepStrictEqual(
      expectFailure(await plugin(xapiForm("status", { id: "../../etc" }))).slice(0, 3),
      ["SPARSE_DD_INVALID_ARGUMENT", "id", "../../etc"],
    );
    deepStrictEqual(
      expectFailure(await plugin(xapiForm("version", { verbose: "1" }))).slice(0, 2),
      ["SPARSE_DD_INVALID_ARGUMENT", "verbose"],
    );
    assert(!(await Deno.stat(`${dir}/d`).catch(() => undefined)), "nothing was written");
  });
});

Deno.test("values starting with '-' never become flags", async () => {
  await withTempDir(async (dir) => {
    const src = `${dir}/src.raw`;
    await sparseFile(src, 1 << 20, 8);
    const flagLike: Record<string, string>[] = [
      { src: "-prezeroed", dest: `${dir}/d` },
      { src, dest: "-src" },
      { src, dest: `${dir}/d`, size: "-size" },
      { src, dest: `${dir}/d`, base: "--help" },
      { src, dest: `${dir}/d`, prezeroed: "-machine" },
    ];
    for (const args of flagLike) {
      const e = expectFailure(await plugin(await pythonForm("copy", args)));
      strictEqual(e[0], "SPARSE_DD_INVALID_ARGUMENT", JSON.stringify(e));
      assert(e[2].startsWith("-"));
    }
    const e = expectFailure(await plugin(xapiForm("discover", { device: "-h" })));
    deepStrictEqual(e.slice(0, 3), ["SPARSE_DD_INVALID_ARGUMENT", "device", "-h"]);
    deepStrictEqual([...Deno.readDirSync(dir)].map((d) => d.name), ["src.raw"]);
  });
});

Deno.test("a copy that fails: SPARSE_DD_COPY_FAILED [sparse_dd's message]", async () => {
  await withTempDir(async (dir) => {
    await sparseFile(`${dir}/src.raw`, 1 << 20, 9);
    // A destination device smaller than the source: sparse_dd refuses it (exit 4).
    await Deno.writeFile(`${dir}/small.img`, new Uint8Array(512 << 10));
    await withLoop(`${dir}/small.img`, async (small) => {
      const e = expectFailure(
        await plugin(xapiForm("copy", { src: `${dir}/src.raw`, dest: small })),
        "SPARSE_DD_COPY_FAILED",
      );
      strictEqual(e.length, 2);
      assert(/^sparse_dd: destination .* is smaller \(524288 bytes\)/.test(e[1]), e[1]);
    });
  });
});

const BILLION_LAUGHS = '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">' +
  Array.from(
    { length: 9 },
    (_, i) => `<!ENTITY lol${i + 1} "${`&lol${i || ""};`.repeat(10)}">`,
  ).join("") +
  "]><methodCall><methodName>version</methodName><params><param><value>&lol9;</value></param>" +
  "</params></methodCall>";

Deno.test("malformed and hostile XML: SPARSE_DD_BAD_REQUEST [reason]", async () => {
  const cases: [string | undefined, RegExp][] = [
    [undefined, /no methodCall/],
    ["", /no root/],
    ["not xml at all", /root element/],
    ["<methodCall><methodName>version</methodName>", /unterminated/],
    ["<methodCall><methodName>version</methodName><params></methodCall>", /closes/],
    [xapiForm("version", {}).replace("<struct/>", "<struct><member/></struct>"), /member/],
    [
      xapiForm("version", {}).replace(
        "<value>OpaqueRef:xapi</value>",
        "<value><int>1</int></value>",
      ),
      /session/,
    ],
    [
      xapiForm("copy", {}).replace(
        "<struct/>",
        "<struct><member><name>src</name><value><int>1</int></value></member></struct>",
      ),
      /src is not a string/,
    ],
    [BILLION_LAUGHS, /DOCTYPE\/DTD is not allowed/],
    [
      '<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/shadow">]>' +
      "<methodCall><methodName>version</methodName><params><param><value>&x;</value>" +
      "</param></params></methodCall>",
      /DOCTYPE/,
    ],
    [
      "<methodCall><methodName>version</methodName><params><param><value>&x;</value>" +
      "</param></params></methodCall>",
      /undefined entity &x;/,
    ],
  ];
  for (const [xml, reason] of cases) {
    const e = expectFailure(await plugin(xml), "SPARSE_DD_BAD_REQUEST");
    strictEqual(e.length, 2);
    assert(reason.test(e[1]), `${e[1]} for ${xml?.slice(0, 80)}`);
  }
});

function testConfig(stateDir: string): PluginConfig {
  return {
    stateDir,
    xapiSocket: "/nonexistent",
    self: [Deno.execPath(), "run", "-A", "--quiet", "--no-lock", MAIN],
    maxAgeMs: 3600_000,
    configFile: TEST_CONF,
    log: () => {},
  };
}

Deno.test("a 10 MiB payload: the kernel refuses it as argv, the plugin answers BAD_REQUEST", async () => {
  const huge = "<methodCall><methodName>copy</methodName><params><param><value>" +
    "x".repeat(10 << 20) + "</value></param></params></methodCall>";
  // exec(2) limits one argv string to 128 KiB (MAX_ARG_STRLEN), so xapi itself cannot pass this:
  // its own exec fails before any plugin runs.
  let execError: unknown;
  try {
    await new Deno.Command("/bin/true", { args: [huge] }).output();
  } catch (err) {
    execError = err;
  }
  assert(
    execError instanceof Error &&
      /argument list too long|E2BIG|os error 7/i.test(execError.message),
    String(execError),
  );
  // Handed to the plugin's request handler anyway, it is refused before parsing.
  await withTempDir(async (dir) => {
    const response = await handleRequest(huge, testConfig(dir));
    const a = await readAnswer(response, "");
    const e = expectFailure(a, "SPARSE_DD_BAD_REQUEST");
    assert(/larger than 1048576 bytes/.test(e[1]), e[1]);
  });
  // And the largest payload exec does accept goes through the real process and gets an answer.
  const big = xapiForm("copy", { src: "/" + "a".repeat(120 * 1024), dest: "/tmp/x" });
  const e = expectFailure(await plugin(big), "SPARSE_DD_INVALID_ARGUMENT", "src");
  assert(/PATH_MAX/.test(e[3]), e[3]);
});

// ---------------------------------------------------------------------------------------------
// start / status / cancel on a real 1 GiB copy.

const CGROUP_ROOT = "/sys/fs/cgroup/cpu";
const haveCpuCgroup = (() => {
  try {
    return Deno.statSync(`${CGROUP_ROOT}/cpu.cfs_quota_us`).isFile;
  } catch {
    return false;
  }
})();

/** A cgroup that allows `percent` of one CPU: a copy run inside is slow enough to watch. */
async function withSlowCgroup<T>(percent: number, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = `${CGROUP_ROOT}/sparse_dd_plugin_test_${Deno.pid}_${crypto.randomUUID().slice(0, 8)}`;
  await Deno.mkdir(dir);
  try {
    await Deno.writeTextFile(`${dir}/cpu.cfs_period_us`, "100000");
    await Deno.writeTextFile(`${dir}/cpu.cfs_quota_us`, String(percent * 1000));
    return await fn(dir);
  } finally {
    // Processes left inside (there should be none) go back to the root before removal.
    const left = (await Deno.readTextFile(`${dir}/cgroup.procs`).catch(() => "")).split("\n");
    for (const pid of left.filter((p) => p)) {
      await Deno.writeTextFile(`${CGROUP_ROOT}/cgroup.procs`, pid).catch(() => {});
    }
    await Deno.remove(dir).catch(() => {});
  }
}

async function status(id: string, env: Record<string, string>): Promise<OpState> {
  return JSON.parse(expectSuccess(await plugin(xapiForm("status", { id }), { env })));
}

async function alive(pid: number | null): Promise<boolean> {
  if (!pid) return false;
  const cmdline = await Deno.readTextFile(`/proc/${pid}/cmdline`).catch(() => "");
  return cmdline !== "";
}

Deno.test({
  name: "start/status/cancel on a real 1 GiB copy: progress rises, cancel stops it",
  // Without a cpu cgroup the copy may finish before it can be watched or cancelled.
  ignore: !haveCpuCgroup,
  fn: async () => {
    await withTempDir(async (dir) => {
      const env = { SPARSE_DD_PLUGIN_STATE_DIR: `${dir}/state` };
      const size = 1 << 30;
      await denseFile(`${dir}/src.raw`, size);
      await withSlowCgroup(15, async (cgroup) => {
        // 1. Runs to the end while status is polled: the percent rises to 100.
        const id = expectSuccess(
          await plugin(xapiForm("start", { src: `${dir}/src.raw`, dest: `${dir}/a.raw` }), {
            env,
            cgroup,
          }),
        );
        assert(/^[0-9a-f-]{36}$/.test(id), id);
        const seen: number[] = [];
        let op: OpState;
        for (;;) {
          op = await status(id, env);
          seen.push(op.percent);
          if (op.state !== "running" && op.state !== "starting") break;
        }
        strictEqual(op.state, "success", JSON.stringify(op));
        strictEqual(op.percent, 100);
        strictEqual((op.stats as { size: number }).size, size);
        for (let i = 1; i < seen.length; i++) assert(seen[i] >= seen[i - 1], `${seen}`);
        const between = new Set(seen.filter((p) => p > 0 && p < 100));
        assert(between.size >= 2, `progress observed while running: ${seen}`);
        assert(await sameBytes(`${dir}/src.raw`, `${dir}/a.raw`));
        await Deno.remove(`${dir}/a.raw`);

        // 2. Cancelled once it is under way: it stops, and status says so from then on.
        const id2 = expectSuccess(
          await plugin(
            await pythonForm("start", { src: `${dir}/src.raw`, dest: `${dir}/b.raw` }),
            { env, cgroup },
          ),
        );
        let running: OpState;
        do running = await status(id2, env); while (
          running.state === "starting" || running.percent < 5
        );
        strictEqual(running.state, "running", JSON.stringify(running));
        assert(await alive(running.childPid), "sparse_dd runs while the copy is running");
        const cancelled = JSON.parse(
          expectSuccess(await plugin(xapiForm("cancel", { id: id2 }), { env })),
        );
        strictEqual(cancelled.state, "cancelled", JSON.stringify(cancelled));
        assert(cancelled.percent < 100, `${cancelled.percent}`);
        assert(!(await alive(cancelled.childPid)), "sparse_dd is gone");
        assert(!(await alive(cancelled.pid)), "the worker is gone");
        const later = await status(id2, env);
        strictEqual(later.state, "cancelled");
        strictEqual(later.percent, cancelled.percent);
        assert(!(await sameBytes(`${dir}/src.raw`, `${dir}/b.raw`)), "the copy did not finish");
        // Cancelling again is harmless and changes nothing.
        strictEqual(
          JSON.parse(expectSuccess(await plugin(xapiForm("cancel", { id: id2 }), { env }))).state,
          "cancelled",
        );
      });
      deepStrictEqual(
        expectFailure(
          await plugin(xapiForm("status", { id: "00000000-0000-4000-8000-000000000000" }), {
            env,
          }),
        ),
        ["SPARSE_DD_UNKNOWN_OPERATION", "00000000-0000-4000-8000-000000000000"],
      );
    });
  },
});

Deno.test("a detached copy that fails reports failed with sparse_dd's message", async () => {
  await withTempDir(async (dir) => {
    const env = { SPARSE_DD_PLUGIN_STATE_DIR: `${dir}/state` };
    await sparseFile(`${dir}/src.raw`, 1 << 20, 10);
    await Deno.writeFile(`${dir}/small.img`, new Uint8Array(512 << 10));
    await withLoop(`${dir}/small.img`, async (small) => {
      const id = expectSuccess(
        await plugin(xapiForm("start", { src: `${dir}/src.raw`, dest: small }), { env }),
      );
      let op: OpState;
      do op = await status(id, env); while (op.state === "running" || op.state === "starting");
      strictEqual(op.state, "failed");
      assert(/destination .* is smaller \(524288 bytes\)/.test(op.error ?? ""), op.error ?? "");
    });
    const mode = (await Deno.stat(`${dir}/state`)).mode! & 0o777;
    strictEqual(mode, 0o700, "the state directory is private");
  });
});

Deno.test("the state directory is cleaned up: old finished operations, dead workers", async () => {
  await withTempDir(async (dir) => {
    const store = new OpStore(`${dir}/state`);
    const req = { src: "/a", dest: "/b", prezeroed: false };
    await Deno.mkdir(`${dir}/state`, { mode: 0o700 });
    const old = await store.create(req);
    const fresh = await store.create(req);
    const orphan = await store.create(req);
    const now = Date.now();
    for (const [id, hoursAgo] of [[old, 30], [fresh, 1]] as const) {
      const op = (await store.read(id))!;
      op.state = "success";
      op.finished = new Date(now - hoursAgo * 3600_000).toISOString();
      await store.write(op);
    }
    // A "running" operation whose worker pid is not a live worker of this operation.
    const op = (await store.read(orphan))!;
    op.state = "running";
    op.pid = Deno.pid; // alive, but its command line does not name the operation
    await store.write(op);
    await Deno.mkdir(`${dir}/state/not-an-op`);
    const removed = await store.cleanup(24 * 3600_000, now);
    deepStrictEqual(removed, [old]);
    strictEqual((await store.read(fresh))?.state, "success");
    const reaped = (await store.read(orphan))!;
    strictEqual(reaped.state, "failed");
    assert(/worker process exited/.test(reaped.error ?? ""));
    assert((await Deno.stat(`${dir}/state/not-an-op`)).isDirectory, "foreign entries stay");
    // Once old enough, the reaped one goes as well.
    deepStrictEqual(
      (await store.cleanup(24 * 3600_000, now + 48 * 3600_000)).sort(),
      [fresh, orphan].sort(),
    );
  });
});

Deno.test("a result the worker wrote just before exiting is never replaced by 'worker exited'", async () => {
  await withTempDir(async (dir) => {
    const store = new OpStore(`${dir}/state`);
    await Deno.mkdir(`${dir}/state`, { mode: 0o700 });
    const id = await store.create({ src: "/a", dest: "/b", prezeroed: false });
    // What a status call read while the copy ran...
    const seen = (await store.read(id))!;
    seen.state = "running";
    seen.pid = Deno.pid; // alive, but not a worker of this operation: as good as gone
    await store.write(seen);
    // ...then the worker recorded its outcome and exited.
    const done = (await store.read(id))!;
    done.state = "success";
    done.finished = new Date().toISOString();
    await store.write(done);
    strictEqual((await store.reap(seen)).state, "success");
    strictEqual((await store.read(id))?.state, "success");
  });
});

// ---------------------------------------------------------------------------------------------
// task_ref: progress through the XenAPI, against a Python xmlrpc.server on a unix socket.

const FAKE_XAPI = `
import sys, json, socket, socketserver, xmlrpc.server
path = sys.argv[1]
valid = {"OpaqueRef:caller-session"}

class Handler(xmlrpc.server.SimpleXMLRPCRequestHandler):
    disable_nagle_algorithm = False

class Server(socketserver.UnixStreamServer, xmlrpc.server.SimpleXMLRPCDispatcher):
    def __init__(self, path):
        self.logRequests = False
        xmlrpc.server.SimpleXMLRPCDispatcher.__init__(self, allow_none=True)
        socketserver.UnixStreamServer.__init__(self, path, Handler)

def record(method, *params):
    print(json.dumps([method] + list(params)), flush=True)

def set_progress(session, task, value):
    record("task.set_progress", session, task, value)
    if not isinstance(value, float):
        return {"Status": "Failure", "ErrorDescription": ["FIELD_TYPE_ERROR", "value"]}
    if session not in valid:
        return {"Status": "Failure", "ErrorDescription": ["SESSION_INVALID", session]}
    return {"Status": "Success", "Value": ""}

def login(user, password, version, originator):
    record("session.login_with_password", user, password, version, originator)
    valid.add("OpaqueRef:local-session")
    return {"Status": "Success", "Value": "OpaqueRef:local-session"}

def logout(session):
    record("session.logout", session)
    valid.discard(session)
    return {"Status": "Success", "Value": ""}

s = Server(path)
s.register_function(set_progress, "task.set_progress")
s.register_function(login, "session.login_with_password")
s.register_function(logout, "session.logout")
print("ready", flush=True)
s.serve_forever()
`;

async function withFakeXapi(
  socket: string,
  fn: (calls: () => Promise<unknown[][]>) => Promise<void>,
): Promise<void> {
  const child = new Deno.Command(PYTHON, {
    args: ["-c", FAKE_XAPI, socket],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const lines: string[] = [];
  let buffered = "";
  let ready: () => void;
  const isReady = new Promise<void>((r) => (ready = r));
  let stderr = "";
  const draining = (async () => {
    const dec = new TextDecoder();
    for await (const chunk of child.stderr) stderr += dec.decode(chunk, { stream: true });
  })();
  const reading = (async () => {
    const dec = new TextDecoder();
    for await (const chunk of child.stdout) {
      buffered += dec.decode(chunk, { stream: true });
      let nl;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        if (line === "ready") ready!();
        else lines.push(line);
      }
    }
  })();
  try {
    await Promise.race([
      isReady,
      new Promise((_, reject) =>
        setTimeout(() => reject(new Error("fake xapi did not start")), 20_000)
      ),
    ]);
    await fn(() => Promise.resolve(lines.map((l) => JSON.parse(l))));
  } finally {
    child.kill("SIGTERM");
    await child.status;
    await Promise.all([reading, draining]).catch(() => {});
  }
  // The stand-in must not have failed on anything it was sent.
  assert(!/Traceback|Error/.test(stderr), `fake xapi: ${stderr}`);
}

function progressValues(calls: unknown[][], session: string, task: string): number[] {
  return calls
    .filter((c) => c[0] === "task.set_progress" && c[1] === session && c[2] === task)
    .map((c) => c[3] as number);
}

Deno.test("copy with task_ref reports rising task.set_progress through the XenAPI socket", async () => {
  await withTempDir(async (dir) => {
    const socket = `${dir}/xapi`;
    await denseFile(`${dir}/src.raw`, 256 << 20);
    await withFakeXapi(socket, async (calls) => {
      const task = "OpaqueRef:5d0b1a38-7d7c-4a43-9d41-1b2c3d4e5f60";
      expectSuccess(
        await plugin(
          xapiForm(
            "copy",
            { src: `${dir}/src.raw`, dest: `${dir}/dst.raw`, task_ref: task },
            "OpaqueRef:caller-session",
          ),
          { env: { SPARSE_DD_XAPI_SOCKET: socket } },
        ),
      );
      const all = await calls();
      const values = progressValues(all, "OpaqueRef:caller-session", task);
      assert(values.some((v) => v > 0 && v < 1), `progress while copying: ${values}`);
      strictEqual(values[0], 0);
      strictEqual(values.at(-1), 1);
      for (let i = 1; i < values.length; i++) assert(values[i] > values[i - 1], `${values}`);
      assert(!all.some((c) => c[0] === "session.login_with_password"), "the caller's session did");
    });
    assert(await sameBytes(`${dir}/src.raw`, `${dir}/dst.raw`));
  });
});

Deno.test("start with task_ref and an expired session logs in locally and keeps reporting", async () => {
  await withTempDir(async (dir) => {
    const socket = `${dir}/xapi`;
    const env = { SPARSE_DD_XAPI_SOCKET: socket, SPARSE_DD_PLUGIN_STATE_DIR: `${dir}/state` };
    await denseFile(`${dir}/src.raw`, 128 << 20);
    await withFakeXapi(socket, async (calls) => {
      const task = "OpaqueRef:0a1b2c3d-0000-4000-8000-00000000beef";
      const id = expectSuccess(
        await plugin(
          await pythonForm(
            "start",
            { src: `${dir}/src.raw`, dest: `${dir}/dst.raw`, task_ref: task },
            "OpaqueRef:gone",
          ),
          { env },
        ),
      );
      let op: OpState;
      do op = await status(id, env); while (op.state === "running" || op.state === "starting");
      strictEqual(op.state, "success");
      const all = await calls();
      deepStrictEqual(all.find((c) => c[0] === "session.login_with_password"), [
        "session.login_with_password",
        "root",
        "",
        "1.0",
        "sparse_dd",
      ]);
      const values = progressValues(all, "OpaqueRef:local-session", task);
      assert(values.length >= 1, JSON.stringify(all));
      strictEqual(values.at(-1), 1);
      for (let i = 1; i < values.length; i++) assert(values[i] > values[i - 1], `${values}`);
      deepStrictEqual(all.at(-1), ["session.logout", "OpaqueRef:local-session"]);
      assert(!(await Deno.stat(`${dir}/state/${id}/session`).catch(() => undefined)));
    });
  });
});

Deno.test("an unreachable XenAPI socket does not fail the copy", async () => {
  await withTempDir(async (dir) => {
    await sparseFile(`${dir}/src.raw`, 4 << 20, 11);
    const a = await plugin(
      xapiForm("copy", {
        src: `${dir}/src.raw`,
        dest: `${dir}/dst.raw`,
        task_ref: "OpaqueRef:0a1b2c3d-0000-4000-8000-000000000001",
      }),
      { env: { SPARSE_DD_XAPI_SOCKET: `${dir}/nothing-here` } },
    );
    expectSuccess(a);
    assert(/task.set_progress .* failed/.test(a.stderr), a.stderr);
    assert(await sameBytes(`${dir}/src.raw`, `${dir}/dst.raw`));
  });
});
