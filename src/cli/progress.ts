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
  /** The copy ended either way: release what the reporter holds (optional). */
  close?(): void;
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

/** What the bar shows at one moment (pure input of {@linkcode formatBar}). */
export interface BarState {
  /** Bytes of the disk covered so far, of `size`. */
  covered: number;
  /** Bytes of the disk the copy covers, `[0, size)`. */
  size: number;
  /** Whole percent done (as the `-machine` records). */
  percent: number;
  /** Recent rate in covered bytes per second; `undefined` while not known yet. */
  rate?: number;
  /** Seconds since the copy started. */
  elapsed: number;
  /** Terminal width in columns. */
  columns: number;
}

/**
 * `h:mm:ss` or `m:ss`.
 *
 * @example
 * ```ts
 * import { formatDuration } from "./progress.ts";
 * formatDuration(75); // "1:15"
 * ```
 */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

/**
 * One line of the bar, at most `columns - 1` characters (writing the last column makes many
 * terminals wrap): `[####....]  42%  4.20 GiB / 10.00 GiB  310.5 MiB/s  ETA 0:19  0:14`. Parts
 * are dropped from the right as the terminal narrows; the bar itself shrinks first.
 *
 * @example
 * ```ts
 * import { formatBar } from "./progress.ts";
 * formatBar({ covered: 512, size: 1024, percent: 50, elapsed: 1, columns: 30 }).length <= 29; // true
 * ```
 */
export function formatBar(st: BarState): string {
  const max = Math.max(1, st.columns - 1);
  const pct = `${String(st.percent).padStart(3)}%`;
  const count = `${formatBytes(st.covered)} / ${formatBytes(st.size)}`;
  const known = st.rate !== undefined && st.rate > 0;
  const rate = known ? `${formatBytes(st.rate!)}/s` : "--/s";
  const left = Math.max(0, st.size - st.covered);
  const eta = `ETA ${
    left === 0 ? formatDuration(0) : known ? formatDuration(left / st.rate!) : "--:--"
  }`;
  const elapsed = formatDuration(st.elapsed);
  // The most informative layout that fits, with a bar of at least 10 cells when there is one.
  const layouts = [
    [pct, count, rate, eta, elapsed],
    [pct, count, rate, eta],
    [pct, count, eta],
    [pct, formatBytes(st.covered), eta],
    [pct, eta],
    [pct],
  ];
  for (const parts of layouts) {
    const text = parts.join("  ");
    const room = max - text.length - 3; // "[" + bar + "] "
    if (room >= 10) {
      const cells = Math.min(room, 40);
      const fill = Math.round((st.percent / 100) * cells);
      return `[${"#".repeat(fill)}${".".repeat(cells - fill)}] ${text}`;
    }
  }
  for (const parts of layouts) {
    const text = parts.join("  ");
    if (text.length <= max) return text;
  }
  return pct.trim().slice(0, max);
}

/** Clears from the cursor to the end of the line. */
const CLEAR_EOL = "\x1b[K";

/** The line the bar occupies on stderr, so that any other stderr line ends it first. */
let openLine: HumanProgress | undefined;

/**
 * Ends the bar's line (a newline after it) before something else is written to stderr, so an
 * error or note starts on a line of its own. The next update draws the bar again below it.
 *
 * @example
 * ```ts
 * import { endProgressLine } from "./progress.ts";
 * endProgressLine(); // no bar drawn: writes nothing
 * ```
 */
export function endProgressLine(): void {
  openLine?.breakLine();
}

/** Options of {@linkcode HumanProgress}, for tests: where it writes and what it measures. */
export interface HumanProgressOptions {
  /** Bytes of the disk the copy covers; the bar counts covered bytes of it. */
  size: number;
  sink?: (bytes: Uint8Array) => void;
  /** The terminal's width now. */
  columns?: () => number;
  /** Milliseconds, monotonic. */
  now?: () => number;
  /** Redraws on terminal resizes (SIGWINCH); off in tests. */
  followResizes?: boolean;
}

/** The terminal width of stderr (or stdout), 80 when neither is a terminal. */
function terminalColumns(): number {
  try {
    return Deno.consoleSize().columns || 80;
  } catch {
    return 80;
  }
}

