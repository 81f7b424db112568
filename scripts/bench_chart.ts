/**
 * One benchmark scenario as an SVG bar chart: each tool's median time as a bar, its fastest and
 * slowest run as a whisker, sparse_dd's rows highlighted. Pure: text in, text out (no network,
 * no browser); scripts/bench_report.ts writes one per scenario beside BENCHMARKS.md.
 *
 * @example
 * ```ts
 * import { chartSvg } from "./bench_chart.ts";
 * const svg = chartSvg("S1: 4 GiB sparse raw → new file", [
 *   { name: "sparse_dd", median: 0.49, min: 0.47, max: 0.58, ours: true },
 *   { name: "cp --sparse=always", median: 0.56, min: 0.54, max: 0.63, ours: false },
 * ]);
 * svg.startsWith("<svg"); // true
 * ```
 *
 * @module
 */

/** One bar of a chart. */
export interface ChartRow {
  /** The tool, as the report names it. */
  name: string;
  /** Median time in seconds (NaN when the tool never succeeded: no bar). */
  median: number;
  /** Fastest run in seconds. */
  min: number;
  /** Slowest run in seconds. */
  max: number;
  /** A sparse_dd row: drawn highlighted. */
  ours: boolean;
}

const OURS = "#d9480f";
const PEER = "#748ffc";
const INK = "#212529";
const GRID = "#dee2e6";

/** Escapes text for SVG character data and attribute values. */
export function escapeXml(text: string): string {
  return text.replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;" })[c]!,
  );
}

/** A "nice" axis end at or above `x`: 1, 2 or 5 times a power of ten. */
export function niceCeiling(x: number): number {
  if (!(x > 0) || !Number.isFinite(x)) return 1;
  const p = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 2, 5, 10]) if (m * p >= x * (1 - 1e-9)) return m * p;
  return 10 * p;
}

/** Seconds as the axis and labels show them: ms below a second. */
function label(s: number): string {
  if (!Number.isFinite(s)) return "failed";
  return s < 1 ? `${(s * 1000).toFixed(s < 0.01 ? 1 : 0)} ms` : `${s.toFixed(s < 10 ? 2 : 1)} s`;
}

/**
 * The chart of one scenario: `title` on top, one horizontal bar per row (in the given order)
 * with a min–max whisker and the median written after it, and a time axis from 0.
 */
export function chartSvg(title: string, rows: readonly ChartRow[]): string {
  const rowH = 26;
  const nameW = 300;
  const plotW = 420;
  const right = 90;
  const top = 44;
  // Wide enough for the title too (about 9.5 px per character of 15 px bold sans-serif).
  const width = Math.max(nameW + plotW + right, Math.ceil(24 + title.length * 9.5));
  const height = top + rows.length * rowH + 40;
  const finite = rows.flatMap((r) => [r.median, r.max]).filter((x) => Number.isFinite(x));
  const axisMax = niceCeiling(finite.length ? Math.max(...finite) : 1);
  const x = (s: number) => nameW + Math.max(0, Math.min(1, s / axisMax)) * plotW;
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
      `viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="13">`,
  );
  out.push(`<rect width="${width}" height="${height}" fill="#ffffff"/>`);
  out.push(
    `<text x="12" y="24" font-size="15" font-weight="bold" fill="${INK}">${
      escapeXml(title)
    }</text>`,
  );
  // Axis: five ticks from 0 to axisMax.
  const axisY = top + rows.length * rowH + 6;
  for (let k = 0; k <= 4; k++) {
    const s = axisMax * k / 4;
    const gx = x(s).toFixed(1);
    out.push(
      `<line x1="${gx}" y1="${top - 4}" x2="${gx}" y2="${axisY}" stroke="${GRID}"/>`,
      `<text x="${gx}" y="${axisY + 16}" text-anchor="middle" fill="${INK}">${label(s)}</text>`,
    );
  }
  rows.forEach((r, i) => {
    const y = top + i * rowH;
    const mid = y + rowH / 2;
    const color = r.ours ? OURS : PEER;
    const weight = r.ours ? ` font-weight="bold"` : "";
    out.push(
      `<g class="row"><title>${escapeXml(r.name)}: median ${label(r.median)}, min ${
        label(r.min)
      }, max ${label(r.max)}</title>`,
      `<text x="${nameW - 8}" y="${mid + 4}" text-anchor="end" fill="${INK}"${weight}>${
        escapeXml(r.name)
      }</text>`,
    );
    if (Number.isFinite(r.median)) {
      const w = Math.max(1, x(r.median) - nameW);
      out.push(
        `<rect x="${nameW}" y="${y + 5}" width="${w.toFixed(1)}" height="${rowH - 10}" ` +
          `fill="${color}"/>`,
      );
      if (Number.isFinite(r.min) && Number.isFinite(r.max)) {
        const a = x(r.min).toFixed(1), b = x(r.max).toFixed(1);
        out.push(
          `<line x1="${a}" y1="${mid}" x2="${b}" y2="${mid}" stroke="${INK}"/>`,
          `<line x1="${a}" y1="${mid - 5}" x2="${a}" y2="${mid + 5}" stroke="${INK}"/>`,
          `<line x1="${b}" y1="${mid - 5}" x2="${b}" y2="${mid + 5}" stroke="${INK}"/>`,
        );
      }
    }
    const after = Math.max(x(r.median), x(r.max));
    out.push(
      `<text x="${(Number.isFinite(after) ? after + 6 : nameW + 6).toFixed(1)}" y="${
        mid + 4
      }" fill="${INK}"${weight}>${label(r.median)}</text>`,
      `</g>`,
    );
  });
  out.push(
    `<text x="${nameW}" y="${height - 4}" fill="${INK}" font-size="11">` +
      `bar: median; whisker: fastest to slowest run; highlighted: sparse_dd</text>`,
  );
  out.push(`</svg>`);
  return out.join("\n") + "\n";
}
