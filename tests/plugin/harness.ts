/**
 * Running the plugin the way xapi runs it, for the plugin's tests: `env -i PATH=...`, the whole
 * methodCall as argv[1] (in xapi's own one-line form or in Python's `xmlrpc.client.dumps` form),
 * stdout read by Python's `xmlrpc.client.loads`, exit status 0 every time.
 *
 * @module
 */

import { deepStrictEqual, ok as assert, strictEqual } from "node:assert/strict";
import { MAIN, xapiCommand } from "../_support/helpers.ts";

export const PYTHON = "/usr/bin/python3";

/**
 * The configuration every plugin run gets unless a test gives its own: regular files may be in
 * the directory the tests' temporary directories are made in (the SR mounts stand-in).
 */
const TEST_TMP = Deno.realPathSync(
  Deno.env.get("TMPDIR") && Deno.statSync(Deno.env.get("TMPDIR")!).isDirectory
    ? Deno.env.get("TMPDIR")!
    : "/tmp",
);
const TEST_CONF_DIR = Deno.makeTempDirSync({ prefix: "sparse_dd_plugin_conf_" });
export const TEST_CONF = `${TEST_CONF_DIR}/sparse_dd.conf`;
Deno.writeTextFileSync(TEST_CONF, `plugin-dest-dirs = ${TEST_TMP}\n`);
globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(TEST_CONF_DIR, { recursive: true });
  } catch { /* already gone */ }
});

// ---------------------------------------------------------------------------------------------
// Building requests the two ways they arrive, reading answers the way xapi's peers do.

/** xapi's `Xml.to_string`: one line, bare strings, `<value/>`, `<struct/>`, control chars dropped. */
function xapiEscape(s: string): string {
  return s
    // deno-lint-ignore no-control-regex
    .replace(/[\x00-\x08\x0B\x0C\x0E-\x1F]/g, "")
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;");
}

function xapiValue(s: string): string {
  return s === "" ? "<value/>" : `<value>${xapiEscape(s)}</value>`;
}

export function xapiForm(
  fn: string,
  args: Record<string, string>,
  session = "OpaqueRef:xapi",
): string {
  const members = Object.entries(args)
    .map(([k, v]) => `<member><name>${xapiEscape(k)}</name>${xapiValue(v)}</member>`)
    .join("");
  const struct = members === "" ? "<struct/>" : `<struct>${members}</struct>`;
  return `<methodCall><methodName>${fn}</methodName><params><param>${xapiValue(session)}` +
    `</param><param><value>${struct}</value></param></params></methodCall>`;
}

