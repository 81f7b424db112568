/**
 * Just enough XenAPI to report progress: XML-RPC over HTTP POST on xapi's local unix socket
 * (`/var/lib/xcp/xapi`, where `XenAPI.xapi_local()` connects), and `task.set_progress`.
 *
 * The session a plugin receives belongs to its caller and may end when the call does (`xe`
 * logs out after each command), so a detached copy falls back to a local login — on the unix
 * socket xapi treats `session.login_with_password` as pre-authenticated root.
 *
 * @example
 * ```ts
 * import { TaskProgress } from "./xenapi.ts";
 * const t = new TaskProgress("/var/lib/xcp/xapi", "OpaqueRef:session", "OpaqueRef:task");
 * t.set(0.5);
 * await t.close();
 * ```
 *
 * @module
 */

import {
  isStruct,
  parseMethodResponse,
  serializeMethodCall,
  XmlRpcDouble,
  type XmlRpcValue,
} from "./xmlrpc.ts";

/** xapi's local socket. */
export const DEFAULT_XAPI_SOCKET = "/var/lib/xcp/xapi";

/**
 * A XenAPI call that failed: xapi's `ErrorDescription`, or a transport problem described the
 * same way (`["SPARSE_DD_XENAPI_TRANSPORT", message]`).
 *
 * @example
 * ```ts
 * import { XenApiError } from "./xenapi.ts";
 * new XenApiError(["SESSION_INVALID", "OpaqueRef:x"]).code; // "SESSION_INVALID"
 * ```
 */
export class XenApiError extends Error {
  /** xapi's `ErrorDescription`. */
  readonly description: string[];

  /** A failure with xapi's `ErrorDescription`. */
  constructor(description: string[]) {
    super(description.join(" "));
    this.description = description;
    this.name = "XenApiError";
  }

  /** The error code (`ErrorDescription[0]`). */
  get code(): string {
    return this.description[0] ?? "";
  }
}

const MAX_RESPONSE = 16 * 1024 * 1024;

function transport(message: string): XenApiError {
  return new XenApiError(["SPARSE_DD_XENAPI_TRANSPORT", message]);
}

/** Splits an HTTP/1.x response into status and body (Content-Length, chunked, or until close). */
function httpBody(raw: Uint8Array): { status: number; body: Uint8Array } {
  const text = new TextDecoder("latin1").decode(raw);
  const headEnd = text.indexOf("\r\n\r\n");
  if (headEnd < 0) throw transport("truncated HTTP response");
  const lines = text.slice(0, headEnd).split("\r\n");
  const m = /^HTTP\/1\.[01] ([0-9]{3})/.exec(lines[0]);
  if (!m) throw transport(`bad HTTP status line ${JSON.stringify(lines[0].slice(0, 80))}`);
  const headers = new Map<string, string>();
  for (const l of lines.slice(1)) {
    const c = l.indexOf(":");
    if (c > 0) headers.set(l.slice(0, c).trim().toLowerCase(), l.slice(c + 1).trim());
  }
  let body = raw.subarray(headEnd + 4);
  if (/chunked/i.test(headers.get("transfer-encoding") ?? "")) {
    const parts: Uint8Array[] = [];
    let pos = 0;
    const dec = new TextDecoder("latin1");
    for (;;) {
      const eol = dec.decode(body.subarray(pos, pos + 32)).indexOf("\r\n");
      if (eol < 0) throw transport("bad chunked encoding");
      const n = parseInt(dec.decode(body.subarray(pos, pos + eol)), 16);
      if (!Number.isFinite(n)) throw transport("bad chunk size");
      pos += eol + 2;
      if (n === 0) break;
      if (pos + n > body.length) throw transport("truncated chunk");
      parts.push(body.subarray(pos, pos + n));
      pos += n + 2;
    }
    const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
    let o = 0;
    for (const p of parts) {
      out.set(p, o);
      o += p.length;
    }
    body = out;
  } else if (headers.has("content-length")) {
    const n = Number(headers.get("content-length"));
    if (!Number.isSafeInteger(n) || n > body.length) throw transport("truncated HTTP body");
    body = body.subarray(0, n);
  }
  return { status: Number(m[1]), body };
}

/**
 * Calls a XenAPI method over xapi's unix socket; returns `Value` or throws
 * {@linkcode XenApiError}.
 *
 * @example
 * ```ts
 * import { xenApiCall } from "./xenapi.ts";
 * const session = await xenApiCall("/var/lib/xcp/xapi", "session.login_with_password",
 *   ["root", "", "1.0", "sparse_dd"]);
 * ```
 */
