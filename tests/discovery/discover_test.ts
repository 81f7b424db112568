import { deepStrictEqual, ok, strictEqual } from "node:assert";
import {
  backendDomain,
  decodeRdev,
  discover,
  type DiscoveryOptions,
  parseNbdRecord,
  parseProcDevices,
  tapdiskOfNbdSocket,
  vbdIdOfDeviceLink,
} from "../../src/discovery/discover.ts";
import { vhdBehindDevice } from "../../src/discovery/source_allocation.ts";
import {
  mainCommand,
  readMachineStream,
  ROOT,
  runMain,
  sameBytes,
  sh,
  withLoop,
  withTempDir,
} from "../_support/helpers.ts";
import { qemuCreateVhd, qemuIo } from "../_support/vhd_tools.ts";
import { startXenstored, type Xenstored } from "../_support/xenstored.ts";

const FAKE_TAP_CTL = `${ROOT}/tests/fixtures/fake-tap-ctl`;
const MiB = 1024 * 1024;

// ---------------------------------------------------------------- pure parts

Deno.test("decodeRdev splits st_rdev like glibc, keeping minors above 255", () => {
  deepStrictEqual(decodeRdev(1792), { major: 7, minor: 0 });
  deepStrictEqual(decodeRdev((202 << 8) | 16), { major: 202, minor: 16 });
  // minor 0x1005 = low byte 0x05, high bits at 20..
  deepStrictEqual(decodeRdev(0x100ca05), { major: 202, minor: 0x1005 });
  deepStrictEqual(decodeRdev((43 << 8) | (0x12345 & 0xff) | ((0x12345 & ~0xff) << 12)), {
    major: 43,
    minor: 0x12345,
  });
});

Deno.test("parseProcDevices names block majors, separately from character majors", () => {
  const text = "Character devices:\n  1 mem\n  7 vcs\n254 tapdev\n\nBlock devices:\n" +
    "  7 loop\n 43 nbd\n202 xvd\n253 device-mapper\n254 tapdev\n";
  const d = parseProcDevices(text);
  strictEqual(d.block.get(7), "loop");
  strictEqual(d.char.get(7), "vcs");
  strictEqual(d.block.get(254), "tapdev");
  strictEqual(d.block.get(43), "nbd");
  strictEqual(d.block.get(1), undefined);
  // A bare fake file (no headers) is read as block devices.
  strictEqual(parseProcDevices("7 tapdev\n").block.get(7), "tapdev");
});

Deno.test("vbdIdOfDeviceLink accepts the xenlinux and pvops forms only", () => {
  strictEqual(vbdIdOfDeviceLink("../../../vbd-51712"), 51712);
  strictEqual(vbdIdOfDeviceLink("../../devices/xen/vbd-768"), 768);
  strictEqual(vbdIdOfDeviceLink("/sys/devices/xen/vbd-5696"), 5696);
  strictEqual(vbdIdOfDeviceLink("../../../virtio1"), undefined);
  strictEqual(vbdIdOfDeviceLink("../../xen/devices/vbd-768"), undefined);
  strictEqual(vbdIdOfDeviceLink("../../../pci0000:00/vbd-1"), undefined);
  strictEqual(vbdIdOfDeviceLink("/vbd-1"), undefined);
  strictEqual(vbdIdOfDeviceLink("../../../vbd-"), undefined);
  strictEqual(vbdIdOfDeviceLink("../../../vbd-01"), undefined);
  strictEqual(vbdIdOfDeviceLink("../../../vbd-12x"), undefined);
});

Deno.test("backendDomain reads the domain of a /local/domain/N/... backend path", () => {
  strictEqual(backendDomain("/local/domain/0/backend/vbd3/5/51712"), 0);
  strictEqual(backendDomain("/local/domain/17/backend/vbd/5/768"), 17);
  strictEqual(backendDomain("/local/domain/x/backend"), undefined);
  strictEqual(backendDomain("local/domain/0/backend"), undefined);
  strictEqual(backendDomain("/local/domain/0"), undefined);
});

Deno.test("parseNbdRecord reads nbd_client_manager's JSON and rejects anything else", () => {
  deepStrictEqual(parseNbdRecord('{"path": "/run/s", "exportname": "uuid"}'), {
    socket: "/run/s",
    exportname: "uuid",
  });
  deepStrictEqual(parseNbdRecord('{"path": "/run/s"}'), { socket: "/run/s" });
  strictEqual(parseNbdRecord('{"exportname": "x"}'), undefined);
  strictEqual(parseNbdRecord('{"path": 3}'), undefined);
  strictEqual(parseNbdRecord("null"), undefined);
  strictEqual(parseNbdRecord("/run/s"), undefined);
});

Deno.test("tapdiskOfNbdSocket reads nbd<pid>.<minor> socket names", () => {
  deepStrictEqual(tapdiskOfNbdSocket("/run/blktap-control/nbd4242.3"), { pid: 4242, minor: 3 });
  deepStrictEqual(tapdiskOfNbdSocket("/run/blktap-control/nbd-old12.0"), { pid: 12, minor: 0 });
  strictEqual(tapdiskOfNbdSocket("/run/blktap-control/nbd4242"), undefined);
  strictEqual(tapdiskOfNbdSocket("/run/qemu/nbd.sock"), undefined);
  strictEqual(tapdiskOfNbdSocket("/run/blktap-control/nbd1.2.3"), undefined);
});

// ---------------------------------------------------------------- a fake host

