/**
 * The plugin cannot be used to read or overwrite arbitrary files, by a pool user who may only
 * call it (any `src`/`dest`/`base`) or by a local unprivileged user (racing in the state
 * directory). Every test runs the plugin as xapi does (harness.ts) against a scratch "SR"
 * directory named by `plugin-dest-dirs`, and a secret file outside it that must stay unread and
 * unwritten.
 */

import { deepStrictEqual, ok as assert, strictEqual } from "node:assert/strict";
import { MAIN, sh, withLoop, withTempDir, xapiCommand } from "../_support/helpers.ts";
import { expectFailure, expectSuccess, plugin, PYTHON, sparseFile, xapiForm } from "./harness.ts";

const SECRET = "root:$6$not-for-you:19000:0:99999:7:::\n";
const NOBODY = 65534;

/** A scratch host: `sr` allowed by the configuration, `outside/shadow` a root-only secret. */
interface Host {
  root: string;
  sr: string;
  outside: string;
  shadow: string;
  env: Record<string, string>;
}

async function withHost<T>(fn: (h: Host) => Promise<T>): Promise<T> {
  return await withTempDir(async (root) => {
    const h: Host = {
      root,
      sr: `${root}/sr`,
      outside: `${root}/outside`,
      shadow: `${root}/outside/shadow`,
      env: {
        SPARSE_DD_PLUGIN_CONFIG: `${root}/sparse_dd.conf`,
        SPARSE_DD_PLUGIN_STATE_DIR: `${root}/state`,
      },
    };
    await Deno.mkdir(h.sr);
    await Deno.mkdir(h.outside);
    await Deno.writeTextFile(h.shadow, SECRET, { mode: 0o600 });
    await Deno.writeTextFile(`${root}/sparse_dd.conf`, `plugin-dest-dirs = ${h.sr}\n`);
    return await fn(h);
  });
}

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

async function secretIntact(h: Host): Promise<void> {
  strictEqual(await Deno.readTextFile(h.shadow), SECRET, "the secret is unchanged");
}

Deno.test("dest outside plugin-dest-dirs is refused in every disguise, and nothing is written", async () => {
  await withHost(async (h) => {
    const src = `${h.sr}/src.raw`;
    await sparseFile(src, 1 << 20, 1);
    await Deno.symlink(h.shadow, `${h.sr}/link-to-shadow`);
    await Deno.symlink(h.outside, `${h.sr}/link-to-outside`);
    await Deno.link(h.shadow, `${h.sr}/hardlink-to-shadow`);
    const cases = [
      h.shadow, // the plain thing
      `${h.outside}/new.raw`, // a new file where files may not go
      `${h.sr}/../outside/shadow`, // `..` out of the allowed directory
      `${h.sr}/link-to-shadow`, // a symlink in the allowed directory to a file elsewhere
      `${h.sr}/link-to-outside/shadow`, // a symlinked directory
      `${h.sr}/link-to-outside/new.raw`, // a new file through a symlinked directory
      `${h.sr}/hardlink-to-shadow`, // a hard link of a file elsewhere
      `${h.sr}/`, // the directory itself
    ];
    for (const dest of cases) {
      for (const fn of ["copy", "start"]) {
        const e = expectFailure(
          await plugin(xapiForm(fn, { src, dest }), { env: h.env }),
          "SPARSE_DD_INVALID_ARGUMENT",
          "dest",
          dest,
        );
        strictEqual(e.length, 4, JSON.stringify(e));
      }
    }
    await secretIntact(h);
    assert(!(await exists(`${h.outside}/new.raw`)), "no file created outside");
    deepStrictEqual((await Deno.stat(h.shadow)).mode! & 0o777, 0o600);
  });
});

