import { ok, strictEqual } from "node:assert/strict";
import { chartSvg, escapeXml, niceCeiling } from "../../scripts/bench_chart.ts";
import { Prng } from "../_support/prng.ts";

/**
 * Parses each SVG with Python's XML parser (a real one, run once): the name of its root element
 * and the text of its `<text>` elements, unescaped; throws when one is not well-formed.
 */
async function parseXml(svgs: string[]): Promise<Array<{ root: string; texts: string[] }>> {
  const p = new Deno.Command("python3", {
    args: [
      "-c",
      "import sys, json, xml.etree.ElementTree as E\n" +
      "out = []\n" +
      "for s in json.load(sys.stdin):\n" +
      "  r = E.fromstring(s)\n" +
      "  out.append({'root': r.tag.split('}')[-1], 'texts': [e.text for e in r.iter() " +
      "if e.tag.endswith('text')]})\n" +
      "print(json.dumps(out))",
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = p.stdin.getWriter();
  await w.write(new TextEncoder().encode(JSON.stringify(svgs)));
  await w.close();
  const out = await p.output();
  if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

const NAMES = [
  "sparse_dd",
  "sparse_dd -threads 2",
  "cp --sparse=always",
  "qemu-img convert -m 8 -W",
  "nbdcopy -- [ qemu-nbd -r -f vpc $W/s3.vhd ]",
  `a <tricky> & "quoted" 'name'`,
];

Deno.test("a scenario's chart is well-formed SVG naming every tool, sparse_dd highlighted", async () => {
  const r = new Prng(17);
  const cases = Array.from({ length: 20 }, (_, round) => {
    const rows = NAMES.slice(0, 1 + r.int(NAMES.length)).map((name, i) => {
      const median = round === 3 && i === 1 ? NaN : 0.001 + r.int(5000) / 1000;
      return {
        name,
        median,
        min: median * 0.9,
        max: median * (1 + r.int(50) / 100),
        ours: name.startsWith("sparse_dd"),
      };
    });
    const title = `S${round}: a <title> & more`;
    return { rows, title, svg: chartSvg(title, rows) };
  });
  const parsed = await parseXml(cases.map((c) => c.svg));
  cases.forEach(({ rows, title, svg }, round) => {
    strictEqual(parsed[round].root, "svg");
    const shown = parsed[round].texts;
    for (const row of rows) ok(shown.includes(row.name), `${row.name} missing in round ${round}`);
    ok(shown.includes(title));
    // One bar per tool that has a median, highlighted for sparse_dd's rows.
    const bars = [...svg.matchAll(/<rect x="300"[^>]*fill="(#[0-9a-f]+)"/g)].map((m) => m[1]);
    const drawn = rows.filter((x) => Number.isFinite(x.median));
    strictEqual(bars.length, drawn.length);
    drawn.forEach((row, i) => strictEqual(bars[i] === "#d9480f", row.ours, row.name));
  });
});

Deno.test("the chart's axis ends at a round number at or above the slowest run", () => {
  strictEqual(niceCeiling(0.43), 0.5);
  strictEqual(niceCeiling(1.7), 2);
  strictEqual(niceCeiling(5), 5);
  strictEqual(niceCeiling(11.2), 20);
  strictEqual(niceCeiling(0), 1);
  strictEqual(escapeXml(`<a & "b">`), "&lt;a &amp; &quot;b&quot;&gt;");
});
