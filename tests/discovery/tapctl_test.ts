import { deepStrictEqual, ok, rejects, strictEqual } from "node:assert";
import {
  parseTapCtlList,
  TapCtlError,
  tapCtlList,
  type TapCtlRow,
  type TapdiskEntry,
} from "../../src/discovery/tapctl.ts";
import { formatTapCtlRow } from "../_support/tapctl_rows.ts";
import { Prng } from "../_support/prng.ts";
import { ROOT, sh, withTempDir } from "../_support/helpers.ts";

const FAKE = `${ROOT}/tests/fixtures/fake-tap-ctl`;

/** A fake tap-ctl in `dir` printing from `table` (see tests/fixtures/fake-tap-ctl). */
async function fakeTapCtl(dir: string, table: string): Promise<string> {
  const cmd = `${dir}/tap-ctl`;
  await Deno.symlink(FAKE, cmd);
  await Deno.writeTextFile(`${cmd}.table`, table);
  return cmd;
}

Deno.test("parseTapCtlList reads the non-terminal format tap-ctl prints", () => {
  const text = "pid=4242 minor=3 state=0 args=vhd:/var/run/sr-mount/abc/def.vhd\n" +
    "pid=4243 minor=12 state=0x2a args=aio:/dev/VG_XenStorage-x/LV-y\n";
  deepStrictEqual(parseTapCtlList(text), {
    entries: [
      { pid: 4242, minor: 3, state: 0, driver: "vhd", path: "/var/run/sr-mount/abc/def.vhd" },
      { pid: 4243, minor: 12, state: 0x2a, driver: "aio", path: "/dev/VG_XenStorage-x/LV-y" },
    ],
    ignored: [],
  });
});

Deno.test("parseTapCtlList keeps spaces, colons and key=value text inside the path", () => {
  const { entries } = parseTapCtlList(
    "pid=1 minor=2 state=0 args=vhd:/sr/My Disk: copy  args=x pid=9.vhd \n",
  );
  deepStrictEqual(entries, [
    { pid: 1, minor: 2, state: 0, driver: "vhd", path: "/sr/My Disk: copy  args=x pid=9.vhd " },
  ]);
});

Deno.test("parseTapCtlList accepts entries without pid or state", () => {
  const { entries } = parseTapCtlList("minor=5 args=vhd:/a.vhd\nminor=6 state=0x1 args=aio:/b\n");
  deepStrictEqual(entries, [
    { minor: 5, driver: "vhd", path: "/a.vhd" },
    { minor: 6, state: 1, driver: "aio", path: "/b" },
  ]);
});

Deno.test("parseTapCtlList drops idle tapdisks, orphan minors and lines without an image", () => {
  const r = parseTapCtlList("pid=99\nminor=7\npid=1 minor=2 state=0\npid=3 state=0 args=vhd:/x\n");
  deepStrictEqual(r.entries, []);
  deepStrictEqual(r.ignored, [
    "pid=99",
    "minor=7",
    "pid=1 minor=2 state=0",
    "pid=3 state=0 args=vhd:/x",
  ]);
});

Deno.test("parseTapCtlList ignores garbage, terminal tables and malformed fields", () => {
  const lines = [
    "     pid minor state       type file",
    "    4242    3    0        vhd /sr/a.vhd",
    "Segmentation fault",
    "pid=x minor=3 state=0 args=vhd:/a",
    "pid=1 minor=-1 state=0 args=vhd:/a",
    "pid=1 minor=3 state=42 args=vhd:/a", // state is always %#x: 42 is not tap-ctl's
    "pid=1 minor=3 minor=4 args=vhd:/a",
    "pid=1 minor=3 foo=1 args=vhd:/a",
    "pid=1 minor=3 args=/no/driver",
    "pid=1 minor=3 args=vhd:",
    "pid=1 minor=3 args=:/x",
    "\u0000\u0001binary",
  ];
  const r = parseTapCtlList(lines.join("\n"));
  deepStrictEqual(r.entries, []);
  strictEqual(r.ignored.length, lines.length);
});

