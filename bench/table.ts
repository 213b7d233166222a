// Plain-text tables and number formatting for bench reports (fixed-width columns, readable
// magnitudes like "142k", spreads like "142k (130k–151k)").

import type { Summary } from "./stats.ts";

export type Align = "left" | "right";

export interface Column {
  header: string;
  align?: Align;
}

/** Renders rows under headers with a separator line; every row must have one cell per column. */
export function renderTable(columns: readonly Column[], rows: readonly (readonly string[])[]): string {
  const widths = columns.map((c) => displayWidth(c.header));
  rows.forEach((row, r) => {
    if (row.length !== columns.length) {
      throw new RangeError(`table row ${r} has ${row.length} cells, expected ${columns.length}`);
    }
    row.forEach((cell, i) => (widths[i] = Math.max(widths[i], displayWidth(cell))));
  });
  const line = (cells: readonly string[]) =>
    cells
      .map((cell, i) => pad(cell, widths[i], columns[i].align ?? "left"))
      .join("  ")
      .trimEnd();
  const out = [line(columns.map((c) => c.header)), widths.map((w) => "-".repeat(w)).join("  ")];
  for (const row of rows) out.push(line(row));
  return out.join("\n");
}

/** Width in terminal columns: every code point counts one (the tables use no wide characters). */
function displayWidth(s: string): number {
  let n = 0;
  for (const _ of s) n++;
  return n;
}

function pad(s: string, width: number, align: Align): string {
  const fill = " ".repeat(Math.max(0, width - displayWidth(s)));
  return align === "right" ? fill + s : s + fill;
}

/** 3 significant digits with k/M/G suffixes: 987, 1.23k, 142k, 1.50M. */
export function formatCount(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  const abs = Math.abs(n);
  const units: [number, string][] = [
    [1e9, "G"],
    [1e6, "M"],
    [1e3, "k"],
  ];
  for (const [scale, suffix] of units) {
    if (abs >= scale * 0.9995) return sig3(n / scale) + suffix;
  }
  return abs >= 100 || Number.isInteger(n) ? Math.round(n).toString() : sig3(n);
}

function sig3(x: number): string {
  const abs = Math.abs(x);
  if (abs >= 100) return Math.round(x).toString();
  // Trailing zeros say nothing: 1.50k reads as 1.5k, 1.00M as 1M.
  if (abs >= 10) return String(Number(x.toFixed(1)));
  return String(Number(x.toFixed(2)));
}

export function formatBytes(n: number): string {
  if (!Number.isFinite(n) || n < 0) return String(n);
  if (n < 1024) return `${Math.round(n)} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${sig3(v)} ${units[i]}`;
}

/** Milliseconds with a precision that suits the magnitude: 0.123, 1.23, 12.3, 123. */
export function formatMillis(ms: number): string {
  if (!Number.isFinite(ms)) return String(ms);
  if (ms >= 100) return Math.round(ms).toString();
  if (ms >= 10) return ms.toFixed(1);
  if (ms >= 1) return ms.toFixed(2);
  return ms.toFixed(3);
}

/** "142k" for one run, "142k (130k–151k)" for several. */
export function formatSummary(s: Summary | null | undefined, format: (n: number) => string = formatCount): string {
  if (!s) return "—";
  if (s.runs.length <= 1 || s.min === s.max) return format(s.median);
  return `${format(s.median)} (${format(s.min)}–${format(s.max)})`;
}

/** "1.23×", or "—" when there is nothing to compare. */
export function formatRatio(r: number | null): string {
  if (r === null || !Number.isFinite(r)) return "—";
  return r >= 10 ? `${r.toFixed(1)}×` : `${r.toFixed(2)}×`;
}
