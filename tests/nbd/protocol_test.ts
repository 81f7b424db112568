import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import {
  ChunkType,
  clientFlagsFor,
  Cmd,
  CmdFlag,
  decodeBlockStatus,
  decodeDataOffset,
  decodeErrorChunk,
  decodeExportNameReply,
  decodeGreeting,
  decodeInfoReply,
  decodeMetaContextReply,
  decodeOffsetHole,
  decodeOptionReplyHeader,
  decodeReplyHeader,
  describeOptionError,
  encodeClientFlags,
  encodeGoData,
  encodeMetaContextData,
  encodeOption,
  encodeRequest,
  errnoText,
  formatNbdUri,
  HandshakeFlag,
  Info,
  type InfoReply,
  isErrorChunk,
  isNbdUri,
  isOptionError,
  NbdProtocolError,
  type NbdTarget,
  Opt,
  parseNbdUri,
  Rep,
  RepErr,
  ReplyFlag,
  replyHeaderSize,
  STRUCTURED_REPLY_HEADER_SIZE,
} from "../../src/nbd/protocol.ts";
import {
  decodeClientFlags,
  decodeGoData,
  decodeMetaContextData,
  decodeOptionHeader,
  decodeRequest,
  encodeBlockStatus,
  encodeChunk,
  encodeErrorChunk,
  encodeGreeting,
  encodeInfoReply,
  encodeMetaContextReply,
  encodeOffsetData,
  encodeOffsetHole,
  encodeOptionReply,
  encodeSimpleReply,
  errorChunkType,
} from "../_support/nbd_server.ts";
import { Prng } from "../_support/prng.ts";

const enc = new TextEncoder();
const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

/** A random safe 64-bit value, biased towards the edges where encoding bugs live. */
function u64(r: Prng): number {
  switch (r.int(4)) {
    case 0:
      return r.int(256);
    case 1:
      return Number.MAX_SAFE_INTEGER - r.int(256);
    case 2:
      return 0x1_0000_0000 + r.int(256) - 128;
    default:
      return Math.floor(r.next() * Number.MAX_SAFE_INTEGER);
  }
}

function u32(r: Prng): number {
  return r.chance(0.2) ? 0xffffffff - r.int(4) : Math.floor(r.next() * 0x1_0000_0000);
}

/** A random string with ASCII, separators the URI and wire formats care about, and non-ASCII. */
function randomText(r: Prng, max = 20): string {
  const alphabet = [
    "a",
    "Z",
    "0",
    "/",
    "%",
    "?",
    "#",
    "&",
    "=",
    "+",
    " ",
    ":",
    "@",
    "é",
    "日",
    "😀",
  ];
  let s = "";
  const n = r.int(max + 1);
  for (let i = 0; i < n; i++) s += alphabet[r.int(alphabet.length)];
  return s;
}

Deno.test("greeting bytes are NBDMAGIC, IHAVEOPT and the 16-bit flags", () => {
  const b = encodeGreeting(HandshakeFlag.FixedNewstyle | HandshakeFlag.NoZeroes);
  strictEqual(new TextDecoder().decode(b.subarray(0, 16)), "NBDMAGICIHAVEOPT");
  deepStrictEqual([...b.subarray(16)], [0, 3]);
  deepStrictEqual(decodeGreeting(b), { handshakeFlags: 3 });
});

Deno.test("greeting refuses a bad magic, oldstyle servers, non-fixed newstyle and short input", () => {
  const bad = encodeGreeting(1);
  bad[0] = 0x41;
  throws(() => decodeGreeting(bad), /bad greeting magic/);
  const old = encodeGreeting(1);
  new DataView(old.buffer).setBigUint64(8, 0x00420281861253n);
  throws(() => decodeGreeting(old), /oldstyle/);
  throws(() => decodeGreeting(encodeGreeting(0)), /fixed newstyle/);
  throws(() => decodeGreeting(encodeGreeting(1).subarray(0, 17)), NbdProtocolError);
});

