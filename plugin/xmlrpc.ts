/**
 * A small, strict XML-RPC codec: no I/O, no DTDs, no entities beyond XML's five and numeric
 * character references, bounded input size and nesting depth. It reads both dialects a xapi
 * host produces — xapi's bare `<value>text</value>`, `<value/>`, `<struct/>` on one line, and
 * Python `xmlrpc.client`'s `<value><string>..</string></value>` with whitespace and an XML
 * declaration — and writes responses and calls both of them accept.
 *
 * Anything malformed throws {@linkcode XmlRpcError}, never another exception type, so a caller
 * can turn it into a protocol-level failure.
 *
 * @example Parsing the methodCall xapi passes to a host plugin
 * ```ts
 * import { parseMethodCall } from "./xmlrpc.ts";
 * const call = parseMethodCall(
 *   "<methodCall><methodName>version</methodName><params><param><value>OpaqueRef:1</value>" +
 *     "</param><param><value><struct/></value></param></params></methodCall>",
 * );
 * call.methodName; // "version"
 * call.params; // ["OpaqueRef:1", {}]
 * ```
 *
 * @module
 */

/** A struct: names to values. Parsed structs have a null prototype. */
export interface XmlRpcStruct {
  /** A member. */
  [name: string]: XmlRpcValue;
}

/**
 * Every value XML-RPC can carry. `number` is `<int>` when it is an integer in the 32-bit range
 * and `<double>` otherwise; wrap a number in {@linkcode XmlRpcDouble} to force `<double>`.
 * `null` is the `<nil/>` extension, `Date` is `<dateTime.iso8601>` (UTC, whole seconds),
 * `Uint8Array` is `<base64>`.
 */
export type XmlRpcValue =
  | string
  | number
  | boolean
  | null
  | Date
  | Uint8Array
  | XmlRpcDouble
  | XmlRpcValue[]
  | XmlRpcStruct;

/** A call: `<methodCall>`. */
export interface MethodCall {
  /** The method name, e.g. `task.set_progress`. */
  methodName: string;
  /** The positional parameters. */
  params: XmlRpcValue[];
}

/** The `<fault>` of a failed call. */
export interface Fault {
  /** The fault code (an `<int>`). */
  faultCode: number;
  /** The fault message. */
  faultString: string;
}

/** A parsed `<methodResponse>`: either its params or its fault. */
export type MethodResponse =
  | { params: XmlRpcValue[]; fault?: undefined }
  | { fault: Fault; params?: undefined };

/** Bounds on what the parser accepts. */
export interface Limits {
  /** Largest accepted document, in UTF-8 bytes. Default 1 MiB. */
  maxBytes: number;
  /** Deepest accepted element nesting. Default 128 (about 40 levels of nested values). */
  maxDepth: number;
}

/**
 * The default parser limits: 1 MiB, 128 levels of elements.
 *
 * @example
 * ```ts
 * import { DEFAULT_LIMITS } from "./xmlrpc.ts";
 * DEFAULT_LIMITS.maxBytes; // 1048576
 * ```
 */
export const DEFAULT_LIMITS: Readonly<Limits> = Object.freeze({
  maxBytes: 1024 * 1024,
  maxDepth: 128,
});

/**
 * Malformed, unsafe or oversized XML-RPC, or a value that cannot be written. `offset` is the
 * character offset in the input where parsing stopped, when there is one.
 *
 * @example
 * ```ts
 * import { parseMethodCall, XmlRpcError } from "./xmlrpc.ts";
 * try {
 *   parseMethodCall("<!DOCTYPE x [<!ENTITY a 'b'>]><methodCall/>");
 * } catch (e) {
 *   e instanceof XmlRpcError; // true: "DOCTYPE/DTD is not allowed at offset 0"
 * }
 * ```
 */
export class XmlRpcError extends Error {
  /** Where in the input the problem is, when there is an input. */
  readonly offset?: number;

  /** `message`, with the offset appended when there is one. */
  constructor(message: string, offset?: number) {
    super(offset === undefined ? message : `${message} at offset ${offset}`);
    this.offset = offset;
    this.name = "XmlRpcError";
  }
}