/** A fake /sys, /proc, /var/run, /dev and tap-ctl under one temp dir. */
interface FakeHost {
  dir: string;
  sys: string;
  proc: string;
  run: string;
  dev: string;
  tapCtl: string;
  options: DiscoveryOptions;
  /** The same, as sparse_dd flags. */
  flags: string[];
  /** Arguments of each tap-ctl run, one line per run. */
  tapCtlLog(): Promise<string>;
}

async function fakeHost(dir: string, devices: string, table: string): Promise<FakeHost> {
  const h = {
    dir,
    sys: `${dir}/sys`,
    proc: `${dir}/proc`,
    run: `${dir}/run`,
    dev: `${dir}/dev`,
    tapCtl: `${dir}/bin/tap-ctl`,
  };
  for (const d of [h.sys, h.proc, `${h.run}/nonpersistent/nbd`, h.dev, `${dir}/bin`]) {
    await Deno.mkdir(d, { recursive: true });
  }
  await Deno.writeTextFile(`${h.proc}/devices`, devices);
  await Deno.symlink(FAKE_TAP_CTL, h.tapCtl);
  await Deno.writeTextFile(`${h.tapCtl}.table`, table);
  const options: DiscoveryOptions = {
    sysfsRoot: h.sys,
    procfsRoot: h.proc,
    runRoot: h.run,
    tapCtl: h.tapCtl,
    tapCtlTimeoutMs: 3000,
  };
  const flags = [
    "-sysfs-root",
    h.sys,
    "-procfs-root",
    h.proc,
    "-run-root",
    h.run,
    "-tap-ctl",
    h.tapCtl,
  ];
  return {
    ...h,
    options,
    flags,
    tapCtlLog: () => Deno.readTextFile(`${h.tapCtl}.log`).catch(() => ""),
  };
}

async function mknod(path: string, major: number, minor: number): Promise<string> {
  await sh("mknod", [path, "b", String(major), String(minor)]);
  return path;
}

/** `sysfs/dev/block/M:m/device` -> a blkfront vbd, in the pvops layout. */
async function fakeBlkfront(sys: string, major: number, minor: number, link: string) {
  await Deno.mkdir(`${sys}/devices/vbd-51712/block/xvda`, { recursive: true });
  await Deno.mkdir(`${sys}/dev/block`, { recursive: true });
  await Deno.symlink("../../devices/vbd-51712/block/xvda", `${sys}/dev/block/${major}:${minor}`);
  await Deno.symlink(link, `${sys}/devices/vbd-51712/block/xvda/device`);
}

/** The xenstore tree of a guest disk whose backend is in `backendDomid`. */
async function vbdKeys(xs: Xenstored, backendDomid: number, params: string): Promise<void> {
  const backend = `/local/domain/${backendDomid}/backend/vbd/0/51712`;
  await xs.write({
    "/local/domain/0/domid": "0",
    "/local/domain/0/device/vbd/51712/backend": backend,
    [`${backend}/params`]: params,
  });
}

// ---------------------------------------------------------------- routes, without copying

Deno.test("tapdev route: the tap-ctl entry with the device's minor names the VHD", async () => {
  await withTempDir(async (dir) => {
    const h = await fakeHost(
      dir,
      "Block devices:\n240 tapdev\n",
      "tapdisk 100 2 0 vhd:/sr/other.vhd\ntapdisk 4242 3 0 vhd:/var/run/sr-mount/SR/My Disk.vhd\n" +
        "tapdisk 99 - - -\n",
    );
    const dev = await mknod(`${h.dev}/tapdev3`, 240, 3);
    const d = await discover(dev, h.options);
    strictEqual(d.route, "tapdev");
    deepStrictEqual(d.image, {
      kind: "vhd",
      driver: "vhd",
      path: "/var/run/sr-mount/SR/My Disk.vhd",
    });
    deepStrictEqual(d.tapdisk, { pid: 4242, minor: 3, state: 0 });
    strictEqual(d.reason, undefined);
    strictEqual(await h.tapCtlLog(), "list\n");
    ok(d.notes.some((n) => n.includes("block device 240:3")), d.notes.join("\n"));
  });
});

Deno.test("vhdBehindDevice names the VHD behind a device, or says why there is none", async () => {
  await withTempDir(async (dir) => {
    const h = await fakeHost(
      dir,
      "240 tapdev\n",
      "tapdisk 1 1 0 vhd:/sr/base.vhd\ntapdisk 2 2 0 aio:/sr/base.raw\n",
    );
    deepStrictEqual(await vhdBehindDevice(await mknod(`${h.dev}/t1`, 240, 1), h.options), {
      vhd: "/sr/base.vhd",
      route: "tapdev",
    });
    deepStrictEqual(await vhdBehindDevice(await mknod(`${h.dev}/t2`, 240, 2), h.options), {
      reason: `${h.dev}/t2 is served by a tapdisk aio image, not a VHD`,
      route: "tapdev",
    });
    deepStrictEqual(await vhdBehindDevice(await mknod(`${h.dev}/t3`, 240, 3), h.options), {
      reason: "tap-ctl list has no entry for minor 3",
      route: "none",
    });
  });
});

Deno.test("tapdev route: a minor above 255 is matched in full", async () => {
  await withTempDir(async (dir) => {
    const h = await fakeHost(
      dir,
      "240 tapdev\n",
      "tapdisk 1 44 0 vhd:/wrong.vhd\ntapdisk 2 300 0 vhd:/right.vhd\n",
    );
    const d = await discover(await mknod(`${h.dev}/tapdev300`, 240, 300), h.options);
    strictEqual(d.image?.path, "/right.vhd");
  });
});