export async function python(script: string, args: string[] = [], input?: string): Promise<string> {
  const child = new Deno.Command(PYTHON, {
    args: ["-c", script, ...args],
    stdin: input === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (input !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(input));
    await w.close();
  }
  const out = await child.output();
  assert(out.success, `python3 failed: ${new TextDecoder().decode(out.stderr)}`);
  return new TextDecoder().decode(out.stdout);
}

/** Python's `xmlrpc.client.dumps((session, args), fn)`, as XenAPIPlugin-style clients write it. */
export function pythonForm(
  fn: string,
  args: Record<string, string>,
  session = "OpaqueRef:python",
): Promise<string> {
  return python(
    "import sys, json, xmlrpc.client as x\n" +
      "a = json.loads(sys.argv[1])\n" +
      "sys.stdout.write(x.dumps((a['session'], a['args']), a['fn']))",
    [JSON.stringify({ fn, args, session })],
  );
}

/** What the plugin answered, as Python's `xmlrpc.client.loads` read it. */
export interface Answer {
  status: "Success" | "Failure";
  value?: string;
  error?: string[];
  stderr: string;
}

export async function readAnswer(stdout: string, stderr: string): Promise<Answer> {
  const parsed = JSON.parse(
    await python(
      "import sys, json, xmlrpc.client as x\n" +
        "params, method = x.loads(sys.stdin.read())\n" +
        "assert method is None, method\n" +
        "assert len(params) == 1, params\n" +
        "json.dump(params[0], sys.stdout)",
      [],
      stdout,
    ),
  );
  assert(parsed.Status === "Success" || parsed.Status === "Failure", stdout);
  if (parsed.Status === "Success") {
    strictEqual(typeof parsed.Value, "string", "Value must be a string");
    return { status: "Success", value: parsed.Value, stderr };
  }
  assert(Array.isArray(parsed.ErrorDescription) && parsed.ErrorDescription.length > 0, stdout);
  for (const e of parsed.ErrorDescription) strictEqual(typeof e, "string");
  return { status: "Failure", error: parsed.ErrorDescription, stderr };
}

export interface RunOpts {
  /** Extra environment (beyond PATH), e.g. the state directory. */
  env?: Record<string, string>;
  /** Run inside this cgroup (v1 cpu) directory, to make copies slow enough to watch. */
  cgroup?: string;
}

/** Runs the plugin exactly as xapi does; asserts exit status 0 and a parseable answer. */
export async function plugin(argv1: string | undefined, opts: RunOpts = {}): Promise<Answer> {
  const inner = [
    Deno.execPath(),
    "run",
    "-A",
    "--quiet",
    "--no-lock",
    MAIN,
    "--xapi-plugin",
    ...(argv1 === undefined ? [] : [argv1]),
  ];
  // The cgroup wrapper joins the cgroup and then execs the very same argv.
  const argv = opts.cgroup
    ? ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', opts.cgroup, ...inner]
    : inner;
  const env = { SPARSE_DD_PLUGIN_CONFIG: TEST_CONF, ...opts.env };
  const out = await xapiCommand(argv[0], argv.slice(1), { env, timeoutMs: 300_000 }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  strictEqual(out.code, 0, `the plugin exited ${out.code}; stderr: ${stderr}`);
  return readAnswer(stdout, stderr);
}

export function expectSuccess(a: Answer): string {
  strictEqual(a.status, "Success", `expected Success, got ${JSON.stringify(a.error)}: ${a.stderr}`);
  return a.value!;
}

export function expectFailure(a: Answer, ...prefix: string[]): string[] {
  strictEqual(a.status, "Failure", `expected Failure, got Success: ${a.value}`);
  deepStrictEqual(a.error!.slice(0, prefix.length), prefix, JSON.stringify(a.error));
  return a.error!;
}

// ---------------------------------------------------------------------------------------------
// Test data.

/** A sparse file: random 1 MiB extents at a few offsets, holes elsewhere. */
export async function sparseFile(path: string, size: number, seed: number): Promise<void> {
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  try {
    await f.truncate(size);
    const buf = new Uint8Array(1 << 20);
    for (let i = 0; i < 4; i++) {
      crypto.getRandomValues(buf.subarray(0, 65536));
      buf.fill(seed + i, 65536);
      const at = Math.floor(((i * 2 + 1) * size) / 9 / 4096) * 4096;
      await f.seek(at, Deno.SeekMode.Start);
      let off = 0;
      while (off < buf.length) off += await f.write(buf.subarray(off));
    }
  } finally {
    f.close();
  }
}

/** A dense file: every 64 KiB block distinct and non-zero. */
export async function denseFile(path: string, size: number): Promise<void> {
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  try {
    const buf = new Uint8Array(1 << 20);
    crypto.getRandomValues(buf.subarray(0, 65536));
    for (let i = 1; i < 16; i++) buf.copyWithin(i * 65536, 0, 65536);
    const view = new DataView(buf.buffer);
    for (let mib = 0; mib < size / (1 << 20); mib++) {
      for (let j = 0; j < 16; j++) view.setUint32(j * 65536, mib * 16 + j + 1, true);
      let off = 0;
      while (off < buf.length) off += await f.write(buf.subarray(off));
    }
  } finally {
    f.close();
  }
}