Deno.test("client flags ask for no-zeroes only when the server offers it", () => {
  strictEqual(clientFlagsFor(HandshakeFlag.FixedNewstyle), 1);
  strictEqual(clientFlagsFor(HandshakeFlag.FixedNewstyle | HandshakeFlag.NoZeroes), 3);
  strictEqual(hex(encodeClientFlags(3)), "00000003");
  strictEqual(decodeClientFlags(encodeClientFlags(3)), 3);
});

Deno.test("an option request has the IHAVEOPT prefix, option and length, then its data", () => {
  const go = encodeOption(Opt.Go, encodeGoData("ab", [Info.BlockSize]));
  strictEqual(
    hex(go),
    "49484156454f5054" + "00000007" + "0000000a" + "00000002" + "6162" + "0001" + "0003",
  );
  deepStrictEqual(decodeOptionHeader(go), { option: 7, length: 10 });
  const meta = encodeMetaContextData("", ["base:allocation"]);
  strictEqual(hex(meta), "00000000" + "00000001" + "0000000f" + hex(enc.encode("base:allocation")));
});

Deno.test("NBD_OPT_GO and SET_META_CONTEXT data round-trip for 500 seeded random names", () => {
  for (let seed = 1; seed <= 500; seed++) {
    const r = new Prng(seed);
    const exportName = randomText(r);
    const infos = Array.from({ length: r.int(5) }, () => r.int(65536));
    deepStrictEqual(
      decodeGoData(encodeGoData(exportName, infos)),
      { exportName, infos },
      `seed ${seed}`,
    );
    const queries = Array.from({ length: r.int(4) }, () => randomText(r, 8));
    deepStrictEqual(
      decodeMetaContextData(encodeMetaContextData(exportName, queries)),
      { exportName, queries },
      `seed ${seed}`,
    );
  }
});

Deno.test("strings longer than 4096 bytes are refused when encoding", () => {
  throws(() => encodeGoData("x".repeat(4097), []), RangeError);
  encodeGoData("x".repeat(4096), []);
});

Deno.test("option reply headers round-trip and a reply to another option is a protocol error", () => {
  const b = encodeOptionReply(
    Opt.SetMetaContext,
    Rep.MetaContext,
    encodeMetaContextReply(7, "base:allocation"),
  );
  strictEqual(hex(b.subarray(0, 8)), "0003e889045565a9");
  const h = decodeOptionReplyHeader(b, Opt.SetMetaContext);
  deepStrictEqual(h, { option: 10, type: 4, length: 19 });
  deepStrictEqual(decodeMetaContextReply(b.subarray(20)), { id: 7, name: "base:allocation" });
  throws(
    () => decodeOptionReplyHeader(b, Opt.Go),
    /answered NBD_OPT_SET_META_CONTEXT to NBD_OPT_GO/,
  );
  const bad = b.slice();
  bad[0] = 9;
  throws(() => decodeOptionReplyHeader(bad), /bad option reply magic/);
});

Deno.test("option errors are recognised by bit 31 and described with the server's message", () => {
  ok(isOptionError(RepErr.Unsup));
  ok(isOptionError(RepErr.ExtHeaderReqd));
  ok(!isOptionError(Rep.Ack));
  strictEqual(RepErr.Unknown, 0x80000006);
  strictEqual(
    describeOptionError(Opt.Go, RepErr.Unknown, new Uint8Array()),
    "NBD_OPT_GO failed: no such export",
  );
  strictEqual(
    describeOptionError(Opt.Go, RepErr.TlsReqd, enc.encode("go away\n")),
    "NBD_OPT_GO failed: the server requires TLS, which sparse_dd does not support (server: go away)",
  );
  ok(describeOptionError(99, 0x80000063, new Uint8Array([0xff])).includes("option 99"));
});