Deno.test("tapdev route: aio is a raw file, other drivers are named but not used", async () => {
  await withTempDir(async (dir) => {
    const h = await fakeHost(
      dir,
      "240 tapdev\n",
      "tapdisk 1 0 0 aio:/dev/VG/LV-1\ntapdisk 2 1 0x2a ram:/x\n",
    );
    const raw = await discover(await mknod(`${h.dev}/tapdev0`, 240, 0), h.options);
    deepStrictEqual(raw.image, { kind: "raw", driver: "aio", path: "/dev/VG/LV-1" });
    const other = await discover(await mknod(`${h.dev}/tapdev1`, 240, 1), h.options);
    strictEqual(other.route, "tapdev");
    deepStrictEqual(other.image, { kind: "other", driver: "ram", path: "/x" });
    strictEqual(other.reason, "tapdisk driver ram is neither vhd nor aio");
    ok(other.notes.some((n) => n.includes("state 0x2a")), other.notes.join("\n"));
  });
});

Deno.test("tapdev route: no entry, two entries, garbage, failure and timeout end in none", async () => {
  await withTempDir(async (dir) => {
    const cases: [string, RegExp][] = [
      ["tapdisk 1 4 0 vhd:/a.vhd\n", /^tap-ctl list has no entry for minor 3$/],
      [
        "tapdisk 1 3 0 vhd:/a.vhd\ntapdisk 2 3 0 vhd:/b.vhd\n",
        /^tap-ctl list has 2 entries for minor 3; not guessing$/,
      ],
      ["print Segmentation fault\nprint minor=3 vhd:/a.vhd\n", /^tap-ctl list has no entry/],
      ["fail 1 tap-ctl: failed to connect\n", /list failed with exit code 1: tap-ctl: failed/],
      ["sleep 60\n", /tap-ctl list: no answer within 300 ms \(killed\)$/],
    ];
    for (const [i, [table, reason]] of cases.entries()) {
      const h = await fakeHost(`${dir}/${i}`, "240 tapdev\n", table);
      const d = await discover(await mknod(`${h.dev}/tapdev3`, 240, 3), {
        ...h.options,
        tapCtlTimeoutMs: 300,
      });
      strictEqual(d.route, "none", table);
      strictEqual(d.image, undefined);
      ok(reason.test(d.reason ?? ""), `${table}: ${d.reason}`);
    }
    const h = await fakeHost(`${dir}/g`, "240 tapdev\n", "print Segmentation fault\n");
    const d = await discover(await mknod(`${h.dev}/tapdev3`, 240, 3), h.options);
    ok(
      d.notes.some((n) => n.includes('ignored 1 line(s) that are not tapdisk entries, e.g. "Seg')),
    );
  });
});

Deno.test("tapdev route: a missing tap-ctl is a reason, not a crash", async () => {
  await withTempDir(async (dir) => {
    const h = await fakeHost(dir, "240 tapdev\n", "");
    const d = await discover(await mknod(`${h.dev}/tapdev3`, 240, 3), {
      ...h.options,
      tapCtl: `${dir}/no-such-tap-ctl`,
    });
    strictEqual(d.route, "none");
    strictEqual(d.reason, `${dir}/no-such-tap-ctl: command not found`);
  });
});

Deno.test("nbd route: the socket nbd<pid>.<minor> leads to `tap-ctl list -p PID -m MINOR`", async () => {
  await withTempDir(async (dir) => {
    const h = await fakeHost(
      dir,
      "Block devices:\n 43 nbd\n",
      "tapdisk 4243 9 0 vhd:/sr/not-this.vhd\ntapdisk 4242 8 0 vhd:/sr/nor-this.vhd\n" +
        "tapdisk 4242 9 0 vhd:/sr/leaf.vhd\n",
    );
    await Deno.mkdir(`${dir}/blktap-control`);
    await Deno.writeTextFile(`${dir}/blktap-control/nbd4242.9`, "");
    await Deno.symlink(`${dir}/blktap-control/nbd4242.9`, `${dir}/vdi-link`);
    await Deno.writeTextFile(
      `${h.run}/nonpersistent/nbd/5`,
      JSON.stringify({ path: `${dir}/vdi-link`, exportname: "vdi-uuid" }),
    );
    const d = await discover(await mknod(`${h.dev}/nbd5`, 43, 160), h.options);
    strictEqual(d.route, "nbd");
    deepStrictEqual(d.image, { kind: "vhd", driver: "vhd", path: "/sr/leaf.vhd" });
    deepStrictEqual(d.nbd, { socket: `${dir}/blktap-control/nbd4242.9`, exportname: "vdi-uuid" });
    strictEqual(await h.tapCtlLog(), "list -p 4242 -m 9\n");

    // The same device under another name: sysfs says which nbdN it is.
    await Deno.mkdir(`${h.sys}/dev/block`, { recursive: true });
    await Deno.symlink("../../devices/virtual/block/nbd5", `${h.sys}/dev/block/43:160`);
    const alias = await discover(await mknod(`${h.dev}/my-disk`, 43, 160), h.options);
    strictEqual(alias.image?.path, "/sr/leaf.vhd");
  });
});

