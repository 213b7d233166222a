// Hand-written SVG charts for bench results: grouped horizontal bars (throughput by workload) and
// lines over categories (throughput or latency by concurrency), with min–max whiskers for spread.
// Output is a standalone SVG file a browser opens directly; no dependencies, no scripts.

import type { Summary } from "./stats.ts";
import { formatCount } from "./table.ts";

export const PALETTE = ["#2f6fdf", "#e0782f", "#3a9d5d", "#b04fc0", "#c9453a", "#6b7785"];

export interface Series {
  name: string;
  color?: string;
}

export interface BarGroup {
  label: string;
  /** One value per series, in series order; null where that series has no result. */
  values: (Summary | null)[];
  /** Printed at the right of the group, e.g. a ratio "1.23×". */
  note?: string;
}

export interface BarChartSpec {
  title: string;
  subtitle?: string;
  unit: string;
  series: Series[];
  groups: BarGroup[];
  /** Heading over the notes column, e.g. "ours/LevelDB". */
  noteHeader?: string;
  /** Log scale suits values spanning several orders of magnitude. */
  log?: boolean;
  format?: (n: number) => string;
  /** Axis labels; defaults to `format`. */
  tickFormat?: (n: number) => string;
}

export interface LineChartSpec {
  title: string;
  subtitle?: string;
  xLabel: string;
  yLabel: string;
  /** Category labels along x, equally spaced (e.g. client counts 1, 16, 64, 256). */
  categories: string[];
  series: (Series & { points: (Summary | null)[]; dashed?: boolean })[];
  log?: boolean;
  format?: (n: number) => string;
  /** Axis labels; defaults to `format`. */
  tickFormat?: (n: number) => string;
}

const FONT = `font-family="system-ui, -apple-system, Segoe UI, sans-serif"`;

export function escapeXml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);
}

function num(n: number): string {
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

/** Maps a value to [0, 1] along the axis, linear from 0 or logarithmic between decades. */
interface Scale {
  at(v: number): number;
  ticks: number[];
}

export function makeScale(maxValue: number, minPositive: number, log: boolean): Scale {
  const max = maxValue > 0 ? maxValue : 1;
  if (log) {
    const lo = Math.pow(10, Math.floor(Math.log10(minPositive > 0 ? Math.min(minPositive, max) : max / 10)));
    const hi = Math.pow(10, Math.ceil(Math.log10(max * 1.0001)));
    const span = Math.log10(hi) - Math.log10(lo) || 1;
    const ticks: number[] = [];
    for (let d = lo; d <= hi * 1.0001; d *= 10) ticks.push(d);
    return { at: (v) => (v <= lo ? 0 : (Math.log10(v) - Math.log10(lo)) / span), ticks };
  }
  const step = niceStep(max / 5);
  const top = Math.ceil((max * 1.0001) / step) * step;
  const ticks: number[] = [];
  for (let t = 0; t <= top + step / 2; t += step) ticks.push(t);
  return { at: (v) => Math.max(0, v) / top, ticks };
}

function niceStep(raw: number): number {
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  const f = raw / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * p;
}

function extent(values: (Summary | null)[]): { max: number; minPositive: number } {
  let max = 0;
  let minPositive = Infinity;
  for (const s of values) {
    if (!s) continue;
    max = Math.max(max, s.max, s.median);
    for (const v of [s.min, s.median]) if (v > 0) minPositive = Math.min(minPositive, v);
  }
  return { max, minPositive: Number.isFinite(minPositive) ? minPositive : max };
}

function header(width: number, height: number, title: string, subtitle?: string): string[] {
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ${FONT} font-size="12">`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="16" y="24" font-size="16" font-weight="600" fill="#111">${escapeXml(title)}</text>`,
  ];
  if (subtitle) out.push(`<text x="16" y="42" fill="#555">${escapeXml(subtitle)}</text>`);
  return out;
}