Deno.test("a path another user could swap between the check and the copy is refused", async () => {
  await withHost(async (h) => {
    const src = `${h.sr}/src.raw`;
    await sparseFile(src, 1 << 20, 8);
    // A directory in the SR others may write (no sticky bit): anyone could rename entries there.
    await Deno.mkdir(`${h.sr}/open`);
    await Deno.chmod(`${h.sr}/open`, 0o777);
    await Deno.writeTextFile(`${h.sr}/open/existing.raw`, "");
    // A sticky one: entries root owns are safe there, someone else's are not.
    await Deno.mkdir(`${h.sr}/sticky`);
    await Deno.chmod(`${h.sr}/sticky`, 0o1777);
    await Deno.writeTextFile(`${h.sr}/sticky/theirs.raw`, "");
    await Deno.chown(`${h.sr}/sticky/theirs.raw`, NOBODY, NOBODY);
    await Deno.copyFile(src, `${h.sr}/open/src.raw`);
    const cases: [string, Record<string, string>, RegExp][] = [
      ["dest", { src, dest: `${h.sr}/open/new.raw` }, /open is writable by other users/],
      ["dest", { src, dest: `${h.sr}/open/existing.raw` }, /open is writable by other users/],
      ["dest", { src, dest: `${h.sr}/sticky/theirs.raw` }, /owned by uid 65534/],
      ["src", { src: `${h.sr}/open/src.raw`, dest: `${h.sr}/d.raw` }, /writable by other/],
    ];
    for (const [name, args, reason] of cases) {
      const e = expectFailure(
        await plugin(xapiForm("copy", args), { env: h.env }),
        "SPARSE_DD_INVALID_ARGUMENT",
        name,
        args[name],
      );
      assert(reason.test(e[3]), e[3]);
    }
    assert(!(await exists(`${h.sr}/open/new.raw`)));
    assert(!(await exists(`${h.sr}/d.raw`)));
    strictEqual((await Deno.stat(`${h.sr}/sticky/theirs.raw`)).size, 0);
    // Root's own file in the sticky directory is fine.
    expectSuccess(
      await plugin(xapiForm("copy", { src, dest: `${h.sr}/sticky/mine.raw` }), { env: h.env }),
    );
  });
});

Deno.test("a block device must be a real device node under /dev: one planted elsewhere is refused", async () => {
  await withHost(async (h) => {
    const src = `${h.sr}/src.raw`;
    await sparseFile(src, 1 << 20, 2);
    await Deno.writeFile(`${h.root}/disk.img`, new Uint8Array(4 << 20).fill(0xaa));
    await withLoop(`${h.root}/disk.img`, async (dev) => {
      const rdev = (await Deno.stat(dev)).rdev!;
      // The same device, as a node an NFS server (or anyone who can mknod) put in the SR.
      const planted = `${h.sr}/planted-dev`;
      const major = (rdev >> 8) & 0xfff;
      const minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
      await sh("mknod", [planted, "b", String(major), String(minor)]);
      for (
        const [name, args] of [
          ["dest", { src, dest: planted }],
          ["src", { src: planted, dest: `${h.sr}/out.raw` }],
        ] as const
      ) {
        const e = expectFailure(
          await plugin(xapiForm("copy", args), { env: h.env }),
          "SPARSE_DD_INVALID_ARGUMENT",
          name,
          planted,
        );
        assert(/under \/dev/.test(e[3]), e[3]);
      }
      assert(!(await exists(`${h.sr}/out.raw`)));
      const img = await Deno.readFile(`${h.root}/disk.img`);
      assert(img.every((b) => b === 0xaa), "the device was not written");
      // The real node, also through a symlink in the SR, is a fine destination.
      await Deno.symlink(dev, `${h.sr}/link-to-dev`);
      const stats = JSON.parse(
        expectSuccess(
          await plugin(xapiForm("copy", { src, dest: `${h.sr}/link-to-dev` }), { env: h.env }),
        ),
      );
      strictEqual(stats.dest, dev, "sparse_dd is given the resolved device");
    });
  });
});

Deno.test("src and base must be block devices or files in plugin-dest-dirs: no reading secrets into an SR", async () => {
  await withHost(async (h) => {
    const src = `${h.sr}/src.raw`;
    await sparseFile(src, 1 << 20, 3);
    await Deno.symlink(h.shadow, `${h.sr}/link-to-shadow`);
    await Deno.link(h.shadow, `${h.sr}/hardlink-to-shadow`);
    const dest = `${h.sr}/loot.raw`;
    const cases: [string, Record<string, string>][] = [
      ["src", { src: h.shadow, dest }],
      ["src", { src: `${h.sr}/../outside/shadow`, dest }],
      ["src", { src: `${h.sr}/link-to-shadow`, dest }],
      ["src", { src: `${h.sr}/hardlink-to-shadow`, dest }],
      ["base", { src, dest, base: h.shadow }],
      ["base", { src, dest, base: `${h.sr}/link-to-shadow` }],
    ];
    for (const [name, args] of cases) {
      expectFailure(
        await plugin(xapiForm("copy", args), { env: h.env }),
        "SPARSE_DD_INVALID_ARGUMENT",
        name,
        args[name],
      );
      assert(!(await exists(dest)), `${JSON.stringify(args)} created nothing`);
    }
  });
});

