/**
 * Assembles the zero-scanning WebAssembly module by hand and writes it to
 * `src/copy/_zeroscan_wasm.ts` as a `Uint8Array` literal, so the copier compiles it synchronously at
 * first use with no toolchain, no npm dependency and no file to find at run time.
 *
 * Run: `deno run --allow-write=src --allow-env=ZEROSCAN_VECTORS scripts/gen_zeroscan.ts` (the env
 * variable, default 4, sets the v128 loads per step; 4 measured fastest here).
 *
 * The module, in WAT:
 *
 * ```wat
 * (module
 *   (import "env" "memory" (memory 0))
 *   ;; Index of the first non-zero byte in [p, end), or end. 64 bytes (four v128) per step.
 *   (func $firstNonZero (export "firstNonZero") (param $p i32) (param $end i32) (result i32)
 *     (block $near
 *       (loop $wide
 *         (br_if $near (i32.lt_u (i32.sub (local.get $end) (local.get $p)) (i32.const 64)))
 *         (br_if $near (v128.any_true (v128.or
 *           (v128.or (v128.load offset=0 (local.get $p)) (v128.load offset=16 (local.get $p)))
 *           (v128.or (v128.load offset=32 (local.get $p)) (v128.load offset=48 (local.get $p))))))
 *         (local.set $p (i32.add (local.get $p) (i32.const 64)))
 *         (br $wide)))
 *     (block $found
 *       (loop $bytes
 *         (br_if $found (i32.ge_u (local.get $p) (local.get $end)))
 *         (br_if $found (i32.load8_u (local.get $p)))
 *         (local.set $p (i32.add (local.get $p) (i32.const 1)))
 *         (br $bytes)))
 *     (local.get $p))
 *   ;; Start of the first all-zero quantum at or after p (quanta start at p, p+q, ...; the last
 *   ;; one may be short), or end.
 *   (func (export "firstZeroQuantum") (param $p i32) (param $end i32) (param $q i32) (result i32)
 *     (local $qend i32)
 *     (loop $each
 *       (if (i32.ge_u (local.get $p) (local.get $end)) (then (return (local.get $end))))
 *       (local.set $qend (select (local.get $end) (i32.add (local.get $p) (local.get $q))
 *         (i32.lt_u (i32.sub (local.get $end) (local.get $p)) (local.get $q))))
 *       (if (i32.eq (call $firstNonZero (local.get $p) (local.get $qend)) (local.get $qend))
 *         (then (return (local.get $p))))
 *       (local.set $p (local.get $qend))
 *       (br $each))
 *     (local.get $end)))
 * ```
 *
 * @module
 */

/** Unsigned LEB128. */
function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
}

/** Signed LEB128 (for i32.const). */
function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) {
      out.push(b);
      return out;
    }
    out.push(b | 0x80);
  }
}

const name = (s: string) => [...uleb(s.length), ...new TextEncoder().encode(s)];
const vec = (items: number[][]) => [...uleb(items.length), ...items.flat()];
const section = (id: number, body: number[]) => [id, ...uleb(body.length), ...body];

// Opcodes used (names as in WAT).
const I32 = 0x7f;
const EMPTY = 0x40; // block type of a block that leaves nothing on the stack
const op = {
  block: [0x02, EMPTY],
  loop: [0x03, EMPTY],
  if: [0x04, EMPTY],
  end: [0x0b],
  br: (l: number) => [0x0c, ...uleb(l)],
  br_if: (l: number) => [0x0d, ...uleb(l)],
  return: [0x0f],
  call: (f: number) => [0x10, ...uleb(f)],
  select: [0x1b],
  get: (i: number) => [0x20, ...uleb(i)],
  set: (i: number) => [0x21, ...uleb(i)],
  const: (n: number) => [0x41, ...sleb(n)],
  load8_u: [0x2d, 0, 0],
  eq: [0x46],
  lt_u: [0x49],
  ge_u: [0x4f],
  add: [0x6a],
  sub: [0x6b],
  v128_load: (offset: number) => [0xfd, 0x00, 4, ...uleb(offset)],
  v128_or: [0xfd, ...uleb(80)],
  v128_any_true: [0xfd, ...uleb(83)],
};

/** OR of the `n` v128 loads at p, p+16, ... as a balanced tree (independent loads). */
function orTree(first: number, n: number): number[] {
  if (n === 1) return [...op.get(0), ...op.v128_load(first * 16)];
  const half = n >> 1;
  return [...orTree(first, half), ...orTree(first + half, n - half), ...op.v128_or];
}

