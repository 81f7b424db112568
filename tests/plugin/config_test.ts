/**
 * The plugin's settings: `plugin-dest-dirs` in /etc/sparse_dd.conf and its `.d` fragments (the
 * file the command line reads too, which must not complain about the plugin's key).
 */

import { deepStrictEqual, ok as assert, strictEqual, throws } from "node:assert/strict";
import { DEFAULT_DEST_DIRS, loadFileDirs, parseDirList } from "../../plugin/config.ts";
import { PluginFailure } from "../../plugin/protocol.ts";
import { runMain, withTempDir } from "../_support/helpers.ts";
import { expectFailure, plugin, xapiForm } from "./harness.ts";

Deno.test("plugin-dest-dirs: absolute directories separated by commas or colons", () => {
  deepStrictEqual(parseDirList("/var/run/sr-mount, /srv/a:/srv/b ,"), [
    "/var/run/sr-mount",
    "/srv/a",
    "/srv/b",
  ]);
  deepStrictEqual(parseDirList(""), []);
  throws(() => parseDirList("/srv/a,relative/dir"), /'relative\/dir' is not an absolute/);
});

Deno.test("plugin-dest-dirs: the SR mounts by default; the file, then its .d fragments in order", async () => {
  await withTempDir(async (dir) => {
    const conf = `${dir}/sparse_dd.conf`;
    deepStrictEqual(await loadFileDirs(conf), [...DEFAULT_DEST_DIRS]);
    deepStrictEqual([...DEFAULT_DEST_DIRS], ["/var/run/sr-mount", "/run/sr-mount"]);
    await Deno.writeTextFile(conf, "# the admin's\nplugin-dest-dirs = /srv/images\n");
    deepStrictEqual(await loadFileDirs(conf), ["/srv/images"]);
    await Deno.mkdir(`${conf}.d`);
    await Deno.writeTextFile(`${conf}.d/50-nfs`, 'plugin-dest-dirs = "/mnt/a:/mnt/b"\n');
    deepStrictEqual(await loadFileDirs(conf), ["/mnt/a", "/mnt/b"]);
    await Deno.writeTextFile(`${conf}.d/60-bad`, "plugin-dest-dirs = mnt\n");
    await loadFileDirs(conf).then(
      () => assert(false, "a relative directory is refused"),
      (err) => {
        assert(err instanceof PluginFailure, String(err));
        strictEqual(err.code, "SPARSE_DD_BAD_CONFIG");
        assert(/60-bad:1: plugin-dest-dirs: 'mnt'/.test(err.params[0]), err.params[0]);
      },
    );
  });
});

Deno.test("a broken configuration refuses copies with SPARSE_DD_BAD_CONFIG, naming file and line", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/sparse_dd.conf`, "plugin-dest-dirs\n");
    await Deno.writeTextFile(`${dir}/src.raw`, "x");
    const e = expectFailure(
      await plugin(xapiForm("copy", { src: `${dir}/src.raw`, dest: `${dir}/d.raw` }), {
        env: { SPARSE_DD_PLUGIN_CONFIG: `${dir}/sparse_dd.conf` },
      }),
      "SPARSE_DD_BAD_CONFIG",
    );
    assert(e[1].includes(`${dir}/sparse_dd.conf:1`), e[1]);
    assert(!(await Deno.lstat(`${dir}/d.raw`).catch(() => undefined)), "nothing was created");
  });
});

Deno.test("the command line reads plugin-dest-dirs in the same file without a note", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/c.conf`, "plugin-dest-dirs = /srv\nfrobnicate = 1\n");
    await Deno.writeFile(`${dir}/a.raw`, new Uint8Array(4096).fill(1));
    const r = await runMain([
      "-src",
      `${dir}/a.raw`,
      "-dest",
      `${dir}/b.raw`,
      "-config",
      `${dir}/c.conf`,
    ]);
    strictEqual(r.code, 0, r.stderr);
    assert(!r.stderr.includes("plugin-dest-dirs"), r.stderr);
    assert(r.stderr.includes("frobnicate"), "other unknown keys are still noted");
  });
});