Deno.test("info replies round-trip for 300 seeded random exports and block sizes", () => {
  for (let seed = 1; seed <= 300; seed++) {
    const r = new Prng(seed);
    const replies: InfoReply[] = [
      { info: "export", size: u64(r), transmissionFlags: r.int(65536) },
      {
        info: "block_size",
        minimum: 1 + r.int(65536),
        preferred: 1 + r.int(1 << 20),
        maximum: 1 + u32(r) % 0xffffffff,
      },
      { info: "name", name: randomText(r) },
      { info: "description", description: randomText(r) },
      { info: "unknown", type: 4 + r.int(1000) },
    ];
    for (const reply of replies) {
      deepStrictEqual(decodeInfoReply(encodeInfoReply(reply)), reply, `seed ${seed}`);
    }
  }
});

Deno.test("NBD_INFO_EXPORT is size then flags; wrong lengths and zero block sizes are refused", () => {
  const b = encodeInfoReply({ info: "export", size: 2 ** 40, transmissionFlags: 0x1ed });
  strictEqual(hex(b), "0000" + "0000010000000000" + "01ed");
  throws(() => decodeInfoReply(b.subarray(0, 11)), /bad length/);
  const bs = encodeInfoReply({ info: "block_size", minimum: 1, preferred: 4096, maximum: 1 << 25 });
  strictEqual(hex(bs), "0003" + "00000001" + "00001000" + "02000000");
  bs[5] = 0;
  throws(() => decodeInfoReply(bs), /zero size/);
});

Deno.test("a 64-bit size beyond 2^53 is a protocol error, not a silent rounding", () => {
  const b = encodeInfoReply({ info: "export", size: 0, transmissionFlags: 1 });
  b.fill(0xff, 2, 10);
  throws(() => decodeInfoReply(b), NbdProtocolError);
});

Deno.test("the old export-name reply is size and flags", () => {
  const b = new Uint8Array(134);
  new DataView(b.buffer).setUint32(4, 1 << 20);
  b[9] = 0x0d;
  deepStrictEqual(decodeExportNameReply(b), { size: 1 << 20, transmissionFlags: 13 });
});

Deno.test("a request header is magic, flags, type, cookie, offset, length (known bytes)", () => {
  const b = encodeRequest({
    flags: CmdFlag.NoHole,
    type: Cmd.WriteZeroes,
    cookie: 0x0102030405,
    offset: 2 ** 32 + 512,
    length: 0x10000,
  });
  strictEqual(
    hex(b),
    "25609513" + "0002" + "0006" + "0000000102030405" + "0000000100000200" + "00010000",
  );
});

Deno.test("requests round-trip for 1000 seeded random headers; lengths over 32 bits are refused", () => {
  for (let seed = 1; seed <= 1000; seed++) {
    const r = new Prng(seed);
    const req = {
      flags: r.int(65536),
      type: r.int(9),
      cookie: u64(r),
      offset: u64(r),
      length: u32(r),
    };
    deepStrictEqual(decodeRequest(encodeRequest(req)), req, `seed ${seed}`);
  }
  throws(
    () => encodeRequest({ flags: 0, type: 0, cookie: 1, offset: 0, length: 2 ** 32 }),
    RangeError,
  );
  throws(() => encodeRequest({ flags: 0, type: 0, cookie: 1, offset: -1, length: 0 }), RangeError);
});

Deno.test("simple and structured reply headers decode, and the magic says how long the header is", () => {
  const s = encodeSimpleReply(5, 77);
  strictEqual(hex(s), "67446698" + "00000005" + "000000000000004d");
  strictEqual(replyHeaderSize(s), 16);
  deepStrictEqual(decodeReplyHeader(s), { kind: "simple", error: 5, cookie: 77 });
  const c = encodeChunk(ReplyFlag.Done, ChunkType.OffsetHole, 78, encodeOffsetHole(4096, 512));
  strictEqual(hex(c.subarray(0, 8)), "668e33ef" + "0001" + "0002");
  strictEqual(replyHeaderSize(c), STRUCTURED_REPLY_HEADER_SIZE);
  deepStrictEqual(decodeReplyHeader(c), {
    kind: "structured",
    flags: 1,
    type: 2,
    cookie: 78,
    length: 12,
  });
  deepStrictEqual(decodeOffsetHole(c.subarray(20)), { offset: 4096, length: 512 });
  throws(() => replyHeaderSize(new Uint8Array([1, 2, 3, 4])), /bad reply magic 0x01020304/);
});

