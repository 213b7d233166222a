// The shape every suite returns, and the pieces shared by suites: alternating runs of compared
// systems, comparison tables (median, spread, ours/theirs) and writing charts to disk.

import * as fs from "node:fs";
import * as path from "node:path";
import { ratio, summarize, type Summary } from "./stats.ts";
import { formatRatio, formatSummary, renderTable, type Column } from "./table.ts";

export interface Chart {
  /** File name under the results directory, e.g. "lsm-throughput.svg". */
  file: string;
  svg: string;
}

export interface SuiteResult {
  suite: string;
  title: string;
  /** Rendered text tables, printed in order. */
  tables: string[];
  /** One-line facts: peak RSS, skipped sides and why, write amplification. */
  notes: string[];
  charts: Chart[];
  /** Everything measured, JSON-serializable, for --json. */
  data: unknown;
}

/** One measured quantity of several systems, each a list of runs. */
export interface Comparison {
  name: string;
  variant: string;
  unit: string;
  /** Runs per system, keyed by system name ("ours", "leveldb", "etcd"). */
  runs: Record<string, number[]>;
}

export function summaries(c: Comparison): Record<string, Summary | null> {
  const out: Record<string, Summary | null> = {};
  for (const [system, runs] of Object.entries(c.runs)) out[system] = runs.length ? summarize(runs) : null;
  return out;
}

/** Adds one run's value for `system` to the comparison named `name`/`variant`, creating it. */
export function recordRun(list: Comparison[], name: string, variant: string, unit: string, system: string, value: number): void {
  let c = list.find((x) => x.name === name && x.variant === variant);
  if (!c) {
    c = { name, variant, unit, runs: {} };
    list.push(c);
  }
  (c.runs[system] ??= []).push(value);
}

/**
 * Table of comparisons between `ours` and `theirs`: median (min–max) for each, and the ratio of
 * medians. Rows where a system has no runs show "—".
 */
export function comparisonTable(
  list: readonly Comparison[],
  systems: { ours: string; theirs: string; oursLabel: string; theirsLabel: string },
  format?: (n: number) => string,
): string {
  const columns: Column[] = [
    { header: "workload" },
    { header: "variant" },
    { header: "unit" },
    { header: systems.oursLabel, align: "right" },
    { header: systems.theirsLabel, align: "right" },
    { header: "ours/theirs", align: "right" },
  ];
  const rows = list.map((c) => {
    const s = summaries(c);
    return [
      c.name,
      c.variant,
      c.unit,
      formatSummary(s[systems.ours], format),
      formatSummary(s[systems.theirs], format),
      formatRatio(ratio(s[systems.ours], s[systems.theirs])),
    ];
  });
  return renderTable(columns, rows);
}

/**
 * Runs `fn` for every system, `runs` times, alternating systems within each round (A, B, A, B, ...)
 * so that slow drift of a noisy machine falls on both sides alike.
 */
export async function alternate<S>(systems: readonly S[], runs: number, fn: (system: S, run: number) => Promise<void>): Promise<void> {
  for (let run = 0; run < runs; run++) {
    for (const system of systems) await fn(system, run);
  }
}

export function writeCharts(dir: string, charts: readonly Chart[]): string[] {
  fs.mkdirSync(dir, { recursive: true });
  return charts.map((c) => {
    if (!/^[\w.-]+\.svg$/.test(c.file)) throw new Error(`chart file name "${c.file}" must be a plain *.svg name`);
    const file = path.join(dir, c.file);
    fs.writeFileSync(file, c.svg);
    return file;
  });
}
