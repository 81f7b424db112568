/**
 * The plugin's `copy`/`start` with the remote destinations xapi uses (docs/remote.md): run as
 * xapi runs a plugin (the methodCall as argv[1]), answers read by Python's xmlrpc.client. The
 * session id and credentials in the URL never come back in an answer or in `status`.
 */

import assert from "node:assert/strict";
import { withTempDir } from "../_support/helpers.ts";
import { XapiSide } from "../_support/xapi_http.ts";
import { plugin as runPlugin, xapiForm } from "./harness.ts";

const SECRET = "OpaqueRef:plugin-5e55-10n";
const PASSWORD = "pl-pw-42";

function url(port: number, path = "/import_raw_vdi"): string {
  return `http://root:${PASSWORD}@127.0.0.1:${port}${path}?vdi=OpaqueRef:v&session_id=${SECRET}`;
}

/** Runs the plugin as xapi does (tests/plugin/harness.ts); no answer may hold a secret. */
async function plugin(
  fn: string,
  args: Record<string, string>,
  env: Record<string, string>,
): Promise<{ ok: boolean; value: string; error: string[] }> {
  const a = await runPlugin(xapiForm(fn, args), { env });
  const text = JSON.stringify(a);
  assert.ok(!text.includes(SECRET) && !text.includes(PASSWORD), `secret echoed: ${text}`);
  return { ok: a.status === "Success", value: a.value ?? "", error: a.error ?? [] };
}

async function source(path: string, size: number): Promise<Uint8Array> {
  const data = new Uint8Array(size);
  for (let i = 0; i < size; i += 8192) data[i] = 1 + (i / 8192) % 200;
  await Deno.writeFile(path, data);
  return data;
}

Deno.test("plugin copy to xapi's chunked import: Success, the stats show the URL redacted", async () => {
  await withTempDir(async (dir) => {
    const want = await source(`${dir}/src.raw`, 4 << 20);
    const dest = `${dir}/dest.raw`;
    await Deno.writeFile(dest, new Uint8Array(4 << 20).fill(9));
    const srv = XapiSide.start({ kind: "chunked", file: dest });
    try {
      const r = await plugin("copy", { src: `${dir}/src.raw`, dest: url(srv.port) }, {
        SPARSE_DD_PLUGIN_STATE_DIR: `${dir}/state`,
      });
      assert.ok(r.ok, JSON.stringify(r.error));
      assert.match(JSON.parse(r.value).dest, /session_id=<redacted>/);
      await srv.done();
      assert.deepEqual(await Deno.readFile(dest), want);
    } finally {
      await srv.stop();
    }
  });
});

Deno.test("plugin start through the NBD upgrade (dest_proto, nbd_export): status never shows the secrets", async () => {
  await withTempDir(async (dir) => {
    const env = { SPARSE_DD_PLUGIN_STATE_DIR: `${dir}/state` };
    const want = await source(`${dir}/src.raw`, 4 << 20);
    const dest = `${dir}/dest.raw`;
    await Deno.writeFile(dest, new Uint8Array(4 << 20).fill(9));
    const srv = XapiSide.start({ kind: "nbd-oldstyle", file: dest });
    try {
      const started = await plugin("start", {
        src: `${dir}/src.raw`,
        dest: url(srv.port, "/services/SM/nbdproxy/import/a"),
        dest_proto: "nbd",
        nbd_export: "vdi-1",
      }, env);
      assert.ok(started.ok, JSON.stringify(started.error));
      let state: { state: string; dest: string };
      for (let i = 0;; i++) {
        const s = await plugin("status", { id: started.value }, env);
        assert.ok(s.ok);
        state = JSON.parse(s.value);
        if (state.state !== "starting" && state.state !== "running") break;
        assert.ok(i < 200, "the copy never finished");
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(state.state, "success", JSON.stringify(state));
      assert.match(
        state.dest,
        /^http:\/\/<redacted>@127\.0\.0\.1:\d+\/services.*session_id=<redacted>$/,
      );
      assert.deepEqual(await Deno.readFile(dest), want);
      const log = await Deno.readTextFile(`${dir}/state/${started.value}/worker.log`);
      assert.match(log, /running .*session_id=<redacted>/);
      assert.ok(!log.includes(SECRET) && !log.includes(PASSWORD), log);
    } finally {
      await srv.stop();
    }
  });
});

Deno.test("plugin: a bad URL, protocol arguments for a file, and a refused import fail with the URL redacted", async () => {
  await withTempDir(async (dir) => {
    const env = { SPARSE_DD_PLUGIN_STATE_DIR: `${dir}/state` };
    await source(`${dir}/src.raw`, 1 << 20);
    const bad = await plugin("copy", { src: `${dir}/src.raw`, dest: `${url(1)} x` }, env);
    assert.deepEqual(bad.error.slice(0, 1), ["SPARSE_DD_INVALID_ARGUMENT"]);
    assert.equal(bad.error[1], "dest");
    assert.match(bad.error[2], /session_id=<redacted>/);
    const proto = await plugin("copy", {
      src: `${dir}/src.raw`,
      dest: `${dir}/d.raw`,
      dest_proto: "nbd",
    }, env);
    assert.deepEqual(proto.error.slice(0, 2), ["SPARSE_DD_INVALID_ARGUMENT", "dest_proto"]);
    const srv = XapiSide.start({ kind: "status", line: "401 Unauthorized" });
    try {
      const r = await plugin("copy", { src: `${dir}/src.raw`, dest: url(srv.port) }, env);
      assert.equal(r.error[0], "SPARSE_DD_COPY_FAILED");
      assert.match(r.error[1], /session_id=<redacted>.*answered 401 Unauthorized/);
    } finally {
      await srv.stop();
    }
  });
});