/** Legend entries laid out left to right, wrapping to a new row at `maxX`; returns SVG and rows used. */
function legend(series: Series[], x: number, y: number, maxX: number): { svg: string[]; rows: number } {
  const out: string[] = [];
  let cx = x;
  let cy = y;
  let rows = 1;
  series.forEach((s, i) => {
    const color = s.color ?? PALETTE[i % PALETTE.length];
    const itemWidth = 28 + s.name.length * 7;
    if (cx > x && cx + itemWidth > maxX) {
      cx = x;
      cy += LEGEND_ROW;
      rows++;
    }
    out.push(`<rect x="${num(cx)}" y="${cy - 10}" width="12" height="12" fill="${color}"/>`);
    out.push(`<text x="${num(cx + 16)}" y="${cy}" fill="#222">${escapeXml(s.name)}</text>`);
    cx += itemWidth;
  });
  return { svg: out, rows };
}

const LEGEND_ROW = 18;

/** Grouped horizontal bars, one group per workload, one bar per series, whiskers from min to max. */
export function barChart(spec: BarChartSpec): string {
  const format = spec.format ?? formatCount;
  const tickFormat = spec.tickFormat ?? format;
  const labelWidth = Math.max(80, Math.min(320, 12 + 7 * Math.max(0, ...spec.groups.map((g) => g.label.length))));
  const noteWidth = spec.groups.some((g) => g.note) ? 90 : 0;
  const plotWidth = 560;
  const barHeight = 14;
  const groupGap = 10;
  const groupHeight = spec.series.length * barHeight + groupGap;
  const plotHeight = Math.max(groupHeight, spec.groups.length * groupHeight);
  const left = 16 + labelWidth;
  const width = left + plotWidth + 60 + noteWidth;
  const legendBlock = legend(spec.series, left, 58, width - 16);
  const top = 70 + (legendBlock.rows - 1) * LEGEND_ROW;
  const height = top + plotHeight + 48;
  const { max, minPositive } = extent(spec.groups.flatMap((g) => g.values));
  const scale = makeScale(max, minPositive, spec.log ?? false);
  const x = (v: number) => left + scale.at(v) * plotWidth;

  const out = header(width, height, spec.title, spec.subtitle);
  out.push(...legendBlock.svg);
  for (const t of scale.ticks) {
    out.push(`<line x1="${num(x(t))}" y1="${top - 4}" x2="${num(x(t))}" y2="${top + plotHeight}" stroke="#e3e3e3"/>`);
    out.push(`<text x="${num(x(t))}" y="${top + plotHeight + 16}" text-anchor="middle" fill="#555">${escapeXml(tickFormat(t))}</text>`);
  }
  out.push(
    `<text x="${num(left + plotWidth / 2)}" y="${top + plotHeight + 36}" text-anchor="middle" fill="#333">${escapeXml(spec.unit)}${spec.log ? " (log scale)" : ""}</text>`,
  );
  if (noteWidth && spec.noteHeader) {
    out.push(`<text x="${left + plotWidth + 60}" y="${top - 6}" fill="#555" font-size="11">${escapeXml(spec.noteHeader)}</text>`);
  }
  spec.groups.forEach((g, gi) => {
    const gy = top + gi * groupHeight;
    out.push(
      `<text x="${left - 8}" y="${num(gy + (spec.series.length * barHeight) / 2 + 4)}" text-anchor="end" fill="#222">${escapeXml(g.label)}</text>`,
    );
    g.values.forEach((s, si) => {
      const y = gy + si * barHeight;
      const color = spec.series[si]?.color ?? PALETTE[si % PALETTE.length];
      if (!s) {
        out.push(`<text x="${left + 4}" y="${y + barHeight - 3}" fill="#999" font-size="10">no result</text>`);
        return;
      }
      const w = Math.max(1, x(s.median) - left);
      out.push(
        `<rect x="${left}" y="${y + 1}" width="${num(w)}" height="${barHeight - 2}" fill="${color}"><title>${escapeXml(`${spec.series[si]?.name}: ${format(s.median)} (${format(s.min)}–${format(s.max)})`)}</title></rect>`,
      );
      if (s.runs.length > 1 && s.max > s.min) {
        const cy = y + barHeight / 2;
        out.push(
          `<path d="M${num(x(s.min))} ${cy}H${num(x(s.max))}M${num(x(s.min))} ${cy - 3}v6M${num(x(s.max))} ${cy - 3}v6" stroke="#222" stroke-width="1"/>`,
        );
      }
      out.push(
        `<text x="${num(Math.max(x(s.median), x(s.max)) + 4)}" y="${y + barHeight - 3}" font-size="10" fill="#333">${escapeXml(format(s.median))}</text>`,
      );
    });
    if (g.note) {
      out.push(
        `<text x="${left + plotWidth + 60}" y="${num(gy + (spec.series.length * barHeight) / 2 + 4)}" fill="#111" font-weight="600">${escapeXml(g.note)}</text>`,
      );
    }
  });
  out.push("</svg>");
  return out.join("\n") + "\n";
}

