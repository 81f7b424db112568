/**
 * Progress reporting. With `-machine`, stdout carries only xapi's framed records: a 12-byte
 * header (u64 little-endian offset, always 0; u32 little-endian length) and the ASCII payload
 * `Progress: N`, ending with an all-zero header. xapi parses every payload with
 * `Progress: %d` and kills the copy on anything else, so nothing else may reach stdout.
 *
 * @module
 */

const encoder = new TextEncoder();

/** The all-zero end record xapi waits for after the last progress record. */
export const END_RECORD: Uint8Array = new Uint8Array(12);

/**
 * One framed record carrying `payload`.
 *
 * @example
 * ```ts
 * import { encodeRecord } from "./progress.ts";
 * const r = encodeRecord("Progress: 42");
 * r.length; // 24: 12-byte header + 12 bytes of text
 * ```
 */
export function encodeRecord(payload: string): Uint8Array {
  const body = encoder.encode(payload);
  const out = new Uint8Array(12 + body.length);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, 0n, true);
  view.setUint32(8, body.length, true);
  out.set(body, 12);
  return out;
}

/**
 * Reads xapi's framed `-machine` stream as it arrives, exactly as xapi parses it: 12-byte headers
 * (u64 LE offset, u32 LE length) and `Progress: N` payloads until the all-zero end record.
 * Anything else (another payload, an end record with an offset, a record over 4 KiB) is an error
 * that sticks: every later `push` throws it again.
 *
 * @example
 * ```ts
 * import { encodeRecord, END_RECORD, RecordDecoder } from "./progress.ts";
 * const d = new RecordDecoder();
 * d.push(encodeRecord("Progress: 42")); // [42]
 * d.push(END_RECORD); // []
 * d.ended; // true
 * ```
 */
export class RecordDecoder {
  #buf = new Uint8Array(0);
  #error?: Error;
  /** Set once the end record has been read. */
  ended = false;
  /** Bytes that came after the end record. */
  trailing = 0;

  /** Appends bytes; returns the percents of the records they complete. */
  push(chunk: Uint8Array): number[] {
    if (this.#error) throw this.#error;
    if (this.ended) {
      this.trailing += chunk.length;
      return [];
    }
    const bytes = new Uint8Array(this.#buf.length + chunk.length);
    bytes.set(this.#buf);
    bytes.set(chunk, this.#buf.length);
    const view = new DataView(bytes.buffer);
    const out: number[] = [];
    let pos = 0;
    try {
      while (!this.ended && pos + 12 <= bytes.length) {
        const offset = view.getBigUint64(pos, true);
        const len = view.getUint32(pos + 8, true);
        if (len === 0) {
          if (offset !== 0n) throw new Error(`end record with offset ${offset} at byte ${pos}`);
          this.ended = true;
          pos += 12;
          this.trailing = bytes.length - pos;
          pos = bytes.length;
          break;
        }
        if (len > 4096) throw new Error(`record of ${len} bytes at byte ${pos}`);
        if (pos + 12 + len > bytes.length) break;
        const text = new TextDecoder().decode(bytes.subarray(pos + 12, pos + 12 + len));
        const m = /^Progress: (-?\d+)$/.exec(text);
        if (!m) throw new Error(`payload does not match 'Progress: %d': ${JSON.stringify(text)}`);
        out.push(Number(m[1]));
        pos += 12 + len;
      }
    } catch (err) {
      this.#error = err as Error;
      throw err;
    }
    this.#buf = bytes.slice(pos);
    return out;
  }

  /** Throws when the stream stopped inside a record. */
  finish(): void {
    if (this.#error) throw this.#error;
    if (this.#buf.length > 0) {
      throw new Error(`stream ends inside a record (${this.#buf.length} bytes)`);
    }
  }
}

/**
 * The whole percent of `done` out of `total`, never 100 before the end (xapi shows it to users).
 *
 * @example
 * ```ts
 * import { percentOf } from "./progress.ts";
 * percentOf(1, 3);  // 33
 * percentOf(0, 0);  // 100: nothing to do is done
 * ```
 */
export function percentOf(done: number, total: number): number {
  if (total <= 0 || done >= total) return 100;
  return Math.min(99, Math.floor((done * 100) / total));
}

/** Something that takes progress reports. */
export interface ProgressReporter {
  /** Work done so far, out of `total` bytes. */
  update(done: number, total: number): void;
  /** The copy succeeded. */
  finish(): void;
}

function writeAll(fd: { writeSync(p: Uint8Array): number }, bytes: Uint8Array): void {
  let off = 0;
  while (off < bytes.length) off += fd.writeSync(bytes.subarray(off));
}

/**
 * xapi's `-machine` protocol: `Progress: 0` first, one record per change of the whole percent,
 * `Progress: 100` and the end record on success.
 *
 * @example
 * ```ts
 * import { MachineProgress } from "./progress.ts";
 * const out: Uint8Array[] = [];
 * const p = new MachineProgress((b) => out.push(b));
 * p.update(0, 10); p.update(5, 10); p.finish();
 * out.length; // 4: 0, 50, 100, end
 * ```
 */
export class MachineProgress implements ProgressReporter {
  #last = -1;
  constructor(
    readonly sink: (bytes: Uint8Array) => void = (b) => writeAll(Deno.stdout, b),
  ) {}

  update(done: number, total: number): void {
    this.#emit(percentOf(done, total));
  }

  #emit(percent: number): void {
    if (percent === this.#last) return;
    this.#last = percent;
    this.sink(encodeRecord(`Progress: ${percent}`));
  }

  finish(): void {
    this.#emit(100);
    this.sink(END_RECORD);
  }
}

/** A live bar on stderr for people, redrawn at most ten times a second. */
export class HumanProgress implements ProgressReporter {
  #lastDraw = 0;
  #drawn = false;
  constructor(
    readonly sink: (bytes: Uint8Array) => void = (b) => writeAll(Deno.stderr, b),
    readonly width = 40,
  ) {}

  update(done: number, total: number): void {
    const now = performance.now();
    if (now - this.#lastDraw < 100 && done < total) return;
    this.#lastDraw = now;
    this.#draw(percentOf(done, total), done);
  }

  #draw(percent: number, done: number): void {
    const fill = Math.round((percent / 100) * this.width);
    const bar = "#".repeat(fill) + ".".repeat(this.width - fill);
    this.sink(encoder.encode(`\r[${bar}] ${String(percent).padStart(3)}% ${formatBytes(done)}`));
    this.#drawn = true;
  }

  finish(): void {
    if (this.#drawn) this.sink(encoder.encode("\n"));
  }
}

/** Reports nothing. */
export class NoProgress implements ProgressReporter {
  update(): void {}
  finish(): void {}
}

/**
 * Bytes for people: `1.50 GiB`.
 *
 * @example
 * ```ts
 * import { formatBytes } from "./progress.ts";
 * formatBytes(1536); // "1.50 KiB"
 * ```
 */
export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(2)} ${units[u]}`;
}