/**
 * A number that is written as `<double>` even when it is an integer. xapi type-checks its
 * parameters: `task.set_progress` wants a `<double>`, and `1` would be written as `<int>`.
 *
 * @example
 * ```ts
 * import { serializeMethodCall, XmlRpcDouble } from "./xmlrpc.ts";
 * serializeMethodCall({
 *   methodName: "task.set_progress",
 *   params: ["OpaqueRef:s", "OpaqueRef:t", new XmlRpcDouble(1)],
 * }); // ...<value><double>1.0</double></value>...
 * ```
 */
export class XmlRpcDouble {
  /** The number to write as `<double>`. */
  readonly value: number;

  /** Wraps `value`. */
  constructor(value: number) {
    this.value = value;
  }
}

// ---------------------------------------------------------------------------------------------
// A minimal XML reader: elements, text, CDATA and comments. Anything that could expand or fetch
// (DOCTYPE, entity declarations, unknown entities) is refused.

interface Element {
  name: string;
  /** Character offset of the start tag, for messages. */
  at: number;
  children: (Element | Text)[];
}

interface Text {
  text: string;
  at: number;
}

const isElement = (n: Element | Text): n is Element => "name" in n;

const NAME = /[A-Za-z_:][A-Za-z0-9_:.\-]*/y;
const SPACE = /[ \t\r\n]*/y;
// XML 1.0 forbids these code points anywhere, even as character references.
// deno-lint-ignore no-control-regex
const BAD_CHAR = /[\x00-\x08\x0B\x0C\x0E-\x1F\uFFFE\uFFFF]/;
const BAD_CHARS = new RegExp(BAD_CHAR.source, "g");

class Reader {
  pos = 0;
  constructor(readonly s: string, readonly maxDepth: number) {}

  fail(message: string, at = this.pos): never {
    throw new XmlRpcError(message, at);
  }

  startsWith(prefix: string): boolean {
    return this.s.startsWith(prefix, this.pos);
  }

  skipSpace(): void {
    SPACE.lastIndex = this.pos;
    SPACE.exec(this.s);
    this.pos = SPACE.lastIndex;
  }

  name(): string {
    NAME.lastIndex = this.pos;
    const m = NAME.exec(this.s);
    if (!m) this.fail("expected an XML name");
    this.pos = NAME.lastIndex;
    return m[0];
  }

  /** Skips a comment; the reader is at `<!--`. */
  comment(): void {
    const end = this.s.indexOf("-->", this.pos + 4);
    if (end < 0) this.fail("unterminated comment");
    if (this.s.slice(this.pos + 4, end).includes("--")) this.fail("'--' inside a comment");
    this.pos = end + 3;
  }

  /** Whitespace and comments between top-level items. */
  misc(): void {
    for (;;) {
      this.skipSpace();
      if (this.startsWith("<!--")) this.comment();
      else if (this.startsWith("<!")) this.fail("DOCTYPE/DTD is not allowed");
      else if (this.startsWith("<?")) this.fail("processing instructions are not allowed");
      else return;
    }
  }