Deno.test("nbd route: a socket that is not a tapdisk's is reported as an NBD server", async () => {
  await withTempDir(async (dir) => {
    const h = await fakeHost(dir, "43 nbd\n", "tapdisk 1 0 0 vhd:/x.vhd\n");
    await Deno.writeTextFile(`${dir}/qemu.sock`, "");
    await Deno.writeTextFile(
      `${h.run}/nonpersistent/nbd/0`,
      JSON.stringify({ path: `${dir}/qemu.sock`, exportname: "disk" }),
    );
    const d = await discover(await mknod(`${h.dev}/nbd0`, 43, 0), h.options);
    strictEqual(d.route, "nbd");
    strictEqual(d.image, undefined);
    deepStrictEqual(d.nbd, { socket: `${dir}/qemu.sock`, exportname: "disk" });
    strictEqual(d.reason, `NBD socket ${dir}/qemu.sock is not a tapdisk's (nbd<pid>.<minor>)`);
    strictEqual(await h.tapCtlLog(), "");
  });
});

Deno.test("nbd route: a missing or broken connection record ends in none", async () => {
  await withTempDir(async (dir) => {
    const h = await fakeHost(dir, "43 nbd\n", "");
    const missing = await discover(await mknod(`${h.dev}/nbd1`, 43, 32), h.options);
    strictEqual(missing.route, "none");
    ok(
      missing.reason?.startsWith(`no NBD connection record ${h.run}/nonpersistent/nbd/1`),
      missing.reason,
    );
    await Deno.writeTextFile(`${h.run}/nonpersistent/nbd/2`, "{garbage");
    const broken = await discover(await mknod(`${h.dev}/nbd2`, 43, 64), h.options);
    strictEqual(broken.route, "none");
    strictEqual(
      broken.reason,
      `${h.run}/nonpersistent/nbd/2 is not a JSON {"path", "exportname"} record`,
    );
  });
});

Deno.test("nbd route: the tapdisk named by the socket is gone", async () => {
  await withTempDir(async (dir) => {
    const h = await fakeHost(dir, "43 nbd\n", "tapdisk 1 9 0 vhd:/x.vhd\n");
    await Deno.writeTextFile(
      `${h.run}/nonpersistent/nbd/3`,
      JSON.stringify({ path: `${dir}/nbd777.9`, exportname: "e" }),
    );
    const d = await discover(await mknod(`${h.dev}/nbd3`, 43, 96), h.options);
    strictEqual(d.route, "nbd");
    strictEqual(d.image, undefined);
    ok(/list -p 777 -m 9 failed with exit code 2/.test(d.reason ?? ""), d.reason);
  });
});

Deno.test("not a device: a regular file, a missing path, a loop-like device", async () => {
  await withTempDir(async (dir) => {
    const h = await fakeHost(dir, "7 loop\n", "");
    await Deno.writeTextFile(`${dir}/f.raw`, "x");
    const file = await discover(`${dir}/f.raw`, h.options);
    strictEqual(file.route, "none");
    strictEqual(file.reason, `${dir}/f.raw is a regular file, not a device`);
    const missing = await discover(`${dir}/nope`, h.options);
    strictEqual(missing.reason, `cannot stat ${dir}/nope: not found`);
    const loop = await discover(await mknod(`${h.dev}/loop9`, 7, 9), h.options);
    strictEqual(loop.route, "none");
    ok(
      loop.reason?.startsWith("not a tapdisk or NBD device, and not a Xen blkfront disk"),
      loop.reason,
    );
    strictEqual(await h.tapCtlLog(), "");
  });
});

Deno.test("blkfront route (real xenstored): backend params lead to the tapdev and its VHD", async () => {
  const xs = await startXenstored();
  try {
    await withTempDir(async (dir) => {
      const h = await fakeHost(
        dir,
        "Block devices:\n202 xvd\n240 tapdev\n",
        "tapdisk 77 9 0 vhd:/var/run/sr-mount/SR/leaf.vhd\n",
      );
      const params = await mknod(`${h.dev}/tapdev9`, 240, 9);
      await vbdKeys(xs, 0, params);
      await fakeBlkfront(h.sys, 202, 0, "../../../vbd-51712");
      const xvda = await mknod(`${h.dev}/xvda`, 202, 0);
      const d = await discover(xvda, { ...h.options, xenstoreEnv: xs.env });
      strictEqual(d.route, "blkfront+tapdev", d.reason);
      deepStrictEqual(d.image, {
        kind: "vhd",
        driver: "vhd",
        path: "/var/run/sr-mount/SR/leaf.vhd",
      });
      ok(d.notes.includes("202:0 is Xen vbd 51712"), d.notes.join("\n"));
      ok(
        d.notes.includes(`vbd 51712 backend /local/domain/0/backend/vbd/0/51712 params ${params}`),
        d.notes.join("\n"),
      );
    });
  } finally {
    await xs.stop();
  }
});

Deno.test("blkfront route (real xenstored): the old xenlinux link form works too", async () => {
  const xs = await startXenstored();
  try {
    await withTempDir(async (dir) => {
      const h = await fakeHost(dir, "240 tapdev\n", "tapdisk 77 9 0 aio:/srv/disk.raw\n");
      await vbdKeys(xs, 0, await mknod(`${h.dev}/tapdev9`, 240, 9));
      await Deno.mkdir(`${h.sys}/dev/block/202:16`, { recursive: true });
      await Deno.symlink("../../../devices/xen/vbd-51712", `${h.sys}/dev/block/202:16/device`);
      const d = await discover(await mknod(`${h.dev}/xvdb`, 202, 16), {
        ...h.options,
        xenstoreEnv: xs.env,
      });
      strictEqual(d.route, "blkfront+tapdev", d.reason);
      deepStrictEqual(d.image, { kind: "raw", driver: "aio", path: "/srv/disk.raw" });
    });
  } finally {
    await xs.stop();
  }
});

