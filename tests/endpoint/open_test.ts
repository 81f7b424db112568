/**
 * One writer per destination: a destination is claimed when it is opened (a block device with
 * O_EXCL, a file with an exclusive flock), so a second sparse_dd, or a mounted file system, is
 * refused instead of mixing two writers' data.
 */
import { match, ok, strictEqual } from "node:assert/strict";
import { mainCommand, runMain, sameBytes, sh, withLoop, withTempDir } from "../_support/helpers.ts";

const NO_CONFIG = ["-config", "/nonexistent/sparse_dd.conf"];
const MiB = 1024 * 1024;

async function waitFor(what: string, test: () => Promise<boolean>, ms = 30_000): Promise<void> {
  for (let waited = 0; waited < ms; waited += 50) {
    if (await test()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** A slow NBD source (nbdkit's pattern plugin behind the delay filter) for `fn`. */
async function withSlowNbd<T>(dir: string, fn: (uri: string) => Promise<T>): Promise<T> {
  const sock = `${dir}/slow.sock`;
  const child = new Deno.Command("nbdkit", {
    args: ["-f", "-U", sock, "--filter=delay", "pattern", "size=64M", "rdelay=500ms"],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    await waitFor("nbdkit's socket", () => Deno.stat(sock).then(() => true, () => false));
    return await fn(`nbd+unix:///?socket=${sock}`);
  } finally {
    child.kill("SIGTERM");
    await child.status;
  }
}

Deno.test("a second sparse_dd aimed at a file another one is writing is refused (exit 4)", async () => {
  await withTempDir(async (dir) => {
    const dest = `${dir}/d.raw`;
    const other = `${dir}/other.raw`;
    await Deno.writeFile(other, new Uint8Array(MiB).fill(0x77));
    await withSlowNbd(dir, async (uri) => {
      const first = mainCommand([
        "-src",
        uri,
        "-dest",
        dest,
        "-size",
        String(64 * MiB),
        ...NO_CONFIG,
      ])
        .spawn();
      try {
        // The first copy has created (and claimed) the destination and is reading slowly.
        await waitFor(
          "the first copy's destination",
          () => Deno.stat(dest).then((s) => s.size === 64 * MiB, () => false),
        );
        const r = await runMain(["-src", other, "-dest", dest, ...NO_CONFIG]);
        strictEqual(r.code, 4, r.stderr);
        match(r.stderr, /cannot open .*d\.raw: another sparse_dd .* is writing to it/);
        const head = new Uint8Array(MiB);
        const f = await Deno.open(dest);
        await f.read(head);
        f.close();
        ok(!head.every((b) => b === 0x77), "the second copy wrote nothing");
      } finally {
        first.kill("SIGTERM");
        await first.output();
      }
    });
    // Once the first one is gone, the destination is free again.
    const r = await runMain(["-src", other, "-dest", dest, "-size", String(MiB), ...NO_CONFIG]);
    strictEqual(r.code, 0, r.stderr);
  });
});

Deno.test("a mounted block device is refused as a destination, untouched (O_EXCL)", async () => {
  await withTempDir(async (dir) => {
    const img = `${dir}/fs.img`;
    const f = await Deno.open(img, { write: true, create: true });
    await f.truncate(16 * MiB);
    f.close();
    await sh("mkfs.ext4", ["-q", "-F", img]);
    const src = `${dir}/src.raw`;
    await Deno.writeFile(src, new Uint8Array(16 * MiB).fill(0x42));
    const mnt = `${dir}/mnt`;
    await Deno.mkdir(mnt);
    await withLoop(img, async (dev) => {
      await sh("mount", [dev, mnt]);
      try {
        await Deno.writeTextFile(`${mnt}/keep.txt`, "precious");
        const r = await runMain(["-src", src, "-dest", dev, ...NO_CONFIG]);
        strictEqual(r.code, 4, r.stderr);
        match(r.stderr, /cannot open \/dev\/loop\d+: the device is in use \(mounted/);
      } finally {
        await sh("umount", [mnt]);
      }
      // The mounted file system writes its own metadata meanwhile: look for the source's bytes.
      const onDisk = await Deno.readFile(dev);
      for (let at = 0; at < onDisk.length; at += 4096) {
        ok(!onDisk.subarray(at, at + 4096).every((b) => b === 0x42), `source data at ${at}`);
      }
      await sh("mount", [dev, mnt]);
      try {
        strictEqual(await Deno.readTextFile(`${mnt}/keep.txt`), "precious");
      } finally {
        await sh("umount", [mnt]);
      }
      // Unmounted, it is an ordinary destination (with two threads, which share the claim).
      const r = await runMain(["-src", src, "-dest", dev, "-threads", "2", ...NO_CONFIG]);
      strictEqual(r.code, 0, r.stderr);
      ok(await sameBytes(src, dev, 16 * MiB));
    });
  });
});