/** Lines over equally spaced categories, a dot per point, whiskers from min to max. */
export function lineChart(spec: LineChartSpec): string {
  const format = spec.format ?? formatCount;
  const tickFormat = spec.tickFormat ?? format;
  const left = 80;
  const plotWidth = Math.max(240, spec.categories.length * 110);
  const plotHeight = 280;
  const width = left + plotWidth + 40;
  const legendBlock = legend(spec.series, left, 58, width - 16);
  const top = 70 + (legendBlock.rows - 1) * LEGEND_ROW;
  const height = top + plotHeight + 56;
  const { max, minPositive } = extent(spec.series.flatMap((s) => s.points));
  const scale = makeScale(max, minPositive, spec.log ?? false);
  const step = plotWidth / Math.max(1, spec.categories.length);
  const x = (i: number) => left + step * (i + 0.5);
  const y = (v: number) => top + plotHeight - scale.at(v) * plotHeight;

  const out = header(width, height, spec.title, spec.subtitle);
  out.push(...legendBlock.svg);
  for (const t of scale.ticks) {
    out.push(`<line x1="${left}" y1="${num(y(t))}" x2="${left + plotWidth}" y2="${num(y(t))}" stroke="#e3e3e3"/>`);
    out.push(`<text x="${left - 6}" y="${num(y(t) + 4)}" text-anchor="end" fill="#555">${escapeXml(tickFormat(t))}</text>`);
  }
  spec.categories.forEach((c, i) => {
    out.push(`<text x="${num(x(i))}" y="${top + plotHeight + 18}" text-anchor="middle" fill="#555">${escapeXml(c)}</text>`);
  });
  out.push(
    `<text x="${num(left + plotWidth / 2)}" y="${top + plotHeight + 40}" text-anchor="middle" fill="#333">${escapeXml(spec.xLabel)}</text>`,
  );
  out.push(
    `<text transform="translate(18 ${num(top + plotHeight / 2)}) rotate(-90)" text-anchor="middle" fill="#333">${escapeXml(spec.yLabel)}${spec.log ? " (log scale)" : ""}</text>`,
  );
  spec.series.forEach((s, si) => {
    const color = s.color ?? PALETTE[si % PALETTE.length];
    const dash = s.dashed ? ` stroke-dasharray="6 4"` : "";
    let d = "";
    s.points.forEach((p, i) => {
      if (!p) return;
      d += `${d === "" || !s.points[i - 1] ? "M" : "L"}${num(x(i))} ${num(y(p.median))}`;
    });
    if (d) out.push(`<path d="${d}" fill="none" stroke="${color}" stroke-width="2"${dash}/>`);
    s.points.forEach((p, i) => {
      if (!p) return;
      if (p.runs.length > 1 && p.max > p.min) {
        out.push(
          `<path d="M${num(x(i))} ${num(y(p.min))}V${num(y(p.max))}M${num(x(i) - 3)} ${num(y(p.min))}h6M${num(x(i) - 3)} ${num(y(p.max))}h6" stroke="${color}"/>`,
        );
      }
      out.push(
        `<circle cx="${num(x(i))}" cy="${num(y(p.median))}" r="3.5" fill="${color}"><title>${escapeXml(`${s.name} @ ${spec.categories[i]}: ${format(p.median)} (${format(p.min)}–${format(p.max)})`)}</title></circle>`,
      );
    });
  });
  out.push("</svg>");
  return out.join("\n") + "\n";
}