Deno.test("blkfront route (real xenstored): params naming an NBD device go through nbd", async () => {
  const xs = await startXenstored();
  try {
    await withTempDir(async (dir) => {
      const h = await fakeHost(dir, "43 nbd\n", "tapdisk 4242 9 0 vhd:/sr/leaf.vhd\n");
      await Deno.writeTextFile(
        `${h.run}/nonpersistent/nbd/4`,
        JSON.stringify({ path: `${dir}/nbd4242.9`, exportname: "e" }),
      );
      await vbdKeys(xs, 0, await mknod(`${h.dev}/nbd4`, 43, 128));
      await fakeBlkfront(h.sys, 202, 0, "../../../vbd-51712");
      const d = await discover(await mknod(`${h.dev}/xvda`, 202, 0), {
        ...h.options,
        xenstoreEnv: xs.env,
      });
      strictEqual(d.route, "blkfront+nbd", d.reason);
      strictEqual(d.image?.path, "/sr/leaf.vhd");
    });
  } finally {
    await xs.stop();
  }
});

Deno.test("blkfront route (real xenstored): refusals are reasons, never guesses", async () => {
  const xs = await startXenstored();
  try {
    await withTempDir(async (dir) => {
      const h = await fakeHost(dir, "240 tapdev\n", "tapdisk 77 9 0 vhd:/sr/leaf.vhd\n");
      await fakeBlkfront(h.sys, 202, 0, "../../../vbd-51712");
      const xvda = await mknod(`${h.dev}/xvda`, 202, 0);
      const tapdev = await mknod(`${h.dev}/tapdev9`, 240, 9);
      const opts = { ...h.options, xenstoreEnv: xs.env };
      const reason = async () => {
        const d = await discover(xvda, opts);
        strictEqual(d.route, "none");
        strictEqual(d.image, undefined);
        return d.reason;
      };

      strictEqual(await reason(), "xenstore key domid does not exist");
      await xs.write({ "/local/domain/0/domid": "0" });
      strictEqual(await reason(), "xenstore key device/vbd/51712/backend does not exist");

      await vbdKeys(xs, 5, tapdev);
      strictEqual(
        await reason(),
        "vbd 51712 backend is in domain 5, not ours (0): cannot see its image",
      );

      await vbdKeys(xs, 0, tapdev);
      await xs.rm("/local/domain/0/backend/vbd/0/51712/params");
      strictEqual(
        await reason(),
        "xenstore key /local/domain/0/backend/vbd/0/51712/params does not exist",
      );

      await xs.write({ "/local/domain/0/device/vbd/51712/backend": "backend/vbd/0/51712" });
      strictEqual(await reason(), 'vbd 51712 backend "backend/vbd/0/51712" names no domain');

      await vbdKeys(xs, 0, "vhd:/sr/leaf.vhd");
      strictEqual(await reason(), 'vbd 51712 backend params "vhd:/sr/leaf.vhd" is not a device');

      await vbdKeys(xs, 0, `${dir}/no-such-device`);
      strictEqual(
        await reason(),
        `vbd 51712 backend: cannot stat ${dir}/no-such-device: not found`,
      );

      await vbdKeys(xs, 0, await mknod(`${h.dev}/sda`, 8, 0));
      strictEqual(
        await reason(),
        `vbd 51712 backend device ${h.dev}/sda is not a tapdisk or NBD device`,
      );
      strictEqual(await h.tapCtlLog(), "");
    });
  } finally {
    await xs.stop();
  }
  // And with no xenstored at all.
  await withTempDir(async (dir) => {
    const h = await fakeHost(dir, "240 tapdev\n", "");
    await fakeBlkfront(h.sys, 202, 0, "../../../vbd-51712");
    const d = await discover(await mknod(`${h.dev}/xvda`, 202, 0), {
      ...h.options,
      xenstoreEnv: { PATH: Deno.env.get("PATH")!, XENSTORED_PATH: `${dir}/none` },
    });
    strictEqual(d.route, "none");
    ok(/^xenstore key domid: xenstore-read: xs_open: /.test(d.reason ?? ""), d.reason);
  });
});

Deno.test("blkfront route: a device link to something else is not a Xen disk", async () => {
  await withTempDir(async (dir) => {
    const h = await fakeHost(dir, "252 virtblk\n", "");
    await fakeBlkfront(h.sys, 252, 0, "../../../virtio1");
    const d = await discover(await mknod(`${h.dev}/vda`, 252, 0), {
      ...h.options,
      xenstoreRead: `${dir}/must-not-run`,
    });
    strictEqual(d.route, "none");
    strictEqual(
      d.reason,
      `not a tapdisk or NBD device, and not a Xen blkfront disk (${h.sys}/dev/block/252:0/device -> ../../../virtio1)`,
    );
  });
});

// ---------------------------------------------------------------- real copies through sparse_dd

/**
 * A 16 MiB dynamic VHD made by qemu-img with data in three of its eight 2 MiB blocks, and its
 * raw conversion: a loop device over the raw file shows exactly the VHD's logical content, as
 * a tapdisk device would.
 */
async function vhdFixture(dir: string): Promise<{ vhd: string; raw: string; size: number }> {
  const vhd = `${dir}/leaf.vhd`;
  const raw = `${dir}/leaf.raw`;
  await qemuCreateVhd(vhd, "16M");
  await qemuIo(vhd, ["write -P 0x11 0 4k", "write -P 0x22 5M 64k", "write -P 0x33 13M 1M"]);
  await sh("qemu-img", ["convert", "-f", "vpc", "-O", "raw", vhd, raw]);
  return { vhd, raw, size: 16 * MiB };
}