Deno.test("new destination files are created 0600, by copy and by start", async () => {
  await withHost(async (h) => {
    const src = `${h.sr}/src.raw`;
    await sparseFile(src, 4 << 20, 4);
    await Deno.chmod(src, 0o644);
    expectSuccess(await plugin(xapiForm("copy", { src, dest: `${h.sr}/a.raw` }), { env: h.env }));
    strictEqual((await Deno.stat(`${h.sr}/a.raw`)).mode! & 0o7777, 0o600);
    const id = expectSuccess(
      await plugin(xapiForm("start", { src, dest: `${h.sr}/b.raw` }), { env: h.env }),
    );
    for (;;) {
      const op = JSON.parse(
        expectSuccess(await plugin(xapiForm("status", { id }), { env: h.env })),
      );
      if (op.state === "success") break;
      assert(op.state === "running" || op.state === "starting", JSON.stringify(op));
    }
    strictEqual((await Deno.stat(`${h.sr}/b.raw`)).mode! & 0o7777, 0o600);
    // An existing destination keeps its mode: the admin chose it.
    await Deno.chmod(`${h.sr}/a.raw`, 0o640);
    expectSuccess(await plugin(xapiForm("copy", { src, dest: `${h.sr}/a.raw` }), { env: h.env }));
    strictEqual((await Deno.stat(`${h.sr}/a.raw`)).mode! & 0o7777, 0o640);
  });
});

Deno.test("size takes the command line's suffixes (size=1M); a bad one names the accepted ones", async () => {
  await withHost(async (h) => {
    const src = `${h.sr}/src.raw`;
    await sparseFile(src, 4 << 20, 5);
    for (
      const [size, bytes] of [["1M", 1 << 20], ["2MiB", 2 << 20], ["512k", 512 << 10]] as const
    ) {
      const dest = `${h.sr}/out-${size}.raw`;
      const stats = JSON.parse(
        expectSuccess(await plugin(xapiForm("copy", { src, dest, size }), { env: h.env })),
      );
      strictEqual(stats.size, bytes, size);
    }
    for (const size of ["10X", "1.5G", "G", "1e9"]) {
      const e = expectFailure(
        await plugin(xapiForm("copy", { src, dest: `${h.sr}/bad.raw`, size }), { env: h.env }),
        "SPARSE_DD_INVALID_ARGUMENT",
        "size",
        size,
      );
      assert(/K, M, G or T/.test(e[3]), e[3]);
    }
    assert(!(await exists(`${h.sr}/bad.raw`)));
  });
});

Deno.test("the state directory: made 0700; refused as a symlink, someone else's, writable by others or below such a directory", async () => {
  await withHost(async (h) => {
    const src = `${h.sr}/src.raw`;
    await sparseFile(src, 1 << 20, 6);
    const start = (stateDir: string) =>
      plugin(xapiForm("start", { src, dest: `${h.sr}/d.raw` }), {
        env: { ...h.env, SPARSE_DD_PLUGIN_STATE_DIR: stateDir },
      });
    const refused = async (stateDir: string, reason: RegExp) => {
      const e = expectFailure(await start(stateDir), "SPARSE_DD_UNSAFE_STATE_DIR");
      assert(reason.test(e[2]), `${stateDir}: ${e[2]}`);
      const s = expectFailure(
        await plugin(xapiForm("status", { id: "00000000-0000-4000-8000-000000000000" }), {
          env: { ...h.env, SPARSE_DD_PLUGIN_STATE_DIR: stateDir },
        }),
      );
      strictEqual(s[0], "SPARSE_DD_UNSAFE_STATE_DIR", stateDir);
      assert(!(await exists(`${h.sr}/d.raw`)), "nothing was started");
    };

    await Deno.mkdir(`${h.root}/open`);
    await Deno.chmod(`${h.root}/open`, 0o777);
    await refused(`${h.root}/open`, /writable by group or others/);

    await Deno.mkdir(`${h.root}/private`, { mode: 0o700 });
    await Deno.symlink(`${h.root}/private`, `${h.root}/link`);
    await refused(`${h.root}/link`, /symlink/);

    await Deno.mkdir(`${h.root}/nobodys`, { mode: 0o700 });
    await Deno.chown(`${h.root}/nobodys`, NOBODY, NOBODY);
    await refused(`${h.root}/nobodys`, /owned by uid 65534/);

    await Deno.mkdir(`${h.root}/shared`);
    await Deno.chmod(`${h.root}/shared`, 0o777);
    await refused(`${h.root}/shared/state`, /parent is unsafe.*writable by other users/);

    // Created where it is missing, 0700, also inside a sticky directory such as /tmp.
    await Deno.mkdir(`${h.root}/sticky`);
    await Deno.chmod(`${h.root}/sticky`, 0o1777);
    const id = expectSuccess(await start(`${h.root}/sticky/state`));
    assert(/^[0-9a-f-]{36}$/.test(id), id);
    strictEqual((await Deno.lstat(`${h.root}/sticky/state`)).mode! & 0o7777, 0o700);
    strictEqual((await Deno.lstat(`${h.root}/sticky/state/${id}`)).mode! & 0o7777, 0o700);
  });
});

