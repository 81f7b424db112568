import assert from "node:assert/strict";
import {
  isRemoteUrl,
  parseEncryptionMode,
  parseRemoteUrl,
  redactSecrets,
} from "../../src/http/url.ts";
import { Prng } from "../_support/prng.ts";

Deno.test("xapi's URLs: scheme, host, default and explicit ports, the request target kept as given", () => {
  const t = parseRemoteUrl(
    "https://10.0.0.2/import_raw_vdi?vdi=OpaqueRef:1&session_id=OpaqueRef:2&task_id=OpaqueRef:3",
  );
  assert.equal(t.scheme, "https");
  assert.equal(t.host, "10.0.0.2");
  assert.equal(t.port, 443);
  assert.equal(t.hostHeader, "10.0.0.2");
  assert.equal(
    t.requestTarget,
    "/import_raw_vdi?vdi=OpaqueRef:1&session_id=OpaqueRef:2&task_id=OpaqueRef:3",
  );
  assert.equal(t.authorization, undefined);
  assert.equal(
    t.display,
    "https://10.0.0.2/import_raw_vdi?vdi=OpaqueRef:1&session_id=<redacted>&task_id=OpaqueRef:3",
  );
  const h = parseRemoteUrl("http://host.example:8080/services/SM/nbdproxy/import/a/b/c/d");
  assert.equal(h.port, 8080);
  assert.equal(h.hostHeader, "host.example:8080");
  assert.equal(parseRemoteUrl("http://h/x").port, 80);
});

Deno.test("IPv6 literals: brackets in the host header, none for connecting", () => {
  const t = parseRemoteUrl("https://[fd00::2]:4443/import_raw_vdi?vdi=x");
  assert.equal(t.host, "fd00::2");
  assert.equal(t.port, 4443);
  assert.equal(t.hostHeader, "[fd00::2]:4443");
  assert.equal(parseRemoteUrl("https://[::1]/x").hostHeader, "[::1]");
});

Deno.test("-encryption-mode: always makes https, never makes http, user keeps; ports follow", () => {
  assert.equal(parseRemoteUrl("http://h/x", "always").scheme, "https");
  assert.equal(parseRemoteUrl("http://h/x", "always").port, 443);
  assert.equal(parseRemoteUrl("https://h/x", "never").scheme, "http");
  assert.equal(parseRemoteUrl("https://h/x", "never").port, 80);
  assert.equal(parseRemoteUrl("https://h:9/x", "never").port, 9);
  assert.equal(parseRemoteUrl("http://h/x", "user").scheme, "http");
  assert.equal(parseEncryptionMode(undefined), "user");
  assert.equal(parseEncryptionMode("Always"), "always");
  assert.throws(() => parseEncryptionMode("sometimes"), /expected always, never or user/);
});

Deno.test("credentials become Basic authorization and never appear in the display", () => {
  const t = parseRemoteUrl("https://root:p%40ss%3Aw@h/import?session_id=s");
  assert.equal(t.authorization, `Basic ${btoa("root:p@ss:w")}`);
  assert.ok(!t.display.includes("root") && !t.display.includes("p%40ss"), t.display);
  assert.match(t.display, /^https:\/\/<redacted>@h\/import\?session_id=<redacted>$/);
});

Deno.test("malformed URLs are refused with the secrets redacted", () => {
  assert.throws(() => parseRemoteUrl("http://"), /malformed/);
  assert.throws(
    () => parseRemoteUrl("https://u:pw@h/x?session_id=OpaqueRef:s#frag"),
    (e: Error) => /fragment/.test(e.message) && !/pw|OpaqueRef:s/.test(e.message),
  );
  assert.ok(isRemoteUrl("HTTPS://h/x") && isRemoteUrl("http://h") && !isRemoteUrl("/dev/sda"));
  assert.ok(!isRemoteUrl("nbd://h/x"));
});

Deno.test("redaction: random session ids and passwords never survive, in any text, twice over", () => {
  const r = new Prng(1616);
  const alphabet = "abcdefABCDEF0123456789:-_.%+!$'()*,";
  const word = (n: number) =>
    Array.from({ length: 1 + r.int(n) }, () => alphabet[r.int(alphabet.length)]).join("");
  for (let i = 0; i < 500; i++) {
    const session = `OpaqueRef:${word(30)}`;
    const pass = word(12).replace(/[@/?#]/g, "x");
    const user = word(8).replace(/[@/?#:]/g, "x");
    const query = [`vdi=${word(10)}`, `session_id=${session}`, `task_id=${word(5)}`];
    for (let j = query.length - 1; j > 0; j--) {
      const k = r.int(j + 1);
      [query[j], query[k]] = [query[k], query[j]];
    }
    const url = `https://${user}:${pass}@h${r.int(9)}/import_raw_vdi?${query.join("&")}`;
    const text = `cannot write ${url} at offset ${r.int(1e9)}: reset`;
    const once = redactSecrets(text);
    assert.ok(!once.includes(session), `${session} in ${once}`);
    assert.ok(!once.includes(`${user}:${pass}`), once);
    assert.equal(redactSecrets(once), once, "redacting twice changes nothing");
    assert.match(once, /https:\/\/<redacted>@h\d\/import_raw_vdi\?/);
    assert.match(once, /session_id=<redacted>/);
  }
  // Text without secrets is left alone.
  const plain = "cannot open /dev/sm/backend/sr/vdi: no such file";
  assert.equal(redactSecrets(plain), plain);
});
