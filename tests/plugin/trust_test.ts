/** Which paths root may trust (plugin/trust.ts), on real directories. */

import { ok as assert, rejects, strictEqual } from "node:assert/strict";
import { isWithin, privateDirectory, readNoFollow, untrustedReason } from "../../plugin/trust.ts";
import { withTempDir } from "../_support/helpers.ts";

Deno.test("isWithin compares whole path components", () => {
  assert(isWithin("/run/sr-mount/a/b.vhd", "/run/sr-mount"));
  assert(isWithin("/run/sr-mount", "/run/sr-mount"));
  assert(!isWithin("/run/sr-mountx/b.vhd", "/run/sr-mount"));
  assert(!isWithin("/run/sr", "/run/sr-mount"));
  assert(isWithin("/anything", "/"));
});

Deno.test("untrustedReason: root's directories pass; others' or writable ones do not, sticky ones do for root's entries", async () => {
  await withTempDir(async (dir) => {
    strictEqual(await untrustedReason("/"), undefined);
    strictEqual(await untrustedReason(dir), undefined);
    await Deno.mkdir(`${dir}/open/sub`, { recursive: true });
    await Deno.chmod(`${dir}/open`, 0o777);
    assert(/open is writable by other users \(mode 0777\)/.test(
      (await untrustedReason(`${dir}/open/sub`)) ?? "",
    ));
    await Deno.chmod(`${dir}/open`, 0o1777);
    strictEqual(await untrustedReason(`${dir}/open/sub`), undefined);
    await Deno.writeTextFile(`${dir}/open/theirs`, "");
    await Deno.chown(`${dir}/open/theirs`, 65534, 65534);
    assert(/owned by uid 65534 in a directory others can write/.test(
      (await untrustedReason(`${dir}/open/theirs`)) ?? "",
    ));
    await Deno.chown(`${dir}/open/sub`, 65534, 65534);
    assert(/owned by uid 65534/.test((await untrustedReason(`${dir}/open/sub`)) ?? ""));
    await Deno.symlink(dir, `${dir}/link`);
    assert(/is a symlink/.test((await untrustedReason(`${dir}/link/x`)) ?? ""));
  });
});

Deno.test("privateDirectory creates 0700 even under a permissive umask, and reports a missing one", async () => {
  await withTempDir(async (dir) => {
    const old = Deno.umask(0);
    try {
      strictEqual(await privateDirectory(`${dir}/a/b/state`, false), false);
      strictEqual(await privateDirectory(`${dir}/a/b/state`, true), true);
    } finally {
      Deno.umask(old);
    }
    strictEqual((await Deno.lstat(`${dir}/a/b/state`)).mode! & 0o7777, 0o700);
    strictEqual((await Deno.lstat(`${dir}/a/b`)).mode! & 0o7777, 0o755);
  });
});

Deno.test("readNoFollow refuses a symlink, even to a readable file", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/real`, "data");
    strictEqual(await readNoFollow(`${dir}/real`), "data");
    await Deno.symlink(`${dir}/real`, `${dir}/link`);
    await rejects(readNoFollow(`${dir}/link`), /not a regular file/);
  });
});
