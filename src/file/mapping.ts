/**
 * Lending a regular file's bytes without copying them: the page cache's pages are mapped
 * (`mmap`) and scanned and written from where they are. On a warm cache, copying them into a
 * buffer with `pread` was the largest CPU cost of a copy.
 *
 * The file is mapped in large windows, each seen through one ArrayBuffer made once: every
 * ArrayBuffer over outside memory counts towards V8's external memory, and one per request
 * brought on a full garbage collection every few dozen requests. Pages behind the lowest view
 * still lent are dropped from the mapping in batches (`MADV_DONTNEED`: one TLB flush per batch,
 * the page cache keeps them), so the process's RSS stays bounded whatever the file's size.
 *
 * Touching a mapped page past the file's end raises SIGBUS, which kills the process; a `pwrite`
 * from one fails with EFAULT. So pages are lent only under a read lease (`F_SETLEASE`): another
 * process that truncates the file, or opens it for writing, waits until the lease is given up.
 * The lease is held only while views are lent, and a view is lent only while it is not being
 * broken: once it is, nothing more is lent (the caller reads with `pread`, which reports a
 * shorter file as an error at its offset) and the lease is given up as soon as the views in use
 * are back. Without a lease (the file is open for writing elsewhere) nothing is lent. (The kernel
 * takes a lease back by force after `lease-break-time`, 45 s: no view is lent that long.)
 *
 * @example
 * ```ts
 * import { libc, O_RDONLY } from "./libc.ts";
 * import { MappedFile } from "./mapping.ts";
 * const c = libc()!;
 * const fd = c.open("/tmp/disk.raw", O_RDONLY);
 * const file = new MappedFile(c, fd, (await Deno.stat("/tmp/disk.raw")).size);
 * const view = await file.view(4096, 65536); // undefined: read instead
 * view?.bytes[0];
 * view?.release();
 * file.close();
 * ```
 *
 * @module
 */

import type { DiskView } from "../core/disk.ts";
import type { Libc } from "./libc.ts";

/** A multiple of every page size in use (4, 16 and 64 KiB), as mmap's offsets must be. */
const PAGE = 65536;
const MiB = 1024 * 1024;

interface Window {
  /** File offset of the mapping's first byte. */
  start: number;
  /** A mapping made for one long view, not a window that later views may share. */
  own: boolean;
  span: number;
  p: Deno.PointerObject;
  bytes: Uint8Array;
  /** File offsets of the views lent and not yet released. */
  lent: Set<{ offset: number }>;
  /** Released pages not yet dropped from the mapping: `[dropFrom, dropTo)`, file offsets. */
  dropFrom: number;
  dropTo: number;
  /** The latest range being faulted in ahead of the views, and whether that succeeds. */
  ahead?: { from: number; to: number; done: Promise<boolean> };
}

/** A read-only file lent by mapping it (see the module documentation). */
export class MappedFile {
  readonly #windows: Window[] = [];
  /** The read lease: held, being broken (lend nothing more), or not held. */
  #lease: "held" | "breaking" | "none" = "none";

  constructor(
    readonly c: Libc,
    readonly fd: number,
    /** The file's size when opened: nothing past it is mapped. */
    readonly size: number,
    /** Bytes per window. */
    readonly window: number = 1024 * MiB,
    /** Bytes a window reaches past its end, so that a view starting in it fits in it. */
    readonly overlap: number = 8 * MiB,
    /** Released bytes dropped from the mapping at a time. */
    readonly dropBatch: number = 16 * MiB,
    /** Bytes faulted in at a time ahead of views read front to back. */
    readonly populateBatch: number = 8 * MiB,
  ) {}

  /**
   * `[offset, offset + length)` faulted in and lent; `undefined` when that fails (outside the
   * file, an I/O error): the caller then reads the range, and learns the error that way. With
   * `until`, up to a batch of the bytes that follow, to there, are faulted in at the same time.
   */
  async view(offset: number, length: number, until?: number): Promise<DiskView | undefined> {
    if (length <= 0 || offset < 0 || offset + length > this.size) return undefined;
    if (!this.#leased()) return undefined;
    const start = offset - offset % this.window;
    const w = offset + length <= start + this.window + this.overlap
      ? this.#windowAt(start)
      : this.#map(offset - offset % PAGE, offset + length - (offset - offset % PAGE), true);
    if (!w) {
      this.#giveUpLease();
      return undefined;
    }
    const token = { offset };
    w.lent.add(token);
    let lent = true;
    const release = () => {
      if (!lent) return;
      lent = false;
      w.lent.delete(token);
      this.#released(w, offset, length);
      // A process waiting to truncate or write the file goes on once nothing is lent.
      this.#giveUpLease();
    };
    if (!await this.#populate(w, offset, offset + length, until ?? offset + length)) {
      release();
      return undefined;
    }
    return {
      bytes: w.bytes.subarray(offset - w.start, offset - w.start + length),
      release,
      // The SIMD scanner only reaches WebAssembly memory; libc's memcmp reads the mapping.
      isZero: (buf, from, to) => this.c.isZero(buf, from, to),
      stale: () => this.#stale(offset, length),
      revoked: () => !this.#stillLeased(),
    };
  }

  /** Why `[offset, offset + length)` is no longer in the file, or `undefined` while it is. */
  #stale(offset: number, length: number): string | undefined {
    let now: number;
    try {
      now = this.c.size(this.fd);
    } catch {
      return undefined;
    }
    return now < offset + length
      ? `the file was cut to ${now} bytes during the copy (it had ${this.size})`
      : undefined;
  }