Deno.test("parseTapCtlList tolerates CRLF, blank lines and a missing final newline", () => {
  const r = parseTapCtlList(
    "\r\n\npid=1 minor=0 state=0 args=vhd:/a.vhd\r\n  \nminor=1 args=aio:/b",
  );
  deepStrictEqual(r.entries, [
    { pid: 1, minor: 0, state: 0, driver: "vhd", path: "/a.vhd" },
    { minor: 1, driver: "aio", path: "/b" },
  ]);
  deepStrictEqual(r.ignored, []);
});

function randomPath(r: Prng): string {
  const alphabet = "abcXYZ019 -_.:=/é💾";
  const pieces = ["/var/run/sr-mount/", " args=", "pid=1 ", "minor=2", ":", "  ", ".vhd"];
  let p = "/";
  const n = 1 + r.int(8);
  for (let i = 0; i < n; i++) {
    p += r.chance(0.3) ? pieces[r.int(pieces.length)] : alphabet[r.int(alphabet.length)];
  }
  return p;
}

function randomRow(r: Prng): TapCtlRow {
  const row: TapCtlRow = {};
  if (r.chance(0.8)) row.pid = r.int(1 << 22);
  if (r.chance(0.8)) row.minor = r.chance(0.1) ? r.int(2 ** 20) : r.int(256);
  if (r.chance(0.8)) row.state = r.chance(0.5) ? 0 : r.int(0x40);
  if (r.chance(0.85)) {
    row.driver = ["vhd", "aio", "ram", "qcow"][r.int(4)];
    row.path = randomPath(r);
  }
  return row;
}

Deno.test("parseTapCtlList returns exactly the rows with a minor and an image (seeded)", () => {
  for (let seed = 1; seed <= 300; seed++) {
    const r = new Prng(seed);
    const rows = Array.from({ length: r.int(12) }, () => randomRow(r));
    const text = rows.map(formatTapCtlRow).join("\n") + (r.chance(0.5) ? "\n" : "");
    const got = parseTapCtlList(text);
    const want: TapdiskEntry[] = rows
      .filter((x) => x.minor !== undefined && x.driver && x.path)
      .map((x) => {
        const e: TapdiskEntry = { minor: x.minor!, driver: x.driver!, path: x.path! };
        if (x.pid !== undefined) e.pid = x.pid;
        if (x.state !== undefined) e.state = x.state;
        return e;
      });
    deepStrictEqual(got.entries, want, `seed ${seed}`);
    const nonEmpty = rows.filter((x) => formatTapCtlRow(x) !== "").length;
    strictEqual(got.ignored.length, nonEmpty - want.length, `seed ${seed}`);
  }
});

Deno.test("formatTapCtlRow prints state with %#x and leaves unknown fields out", () => {
  strictEqual(
    formatTapCtlRow({ pid: 7, minor: 1, state: 0x2a, driver: "aio", path: "/a b" }),
    "pid=7 minor=1 state=0x2a args=aio:/a b",
  );
  strictEqual(formatTapCtlRow({ pid: 7, minor: -1, state: 0 }), "pid=7 state=0");
  strictEqual(formatTapCtlRow({ minor: 3, driver: "vhd" }), "minor=3");
});

Deno.test("the fake tap-ctl prints what formatTapCtlRow says tap-ctl prints", async () => {
  await withTempDir(async (dir) => {
    const rows: TapCtlRow[] = [
      { pid: 4242, minor: 3, state: 0, driver: "vhd", path: "/sr/My Disk.vhd" },
      { pid: 4243, minor: 4, state: 0x2a, driver: "aio", path: "/x.raw" },
      { pid: 99 },
      { minor: 7 },
    ];
    const table = rows.map((x) =>
      `tapdisk ${x.pid ?? "-"} ${x.minor ?? "-"} ${x.state ?? "-"} ${
        x.driver ? `${x.driver}:${x.path}` : "-"
      }`
    ).join("\n");
    const cmd = await fakeTapCtl(dir, table + "\n");
    strictEqual(await sh(cmd, ["list"]), rows.map(formatTapCtlRow).join("\n") + "\n");
  });
});

