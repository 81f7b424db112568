/**
 * The progress bar as a person sees it: sparse_dd runs in a real terminal (tmux), its screen is
 * read with `capture-pane` at several moments, at 120 and 30 columns and after a resize. The
 * copy is made slow by nbdkit's delay filter, so it is caught mid-way by polling the screen
 * (no timed assertions).
 */
import { match, ok, strictEqual } from "node:assert/strict";
import { MAIN, withTempDir } from "../_support/helpers.ts";

/** A tmux server of our own (its own socket name), torn down by `kill()`. */
class Tmux {
  readonly name = `sparse_dd_test_${Deno.pid}_${crypto.randomUUID().slice(0, 8)}`;

  async run(...args: string[]): Promise<string> {
    const out = await new Deno.Command("tmux", {
      args: ["-L", this.name, "-f", "/dev/null", ...args],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    if (!out.success) {
      throw new Error(`tmux ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
    }
    return text;
  }

  /** The server's socket file: tmux leaves it behind when the server is killed. */
  #socket?: string;

  /** Starts `script` in a detached session of `columns` x 30. */
  async start(script: string, columns: number): Promise<void> {
    await this.run("new-session", "-d", "-x", String(columns), "-y", "30", "bash", script);
    this.#socket = (await this.run("display-message", "-p", "#{socket_path}")).trim();
  }

  /** The screen's lines, trailing blanks removed, trailing empty lines dropped. */
  async screen(): Promise<string[]> {
    const lines = (await this.run("capture-pane", "-p")).split("\n").map((l) => l.trimEnd());
    while (lines.length > 0 && lines.at(-1) === "") lines.pop();
    return lines;
  }

  /** Polls the screen until `pred` holds (gives up after 3 minutes: the test is stuck). */
  async waitFor(what: string, pred: (lines: string[]) => boolean): Promise<string[]> {
    const deadline = Date.now() + 180_000;
    for (;;) {
      const lines = await this.screen();
      if (pred(lines)) return lines;
      if (Date.now() > deadline) throw new Error(`never saw ${what}; screen:\n${lines.join("\n")}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async kill(): Promise<void> {
    await this.run("kill-server").catch(() => {});
    if (this.#socket) await Deno.remove(this.#socket).catch(() => {});
  }
}

/** A bar line at 120 columns: every part, nothing after the elapsed time. */
const WIDE =
  /^\[[#.]{40}\] +(\d+)% {2}[\d.]+ (B|KiB|MiB) \/ 128\.00 MiB {2}(--|[\d.]+ (B|KiB|MiB|GiB))\/s {2}ETA (--:--|\d+:\d\d) {2}\d+:\d\d$/;
/** A bar line at 30 columns. */
const NARROW = /^\[[#.]{10,}\] +(\d+)% {2}ETA (--:--|\d+:\d\d)$/;

const percent = (line: string | undefined, re: RegExp) => {
  const m = line === undefined ? null : re.exec(line);
  return m ? Number(m[1]) : undefined;
};

/**
 * Runs `fn` with a slow 128 MiB NBD source (nbdkit pattern, each read delayed 1 s) and a script
 * that runs sparse_dd on it under bash, then prints `EXIT=code` (bash ignores the terminal's
 * Ctrl-C itself, so the exit code shows).
 */
async function withSlowCopy(
  fn: (script: string, dir: string) => Promise<void>,
): Promise<void> {
  await withTempDir(async (dir) => {
    const socket = `${dir}/src.sock`;
    const server = new Deno.Command("nbdkit", {
      args: [
        "-f",
        "--exit-with-parent",
        "-U",
        socket,
        "--filter=delay",
        "pattern",
        "128M",
        "rdelay=1",
      ],
      stdin: "null",
      stdout: "null",
      stderr: "inherit",
    }).spawn();
    try {
      let exited = false;
      server.status.then(() => exited = true);
      while (!(await Deno.stat(socket).then(() => true, () => false))) {
        if (exited) throw new Error("nbdkit did not start");
        await new Promise((r) => setTimeout(r, 50));
      }
      const script = `${dir}/run.sh`;
      const quote = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
      await Deno.writeTextFile(
        script,
        [
          "trap : INT",
          [
            "env",
            `PATH=${quote(Deno.env.get("PATH") ?? "/usr/bin:/bin")}`,
            `DENO_DIR=${quote(Deno.env.get("DENO_DIR") ?? `${dir}/deno`)}`,
            "DENO_NO_UPDATE_CHECK=1",
            quote(Deno.execPath()),
            "run -A --quiet --no-lock",
            quote(MAIN),
            "-src",
            quote(`nbd+unix:///?socket=${socket}`),
            "-dest",
            quote(`${dir}/dst.raw`),
            "-config /nonexistent/sparse_dd.conf",
          ].join(" "),
          'echo "EXIT=$?"',
          "exec sleep 600",
        ].join("\n") + "\n",
      );
      await fn(script, dir);
    } finally {
      try {
        server.kill("SIGTERM");
      } catch { /* already gone */ }
      await server.status;
    }
  });
}

Deno.test("the bar at 120 columns redraws in place, follows a resize to 30, ends before the summary", async () => {
  await withSlowCopy(async (script) => {
    const tmux = new Tmux();
    try {
      await tmux.start(script, 120);
      // Two moments mid-way: one bar line, whole, redrawn in place (no debris, no new lines).
      const first = await tmux.waitFor("the bar mid-way", (l) => {
        const p = percent(l.at(-1), WIDE);
        return p !== undefined && p > 0 && p < 60;
      });
      strictEqual(first.length, 1, first.join("\n"));
      ok(first[0].length < 120);
      const p1 = percent(first[0], WIDE)!;
      const second = await tmux.waitFor("the bar moving on", (l) => {
        const p = percent(l.at(-1), WIDE);
        return p !== undefined && p > p1;
      });
      strictEqual(second.length, 1, second.join("\n"));

      // Narrower: the wide line (wrapped by the terminal) is replaced by one that fits.
      await tmux.run("resize-window", "-x", "30");
      const narrow = await tmux.waitFor(
        "the bar redrawn at 30 columns",
        (l) => percent(l.at(-1), NARROW) !== undefined || l.some((x) => x.startsWith("EXIT=")),
      );
      if (!narrow.some((x) => x.startsWith("EXIT="))) {
        strictEqual(narrow.length, 1, `only the bar is on the screen:\n${narrow.join("\n")}`);
        ok(narrow[0].length < 30);
      }

      // The end: the last bar, then the summary on a line of its own.
      const end = await tmux.waitFor("the end", (l) => l.some((x) => x.startsWith("EXIT=")));
      ok(end.includes("EXIT=0"), end.join("\n"));
      const summaryAt = end.findIndex((x) => x.startsWith("copied 128.00 MiB"));
      ok(summaryAt >= 1, end.join("\n"));
      match(end[summaryAt - 1], /^\[#+\] 100%/);
      ok(end.every((x) => x.length <= 30));
    } finally {
      await tmux.kill();
    }
  });
});

Deno.test("a narrow terminal keeps one bar line; Ctrl-C's message starts a line of its own", async () => {
  await withSlowCopy(async (script, dir) => {
    const tmux = new Tmux();
    try {
      await tmux.start(script, 30);
      const first = await tmux.waitFor("the bar", (l) => {
        const p = percent(l.at(-1), NARROW);
        return p !== undefined && p > 0;
      });
      const p1 = percent(first.at(-1), NARROW)!;
      const later = await tmux.waitFor("the bar moving on", (l) => {
        const p = percent(l.at(-1), NARROW);
        return p !== undefined && p > p1;
      });
      strictEqual(later.length, 1, `one line, redrawn:\n${later.join("\n")}`);

      await tmux.run("send-keys", "C-c");
      const end = await tmux.waitFor("the exit", (l) => l.some((x) => x.startsWith("EXIT=")));
      ok(end.includes("EXIT=130"), end.join("\n"));
      // The bar's line (plus the terminal's own echo of ^C, which may wrap it), then the
      // message from the start of the next line.
      const at = end.findIndex((x) => x.startsWith("sparse_dd: stopped by SIGINT"));
      ok(at >= 1, end.join("\n"));
      // Either the bar was redrawn after the echo (on the row the echo wrapped onto), or the
      // rows before the message are the bar and the echo.
      ok(
        NARROW.test(end[at - 1]) || NARROW.test(end.slice(0, at).join("").replace(/\^C$/, "")),
        end.join("\n"),
      );
      // The message (wrapped at 30 columns) names the destination.
      match(end.join(""), new RegExp(`${dir}/dst.raw is incomplete`));
    } finally {
      await tmux.kill();
    }
  });
});
