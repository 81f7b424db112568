import assert from "node:assert/strict";
import {
  encodeRequestHead,
  headEnd,
  isNbdUpgrade,
  parseResponseHead,
} from "../../src/http/message.ts";
import { parseRemoteUrl } from "../../src/http/url.ts";

const text = (s: string) => new TextEncoder().encode(s);

Deno.test("the PUT head: host, user-agent, cookie chunked=true; authorization only with credentials", () => {
  const plain = new TextDecoder().decode(
    encodeRequestHead(parseRemoteUrl("https://h:8443/import_raw_vdi?vdi=v&session_id=s"), "ua/1"),
  );
  assert.equal(
    plain,
    "PUT /import_raw_vdi?vdi=v&session_id=s HTTP/1.1\r\nhost: h:8443\r\nuser-agent: ua/1\r\n" +
      "cookie: chunked=true\r\n\r\n",
  );
  const auth = new TextDecoder().decode(
    encodeRequestHead(parseRemoteUrl("http://u:p@h/x"), "ua/1"),
  );
  assert.match(auth, /\r\nauthorization: Basic dTpw\r\n\r\n$/);
  assert.ok(!/content-length|transfer-encoding/i.test(plain + auth));
});

Deno.test("the response head ends at the first blank line, wherever the reads were cut", () => {
  const all = text("HTTP/1.1 200 OK\r\nTransfer-encoding: nbd\r\n\r\nNBDMAGIC");
  assert.equal(headEnd(all), all.length - 8);
  for (let cut = 0; cut < all.length; cut++) {
    const first = headEnd(all.subarray(0, cut));
    // Searching again from just before the new bytes finds the same end.
    const again = headEnd(all, Math.max(0, cut - 3));
    assert.equal(first === -1 ? again : first, all.length - 8, `cut ${cut}`);
  }
  assert.equal(headEnd(text("HTTP/1.1 200 OK\r\n")), -1);
});

Deno.test("status line, reason and headers; the upgrade header in any case", () => {
  const h = parseResponseHead(
    text(
      "HTTP/1.1 302 Found\r\nLocation: https://other/x\r\nSet-Cookie: a\r\nSet-Cookie: b\r\n\r\n",
    ),
  );
  assert.equal(h.status, 302);
  assert.equal(h.reason, "Found");
  assert.equal(h.headers.get("location"), "https://other/x");
  assert.equal(h.headers.get("set-cookie"), "a, b");
  assert.ok(!isNbdUpgrade(h));
  for (const v of ["nbd", "NBD", "Nbd"]) {
    for (const name of ["Transfer-encoding", "TRANSFER-ENCODING", "transfer-encoding"]) {
      assert.ok(isNbdUpgrade(parseResponseHead(text(`HTTP/1.1 200 OK\r\n${name}: ${v}\r\n\r\n`))));
    }
  }
  assert.ok(
    !isNbdUpgrade(parseResponseHead(text("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"))),
  );
  assert.equal(parseResponseHead(text("HTTP/1.0 500\r\n\r\n")).reason, "");
});

Deno.test("heads that are not HTTP are refused, printably", () => {
  assert.throws(() => parseResponseHead(text("SSH-2.0-OpenSSH\r\n\r\n")), /not an HTTP response/);
  assert.throws(() => parseResponseHead(text("HTTP/1.1 200 OK\r\nbroken\r\n\r\n")), /malformed/);
  assert.throws(
    () => parseResponseHead(new Uint8Array([0, 1, 2, 13, 10, 13, 10])),
    /not an HTTP response: '\?\?\?'/,
  );
});
