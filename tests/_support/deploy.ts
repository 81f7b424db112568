/**
 * Helpers for the build and install tests: a build from a copy of this checkout (so the copy,
 * its `.tools` and its `dist/` can be taken away), runs under `env -i PATH=/usr/bin:/bin`, and
 * XAPI plugin calls written and read by Python's xmlrpc.client.
 *
 * @module
 */

import { ROOT } from "./helpers.ts";

/** The environment of a dom0 shell reduced to the minimum: `env -i PATH=/usr/bin:/bin`. */
export const BARE_PATH = "/usr/bin:/bin";

/** What a finished process left. */
export interface Ran {
  code: number;
  signal: Deno.Signal | null;
  stdout: Uint8Array;
  stderr: string;
  text: string;
}

/** Runs `cmd` with only PATH=/usr/bin:/bin (plus `env`), no stdin; collects the output. */
export async function bare(
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
  cwd?: string,
): Promise<Ran> {
  const out = await new Deno.Command(cmd, {
    args,
    cwd,
    clearEnv: true,
    env: { PATH: BARE_PATH, ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(300_000),
  }).output();
  return {
    code: out.code,
    signal: out.signal,
    stdout: out.stdout,
    stderr: new TextDecoder().decode(out.stderr),
    text: new TextDecoder().decode(out.stdout),
  };
}

/** A build made from a copy of this checkout. */
export interface Build {
  /** The copy of the checkout (main.ts, src/, plugin/, scripts/, docs/, .tools/). */
  checkout: string;
  /** Its dist/. */
  dist: string;
  /** The release tarball. */
  tarball: string;
  /** The version the build says. */
  version: string;
}

/**
 * Copies the checkout's sources into `dir/checkout`, gives the copy a `.tools/bin/deno` of its own
 * (a link to the test's Deno) and runs its scripts/build.sh there.
 */
export async function buildCopy(dir: string, env: Record<string, string> = {}): Promise<Build> {
  const checkout = `${dir}/checkout`;
  await Deno.mkdir(`${checkout}/.tools/bin`, { recursive: true });
  for (const name of ["main.ts", "deno.json", "src", "plugin", "scripts", "docs"]) {
    const cp = await bare("cp", ["-R", `${ROOT}/${name}`, `${checkout}/${name}`]);
    if (cp.code !== 0) throw new Error(`cp ${name}: ${cp.stderr}`);
  }
  await Deno.symlink(Deno.execPath(), `${checkout}/.tools/bin/deno`);
  const out = await bare("bash", [`${checkout}/scripts/build.sh`], {
    PATH: `${checkout}/.tools/bin:${BARE_PATH}`,
    // The build's cache (deno bundle's esbuild from npm): the test's own, already filled.
    DENO_DIR: Deno.env.get("DENO_DIR") ?? `${checkout}/.tools/deno-dir`,
    SPARSE_DD_GZIP: "1",
    ...env,
  });
  if (out.code !== 0) throw new Error(`build.sh failed (${out.code}): ${out.stderr}`);
  const version = (await Deno.readTextFile(`${checkout}/dist/release/sparse_dd.d/VERSION`)).trim();
  return {
    checkout,
    dist: `${checkout}/dist`,
    tarball: `${checkout}/dist/sparse_dd-${version}-linux-x86_64.tar.gz`,
    version,
  };
}

/** A sparse file of `size` bytes with a few runs of pseudo-random data. */
export async function sparseFile(path: string, size: number, seed = 1): Promise<void> {
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  try {
    await f.truncate(size);
    const buf = new Uint8Array(200_000);
    for (let i = 0; i < buf.length; i++) buf[i] = (i * 131 + seed * 7) & 0xff;
    for (const at of [0, Math.floor(size / 3), size - buf.length]) {
      await f.seek(at, Deno.SeekMode.Start);
      let off = 0;
      while (off < buf.length) off += await f.write(buf.subarray(off));
    }
  } finally {
    f.close();
  }
}

async function python(script: string, args: string[], input?: string): Promise<string> {
  const child = new Deno.Command("/usr/bin/python3", {
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
  if (!out.success) throw new Error(`python3: ${new TextDecoder().decode(out.stderr)}`);
  return new TextDecoder().decode(out.stdout);
}

/** What a plugin call returned, as Python's xmlrpc.client read it. */
export interface PluginAnswer {
  status: "Success" | "Failure";
  value?: string;
  error?: string[];
  /** The plugin's exit status (xapi requires 0). */
  code: number;
  stderr: string;
}

/**
 * Runs the installed plugin script as xapi does (argv[1] = the methodCall written by Python's
 * `xmlrpc.client.dumps`, PATH only plus `env`), and reads its answer with `xmlrpc.client.loads`.
 */
export async function callPlugin(
  plugin: string,
  fn: string,
  args: Record<string, string>,
  env: Record<string, string> = {},
): Promise<PluginAnswer> {
  const call = await python(
    "import sys, json, xmlrpc.client as x\n" +
      "a = json.loads(sys.argv[1])\n" +
      "sys.stdout.write(x.dumps(('OpaqueRef:test', a['args']), a['fn']))",
    [JSON.stringify({ fn, args })],
  );
  const out = await bare(plugin, [call], env);
  const answer = JSON.parse(
    await python(
      "import sys, json, xmlrpc.client as x\n" +
        "params, _ = x.loads(sys.stdin.read())\n" +
        "json.dump(params[0], sys.stdout)",
      [],
      out.text,
    ),
  );
  return answer.Status === "Success"
    ? { status: "Success", value: answer.Value, code: out.code, stderr: out.stderr }
    : { status: "Failure", error: answer.ErrorDescription, code: out.code, stderr: out.stderr };
}