/** The three allocated 2 MiB blocks of {@linkcode vhdFixture}. */
const VHD_ALLOCATED = 3 * 2 * MiB;

async function rdevOf(path: string): Promise<{ major: number; minor: number }> {
  return decodeRdev((await Deno.stat(path)).rdev!);
}

/**
 * Runs `body` with a {@linkcode vhdFixture} in a fresh directory and a loop device over its raw
 * image: the device a tapdisk would present for that VHD.
 */
async function withFixtureDevice(
  body: (
    dir: string,
    f: { vhd: string; raw: string; size: number },
    dev: { major: number; minor: number },
  ) => Promise<void>,
): Promise<void> {
  await withTempDir(async (dir) => {
    const f = await vhdFixture(dir);
    await withLoop(f.raw, async (loop) => await body(dir, f, await rdevOf(loop)));
  });
}

interface CopyRun {
  code: number;
  stderr: string;
  stats: {
    allocation: string;
    bytesRead: number;
    size: number;
    discovery: {
      route: string;
      vhd: string | null;
      raw: string | null;
      reason: string | null;
    } | null;
  };
}

async function copyWith(
  args: string[],
  out: string,
  env?: Record<string, string>,
): Promise<CopyRun> {
  const statsFile = `${out}.stats.json`;
  const r = await runMain([...args, "-dest", out, "-stats-file", statsFile, "-progress", "none"], {
    env,
  });
  let stats;
  try {
    stats = JSON.parse(await Deno.readTextFile(statsFile));
  } catch {
    stats = undefined;
  }
  return { code: r.code, stderr: r.stderr, stats };
}

Deno.test("sparse_dd copies a tapdev device reading only its VHD's allocated blocks", async () => {
  await withFixtureDevice(async (dir, f, { major, minor }) => {
    const h = await fakeHost(
      dir,
      `Block devices:\n${major} tapdev\n`,
      `tapdisk 4242 ${minor} 0 vhd:${f.vhd}\n`,
    );
    const tapdev = await mknod(`${h.dev}/tapdev${minor}`, major, minor);
    const out = `${dir}/out.raw`;
    const r = await copyWith(["-src", tapdev, "-size", String(f.size), ...h.flags], out);
    strictEqual(r.code, 0, r.stderr);
    ok(r.stderr.includes(`auto-detect src vhd: ${f.vhd}\n`), r.stderr);
    ok(r.stderr.includes("auto-detect: route tapdev"), r.stderr);
    ok(await sameBytes(out, f.raw), "copy differs from the device");
    strictEqual(r.stats.allocation, "vhd");
    deepStrictEqual(r.stats.discovery, {
      route: "tapdev",
      vhd: f.vhd,
      raw: null,
      nbd: null,
      reason: null,
    });
    ok(r.stats.bytesRead <= VHD_ALLOCATED, `read ${r.stats.bytesRead}`);
    ok(r.stats.bytesRead < f.size);
  });
});

Deno.test("sparse_dd reads the allocation of a VHD kept on a block device (LVHD-style)", async () => {
  await withTempDir(async (dir) => {
    const f = await vhdFixture(dir);
    // As on an LVM SR, the VHD itself lives on a block device (here a loop device over it).
    await withLoop(f.vhd, async (vhdDev) => {
      await withLoop(f.raw, async (loop) => {
        const { major, minor } = await rdevOf(loop);
        const h = await fakeHost(
          dir,
          `${major} tapdev\n`,
          `tapdisk 4242 ${minor} 0 vhd:${vhdDev}\n`,
        );
        const tapdev = await mknod(`${h.dev}/tapdev${minor}`, major, minor);
        const out = `${dir}/out.raw`;
        const r = await copyWith(["-src", tapdev, "-require-vhd", ...h.flags], out);
        strictEqual(r.code, 0, r.stderr);
        ok(r.stderr.includes(`auto-detect src vhd: ${vhdDev}\n`), r.stderr);
        ok(await sameBytes(out, f.raw), "copy differs from the device");
        strictEqual(r.stats.discovery?.vhd, vhdDev);
        ok(r.stats.bytesRead <= VHD_ALLOCATED, `read ${r.stats.bytesRead}`);
      });
    });
  });
});

Deno.test("sparse_dd copies a /dev/nbdN served by a tapdisk using its VHD's allocation", async () => {
  await withFixtureDevice(async (dir, f, { major, minor }) => {
    // The loop major plays NBD's part: /proc/devices names it nbd.
    const h = await fakeHost(
      dir,
      `Block devices:\n${major} nbd\n`,
      `tapdisk 4243 3 0 vhd:${dir}/wrong.vhd\ntapdisk 4242 3 0 vhd:${f.vhd}\n`,
    );
    await Deno.mkdir(`${dir}/blktap-control`);
    const listener = Deno.listen({ transport: "unix", path: `${dir}/blktap-control/nbd4242.3` });
    try {
      await Deno.symlink(`${dir}/blktap-control/nbd4242.3`, `${dir}/vdi-uuid`);
      await Deno.writeTextFile(
        `${h.run}/nonpersistent/nbd/6`,
        JSON.stringify({ path: `${dir}/vdi-uuid`, exportname: "vdi-uuid" }),
      );
      const nbd = await mknod(`${h.dev}/nbd6`, major, minor);
      const out = `${dir}/out.raw`;
      const r = await copyWith(["-src", nbd, "-json", ...h.flags], out);
      strictEqual(r.code, 0, r.stderr);
      ok(r.stderr.includes(`auto-detect src vhd: ${f.vhd}\n`), r.stderr);
      strictEqual(await h.tapCtlLog(), "list -p 4242 -m 3\n");
      ok(await sameBytes(out, f.raw), "copy differs from the device");
      strictEqual(r.stats.discovery?.route, "nbd");
      ok(r.stats.bytesRead <= VHD_ALLOCATED, `read ${r.stats.bytesRead}`);
    } finally {
      listener.close();
    }
  });
});