/**
 * A live bar on stderr for people, redrawn at most ten times a second and on every terminal
 * resize. It counts bytes of the disk covered (`[0, size)`), whatever the destination: work that
 * is skipped (zero runs on a zero destination, `-base` ranges) is credited in proportion as the
 * copy goes, so the count, the percent and the ETA agree.
 *
 * @example
 * ```ts
 * import { HumanProgress } from "./progress.ts";
 * const out: Uint8Array[] = [];
 * const p = new HumanProgress({ size: 100, sink: (b) => out.push(b), columns: () => 80 });
 * p.update(50, 100); p.finish();
 * ```
 */
export class HumanProgress implements ProgressReporter {
  readonly #sink: (bytes: Uint8Array) => void;
  readonly #columns: () => number;
  readonly #now: () => number;
  readonly #size: number;
  readonly #started: number;
  #lastDraw = -Infinity;
  /** Length of the line on screen (0: none is open). */
  #drawnLength = 0;
  #drawnColumns = 0;
  #drawnPercent = -1;
  #done = 0;
  #total = 0;
  /** Recent (time, covered) samples for the current rate. */
  #samples: Array<[number, number]> = [];
  #onResize?: () => void;

  constructor(options: HumanProgressOptions) {
    this.#size = options.size;
    this.#sink = options.sink ?? ((b) => writeAll(Deno.stderr, b));
    this.#columns = options.columns ?? terminalColumns;
    this.#now = options.now ?? (() => performance.now());
    this.#started = this.#now();
    if (options.followResizes) {
      this.#onResize = () => this.#draw(true);
      try {
        Deno.addSignalListener("SIGWINCH", this.#onResize);
      } catch {
        this.#onResize = undefined;
      }
    }
    openLine = this;
  }

  update(done: number, total: number): void {
    this.#done = done;
    this.#total = total;
    const now = this.#now();
    this.#sample(now);
    if (now - this.#lastDraw < 100 && done < total) return;
    this.#draw(false);
  }

  #covered(): number {
    if (this.#total <= 0 || this.#done >= this.#total) return this.#size;
    return Math.floor((this.#size * this.#done) / this.#total);
  }

  #sample(now: number): void {
    this.#samples.push([now, this.#covered()]);
    // A rate over the last few seconds: current, yet steady enough to read.
    while (this.#samples.length > 2 && now - this.#samples[1][0] >= 3000) this.#samples.shift();
  }

  #rate(): number | undefined {
    const first = this.#samples[0];
    const last = this.#samples[this.#samples.length - 1];
    const dt = (last[0] - first[0]) / 1000;
    return dt >= 0.2 ? (last[1] - first[1]) / dt : undefined;
  }

  #draw(resized: boolean): void {
    const now = this.#now();
    this.#lastDraw = now;
    const columns = this.#columns();
    let prefix = "\r";
    // A narrower terminal may have wrapped the line drawn before onto several rows: go up to
    // its first row and clear to the end of the screen.
    if (resized && this.#drawnLength > 0 && columns < this.#drawnColumns) {
      const rows = Math.ceil(this.#drawnLength / Math.max(1, columns));
      if (rows > 1) prefix = `\x1b[${rows - 1}A\r\x1b[J`;
    }
    if (resized && this.#drawnLength === 0) return;
    const percent = percentOf(this.#done, this.#total);
    const text = formatBar({
      covered: this.#covered(),
      size: this.#size,
      percent,
      rate: this.#rate(),
      elapsed: (now - this.#started) / 1000,
      columns,
    });
    this.#sink(encoder.encode(`${prefix}${text}${CLEAR_EOL}`));
    this.#drawnLength = text.length;
    this.#drawnColumns = columns;
    this.#drawnPercent = percent;
  }

  /** Ends the open line with a newline (see {@linkcode endProgressLine}). */
  breakLine(): void {
    if (this.#drawnLength === 0) return;
    this.#sink(encoder.encode("\n"));
    this.#drawnLength = 0;
  }

  /** Draws the final state and ends the line. */
  finish(): void {
    // The last update drew the end already, unless it came within the redraw interval.
    if (this.#drawnPercent !== 100 || this.#drawnLength === 0) this.#draw(false);
    this.close();
  }

  /** Ends the line and stops following resizes (also after a failure). */
  close(): void {
    this.breakLine();
    if (this.#onResize) Deno.removeSignalListener("SIGWINCH", this.#onResize);
    this.#onResize = undefined;
    if (openLine === this) openLine = undefined;
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