/** Python, run as `nobody`: swaps every operation directory root creates for one of its own. */
const ATTACKER = `
import json, os, sys, time
state, secret, loot, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
end = time.time() + seconds
swapped = 0
while time.time() < end:
    try:
        names = os.listdir(state)
    except OSError:
        continue
    for name in names:
        p = os.path.join(state, name)
        try:
            if len(name) != 36 or os.lstat(p).st_uid != 0:
                continue
            # Once start has written its files, before the worker (a new process) reads them.
            time.sleep(0.05)
            os.rename(p, p + ".root")
            os.mkdir(p, 0o777)
            req = {"src": secret, "dest": loot, "prezeroed": False}
            now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
            st = dict(id=name, state="starting", percent=0, src=secret, dest=loot, size=None,
                      base=None, prezeroed=False, created=now, updated=now, finished=None,
                      pid=None, childPid=None, stats=None, error=None)
            for f, v in (("request.json", req), ("state.json", st)):
                with open(os.path.join(p, f), "w") as out:
                    json.dump(v, out)
            swapped += 1
        except OSError:
            pass
print(swapped)
`;

Deno.test("a local user cannot swap an operation in a world-writable state directory to copy a secret", async () => {
  await withHost(async (h) => {
    // nobody may reach the state directory and a drop box of its own, nothing else.
    await Deno.chmod(h.root, 0o755);
    await Deno.chmod(h.outside, 0o700);
    const state = `${h.root}/state`;
    await Deno.mkdir(state);
    await Deno.chmod(state, 0o777);
    const drop = `${h.root}/drop`;
    await Deno.mkdir(drop);
    await Deno.chmod(drop, 0o777);
    const loot = `${drop}/loot`;
    const src = `${h.sr}/src.raw`;
    await sparseFile(src, 1 << 20, 7);

    const attacker = new Deno.Command("setpriv", {
      args: [
        `--reuid=${NOBODY}`,
        `--regid=${NOBODY}`,
        "--clear-groups",
        PYTHON,
        "-c",
        ATTACKER,
        state,
        h.shadow,
        loot,
        "8",
      ],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    try {
      const a = await plugin(xapiForm("start", { src, dest: `${h.sr}/d.raw` }), { env: h.env });
      // Give a worker (there must be none) time to run whatever it was handed.
      await new Promise((r) => setTimeout(r, 3000));
      const e = expectFailure(a, "SPARSE_DD_UNSAFE_STATE_DIR");
      assert(/writable by group or others \(mode 0777\)/.test(e[2]), e[2]);
    } finally {
      await attacker.output();
    }
    assert(!(await exists(loot)), "root copied the secret for nobody");
    await secretIntact(h);
  });
});

Deno.test("a worker never runs a request file it finds in its operation directory", async () => {
  await withHost(async (h) => {
    const state = `${h.root}/state`;
    await Deno.mkdir(state, { mode: 0o700 });
    const id = crypto.randomUUID();
    const op = `${state}/${id}`;
    await Deno.mkdir(op, { mode: 0o700 });
    const loot = `${h.sr}/loot.raw`;
    const now = new Date().toISOString();
    await Deno.writeTextFile(
      `${op}/request.json`,
      JSON.stringify({ src: h.shadow, dest: loot, prezeroed: false }),
    );
    await Deno.writeTextFile(
      `${op}/state.json`,
      JSON.stringify({
        id,
        state: "starting",
        percent: 0,
        src: h.shadow,
        dest: loot,
        size: null,
        base: null,
        prezeroed: false,
        created: now,
        updated: now,
        finished: null,
        pid: null,
        childPid: null,
        stats: null,
        error: null,
      }),
    );
    const out = await xapiCommand(
      Deno.execPath(),
      ["run", "-A", "--quiet", "--no-lock", MAIN, "--xapi-plugin-worker", op],
      { env: h.env },
    ).output();
    strictEqual(out.code, 0);
    assert(!(await exists(loot)), "the worker copied what a file in its directory asked for");
    const st = JSON.parse(await Deno.readTextFile(`${op}/state.json`));
    strictEqual(st.state, "failed", JSON.stringify(st));
  });
});