Deno.test("structured chunk payloads round-trip for 500 seeded random chunks", () => {
  for (let seed = 1; seed <= 500; seed++) {
    const r = new Prng(seed);
    const data = r.fill(new Uint8Array(r.int(64)));
    const offset = u64(r);
    const od = encodeOffsetData(offset, data);
    strictEqual(decodeDataOffset(od), offset);
    deepStrictEqual(od.subarray(8), data);
    const holeLength = 1 + r.int(0xfffffffe);
    deepStrictEqual(decodeOffsetHole(encodeOffsetHole(offset, holeLength)), {
      offset,
      length: holeLength,
    });
    const descriptors = Array.from(
      { length: 1 + r.int(10) },
      () => ({ length: u32(r), flags: r.int(4) }),
    );
    const contextId = u32(r);
    deepStrictEqual(decodeBlockStatus(encodeBlockStatus(contextId, descriptors)), {
      contextId,
      descriptors,
    });
    const e = r.chance(0.5)
      ? { error: 1 + r.int(200), message: randomText(r) }
      : { error: 1 + r.int(200), message: randomText(r), offset };
    const type = errorChunkType(e);
    ok(isErrorChunk(type));
    deepStrictEqual(decodeErrorChunk(encodeErrorChunk(e), type), e, `seed ${seed}`);
  }
});

Deno.test("malformed chunk payloads are protocol errors", () => {
  throws(() => decodeOffsetHole(encodeOffsetHole(0, 1).subarray(0, 11)), /bad length/);
  throws(() => decodeOffsetHole(new Uint8Array(12)), /zero length/);
  throws(() => decodeBlockStatus(new Uint8Array(4)), /bad length/);
  throws(() => decodeBlockStatus(new Uint8Array(13)), /bad length/);
  throws(() => decodeErrorChunk(encodeErrorChunk({ error: 0, message: "" })), /error 0/);
  throws(
    () => decodeErrorChunk(encodeErrorChunk({ error: 5, message: "x" }), ChunkType.ErrorOffset),
    /without an offset/,
  );
  throws(
    () =>
      decodeErrorChunk(encodeErrorChunk({ error: 5, message: "x", offset: 1 }), ChunkType.Error),
    /trailing/,
  );
  const msgTooLong = encodeErrorChunk({ error: 5, message: "abc" });
  msgTooLong[5] = 9;
  throws(() => decodeErrorChunk(msgTooLong), /bad length/);
  ok(!isErrorChunk(ChunkType.BlockStatus));
});

Deno.test("every decoder given 3000 seeded random byte strings throws only NbdProtocolError", () => {
  const decoders: Array<[string, (b: Uint8Array) => unknown]> = [
    ["greeting", decodeGreeting],
    ["option header", decodeOptionHeader],
    ["go data", decodeGoData],
    ["meta context data", decodeMetaContextData],
    ["option reply", (b) => decodeOptionReplyHeader(b)],
    ["info", decodeInfoReply],
    ["meta context reply", decodeMetaContextReply],
    ["export name reply", decodeExportNameReply],
    ["request", decodeRequest],
    ["reply header", decodeReplyHeader],
    ["data offset", decodeDataOffset],
    ["hole", decodeOffsetHole],
    ["block status", decodeBlockStatus],
    ["error", (b) => decodeErrorChunk(b)],
  ];
  for (let seed = 1; seed <= 3000; seed++) {
    const r = new Prng(seed);
    const b = r.fill(new Uint8Array(r.int(40)));
    // Valid magics now and then, so decoding gets past the first check.
    if (b.length >= 4 && r.chance(0.3)) {
      new DataView(b.buffer).setUint32(0, r.chance(0.5) ? 0x67446698 : 0x668e33ef);
    }
    for (const [name, decode] of decoders) {
      try {
        decode(b);
      } catch (e) {
        ok(e instanceof NbdProtocolError, `${name}, seed ${seed}: ${e}`);
      }
    }
  }
});

