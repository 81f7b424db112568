import assert from "node:assert/strict";
import {
  addressOf,
  alignedBuffer,
  ErrnoError,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  type Libc,
  libc,
  O_CREAT,
  O_DIRECT,
  O_RDONLY,
  O_RDWR,
  POSIX_FADV_SEQUENTIAL,
} from "../../src/file/libc.ts";
import { allocatedBytes, ROOT, sh, withLoop, withTempDir } from "../_support/helpers.ts";

const MiB = 1 << 20;

function c(): Libc {
  const l = libc();
  assert.ok(l, "FFI must be available under -A");
  return l;
}

async function withFd<T>(path: string, flags: number, fn: (fd: number) => Promise<T>) {
  const fd = c().open(path, flags);
  try {
    return await fn(fd);
  } finally {
    c().close(fd);
  }
}

/** True when `buf`'s address, length and `offset` are multiples of `alignment` (O_DIRECT's rule). */
function isAligned(buf: Uint8Array, alignment: number, offset = 0): boolean {
  if (buf.length % alignment !== 0 || offset % alignment !== 0) return false;
  const a = addressOf(buf);
  return a !== undefined && a % BigInt(alignment) === 0n;
}

Deno.test("libc is unavailable, not an error, without FFI permission", async () => {
  await withTempDir(async (dir) => {
    const script = `${dir}/probe.ts`;
    await Deno.writeTextFile(
      script,
      `import { alignedBuffer, libc } from "${ROOT}/src/file/libc.ts";\n` +
        `console.log(libc() === undefined, alignedBuffer(4096).length);\n`,
    );
    const out = await sh(Deno.execPath(), [
      "run",
      "--no-lock",
      `--allow-read=${ROOT},${dir}`,
      script,
    ]);
    assert.equal(out.trim(), "true 4096");
  });
});

Deno.test("pwrite then pread round-trips, on another thread and in sync", async () => {
  await withTempDir(async (dir) => {
    await withFd(`${dir}/f`, O_RDWR | O_CREAT, async (fd) => {
      const data = new Uint8Array(3 * MiB).map((_, i) => i * 7);
      await c().pwriteAll(fd, data, 4096);
      const back = new Uint8Array(data.length);
      await c().preadAll(fd, back, 4096);
      assert.deepEqual(back, data);
      const small = new Uint8Array(10);
      assert.equal(c().preadSync(fd, small, 4096 + 5), 10);
      assert.deepEqual(small, data.subarray(5, 15));
      assert.equal(c().pwriteSync(fd, small, 0), 10);
      assert.equal(c().size(fd), 4096 + 3 * MiB);
      c().fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
      await c().fdatasync(fd);
    });
  });
});

Deno.test("reading past the end fails with 'unexpected end of file'", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeFile(`${dir}/f`, new Uint8Array(100));
    await withFd(`${dir}/f`, O_RDONLY, async (fd) => {
      await assert.rejects(c().preadAll(fd, new Uint8Array(200), 0), /unexpected end of file/);
    });
  });
});

Deno.test("failures carry errno, its name and the strerror text", async () => {
  await withTempDir(async (dir) => {
    let err: unknown;
    try {
      c().open(`${dir}/missing`, O_RDONLY);
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof ErrnoError);
    assert.equal(err.code, "ENOENT");
    assert.equal(err.errno, 2);
    assert.equal(err.message, "No such file or directory");
    // A nonblocking call loses errno on its worker thread; the wrapper still reports it.
    await assert.rejects(c().pread(987654, new Uint8Array(4), 0), (e: unknown) => {
      return e instanceof ErrnoError && e.code === "EBADF" && e.syscall === "pread";
    });
    await assert.rejects(c().pwrite(987654, new Uint8Array(4), 0), /Bad file descriptor/);
  });
});

Deno.test("SEEK_DATA / SEEK_HOLE list exactly the written extents of a sparse file", async () => {
  await withTempDir(async (dir) => {
    await withFd(`${dir}/s`, O_RDWR | O_CREAT, async (fd) => {
      c().ftruncate(fd, 64 * MiB);
      const block = new Uint8Array(MiB).fill(1);
      for (const at of [2, 3, 10, 63]) await c().pwriteAll(fd, block, at * MiB);
      const extents: [number, number][] = [];
      for (let at = c().seekData(fd, 0); at !== undefined;) {
        const hole = c().seekHole(fd, at);
        extents.push([at / MiB, hole / MiB]);
        at = c().seekData(fd, hole);
      }
      assert.deepEqual(extents, [[2, 4], [10, 11], [63, 64]]);
      assert.equal(c().seekHole(fd, 63 * MiB + 1), 64 * MiB);
    });
  });
});