  declaration(): void {
    if (!this.startsWith("<?xml")) return;
    const after = this.s.charAt(this.pos + 5);
    if (after !== " " && after !== "\t" && after !== "\n" && after !== "\r" && after !== "?") {
      return; // `<?xml-foo` is a PI, refused by misc()
    }
    const end = this.s.indexOf("?>", this.pos);
    if (end < 0) this.fail("unterminated XML declaration");
    const body = this.s.slice(this.pos + 5, end);
    if (!/^\s+version\s*=\s*(['"])1\.[0-9]+\1/.test(body)) this.fail("bad XML declaration");
    const enc = /\bencoding\s*=\s*(['"])([A-Za-z0-9._-]+)\1/.exec(body);
    if (enc && !/^(utf-?8|us-ascii|ascii)$/i.test(enc[2])) {
      this.fail(`unsupported encoding ${enc[2]}`);
    }
    this.pos = end + 2;
  }

  document(): Element {
    if (this.s.charCodeAt(0) === 0xfeff) this.pos = 1;
    this.declaration();
    this.misc();
    if (this.pos >= this.s.length) this.fail("no root element");
    if (this.s.charAt(this.pos) !== "<") this.fail("expected the root element");
    const root = this.element(1);
    this.misc();
    if (this.pos < this.s.length) this.fail("content after the root element");
    return root;
  }

  /** Parses an element; the reader is at its `<`. */
  element(depth: number): Element {
    if (depth > this.maxDepth) this.fail(`elements nested deeper than ${this.maxDepth}`);
    const at = this.pos;
    this.pos++;
    const name = this.name();
    const seen = new Set<string>();
    for (;;) {
      const before = this.pos;
      this.skipSpace();
      if (this.startsWith("/>")) {
        this.pos += 2;
        return { name, at, children: [] };
      }
      if (this.startsWith(">")) {
        this.pos++;
        break;
      }
      if (this.pos === before) this.fail(`malformed start tag <${name}>`);
      // Attributes are well-formed XML but mean nothing in XML-RPC: checked, then dropped.
      const attr = this.name();
      if (seen.has(attr)) this.fail(`duplicate attribute ${attr}`);
      seen.add(attr);
      this.skipSpace();
      if (!this.startsWith("=")) this.fail(`attribute ${attr} without a value`);
      this.pos++;
      this.skipSpace();
      const quote = this.s.charAt(this.pos);
      if (quote !== '"' && quote !== "'") this.fail(`unquoted attribute ${attr}`);
      const end = this.s.indexOf(quote, this.pos + 1);
      if (end < 0) this.fail(`unterminated attribute ${attr}`);
      const raw = this.s.slice(this.pos + 1, end);
      if (raw.includes("<")) this.fail(`'<' in attribute ${attr}`);
      decodeText(raw, this.pos + 1);
      this.pos = end + 1;
    }
    const children: (Element | Text)[] = [];
    let text = "";
    let textAt = this.pos;
    const flush = () => {
      if (text !== "") children.push({ text, at: textAt });
      text = "";
    };
    for (;;) {
      const lt = this.s.indexOf("<", this.pos);
      if (lt < 0) this.fail(`unterminated element <${name}>`, at);
      if (lt > this.pos) {
        const raw = this.s.slice(this.pos, lt);
        if (raw.includes("]]>")) this.fail("']]>' in text");
        if (text === "") textAt = this.pos;
        text += decodeText(raw, this.pos);
        this.pos = lt;
      }
      if (this.startsWith("</")) {
        this.pos += 2;
        const close = this.name();
        if (close !== name) this.fail(`</${close}> closes <${name}>`);
        this.skipSpace();
        if (!this.startsWith(">")) this.fail(`malformed end tag </${close}>`);
        this.pos++;
        flush();
        return { name, at, children };
      }
      if (this.startsWith("<!--")) {
        this.comment();
      } else if (this.startsWith("<![CDATA[")) {
        const end = this.s.indexOf("]]>", this.pos + 9);
        if (end < 0) this.fail("unterminated CDATA section");
        if (text === "") textAt = this.pos;
        text += normaliseNewlines(this.s.slice(this.pos + 9, end));
        this.pos = end + 3;
      } else if (this.startsWith("<!")) {
        this.fail("DOCTYPE/DTD is not allowed");
      } else if (this.startsWith("<?")) {
        this.fail("processing instructions are not allowed");
      } else {
        flush();
        children.push(this.element(depth + 1));
      }
    }
  }
}

const PREDEFINED: Record<string, string> = {
  lt: "<",
  gt: ">",
  amp: "&",
  quot: '"',
  apos: "'",
};

function normaliseNewlines(s: string): string {
  return s.includes("\r") ? s.replace(/\r\n?/g, "\n") : s;
}

/** Decodes references in character data; `at` is the offset of `raw` in the input. */
function decodeText(raw: string, at: number): string {
  const amp = raw.indexOf("&");
  if (amp < 0) return normaliseNewlines(raw);
  let out = "";
  let i = 0;
  let j = amp;
  while (j >= 0) {
    out += normaliseNewlines(raw.slice(i, j));
    const semi = raw.indexOf(";", j);
    if (semi < 0 || semi - j > 12) throw new XmlRpcError("unterminated reference", at + j);
    const ref = raw.slice(j + 1, semi);
    if (ref.startsWith("#")) {
      const m = /^#(?:x([0-9A-Fa-f]{1,6})|([0-9]{1,7}))$/.exec(ref);
      const cp = m ? (m[1] !== undefined ? parseInt(m[1], 16) : parseInt(m[2], 10)) : -1;
      const ok = cp === 0x9 || cp === 0xa || cp === 0xd ||
        (cp >= 0x20 && cp <= 0xd7ff) || (cp >= 0xe000 && cp <= 0xfffd) ||
        (cp >= 0x10000 && cp <= 0x10ffff);
      if (!ok) throw new XmlRpcError(`invalid character reference &${ref};`, at + j);
      out += String.fromCodePoint(cp);
    } else {
      const ch = Object.hasOwn(PREDEFINED, ref) ? PREDEFINED[ref] : undefined;
      if (ch === undefined) throw new XmlRpcError(`undefined entity &${ref};`, at + j);
      out += ch;
    }
    i = semi + 1;
    j = raw.indexOf("&", i);
  }
  return out + normaliseNewlines(raw.slice(i));
}

function readDocument(xml: string, limits: Partial<Limits> | undefined): Element {
  const { maxBytes, maxDepth } = { ...DEFAULT_LIMITS, ...limits };
  if (typeof xml !== "string") throw new XmlRpcError("the document is not a string");
  // UTF-16 units never outnumber UTF-8 bytes, so the cheap test settles most cases.
  if (xml.length > maxBytes || new TextEncoder().encode(xml).length > maxBytes) {
    throw new XmlRpcError(`the document is larger than ${maxBytes} bytes`);
  }
  if (!xml.isWellFormed()) throw new XmlRpcError("the document holds a lone surrogate");
  const bad = BAD_CHAR.exec(xml);
  if (bad) {
    throw new XmlRpcError(
      `character U+${bad[0].charCodeAt(0).toString(16).padStart(4, "0")} is not allowed`,
      bad.index,
    );
  }
  return new Reader(xml, maxDepth).document();
}

// ---------------------------------------------------------------------------------------------
// XML-RPC over the element tree.

function isBlank(s: string): boolean {
  return /^[ \t\n]*$/.test(s);
}

/** The child elements; text between them must be whitespace. */
function elements(e: Element): Element[] {
  const out: Element[] = [];
  for (const c of e.children) {
    if (isElement(c)) out.push(c);
    else if (!isBlank(c.text)) throw new XmlRpcError(`unexpected text in <${e.name}>`, c.at);
  }
  return out;
}

/** The text of an element that must hold only text. */
function textOf(e: Element): string {
  let s = "";
  for (const c of e.children) {
    if (isElement(c)) throw new XmlRpcError(`unexpected <${c.name}> in <${e.name}>`, c.at);
    s += c.text;
  }
  return s;
}

function only(e: Element, name: string): Element {
  const kids = elements(e);
  if (kids.length !== 1 || kids[0].name !== name) {
    throw new XmlRpcError(`<${e.name}> must hold exactly one <${name}>`, e.at);
  }
  return kids[0];
}

const INT = /^[+-]?[0-9]+$/;
const DOUBLE = /^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$/;
const DATE =
  /^([0-9]{4})-?([0-9]{2})-?([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]+)?(Z|[+-][0-9]{2}:?[0-9]{2})?$/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function valueOf(v: Element): XmlRpcValue {
  // xapi's bare <value>text</value> and <value/> are strings.
  if (!v.children.some(isElement)) return textOf(v);
  const kids = elements(v);
  if (kids.length > 1) throw new XmlRpcError("<value> holds more than one type", kids[1].at);
  const t = kids[0];
  switch (t.name) {
    case "string":
      return textOf(t);
    case "int":
    case "i4":
    case "i8": {
      const s = textOf(t).trim();
      const n = INT.test(s) ? Number(s) : NaN;
      if (!Number.isSafeInteger(n)) throw new XmlRpcError(`bad <${t.name}> ${s}`, t.at);
      return n;
    }
    case "double": {
      const s = textOf(t).trim();
      const n = DOUBLE.test(s) ? Number(s) : NaN;
      if (!Number.isFinite(n)) throw new XmlRpcError(`bad <double> ${s}`, t.at);
      return n;
    }
    case "boolean": {
      const s = textOf(t).trim();
      if (s !== "0" && s !== "1") throw new XmlRpcError(`bad <boolean> ${s}`, t.at);
      return s === "1";
    }
    case "nil":
      if (t.children.length !== 0) throw new XmlRpcError("<nil> must be empty", t.at);
      return null;
    case "dateTime.iso8601": {
      const s = textOf(t).trim();
      const m = DATE.exec(s);
      let d = new Date(NaN);
      if (m) {
        const zone = m[7] === undefined || m[7] === "Z"
          ? "Z"
          : m[7].replace(/^(...)(..)$/, "$1:$2");
        d = new Date(`${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}${zone}`);
        // Date rolls 31 February over into March; the fields must survive unchanged.
        const check = new Date(`${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}Z`);
        if (
          isNaN(check.getTime()) || check.getUTCDate() !== Number(m[3]) ||
          check.getUTCHours() !== Number(m[4]) || check.getUTCMinutes() !== Number(m[5]) ||
          check.getUTCSeconds() !== Number(m[6])
        ) d = new Date(NaN);
      }
      if (isNaN(d.getTime())) throw new XmlRpcError(`bad <dateTime.iso8601> ${s}`, t.at);
      return d;
    }
    case "base64": {
      const s = textOf(t).replace(/[ \t\n]+/g, "");
      if (!BASE64.test(s)) throw new XmlRpcError("bad <base64>", t.at);
      const bin = atob(s);
      const out = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
      return out;
    }
    case "array": {
      const data = only(t, "data");
      return elements(data).map((e) => {
        if (e.name !== "value") throw new XmlRpcError(`unexpected <${e.name}> in <data>`, e.at);
        return valueOf(e);
      });
    }
    case "struct": {
      const out: XmlRpcStruct = Object.create(null);
      for (const m of elements(t)) {
        if (m.name !== "member") throw new XmlRpcError(`unexpected <${m.name}> in <struct>`, m.at);
        const parts = elements(m);
        const name = parts.find((p) => p.name === "name");
        const value = parts.find((p) => p.name === "value");
        if (parts.length !== 2 || !name || !value) {
          throw new XmlRpcError("<member> must hold one <name> and one <value>", m.at);
        }
        const key = textOf(name);
        if (Object.hasOwn(out, key)) throw new XmlRpcError(`duplicate member ${key}`, m.at);
        out[key] = valueOf(value);
      }
      return out;
    }
    default:
      throw new XmlRpcError(`unknown type <${t.name}>`, t.at);
  }
}

function paramsOf(e: Element): XmlRpcValue[] {
  return elements(e).map((p) => {
    if (p.name !== "param") throw new XmlRpcError(`unexpected <${p.name}> in <params>`, p.at);
    return valueOf(only(p, "value"));
  });
}

/**
 * Parses a `<methodCall>` document.
 *
 * @example Python's form
 * ```ts
 * import { parseMethodCall } from "./xmlrpc.ts";
 * const call = parseMethodCall(`<?xml version='1.0'?>
 * <methodCall>
 * <methodName>copy</methodName>
 * <params>
 * <param><value><string>OpaqueRef:s</string></value></param>
 * </params>
 * </methodCall>`);
 * call.params[0]; // "OpaqueRef:s"
 * ```
 */
export function parseMethodCall(xml: string, limits?: Partial<Limits>): MethodCall {
  const root = readDocument(xml, limits);
  if (root.name !== "methodCall") throw new XmlRpcError(`<${root.name}> is not <methodCall>`, 0);
  const kids = elements(root);
  const nameEl = kids[0];
  if (!nameEl || nameEl.name !== "methodName") {
    throw new XmlRpcError("<methodCall> must start with <methodName>", root.at);
  }
  const methodName = textOf(nameEl).trim();
  if (!/^[A-Za-z0-9_.:/-]+$/.test(methodName)) {
    throw new XmlRpcError("bad <methodName>", nameEl.at);
  }
  if (kids.length > 2 || (kids[1] && kids[1].name !== "params")) {
    throw new XmlRpcError("<methodCall> may hold only <methodName> and <params>", root.at);
  }
  return { methodName, params: kids[1] ? paramsOf(kids[1]) : [] };
}

/**
 * Parses a `<methodResponse>` document: its params, or its fault.
 *
 * @example
 * ```ts
 * import { parseMethodResponse } from "./xmlrpc.ts";
 * const r = parseMethodResponse(
 *   "<methodResponse><params><param><value><struct><member><name>Status</name>" +
 *     "<value>Success</value></member></struct></value></param></params></methodResponse>",
 * );
 * r.params?.[0]; // { Status: "Success" }
 * ```
 */
export function parseMethodResponse(xml: string, limits?: Partial<Limits>): MethodResponse {
  const root = readDocument(xml, limits);
  if (root.name !== "methodResponse") {
    throw new XmlRpcError(`<${root.name}> is not <methodResponse>`, 0);
  }
  const kids = elements(root);
  if (kids.length !== 1) {
    throw new XmlRpcError("<methodResponse> must hold <params> or <fault>", root.at);
  }
  if (kids[0].name === "params") return { params: paramsOf(kids[0]) };
  if (kids[0].name !== "fault") {
    throw new XmlRpcError(`unexpected <${kids[0].name}> in <methodResponse>`, kids[0].at);
  }
  const f = valueOf(only(kids[0], "value"));
  const code = isStruct(f) ? f.faultCode : undefined;
  const text = isStruct(f) ? f.faultString : undefined;
  if (typeof code !== "number" || typeof text !== "string") {
    throw new XmlRpcError("<fault> must hold faultCode and faultString", kids[0].at);
  }
  return { fault: { faultCode: code, faultString: text } };
}

/**
 * True for a struct value (not an array, date, byte array or double).
 *
 * @example
 * ```ts
 * import { isStruct } from "./xmlrpc.ts";
 * isStruct({ Status: "Success" }); // true
 * isStruct(["a"]); // false
 * ```
 */
export function isStruct(v: XmlRpcValue | undefined): v is XmlRpcStruct {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Date) &&
    !(v instanceof Uint8Array) && !(v instanceof XmlRpcDouble);
}

// ---------------------------------------------------------------------------------------------
// Writing.

/**
 * Escapes text for element content. Characters XML 1.0 cannot carry at all (most C0 controls,
 * lone surrogates, U+FFFE/U+FFFF) become U+FFFD; CR is written as a reference so that the
 * reader's end-of-line handling does not turn it into LF.
 *
 * @example
 * ```ts
 * import { escapeText } from "./xmlrpc.ts";
 * escapeText("a<b & c\u0001"); // "a&lt;b &amp; c\uFFFD"
 * ```
 */
export function escapeText(s: string): string {
  return s.toWellFormed()
    .replace(BAD_CHARS, "\uFFFD")
    .replace(
      /[&<>\r]/g,
      (c) => c === "&" ? "&amp;" : c === "<" ? "&lt;" : c === ">" ? "&gt;" : "&#13;",
    );
}

function formatDouble(n: number): string {
  if (!Number.isFinite(n)) throw new XmlRpcError(`${n} cannot be written as a <double>`);
  if (Object.is(n, -0)) return "-0.0";
  const s = String(n);
  return /^-?[0-9]+$/.test(s) ? `${s}.0` : s;
}

function pad(n: number, width: number): string {
  return String(n).padStart(width, "0");
}

function writeValue(v: XmlRpcValue, out: string[], depth: number): void {
  if (depth > 1000) throw new XmlRpcError("value nested too deeply (a cycle?)");
  if (typeof v === "string") {
    out.push("<value><string>", escapeText(v), "</string></value>");
  } else if (typeof v === "number") {
    const asInt = Number.isInteger(v) && !Object.is(v, -0) && v >= -0x80000000 &&
      v <= 0x7fffffff;
    out.push(
      asInt
        ? `<value><int>${v}</int></value>`
        : `<value><double>${formatDouble(v)}</double></value>`,
    );
  } else if (typeof v === "boolean") {
    out.push(`<value><boolean>${v ? 1 : 0}</boolean></value>`);
  } else if (v === null) {
    out.push("<value><nil/></value>");
  } else if (v instanceof XmlRpcDouble) {
    out.push(`<value><double>${formatDouble(v.value)}</double></value>`);
  } else if (v instanceof Date) {
    if (isNaN(v.getTime()) || v.getUTCFullYear() < 0 || v.getUTCFullYear() > 9999) {
      throw new XmlRpcError("the date cannot be written as <dateTime.iso8601>");
    }
    const d = `${pad(v.getUTCFullYear(), 4)}${pad(v.getUTCMonth() + 1, 2)}${
      pad(v.getUTCDate(), 2)
    }T${pad(v.getUTCHours(), 2)}:${pad(v.getUTCMinutes(), 2)}:${pad(v.getUTCSeconds(), 2)}`;
    out.push(`<value><dateTime.iso8601>${d}</dateTime.iso8601></value>`);
  } else if (v instanceof Uint8Array) {
    let bin = "";
    for (let i = 0; i < v.length; i += 0x8000) {
      bin += String.fromCharCode(...v.subarray(i, i + 0x8000));
    }
    out.push(`<value><base64>${btoa(bin)}</base64></value>`);
  } else if (Array.isArray(v)) {
    out.push("<value><array><data>");
    for (const x of v) writeValue(x, out, depth + 1);
    out.push("</data></array></value>");
  } else if (
    isStruct(v) && (Object.getPrototypeOf(v) === Object.prototype ||
      Object.getPrototypeOf(v) === null)
  ) {
    out.push("<value><struct>");
    for (const [k, x] of Object.entries(v)) {
      out.push("<member><name>", escapeText(k), "</name>");
      writeValue(x, out, depth + 1);
      out.push("</member>");
    }
    out.push("</struct></value>");
  } else {
    throw new XmlRpcError(`a ${typeof v} cannot be written as an XML-RPC value`);
  }
}

const DECLARATION = '<?xml version="1.0"?>\n';

/**
 * Writes a `<methodResponse>` with one param.
 *
 * @example A host plugin's answer
 * ```ts
 * import { serializeMethodResponse } from "./xmlrpc.ts";
 * serializeMethodResponse({ Status: "Success", Value: "0.1.0" });
 * ```
 */
export function serializeMethodResponse(value: XmlRpcValue): string {
  const out = [DECLARATION, "<methodResponse><params><param>"];
  writeValue(value, out, 0);
  out.push("</param></params></methodResponse>\n");
  return out.join("");
}

/**
 * Writes a `<methodResponse>` holding a `<fault>`.
 *
 * @example
 * ```ts
 * import { serializeFault } from "./xmlrpc.ts";
 * serializeFault({ faultCode: 1, faultString: "no such method" });
 * ```
 */
export function serializeFault(fault: Fault): string {
  if (!Number.isInteger(fault.faultCode)) throw new XmlRpcError("faultCode must be an integer");
  const out = [DECLARATION, "<methodResponse><fault>"];
  writeValue({ faultCode: fault.faultCode, faultString: fault.faultString }, out, 0);
  out.push("</fault></methodResponse>\n");
  return out.join("");
}

/**
 * Writes a `<methodCall>`.
 *
 * @example Reporting progress to xapi
 * ```ts
 * import { serializeMethodCall, XmlRpcDouble } from "./xmlrpc.ts";
 * serializeMethodCall({
 *   methodName: "task.set_progress",
 *   params: ["OpaqueRef:session", "OpaqueRef:task", new XmlRpcDouble(0.5)],
 * });
 * ```
 */
export function serializeMethodCall(call: MethodCall): string {
  if (!/^[A-Za-z0-9_.:/-]+$/.test(call.methodName)) {
    throw new XmlRpcError(`bad method name ${JSON.stringify(call.methodName)}`);
  }
  const out = [DECLARATION, `<methodCall><methodName>${call.methodName}</methodName><params>`];
  for (const p of call.params) {
    out.push("<param>");
    writeValue(p, out, 0);
    out.push("</param>");
  }
  out.push("</params></methodCall>\n");
  return out.join("");
}
