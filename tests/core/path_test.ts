import { strictEqual } from "node:assert/strict";
import { posix } from "node:path";
import { basename, dirname, join, normalize, resolve } from "../../src/core/path.ts";
import { Prng } from "../_support/prng.ts";

const PIECES = ["", "/", "//", ".", "..", "a", "b.vhd", "./", "../", "c/", "\\"];

function randomPath(r: Prng): string {
  return Array.from({ length: r.int(6) }, () => PIECES[r.int(PIECES.length)]).join("");
}

Deno.test("path arithmetic agrees with node:path's posix functions on random paths", () => {
  const r = new Prng(7);
  for (let n = 0; n < 20000; n++) {
    const p = randomPath(r);
    strictEqual(dirname(p), posix.dirname(p), `dirname ${JSON.stringify(p)}`);
    strictEqual(basename(p), posix.basename(p), `basename ${JSON.stringify(p)}`);
    strictEqual(normalize(p), posix.normalize(p), `normalize ${JSON.stringify(p)}`);
    const q = randomPath(r);
    strictEqual(join(p, q), posix.join(p, q), `join ${JSON.stringify([p, q])}`);
    strictEqual(resolve(p, q), posix.resolve(p, q), `resolve ${JSON.stringify([p, q])}`);
    strictEqual(resolve(p), posix.resolve(p), `resolve ${JSON.stringify(p)}`);
  }
});
