// `bun bench`: runs the lsm, raft and cluster suites (or the ones named), prints a table per suite,
// writes SVG charts under bench/results/ and, with --json, every result with machine and versions.

import * as fs from "node:fs";
import * as path from "node:path";
import { parseArgs, USAGE, UsageError, type BenchOptions, type SuiteName } from "./args.ts";
import { describeMachine, machineInfo, versions } from "./machine.ts";
import { killAllChildren } from "./proc.ts";
import { Progress } from "./progress.ts";
import { writeCharts, type SuiteResult } from "./report.ts";

const DEFAULT_RESULTS_DIR = path.resolve(import.meta.dir, "results");

async function runSuite(name: SuiteName, o: BenchOptions, progress: Progress): Promise<SuiteResult> {
  switch (name) {
    case "lsm":
      return (await import("./lsm.ts")).runLsmSuite(o, progress);
    case "raft":
      return (await import("./raft.ts")).runRaftSuite(o, progress);
    case "cluster":
      return (await import("./cluster.ts")).runClusterSuite(o, progress);
    case "metrics":
      return (await import("./metrics.ts")).runMetricsSuite(o);
    case "catchup":
      return (await import("./catchup.ts")).runCatchupSuite(o, progress);
  }
}

function printSuite(r: SuiteResult, files: string[]): void {
  const out: string[] = ["", `== ${r.title} ==`];
  for (const t of r.tables) out.push(t, "");
  for (const n of r.notes) out.push(`- ${n}`);
  for (const f of files) out.push(`- chart: ${path.relative(process.cwd(), f) || f}`);
  process.stdout.write(out.join("\n") + "\n");
}

async function main(argv: string[]): Promise<number> {
  let o: BenchOptions;
  try {
    o = parseArgs(argv, DEFAULT_RESULTS_DIR);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`bun bench: ${e.message}\n\n${USAGE}`);
      return 2;
    }
    throw e;
  }
  if (o.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const machine = machineInfo();
  const vers = versions();
  process.stdout.write(describeMachine(machine, vers) + "\n");
  process.stdout.write(`suites: ${o.suites.join(", ")}${o.quick ? " (quick)" : ""}; ${o.runs} run(s) per side, alternating\n`);
  const progress = new Progress();
  const startedAt = new Date();
  const results: SuiteResult[] = [];
  const failures: { suite: string; error: string }[] = [];
  for (const name of o.suites) {
    const t0 = performance.now();
    try {
      const r = await runSuite(name, o, progress);
      const files = writeCharts(o.resultsDir, r.charts);
      printSuite(r, files);
      results.push(r);
      process.stdout.write(`(${name}: ${((performance.now() - t0) / 1000).toFixed(1)} s)\n`);
    } catch (e) {
      // One broken suite (for instance a part still being built) must not hide the others' results.
      const message = e instanceof Error ? (e.stack ?? e.message) : String(e);
      progress.log(`[${name}] FAILED: ${message}`);
      failures.push({ suite: name, error: message });
    } finally {
      killAllChildren();
    }
  }
  if (o.json) {
    const file = path.resolve(o.json);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const doc = {
      startedAt: startedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      options: o,
      machine,
      loadAverageAtEnd: machineInfo().loadAverage,
      versions: vers,
      suites: Object.fromEntries(results.map((r) => [r.suite, { title: r.title, notes: r.notes, data: r.data }])),
      failures,
    };
    fs.writeFileSync(file, JSON.stringify(doc, null, 2) + "\n");
    process.stdout.write(`results: ${file}\n`);
  }
  if (failures.length) process.stdout.write(`failed suites: ${failures.map((f) => f.suite).join(", ")}\n`);
  return failures.length ? 1 : 0;
}

process.exitCode = await main(process.argv.slice(2));