Deno.test("sparse_dd copies a blkfront disk through xenstore, tapdev and the VHD (real xenstored)", async () => {
  const xs = await startXenstored();
  try {
    await withFixtureDevice(async (dir, f, { major, minor }) => {
      // The guest's disk is the loop device; its backend is a tapdev of a made-up major.
      const h = await fakeHost(
        dir,
        `Block devices:\n${major} loop\n240 tapdev\n`,
        `tapdisk 77 9 0 vhd:${f.vhd}\n`,
      );
      await vbdKeys(xs, 0, await mknod(`${h.dev}/tapdev9`, 240, 9));
      await fakeBlkfront(h.sys, major, minor, "../../../vbd-51712");
      const xvda = await mknod(`${h.dev}/xvda`, major, minor);
      const out = `${dir}/out.raw`;
      const r = await copyWith(["-src", xvda, ...h.flags], out, xs.env);
      strictEqual(r.code, 0, r.stderr);
      ok(r.stderr.includes(`auto-detect src vhd: ${f.vhd}\n`), r.stderr);
      ok(await sameBytes(out, f.raw), "copy differs from the device");
      strictEqual(r.stats.discovery?.route, "blkfront+tapdev");
      strictEqual(r.stats.allocation, "vhd");
      ok(r.stats.bytesRead <= VHD_ALLOCATED, `read ${r.stats.bytesRead}`);
    });
  } finally {
    await xs.stop();
  }
});

Deno.test("sparse_dd uses SEEK_DATA on the raw file behind an aio tapdisk", async () => {
  await withFixtureDevice(async (dir, f, { major, minor }) => {
    const h = await fakeHost(dir, `${major} tapdev\n`, `tapdisk 1 ${minor} 0 aio:${f.raw}\n`);
    const tapdev = await mknod(`${h.dev}/tapdev${minor}`, major, minor);
    const out = `${dir}/out.raw`;
    const r = await copyWith(["-src", tapdev, ...h.flags], out);
    strictEqual(r.code, 0, r.stderr);
    ok(r.stderr.includes("auto-detect src vhd: None\n"), r.stderr);
    ok(r.stderr.includes(`auto-detect src raw: ${f.raw} (route tapdev)`), r.stderr);
    ok(await sameBytes(out, f.raw));
    strictEqual(r.stats.allocation, "raw-seek-data");
    strictEqual(r.stats.discovery?.raw, f.raw);
    // The raw conversion holds only the written data: 4 KiB + 64 KiB + 1 MiB.
    ok(r.stats.bytesRead < 2 * MiB, `read ${r.stats.bytesRead}`);
  });
});

Deno.test("sparse_dd falls back to a full, correct copy whenever discovery fails", async () => {
  const xs = await startXenstored();
  try {
    await withFixtureDevice(async (dir, f, { major, minor }) => {
      // A VHD of another size: tap-ctl pointing at it must not be believed.
      const other = `${dir}/other.vhd`;
      await qemuCreateVhd(other, "8M");
      const cases: {
        name: string;
        devices: string;
        table: string;
        keys?: number;
        reason: RegExp;
      }[] = [
        {
          name: "tap-ctl hangs",
          devices: `${major} tapdev\n`,
          table: "sleep 60\n",
          reason: /no answer within 500 ms \(killed\)/,
        },
        {
          name: "tap-ctl prints garbage",
          devices: `${major} tapdev\n`,
          table: `print *** glibc detected *** minor=${minor} vhd:${f.vhd}\nprint \x01\x02\n`,
          reason: new RegExp(`tap-ctl list has no entry for minor ${minor}`),
        },
        {
          name: "the VHD does not exist",
          devices: `${major} tapdev\n`,
          table: `tapdisk 1 ${minor} 0 vhd:${dir}/gone.vhd\n`,
          reason: new RegExp(`cannot read VHD ${dir}/gone.vhd`),
        },
        {
          name: "the VHD is another disk",
          devices: `${major} tapdev\n`,
          table: `tapdisk 1 ${minor} 0 vhd:${other}\n`,
          reason: /holds 8388608 bytes but .* has 16777216: not the same disk/,
        },
        {
          name: "xenstore keys missing",
          devices: `${major} loop\n240 tapdev\n`,
          table: `tapdisk 77 9 0 vhd:${f.vhd}\n`,
          reason: /xenstore key device\/vbd\/51712\/backend does not exist/,
        },
        {
          name: "backend in another domain",
          devices: `${major} loop\n240 tapdev\n`,
          table: `tapdisk 77 9 0 vhd:${f.vhd}\n`,
          keys: 3,
          reason: /backend is in domain 3, not ours \(0\)/,
        },
      ];
      for (const [i, c] of cases.entries()) {
        const h = await fakeHost(`${dir}/${i}`, c.devices, c.table);
        await xs.rm("/local/domain").catch(() => {});
        await xs.write({ "/local/domain/0/domid": "0" });
        if (c.keys !== undefined) {
          await vbdKeys(xs, c.keys, await mknod(`${h.dev}/tapdev9`, 240, 9));
        }
        await fakeBlkfront(h.sys, major, minor, "../../../vbd-51712");
        const src = await mknod(`${h.dev}/disk`, major, minor);
        const out = `${dir}/${i}/out.raw`;
        const r = await copyWith(
          ["-src", src, "-discovery-timeout", "0.5", ...h.flags],
          out,
          xs.env,
        );
        strictEqual(r.code, 0, `${c.name}: ${r.stderr}`);
        ok(r.stderr.includes("auto-detect src vhd: None\n"), `${c.name}: ${r.stderr}`);
        ok(c.reason.test(r.stderr), `${c.name}: ${r.stderr}`);
        ok(await sameBytes(out, f.raw), `${c.name}: copy differs`);
        strictEqual(r.stats.allocation, "none", c.name);
        strictEqual(r.stats.bytesRead, f.size, `${c.name}: a full copy reads everything`);
        ok(c.reason.test(r.stats.discovery?.reason ?? ""), c.name);

        // The same with -require-vhd: a clear failure (exit 3), nothing copied.
        const req = await runMain([
          "-src",
          src,
          "-dest",
          `${out}.req`,
          "-require-vhd",
          "-discovery-timeout",
          "0.5",
          ...h.flags,
        ], { env: xs.env });
        strictEqual(req.code, 3, `${c.name}: ${req.stderr}`);
        ok(
          req.stderr.startsWith(`sparse_dd: -require-vhd: no VHD found behind ${src}: `),
          `${c.name}: ${req.stderr}`,
        );
        ok(c.reason.test(req.stderr), `${c.name}: ${req.stderr}`);
        strictEqual(req.stderr.trim().split("\n").length, 1, `${c.name}: one line`);
      }
    });
  } finally {
    await xs.stop();
  }
});