Deno.test("tapCtlList runs `tap-ctl list -p PID -m MINOR` with only PATH in its environment", async () => {
  await withTempDir(async (dir) => {
    const cmd = await fakeTapCtl(
      dir,
      "tapdisk 4242 3 0 vhd:/sr/a.vhd\ntapdisk 4243 3 0 vhd:/sr/b.vhd\ntapdisk 4243 5 0 aio:/c\n",
    );
    const all = await tapCtlList({ command: cmd });
    strictEqual(all.entries.length, 3);
    const one = await tapCtlList({ command: cmd }, { pid: 4243, minor: 3 });
    deepStrictEqual(one.entries, [{
      pid: 4243,
      minor: 3,
      state: 0,
      driver: "vhd",
      path: "/sr/b.vhd",
    }]);
    strictEqual(await Deno.readTextFile(`${cmd}.log`), "list\nlist -p 4243 -m 3\n");

    const envDump = `${dir}/env-tap-ctl`;
    await Deno.writeTextFile(envDump, `#!/bin/sh\nenv > "${dir}/env.txt"\n`);
    await Deno.chmod(envDump, 0o755);
    await tapCtlList({ command: envDump });
    const names = (await Deno.readTextFile(`${dir}/env.txt`)).split("\n")
      .map((l) => l.split("=")[0]).filter((n) => n && n !== "PWD" && n !== "SHLVL" && n !== "_");
    deepStrictEqual(names, ["PATH"]);
  });
});

Deno.test("tapCtlList kills a tap-ctl that hangs and says so", async () => {
  await withTempDir(async (dir) => {
    const cmd = await fakeTapCtl(dir, "sleep 120\n");
    const t0 = Date.now();
    await rejects(
      tapCtlList({ command: cmd, timeoutMs: 300 }),
      (e: Error) =>
        e instanceof TapCtlError &&
        /tap-ctl list: no answer within 300 ms \(killed\)/.test(e.message),
    );
    ok(Date.now() - t0 < 60_000, "returned long before the child would have finished");
  });
});

Deno.test("tapCtlList stops waiting even when a grandchild keeps the pipe open", async () => {
  await withTempDir(async (dir) => {
    const cmd = `${dir}/tap-ctl`;
    // The shell is killed, but its `sleep` child still holds stdout.
    await Deno.writeTextFile(cmd, "#!/bin/bash\nsleep 10\necho done\n");
    await Deno.chmod(cmd, 0o755);
    const t0 = Date.now();
    await rejects(tapCtlList({ command: cmd, timeoutMs: 200 }), TapCtlError);
    ok(Date.now() - t0 < 8_000, "did not wait for the grandchild");
  });
});

Deno.test("tapCtlList reports a missing command and a failing one in one line", async () => {
  await rejects(
    tapCtlList({ command: "/nonexistent/tap-ctl" }),
    (e: Error) =>
      e instanceof TapCtlError && e.message === "/nonexistent/tap-ctl: command not found",
  );
  await withTempDir(async (dir) => {
    const cmd = await fakeTapCtl(dir, "fail 3 tap-ctl: cannot connect to blktap-control\n");
    await rejects(
      tapCtlList({ command: cmd }),
      (e: Error) =>
        e instanceof TapCtlError &&
        e.message ===
          `${cmd} list failed with exit code 3: tap-ctl: cannot connect to blktap-control`,
    );
  });
});

Deno.test("tapCtlList returns garbage lines as ignored, not as entries", async () => {
  await withTempDir(async (dir) => {
    const cmd = await fakeTapCtl(dir, "print hello world\nprint pid=1 minor=2\n");
    const r = await tapCtlList({ command: cmd });
    deepStrictEqual(r, { entries: [], ignored: ["hello world", "pid=1 minor=2"] });
  });
});
