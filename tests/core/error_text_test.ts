import { doesNotMatch, match, strictEqual } from "node:assert/strict";
import { errorText } from "../../src/core/error_text.ts";

Deno.test("system errors read as words, without Deno's '(os error N)'", async () => {
  let err: unknown;
  try {
    await Deno.connect({ transport: "unix", path: "/nonexistent/sparse_dd.sock" });
  } catch (e) {
    err = e;
  }
  match(String((err as Error).message), /os error 2/, "Deno's own text has it");
  const text = errorText(err);
  match(text, /No such file or directory/);
  doesNotMatch(text, /os error/);
  strictEqual(errorText("plain"), "plain");
});