// func 0: firstNonZero(p=0, end=1) -> i32, VECTORS v128 per step
const VECTORS = Number(Deno.env.get("ZEROSCAN_VECTORS") ?? 4);
const STEP = VECTORS * 16;
const firstNonZero = [
  ...op.block, // $near (depth from inside loop: 1)
  ...op.loop, // $wide (depth 0)
  ...op.get(1),
  ...op.get(0),
  ...op.sub,
  ...op.const(STEP),
  ...op.lt_u,
  ...op.br_if(1),
  ...orTree(0, VECTORS),
  ...op.v128_any_true,
  ...op.br_if(1),
  ...op.get(0),
  ...op.const(STEP),
  ...op.add,
  ...op.set(0),
  ...op.br(0),
  ...op.end, // loop
  ...op.end, // block
  ...op.block, // $found
  ...op.loop, // $bytes
  ...op.get(0),
  ...op.get(1),
  ...op.ge_u,
  ...op.br_if(1),
  ...op.get(0),
  ...op.load8_u,
  ...op.br_if(1),
  ...op.get(0),
  ...op.const(1),
  ...op.add,
  ...op.set(0),
  ...op.br(0),
  ...op.end,
  ...op.end,
  ...op.get(0),
  ...op.end,
];

// func 1: firstZeroQuantum(p=0, end=1, q=2) -> i32, local qend=3
const firstZeroQuantum = [
  ...op.loop,
  ...op.get(0),
  ...op.get(1),
  ...op.ge_u,
  ...op.if,
  ...op.get(1),
  ...op.return,
  ...op.end,
  ...op.get(1),
  ...op.get(0),
  ...op.get(2),
  ...op.add,
  ...op.get(1),
  ...op.get(0),
  ...op.sub,
  ...op.get(2),
  ...op.lt_u,
  ...op.select,
  ...op.set(3),
  ...op.get(0),
  ...op.get(3),
  ...op.call(0),
  ...op.get(3),
  ...op.eq,
  ...op.if,
  ...op.get(0),
  ...op.return,
  ...op.end,
  ...op.get(3),
  ...op.set(0),
  ...op.br(0),
  ...op.end,
  ...op.get(1),
  ...op.end,
];

const body = (locals: number[][], code: number[]) => {
  const b = [...vec(locals), ...code];
  return [...uleb(b.length), ...b];
};

const module = [
  0x00,
  0x61,
  0x73,
  0x6d,
  0x01,
  0x00,
  0x00,
  0x00,
  ...section(
    1,
    vec([[0x60, ...vec([[I32], [I32]]), ...vec([[I32]])], [
      0x60,
      ...vec([[I32], [I32], [I32]]),
      ...vec([[I32]]),
    ]]),
  ),
  ...section(2, vec([[...name("env"), ...name("memory"), 0x02, 0x00, 0x00]])),
  ...section(3, vec([[0], [1]])),
  ...section(7, vec([[...name("firstNonZero"), 0x00, 0], [...name("firstZeroQuantum"), 0x00, 1]])),
  ...section(10, vec([body([], firstNonZero), body([[1, I32]], firstZeroQuantum)])),
];

const bytes = new Uint8Array(module);
if (!WebAssembly.validate(bytes)) throw new Error("assembled module does not validate");

const lines: string[] = [];
for (let i = 0; i < bytes.length; i += 16) {
  lines.push(
    "  " + [...bytes.subarray(i, i + 16)].map((b) =>
      `0x${b.toString(16).padStart(2, "0")}`
    ).join(", ") + ",",
  );
}
const out =
  `// Generated by scripts/gen_zeroscan.ts from the WAT in its header; do not edit by hand.

/**
 * The zero-scanning WebAssembly module (SIMD v128): exports \`firstNonZero(p, end)\` and
 * \`firstZeroQuantum(p, end, q)\` over an imported memory \`env.memory\`.
 *
 * @example
 * \`\`\`ts
 * import { ZEROSCAN_WASM } from "./_zeroscan_wasm.ts";
 * WebAssembly.validate(ZEROSCAN_WASM); // true where SIMD is supported
 * \`\`\`
 */
// deno-fmt-ignore
export const ZEROSCAN_WASM: Uint8Array<ArrayBuffer> = new Uint8Array([
${lines.join("\n")}
]);
`;
const target = new URL("../src/copy/_zeroscan_wasm.ts", import.meta.url);
Deno.writeTextFileSync(target, out);
console.log(`wrote ${bytes.length} bytes of wasm to ${target.pathname}`);