  /**
   * True when a view may be lent: the read lease is held (taken now if need be) and not being
   * broken. Once it is being broken, nothing is lent until it has been given up.
   */
  #leased(): boolean {
    if (this.#lease === "none") this.#lease = this.c.takeReadLease(this.fd) ? "held" : "none";
    if (!this.#stillLeased()) this.#giveUpLease();
    return this.#lease === "held";
  }

  /** True while the lease is held and not being broken (lent views may be touched). */
  #stillLeased(): boolean {
    if (this.#lease === "held" && this.c.leaseBroken(this.fd)) this.#lease = "breaking";
    return this.#lease === "held";
  }

  /**
   * Gives the lease up once no view is lent, so that a process waiting to truncate or write the
   * file waits no longer than the views in use: when it is being broken, and whenever the
   * copy has nothing lent (it may go on without lending for a long time: zeroes, other lanes).
   */
  #giveUpLease(): void {
    if (this.#lease === "none") return;
    if (this.#windows.some((w) => w.lent.size > 0)) return;
    this.c.releaseLease(this.fd);
    this.#lease = "none";
  }

  /**
   * Faults in `[from, to)` of `w`, and on towards `until` (no further: pages of a hole would be
   * made only to be dropped). Each call to the thread pool costs tens of microseconds of this
   * thread's time, so views read front to back share one call per batch.
   */
  #populate(w: Window, from: number, to: number, until: number): Promise<boolean> {
    const a = w.ahead;
    if (a && from >= a.from && to <= a.to) return a.done;
    // Whole pages: the range's first page may start before it.
    const start = from - from % PAGE;
    // To the end of an aligned batch: lanes claim aligned segments, so a batch never runs into
    // another lane's part of the file.
    const b = this.populateBatch;
    const end = Math.min(w.start + w.span, Math.max(to, Math.min(until, Math.ceil(to / b) * b)));
    const done = this.c.populate(Deno.UnsafePointer.offset(w.p, start - w.start)!, end - start);
    // A batch that fails may fail for a page past the view: the view is then tried alone.
    const ahead = { from: start, to: end, done };
    w.ahead = ahead;
    return done.then((ok) => {
      if (ok) return true;
      if (w.ahead === ahead) w.ahead = undefined;
      if (end === to) return false;
      return this.c.populate(Deno.UnsafePointer.offset(w.p, start - w.start)!, to - start);
    });
  }

  /** Unmaps everything, lent or not, and gives up the lease: call only once no view is in use. */
  close(): void {
    for (const w of this.#windows.splice(0)) this.c.munmap(w.p, w.span);
    if (this.#lease !== "none") this.c.releaseLease(this.fd);
    this.#lease = "none";
  }

  #windowAt(start: number): Window | undefined {
    const found = this.#windows.find((w) => w.start === start && !w.own);
    if (found) return found;
    return this.#map(start, Math.min(this.window + this.overlap, this.size - start), false);
  }

  #map(start: number, span: number, own: boolean): Window | undefined {
    const p = this.c.mmap(this.fd, start, span);
    if (p === null) return undefined;
    const bytes = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(p, span));
    const w = {
      start,
      own,
      span,
      p,
      bytes,
      lent: new Set<{ offset: number }>(),
      dropFrom: 0,
      dropTo: 0,
    };
    this.#windows.push(w);
    this.#retire();
    return w;
  }

  /** Drops released pages below the lowest view still lent, a batch at a time. */
  #released(w: Window, offset: number, length: number): void {
    const from = offset - offset % PAGE;
    const to = offset + length;
    if (w.dropTo <= w.dropFrom) {
      w.dropFrom = from;
      w.dropTo = to;
    } else {
      w.dropFrom = Math.min(w.dropFrom, from);
      w.dropTo = Math.max(w.dropTo, to);
    }
    let low = Infinity;
    for (const t of w.lent) low = Math.min(low, t.offset);
    // Whole pages only, below the lowest view still lent (its first page may hold bytes of the
    // views before it).
    const at = Math.max(w.dropFrom - w.dropFrom % PAGE, w.start);
    let end = Math.min(w.dropTo, low, w.start + w.span);
    end -= (end - w.start) % PAGE;
    if (end - at >= this.dropBatch || (w.lent.size === 0 && end > at)) {
      this.c.unmapPages(Deno.UnsafePointer.offset(w.p, at - w.start)!, end - at);
      w.dropFrom = end;
    }
    this.#retire();
  }

  /** Unmaps windows no view uses, except the newest (the next views are likely in it). */
  #retire(): void {
    const newest = this.#windows[this.#windows.length - 1];
    for (let i = this.#windows.length - 1; i >= 0; i--) {
      const w = this.#windows[i];
      if (w.lent.size === 0 && w !== newest) {
        this.c.munmap(w.p, w.span);
        this.#windows.splice(i, 1);
      }
    }
  }
}
