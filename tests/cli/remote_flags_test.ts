import { match, strictEqual } from "node:assert/strict";
import { ExitCode } from "../../src/core/errors.ts";
import { runMain, sh, withTempDir } from "../_support/helpers.ts";

Deno.test("-cert-bundle-path that is a FIFO or a never-ending device is refused, not waited on", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeFile(`${dir}/src`, new Uint8Array(4096));
    await sh("mkfifo", [`${dir}/fifo`]);
    for (const bundle of [`${dir}/fifo`, "/dev/zero"]) {
      const res = await runMain([
        "-src",
        `${dir}/src`,
        "-dest",
        "https://127.0.0.1:9/import_raw_vdi",
        "-verify-dest",
        "-cert-bundle-path",
        bundle,
        "-config",
        "/dev/null",
      ], { timeoutMs: 30_000 });
      strictEqual(res.code, ExitCode.Usage, `${bundle}: ${res.stderr}`);
      match(res.stderr, new RegExp(`cannot read -cert-bundle-path ${bundle}: it is a`));
    }
  });
});