export async function xenApiCall(
  socketPath: string,
  method: string,
  params: XmlRpcValue[],
  timeoutMs = 30_000,
): Promise<XmlRpcValue> {
  const body = new TextEncoder().encode(serializeMethodCall({ methodName: method, params }));
  const head = new TextEncoder().encode(
    "POST / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: sparse_dd\r\n" +
      `Content-Type: text/xml\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`,
  );
  let conn: Deno.UnixConn;
  try {
    conn = await Deno.connect({ transport: "unix", path: socketPath });
  } catch (err) {
    throw transport(`cannot connect to ${socketPath}: ${(err as Error).message}`);
  }
  const timer = setTimeout(() => {
    try {
      conn.close();
    } catch { /* already closed */ }
  }, timeoutMs);
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    for (const part of [head, body]) {
      let off = 0;
      while (off < part.length) off += await conn.write(part.subarray(off));
    }
    const buf = new Uint8Array(64 * 1024);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      chunks.push(buf.slice(0, n));
      total += n;
      if (total > MAX_RESPONSE) throw transport("response larger than 16 MiB");
    }
  } catch (err) {
    if (err instanceof XenApiError) throw err;
    throw transport(`${method} on ${socketPath}: ${(err as Error).message}`);
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed by the timer */ }
  }
  const raw = new Uint8Array(total);
  let o = 0;
  for (const c of chunks) {
    raw.set(c, o);
    o += c.length;
  }
  const { status, body: respBody } = httpBody(raw);
  if (status !== 200) throw transport(`${method}: HTTP ${status}`);
  let resp;
  try {
    resp = parseMethodResponse(new TextDecoder().decode(respBody), { maxBytes: MAX_RESPONSE });
  } catch (err) {
    throw transport(`${method}: ${(err as Error).message}`);
  }
  if (resp.fault) {
    throw new XenApiError(["XMLRPC_FAULT", String(resp.fault.faultCode), resp.fault.faultString]);
  }
  const r = resp.params[0];
  if (!isStruct(r) || typeof r.Status !== "string") throw transport(`${method}: no Status`);
  if (r.Status === "Success") return r.Value ?? "";
  const desc = Array.isArray(r.ErrorDescription) ? r.ErrorDescription.map(String) : [];
  throw new XenApiError(desc.length ? desc : ["UNKNOWN_ERROR"]);
}

/**
 * Reports progress on a XenAPI task without ever slowing or failing the copy: calls are made one
 * at a time, a newer value replaces one still waiting, and errors are only logged.
 *
 * @example
 * ```ts
 * import { TaskProgress } from "./xenapi.ts";
 * const t = new TaskProgress("/var/lib/xcp/xapi", "OpaqueRef:s", "OpaqueRef:t");
 * for (const f of [0, 0.5, 1]) t.set(f);
 * await t.close(); // waits for the last value to be sent
 * ```
 */
export class TaskProgress {
  #session: string;
  #ownSession = false;
  #pending: number | undefined;
  #last = -1;
  #running: Promise<void> | undefined;
  #warned = new Set<string>();

  /** xapi's unix socket. */
  readonly socketPath: string;
  /** The task to report on. */
  readonly task: string;
  /** Where failures are reported (once per distinct message). */
  readonly log: (line: string) => void;

  /** Reports on `task` through `socketPath`, as `session` (the caller's). */
  constructor(
    socketPath: string,
    session: string,
    task: string,
    log: (line: string) => void = () => {},
  ) {
    this.socketPath = socketPath;
    this.#session = session;
    this.task = task;
    this.log = log;
  }

  /** Queues `fraction` (0..1); values that do not rise are dropped. */
  set(fraction: number): void {
    const f = Math.max(0, Math.min(1, fraction));
    if (f <= this.#last || (this.#pending !== undefined && f <= this.#pending)) return;
    this.#pending = f;
    this.#running ??= this.#drain().finally(() => (this.#running = undefined));
  }

  async #drain(): Promise<void> {
    while (this.#pending !== undefined) {
      const f = this.#pending;
      this.#pending = undefined;
      this.#last = f;
      await this.#send(f);
    }
  }

  async #send(f: number): Promise<void> {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        await xenApiCall(this.socketPath, "task.set_progress", [
          this.#session,
          this.task,
          new XmlRpcDouble(f),
        ]);
        return;
      } catch (err) {
        if (err instanceof XenApiError && err.code === "SESSION_INVALID" && attempt === 0) {
          if (await this.#login()) continue;
        }
        const msg = (err as Error).message;
        if (!this.#warned.has(msg)) {
          this.#warned.add(msg);
          this.log(`task.set_progress ${this.task} failed: ${msg}`);
        }
        return;
      }
    }
  }

  async #login(): Promise<boolean> {
    try {
      const s = await xenApiCall(this.socketPath, "session.login_with_password", [
        "root",
        "",
        "1.0",
        "sparse_dd",
      ]);
      if (typeof s !== "string") return false;
      this.#session = s;
      this.#ownSession = true;
      return true;
    } catch (err) {
      this.log(`local XenAPI login failed: ${(err as Error).message}`);
      return false;
    }
  }

  /** Sends whatever is pending, then logs out of a session this object opened. */
  async close(): Promise<void> {
    while (this.#running) await this.#running;
    if (this.#ownSession) {
      await xenApiCall(this.socketPath, "session.logout", [this.#session]).catch(() => {});
      this.#ownSession = false;
    }
  }
}