Deno.test("fallocate punches holes and zeroes ranges", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/f`;
    await Deno.writeFile(path, new Uint8Array(4 * MiB).fill(0xff));
    await withFd(path, O_RDWR, async (fd) => {
      await c().fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, MiB, MiB);
      c().fallocateSync(fd, FALLOC_FL_ZERO_RANGE, 3 * MiB, 4096);
      await c().fdatasync(fd);
    });
    const back = await Deno.readFile(path);
    assert.equal(back.length, 4 * MiB);
    assert.ok(back.subarray(MiB, 2 * MiB).every((b) => b === 0));
    assert.ok(back.subarray(3 * MiB, 3 * MiB + 4096).every((b) => b === 0));
    assert.equal(back[3 * MiB + 4096], 0xff);
    assert.equal(back[MiB - 1], 0xff);
    assert.equal(await allocatedBytes(path), 3 * MiB);
  });
});

Deno.test("aligned buffers start at the requested alignment", () => {
  for (const a of [512, 4096, 65536]) {
    const b = alignedBuffer(3 * a + 5, a);
    assert.equal(b.length, 3 * a + 5);
    assert.equal(addressOf(b)! % BigInt(a), 0n);
    assert.ok(b.every((x) => x === 0));
  }
  assert.ok(isAligned(alignedBuffer(8192), 4096));
  assert.ok(!isAligned(alignedBuffer(8192).subarray(512), 4096));
  assert.ok(!isAligned(alignedBuffer(8192), 4096, 100));
  assert.throws(() => alignedBuffer(10, 3000), RangeError);
});

Deno.test("O_DIRECT reads need aligned buffers (EINVAL otherwise)", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeFile(`${dir}/f`, new Uint8Array(MiB).fill(3));
    await withFd(`${dir}/f`, O_RDONLY | O_DIRECT, async (fd) => {
      const buf = alignedBuffer(MiB);
      await c().preadAll(fd, buf, 0);
      assert.equal(buf[MiB - 1], 3);
      await assert.rejects(c().pread(fd, buf.subarray(1), 0), (e: unknown) => {
        return e instanceof ErrnoError && e.code === "EINVAL";
      });
    });
  });
});

Deno.test("block device ioctls: size, sector size, BLKZEROOUT, BLKDISCARD; no SEEK_DATA", async () => {
  await withTempDir(async (dir) => {
    const img = `${dir}/img`;
    await Deno.writeFile(img, new Uint8Array(8 * MiB).fill(0xaa));
    await withLoop(img, async (dev) => {
      await withFd(dev, O_RDWR | O_DIRECT, async (fd) => {
        assert.equal(c().blkGetSize64(fd), 8 * MiB);
        assert.equal(c().size(fd), 8 * MiB);
        assert.ok([512, 4096].includes(c().blkSectorSize(fd)));
        await c().blkZeroOut(fd, MiB, MiB);
        await c().blkDiscard(fd, 4 * MiB, MiB);
        await assert.rejects(c().blkZeroOut(fd, 1, 512), (e: unknown) => {
          return e instanceof ErrnoError && e.code === "EINVAL";
        });
        assert.throws(() => c().seekData(fd, 0), (e: unknown) => {
          return e instanceof ErrnoError && e.code === "EINVAL";
        });
        const buf = alignedBuffer(MiB);
        await c().preadAll(fd, buf, MiB);
        assert.ok(buf.every((b) => b === 0));
        await c().preadAll(fd, buf, 4 * MiB);
        assert.ok(buf.every((b) => b === 0), "discard on a loop device punches a hole");
        await c().preadAll(fd, buf, 2 * MiB);
        assert.ok(buf.every((b) => b === 0xaa));
      });
    });
    const info = await Deno.stat(img);
    assert.equal(info.size, 8 * MiB);
  });
});

Deno.test("BLKGETSIZE64 on a regular file fails with ENOTTY", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeFile(`${dir}/f`, new Uint8Array(10));
    await withFd(`${dir}/f`, O_RDONLY, (fd) => {
      assert.throws(() => c().blkGetSize64(fd), (e: unknown) => {
        return e instanceof ErrnoError && e.code === "ENOTTY";
      });
      return Promise.resolve();
    });
  });
});