Deno.test("-machine keeps stdout to framed progress; auto-detect goes to the stats, not stderr", async () => {
  await withFixtureDevice(async (dir, f, { major, minor }) => {
    const h = await fakeHost(dir, `${major} tapdev\n`, `tapdisk 1 ${minor} 0 vhd:${f.vhd}\n`);
    const tapdev = await mknod(`${h.dev}/tapdev${minor}`, major, minor);
    const r = await runMain([
      "-machine",
      "-src",
      tapdev,
      "-dest",
      `${dir}/out.raw`,
      "-size",
      String(f.size),
      "-require-vhd",
      "-json",
      ...h.flags,
    ]);
    strictEqual(r.code, 0, r.stderr);
    const stream = readMachineStream(r.stdout);
    ok(stream.ended && stream.trailing === 0, "only framed records on stdout");
    // xapi shows the whole of stderr to the user when a copy fails: notes go to syslog.
    ok(!r.stderr.includes("auto-detect"), r.stderr);
    const json = JSON.parse(r.stderr.split("\n").find((l) => l.startsWith("{"))!);
    strictEqual(json.discovery.vhd, f.vhd);
    ok(await sameBytes(`${dir}/out.raw`, f.raw));
  });
});

Deno.test("-require-vhd accepts a VHD file source and refuses a raw file", async () => {
  await withTempDir(async (dir) => {
    const f = await vhdFixture(dir);
    const vhd = await runMain(["-src", f.vhd, "-dest", `${dir}/o0`, "-require-vhd"]);
    strictEqual(vhd.code, 0, vhd.stderr);
    ok(await sameBytes(`${dir}/o0`, f.raw), "VHD file copy differs");
    const raw = await runMain(["-src", f.raw, "-dest", `${dir}/o1`, "-require-vhd"]);
    strictEqual(raw.code, 3, raw.stderr);
    strictEqual(
      raw.stderr,
      `sparse_dd: -require-vhd: no VHD found behind ${f.raw}: it is not a block device or a VHD file\n`,
    );
    const bad = await runMain(["-src", f.raw, "-dest", `${dir}/o2`, "-discovery-timeout", "x"]);
    strictEqual(bad.code, 1, bad.stderr);
    ok(bad.stderr.includes("invalid -discovery-timeout value 'x'"), bad.stderr);
  });
});

Deno.test("SIGTERM while tap-ctl hangs ends the run without waiting for the discovery timeout", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeFile(`${dir}/disk.img`, new Uint8Array(4 * 1024 * 1024));
    await withLoop(`${dir}/disk.img`, async (loop) => {
      const { major, minor } = await rdevOf(loop);
      const h = await fakeHost(`${dir}/host`, `${major} tapdev\n`, "sleep 120\n");
      const src = await mknod(`${h.dev}/tapdev${minor}`, major, minor);
      // Discovery would wait 60 s for tap-ctl; after SIGTERM the run must end well before that.
      const child = mainCommand(
        ["-machine", "-src", src, "-dest", `${dir}/out`, "-discovery-timeout", "60", ...h.flags],
      ).spawn();
      // Wait until tap-ctl has been called, then cancel as xapi does.
      while (!(await h.tapCtlLog()).includes("list")) await new Promise((r) => setTimeout(r, 50));
      child.kill("SIGTERM");
      let timer: ReturnType<typeof setTimeout> | undefined;
      const ended = await Promise.race([
        child.status.then(() => true),
        new Promise<boolean>((r) => timer = setTimeout(() => r(false), 30_000)),
      ]);
      clearTimeout(timer);
      if (!ended) child.kill("SIGKILL");
      const out = await child.output();
      ok(ended, "still running 30 s after SIGTERM");
      strictEqual(out.code, 143, new TextDecoder().decode(out.stderr));
      ok(!readMachineStream(out.stdout).ended, "no end record");
    });
  });
});
