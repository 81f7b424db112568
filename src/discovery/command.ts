/**
 * Running the small host tools discovery asks (`tap-ctl`, `xenstore-read`): always an argv array
 * (never a shell), a chosen environment, no stdin, bounded output and a hard timeout. A tool that
 * hangs (a wedged tapdisk makes `tap-ctl list` wait) must not hang the copy: on timeout the child
 * is killed and we stop reading its pipes at once, even if a grandchild still holds them open.
 *
 * @module
 */
import { errorText } from "../core/error_text.ts";

/** What a finished command printed and how it ended. */
export interface CommandOutput {
  /** Exit code (128 + n when killed by signal n, as a shell reports it). */
  code: number;
  /** Standard output as text (at most `maxOutputBytes`; see `truncated`). */
  stdout: string;
  /** Standard error as text (at most `maxOutputBytes`). */
  stderr: string;
  /** True when the output was longer than the limit and the rest was discarded. */
  truncated: boolean;
}

/** Options for {@linkcode runCommand}. */
export interface RunOptions {
  /** Kill the command after this many milliseconds. */
  timeoutMs: number;
  /** The complete environment of the child (nothing else is inherited). */
  env: Record<string, string>;
  /** Keep at most this many bytes of each stream; default 1 MiB. */
  maxOutputBytes?: number;
}

/** Why a command produced no usable output: it was not found, could not start, or timed out. */
export class CommandError extends Error {
  constructor(
    /** The command as given (name or path). */
    readonly command: string,
    /** `not-found`, `spawn` (other start failure) or `timeout`. */
    readonly kind: "not-found" | "spawn" | "timeout",
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = "CommandError";
  }
}

/**
 * The environment handed to host tools: only `PATH` (with the sbin directories tap-ctl lives in)
 * plus the named variables when they are set in our own environment.
 *
 * @example
 * ```ts
 * import { toolEnv } from "./command.ts";
 * toolEnv(["XENSTORED_PATH"]).PATH; // "/usr/local/bin:/usr/bin:...:/usr/sbin:/sbin"
 * ```
 */
export function toolEnv(extra: readonly string[] = []): Record<string, string> {
  const get = (name: string): string | undefined => {
    try {
      return Deno.env.get(name);
    } catch {
      return undefined; // no --allow-env: behave as if unset
    }
  };
  const path = get("PATH") || "/usr/local/bin:/usr/bin:/bin";
  const parts = path.split(":");
  for (const dir of ["/usr/local/sbin", "/usr/sbin", "/sbin"]) {
    if (!parts.includes(dir)) parts.push(dir);
  }
  const env: Record<string, string> = { PATH: parts.join(":") };
  for (const name of extra) {
    const value = get(name);
    if (value !== undefined) env[name] = value;
  }
  return env;
}

async function drain(
  stream: ReadableStream<Uint8Array>,
  limit: number,
  onReader: (r: ReadableStreamDefaultReader<Uint8Array>) => void,
): Promise<{ bytes: Uint8Array; truncated: boolean }> {
  const reader = stream.getReader();
  onReader(reader);
  const chunks: Uint8Array[] = [];
  let kept = 0;
  let truncated = false;
  try {
    while (true) {
      const { done, value } = await reader.read();
      if (done) break;
      // Keep reading past the limit (discarding) so a chatty child never blocks on a full pipe.
      const room = limit - kept;
      if (room <= 0) {
        truncated = true;
        continue;
      }
      const part = value.length > room ? value.subarray(0, room) : value;
      if (part.length < value.length) truncated = true;
      chunks.push(part);
      kept += part.length;
    }
  } catch {
    // cancelled after a timeout, or the pipe broke: what we have is all there is
  } finally {
    reader.releaseLock();
  }
  const bytes = new Uint8Array(kept);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.length;
  }
  return { bytes, truncated };
}

/**
 * Runs `command args...` and collects its output, killing it after `timeoutMs`.
 * Throws {@linkcode CommandError} when it cannot start or times out; a non-zero exit is returned,
 * not thrown, so callers can word their own message from stderr.
 *
 * @example
 * ```ts ignore
 * import { runCommand, toolEnv } from "./command.ts";
 * const out = await runCommand("tap-ctl", ["list"], { timeoutMs: 10_000, env: toolEnv() });
 * if (out.code === 0) console.log(out.stdout);
 * ```
 */
export async function runCommand(
  command: string,
  args: readonly string[],
  options: RunOptions,
): Promise<CommandOutput> {
  const limit = options.maxOutputBytes ?? 1 << 20;
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(command, {
      args: [...args],
      env: options.env,
      clearEnv: true,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new CommandError(command, "not-found", `${command}: command not found`, {
        cause: err,
      });
    }
    const reason = errorText(err);
    throw new CommandError(command, "spawn", `${command}: cannot run: ${reason}`, { cause: err });
  }

  const readers: ReadableStreamDefaultReader<Uint8Array>[] = [];
  const out = drain(child.stdout, limit, (r) => readers.push(r));
  const err = drain(child.stderr, limit, (r) => readers.push(r));
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timedOut = new Promise<"timeout">((resolve) => {
    timer = setTimeout(() => resolve("timeout"), options.timeoutMs);
  });
  try {
    const first = await Promise.race([Promise.all([out, err, child.status]), timedOut]);
    if (first === "timeout") {
      try {
        child.kill("SIGKILL");
      } catch {
        // it exited just now
      }
      // A grandchild may keep the pipes open: stop reading instead of waiting for EOF.
      await Promise.all(readers.map((r) => r.cancel().catch(() => {})));
      await Promise.all([out, err, child.status]);
      throw new CommandError(
        command,
        "timeout",
        `${[command, ...args].join(" ")}: no answer within ${options.timeoutMs} ms (killed)`,
      );
    }
    const [o, e, status] = first;
    const decoder = new TextDecoder();
    return {
      code: status.code,
      stdout: decoder.decode(o.bytes),
      stderr: decoder.decode(e.bytes),
      truncated: o.truncated || e.truncated,
    };
  } finally {
    clearTimeout(timer);
  }
}

/** The first non-empty line of a tool's stderr, for messages; empty when there is none. */
export function firstLine(text: string): string {
  for (const line of text.split("\n")) {
    const t = line.trim();
    if (t) return t.length > 200 ? `${t.slice(0, 200)}...` : t;
  }
  return "";
}
