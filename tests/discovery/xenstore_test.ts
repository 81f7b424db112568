import { rejects, strictEqual } from "node:assert";
import { XenstoreError, xenstoreRead } from "../../src/discovery/xenstore.ts";
import { withTempDir } from "../_support/helpers.ts";
import { startXenstored } from "../_support/xenstored.ts";

Deno.test("xenstoreRead reads absolute and domain-relative keys from a real xenstored", async () => {
  const xs = await startXenstored();
  try {
    await xs.write({
      "/local/domain/0/domid": "0",
      "/local/domain/0/device/vbd/51712/backend": "/local/domain/0/backend/vbd/0/51712",
      "/local/domain/0/backend/vbd/0/51712/params": "/dev/sm/backend/SR uuid/VDI: one=two",
    });
    const opts = { env: xs.env };
    strictEqual(await xenstoreRead("domid", opts), "0");
    strictEqual(
      await xenstoreRead("device/vbd/51712/backend", opts),
      "/local/domain/0/backend/vbd/0/51712",
    );
    strictEqual(
      await xenstoreRead("/local/domain/0/backend/vbd/0/51712/params", opts),
      "/dev/sm/backend/SR uuid/VDI: one=two",
    );
  } finally {
    await xs.stop();
  }
});

Deno.test("xenstoreRead finds the daemon through XENSTORED_PATH in our own environment", async () => {
  const xs = await startXenstored();
  const saved = Deno.env.get("XENSTORED_PATH");
  try {
    await xs.write({ "/local/domain/0/domid": "0" });
    Deno.env.set("XENSTORED_PATH", xs.env.XENSTORED_PATH);
    strictEqual(await xenstoreRead("domid"), "0");
  } finally {
    if (saved === undefined) Deno.env.delete("XENSTORED_PATH");
    else Deno.env.set("XENSTORED_PATH", saved);
    await xs.stop();
  }
});

Deno.test("xenstoreRead says which key is missing", async () => {
  const xs = await startXenstored();
  try {
    await rejects(
      xenstoreRead("device/vbd/768/backend", { env: xs.env }),
      (e: Error) =>
        e instanceof XenstoreError && e.kind === "missing" && e.key === "device/vbd/768/backend" &&
        e.message === "xenstore key device/vbd/768/backend does not exist",
    );
  } finally {
    await xs.stop();
  }
});

Deno.test("xenstoreRead fails clearly when no daemon is listening", async () => {
  await withTempDir(async (dir) => {
    const env = { PATH: Deno.env.get("PATH")!, XENSTORED_PATH: `${dir}/socket` };
    await rejects(
      xenstoreRead("domid", { env }),
      (e: Error) =>
        e instanceof XenstoreError && e.kind === "failed" &&
        /^xenstore key domid: xenstore-read: xs_open: /.test(e.message),
    );
  });
});

Deno.test("xenstoreRead fails clearly after the daemon stopped (stale socket)", async () => {
  const xs = await startXenstored();
  const env = xs.env;
  await xs.write({ "/local/domain/0/domid": "0" });
  // stop() removes the directory; keep a socket file that nobody listens on instead.
  await withTempDir(async (dir) => {
    const stale = `${dir}/socket`;
    const listener = Deno.listen({ transport: "unix", path: stale });
    listener.close();
    await xs.stop();
    await rejects(
      xenstoreRead("domid", { env: { ...env, XENSTORED_PATH: stale } }),
      (e: Error) => e instanceof XenstoreError && e.kind === "failed" && /xs_open/.test(e.message),
    );
  });
});

Deno.test("xenstoreRead kills a client that hangs", async () => {
  await withTempDir(async (dir) => {
    const cmd = `${dir}/xenstore-read`;
    await Deno.writeTextFile(cmd, "#!/bin/sh\nexec sleep 60\n");
    await Deno.chmod(cmd, 0o755);
    await rejects(
      xenstoreRead("domid", { command: cmd, timeoutMs: 200 }),
      (e: Error) =>
        e instanceof XenstoreError && e.kind === "failed" &&
        e.message === `xenstore key domid: ${cmd} -R domid: no answer within 200 ms (killed)`,
    );
  });
});