Deno.test("errno and command names are readable", () => {
  strictEqual(errnoText(5), "EIO (Input/output error)");
  strictEqual(errnoText(28), "ENOSPC (No space left on device)");
  strictEqual(errnoText(1234), "error 1234");
});

Deno.test("NBD URIs parse into tcp and unix targets", () => {
  const cases: Array<[string, NbdTarget]> = [
    ["nbd://localhost/disk", {
      transport: "tcp",
      host: "localhost",
      port: 10809,
      exportName: "disk",
    }],
    ["nbd://127.0.0.1:10810", { transport: "tcp", host: "127.0.0.1", port: 10810, exportName: "" }],
    ["nbd://[::1]:99/a%20b", { transport: "tcp", host: "::1", port: 99, exportName: "a b" }],
    ["nbd://h//abs/path", { transport: "tcp", host: "h", port: 10809, exportName: "/abs/path" }],
    ["NBD://Host/X", { transport: "tcp", host: "Host", port: 10809, exportName: "X" }],
    ["nbd+unix:///?socket=/tmp/s.sock", { transport: "unix", path: "/tmp/s.sock", exportName: "" }],
    ["nbd+unix:///vm%2F1?socket=/run/a+b%20c.sock", {
      transport: "unix",
      path: "/run/a+b c.sock",
      exportName: "vm/1",
    }],
    ["nbd+unix://?socket=rel.sock", { transport: "unix", path: "rel.sock", exportName: "" }],
  ];
  for (const [uri, target] of cases) deepStrictEqual(parseNbdUri(uri), target, uri);
});

Deno.test("TLS, other transports and malformed NBD URIs are refused with a clear message", () => {
  throws(() => parseNbdUri("nbds://host/x"), /NBD over TLS \(nbds:\/\/\) is not supported/);
  throws(() => parseNbdUri("nbds+unix:///x?socket=/s"), /TLS/);
  throws(() => parseNbdUri("nbd+vsock:///x"), /unsupported NBD transport nbd\+vsock/);
  throws(() => parseNbdUri("nbd+unix:///x"), /needs \?socket=PATH/);
  throws(() => parseNbdUri("nbd+unix://host/x?socket=/s"), /takes no host/);
  throws(() => parseNbdUri("nbd://h:0/x"), /bad port/);
  throws(() => parseNbdUri("nbd://h:70000/x"), /malformed|bad port/);
  throws(() => parseNbdUri("nbd:///x"), /needs a host/);
  throws(() => parseNbdUri("nbd://user:pw@h/x"), /user name or password/);
  throws(() => parseNbdUri("nbd://h/x#frag"), /fragment/);
  throws(() => parseNbdUri("nbd://h/%zz"), /percent-encoding/);
});

Deno.test("isNbdUri spots every nbd scheme, and nothing else", () => {
  for (const s of ["nbd://h/", "NBD://h", "nbd+unix:///?socket=x", "nbds://h/", "nbd+vsock:///"]) {
    ok(isNbdUri(s), s);
  }
  for (const s of ["/dev/sdb", "disk.raw", "http://h/x", "nbdfile.raw", "./nbd://x", "file:nbd"]) {
    ok(!isNbdUri(s), s);
  }
});

Deno.test("formatNbdUri and parseNbdUri round-trip for 1000 seeded random targets", () => {
  for (let seed = 1; seed <= 1000; seed++) {
    const r = new Prng(seed);
    const exportName = randomText(r);
    const target: NbdTarget = r.chance(0.5)
      ? {
        transport: "tcp",
        host: ["localhost", "127.0.0.1", "::1", "fe80::1", "example.org"][r.int(5)],
        port: r.chance(0.3) ? 10809 : 1 + r.int(65535),
        exportName,
      }
      : { transport: "unix", path: "/tmp/" + randomText(r, 10).replace(/^$/, "s"), exportName };
    const uri = formatNbdUri(target);
    ok(isNbdUri(uri), uri);
    deepStrictEqual(parseNbdUri(uri), target, `seed ${seed}: ${uri}`);
  }
});
