// The lsm suite: db_bench workloads on our LSM engine and on LevelDB (classic-level) in the same
// process, alternating systems run by run, reporting medians, spread, MB/s and ours/LevelDB.

import * as fs from "node:fs";
import * as path from "node:path";
import type { BenchOptions } from "./args.ts";
import { leveldbEngine, ourEngine, ourEngineMissing, type BenchDb, type BenchEngine, type WriteOp } from "./lsm-engines.ts";
import {
  ENTRY_BYTES,
  ValueSource,
  batchLoop,
  concurrentLoop,
  makeKey,
  makeMissingKey,
  randomIndices,
  serialLoop,
  syncLoop,
  type LoopBounds,
  type LoopResult,
} from "./lsm-workloads.ts";
import { makeTempDir, removeTempDir } from "./proc.ts";
import type { Progress } from "./progress.ts";
import { alternate, recordRun, summaries, type Comparison, type SuiteResult } from "./report.ts";
import { ratio, summarize, type Summary } from "./stats.ts";
import { barChart } from "./svg.ts";
import { formatBytes, formatCount, formatRatio, formatSummary, renderTable } from "./table.ts";

const IN_FLIGHT = 64;
const BATCH = 1000;
const SEEK_ENTRIES = 10;
const WORKLOAD_ORDER = ["fillseq", "fillrandom", "overwrite", "readrandom", "readmissing", "readseq", "seekrandom", "deleterandom", "fillsync"];
const VARIANT_ORDER = ["serial", "get serial", "stepwise", "conc64", "get conc64", "batch1000", "getSync", "bulk"];

interface LsmPlan {
  keys: number;
  runs: number;
  /** Wall-clock cap of one measured loop. */
  maxMs: number;
  seeks: number;
  syncPuts: number;
  syncBatches: number;
}

export function lsmPlan(o: BenchOptions): LsmPlan {
  const keys = o.lsmKeys ?? (o.quick ? 50_000 : 1_000_000);
  return {
    keys,
    runs: o.runs,
    maxMs: o.quick ? 400 : 60_000,
    seeks: Math.max(100, Math.floor(keys / 10)),
    syncPuts: o.quick ? 500 : 2_000,
    syncBatches: o.quick ? 20 : 200,
  };
}

/** What one system did over all its runs, beyond throughput. */
interface SideFacts {
  /** Highest RSS of the whole process sampled during this engine's sequences (see Runner.sample). */
  peakRss: number;
  /** Highest RSS sampled during each measured loop ("readseq stepwise"), over all runs. */
  peakRssByLoop: Record<string, number>;
  diskBytes: number[];
  stats: Record<string, unknown>[];
  capped: string[];
}

class Runner {
  readonly comparisons: Comparison[] = [];
  readonly facts = new Map<string, SideFacts>();
  /**
   * Peak RSS of this process: both engines run in it, one after the other, so an engine's peak
   * also holds what the other left behind (allocator pages, our idle workers' heaps). Sampled
   * every 4,096 operations of a loop (every batch of a batch loop); reset after a full collection
   * at the start of each sequence.
   */
  private rssPeak = 0;
  private loopPeak = 0;
  private readonly sample = () => {
    const rss = process.memoryUsage.rss();
    if (rss > this.rssPeak) this.rssPeak = rss;
    if (rss > this.loopPeak) this.loopPeak = rss;
  };

  constructor(
    private readonly plan: LsmPlan,
    private readonly progress: Progress,
  ) {}

  private bounds(label: string, count: number): LoopBounds {
    this.progress.start(label, count);
    this.loopPeak = 0;
    return { count, maxMs: this.plan.maxMs, progress: this.progress, sample: this.sample };
  }

  private record(engine: BenchEngine, workload: string, variant: string, r: LoopResult, expected: number): void {
    const rate = r.seconds > 0 ? r.ops / r.seconds : 0;
    this.sample();
    const loop = `${workload} ${variant}`;
    const peaks = this.factsOf(engine).peakRssByLoop;
    peaks[loop] = Math.max(peaks[loop] ?? 0, this.loopPeak);
    recordRun(this.comparisons, workload, variant, "ops/s", engine.system, rate);
    if (r.capped || r.ops < expected) {
      this.factsOf(engine).capped.push(`${workload} ${variant}: ${r.ops.toLocaleString("en-US")} of ${expected.toLocaleString("en-US")}`);
    }
    this.progress.finish(`${formatCount(rate)} ops/s, ${((rate * ENTRY_BYTES) / 1e6).toFixed(1)} MB/s${r.capped ? " (time cap)" : ""}`);
  }

  factsOf(engine: BenchEngine): SideFacts {
    let f = this.facts.get(engine.system);
    if (!f) this.facts.set(engine.system, (f = { peakRss: 0, peakRssByLoop: {}, diskBytes: [], stats: [], capped: [] }));
    return f;
  }

  private async fresh<T>(engine: BenchEngine, fn: (db: BenchDb) => Promise<T>): Promise<T> {
    const dir = makeTempDir(`lsm-${engine.system}`);
    const db = await engine.open(dir);
    try {
      return await fn(db);
    } finally {
      await db.close();
      removeTempDir(dir);
    }
  }

  /** Measures one write workload in its three forms: serial, 64 in flight, batches of 1,000. */
  private async writes(engine: BenchEngine, db: BenchDb, workload: string, variant: "serial" | "conc64" | "batch1000", keyOf: (i: number) => Buffer, values: ValueSource, del = false): Promise<number> {
    const n = this.plan.keys;
    const tag = `[lsm] ${engine.label} ${workload} ${variant}`;
    const op = (i: number) => (del ? db.del(keyOf(i)) : db.put(keyOf(i), values.next(), false));
    let r: LoopResult;
    if (variant === "serial") r = await serialLoop(this.bounds(tag, n), op);
    else if (variant === "conc64") r = await concurrentLoop(this.bounds(tag, n), IN_FLIGHT, op);
    else {
      r = await batchLoop(this.bounds(tag, n), BATCH, (first, size) => {
        const ops: WriteOp[] = new Array(size);
        for (let j = 0; j < size; j++) {
          const key = keyOf(first + j);
          ops[j] = del ? { type: "del", key } : { type: "put", key, value: values.next() };
        }
        return db.write(ops, false);
      });
    }
    this.record(engine, workload, variant, r, n);
    return r.ops;
  }

  /** One full db_bench sequence for one engine; `seed` is shared by both engines in a run. */
  async sequence(engine: BenchEngine, seed: number): Promise<void> {
    Bun.gc(true);
    this.rssPeak = process.memoryUsage.rss();
    const n = this.plan.keys;
    const values = new ValueSource(seed);
    for (const variant of ["serial", "conc64"] as const) {
      await this.fresh(engine, (db) => this.writes(engine, db, "fillseq", variant, makeKey, values));
    }
    for (const variant of ["serial", "conc64", "batch1000"] as const) {
      const random = randomIndices(seed + 1, n);
      await this.fresh(engine, (db) => this.writes(engine, db, "fillrandom", variant, (_) => makeKey(random(0)), values));
    }
    const dir = makeTempDir(`lsm-${engine.system}`);
    const db = await engine.open(dir);
    try {
      const filled = await this.writes(engine, db, "fillseq", "batch1000", makeKey, values);
      await this.onFilled(engine, db, seed, filled, values);
      const stats = db.stats();
      if (stats) this.factsOf(engine).stats.push(stats);
    } finally {
      await db.close();
      this.factsOf(engine).diskBytes.push(dirBytes(dir));
      removeTempDir(dir);
    }
    await this.fillSync(engine, values);
    const f = this.factsOf(engine);
    f.peakRss = Math.max(f.peakRss, this.rssPeak);
  }

  /** Workloads on a database holding keys 0..filled-1: overwrite, reads, scans, seeks, deletes. */
  private async onFilled(engine: BenchEngine, db: BenchDb, seed: number, filled: number, values: ValueSource): Promise<void> {
    const n = this.plan.keys;
    const existing = Math.max(1, filled);
    for (const variant of ["serial", "conc64", "batch1000"] as const) {
      const random = randomIndices(seed + 2, existing);
      await this.writes(engine, db, "overwrite", variant, () => makeKey(random(0)), values);
    }
    for (const [workload, keyOf] of [
      ["readrandom", makeKey],
      ["readmissing", makeMissingKey],
    ] as const) {
      const random = randomIndices(seed + 3, existing);
      const tag = `[lsm] ${engine.label} ${workload}`;
      const get = () => db.get(keyOf(random(0)));
      this.record(engine, workload, "get serial", await serialLoop(this.bounds(`${tag} get serial`, n), get), n);
      this.record(engine, workload, "get conc64", await concurrentLoop(this.bounds(`${tag} get conc64`, n), IN_FLIGHT, get), n);
      this.record(engine, workload, "getSync", syncLoop(this.bounds(`${tag} getSync`, n), () => db.getSync(keyOf(random(0)))), n);
    }
    const scanTag = `[lsm] ${engine.label} readseq`;
    this.record(engine, "readseq", "stepwise", await db.scanStepwise(this.bounds(`${scanTag} stepwise`, filled)), filled);
    this.record(engine, "readseq", "bulk", await db.scanBulk(this.bounds(`${scanTag} ${engine.bulkScan}`, filled)), filled);
    await this.seeks(engine, db, seed, existing);
    for (const variant of ["serial", "conc64", "batch1000"] as const) {
      const random = randomIndices(seed + 5, existing);
      await this.writes(engine, db, "deleterandom", variant, () => makeKey(random(0)), values, true);
    }
  }

  private async seeks(engine: BenchEngine, db: BenchDb, seed: number, existing: number): Promise<void> {
    const count = this.plan.seeks;
    const tag = `[lsm] ${engine.label} seekrandom`;
    const serial = db.seeker("stepwise");
    let random = randomIndices(seed + 4, existing);
    try {
      this.record(engine, "seekrandom", "serial", await serialLoop(this.bounds(`${tag} serial`, count), async () => serial.seek(makeKey(random(0)), SEEK_ENTRIES)), count);
    } finally {
      await serial.close();
    }
    const readers = Array.from({ length: IN_FLIGHT }, () => db.seeker("stepwise"));
    random = randomIndices(seed + 4, existing);
    try {
      this.record(
        engine,
        "seekrandom",
        "conc64",
        await concurrentLoop(this.bounds(`${tag} conc64`, count), IN_FLIGHT, async () => {
          // Each in-flight seek uses a reader of its own: one iterator serves one call at a time.
          const reader = readers.pop() ?? db.seeker("stepwise");
          try {
            return await reader.seek(makeKey(random(0)), SEEK_ENTRIES);
          } finally {
            readers.push(reader);
          }
        }),
        count,
      );
    } finally {
      for (const reader of readers) await reader.close();
    }
    const bulk = db.seeker("bulk");
    random = randomIndices(seed + 4, existing);
    try {
      this.record(engine, "seekrandom", "bulk", await serialLoop(this.bounds(`${tag} ${engine.bulkSeek}`, count), async () => bulk.seek(makeKey(random(0)), SEEK_ENTRIES)), count);
    } finally {
      await bulk.close();
    }
  }

  /** Durable writes: each put synced, 64 synced puts in flight, and synced batches of 1,000. */
  private async fillSync(engine: BenchEngine, values: ValueSource): Promise<void> {
    const { syncPuts, syncBatches } = this.plan;
    const tag = `[lsm] ${engine.label} fillsync`;
    await this.fresh(engine, async (db) => {
      this.record(engine, "fillsync", "serial", await serialLoop(this.bounds(`${tag} serial`, syncPuts), (i) => db.put(makeKey(i), values.next(), true)), syncPuts);
      this.record(engine, "fillsync", "conc64", await concurrentLoop(this.bounds(`${tag} conc64`, syncPuts), IN_FLIGHT, (i) => db.put(makeKey(syncPuts + i), values.next(), true)), syncPuts);
      const total = syncBatches * BATCH;
      const r = await batchLoop(this.bounds(`${tag} batch1000`, total), BATCH, (first, size) => {
        const ops: WriteOp[] = new Array(size);
        for (let j = 0; j < size; j++) ops[j] = { type: "put", key: makeKey(2 * syncPuts + first + j), value: values.next() };
        return db.write(ops, true);
      });
      this.record(engine, "fillsync", "batch1000", r, total);
    });
  }

  /** --big: one long fillrandom of our engine in batches, for peak RSS at 10M keys. */
  async big(engine: BenchEngine, keys: number): Promise<{ opsPerSec: number; ops: number; peakRss: number; diskBytes: number }> {
    Bun.gc(true);
    this.rssPeak = process.memoryUsage.rss();
    const values = new ValueSource(7);
    const random = randomIndices(8, keys);
    const dir = makeTempDir(`lsm-big-${engine.system}`);
    const db = await engine.open(dir);
    let r: LoopResult;
    try {
      const b = { ...this.bounds(`[lsm] ${engine.label} fillrandom ${keys.toLocaleString("en-US")} batch1000`, keys), maxMs: 30 * 60_000 };
      r = await batchLoop(b, BATCH, (first, size) => {
        const ops: WriteOp[] = new Array(size);
        for (let j = 0; j < size; j++) ops[j] = { type: "put", key: makeKey(random(0)), value: values.next() };
        return db.write(ops, false);
      });
      this.progress.finish(`${formatCount(r.ops / r.seconds)} ops/s, peak RSS ${formatBytes(this.rssPeak)}`);
    } finally {
      await db.close();
    }
    const diskBytes = dirBytes(dir);
    removeTempDir(dir);
    return { opsPerSec: r.ops / r.seconds, ops: r.ops, peakRss: this.rssPeak, diskBytes };
  }
}

function dirBytes(dir: string): number {
  let total = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    total += entry.isDirectory() ? dirBytes(p) : fs.statSync(p).size;
  }
  return total;
}

/** Write amplification from our engine's stats: bytes the engine wrote per byte the user wrote. */
/**
 * Our engine's stats() after the fill/overwrite/delete database: write amplification per level
 * (the WAL's share first), compression, and each cache/buffer beside its budget. Null for others.
 */
export function engineDetails(stats: Record<string, unknown> | undefined): string[] {
  if (!stats || !Array.isArray(stats.levels)) return [];
  const out: string[] = [];
  const user = Number(stats.userBytesWritten) || 0;
  const levels = stats.levels as { bytesWritten?: number; writeAmplification?: number; files: number }[];
  if (user > 0 && levels.every((l) => typeof l.writeAmplification === "number")) {
    const parts = [`WAL ${(Number(stats.walBytesWritten) / user).toFixed(2)}`];
    levels.forEach((l, i) => {
      if ((l.bytesWritten ?? 0) > 0) parts.push(`L${i} ${l.writeAmplification!.toFixed(2)}`);
    });
    out.push(`write amplification by level: ${parts.join(", ")} (trivial moves ${stats.trivialMoves ?? "?"}, compactions ${stats.compactions ?? "?"})`);
  }
  const c = stats.compression as { codec: string; ratio: number } | undefined;
  if (c) out.push(`data blocks ${c.codec}: stored at ${(c.ratio * 100).toFixed(0)}% of their size`);
  const m = stats.memory as Record<string, { bytes: number; budget: number }> | undefined;
  if (m) out.push(`memory at the end (bytes / budget): ${Object.entries(m).map(([k, v]) => `${k} ${formatBytes(v.bytes)} / ${formatBytes(v.budget)}`).join(", ")}`);
  return out;
}

export function writeAmplification(stats: Record<string, unknown>): number | null {
  const num = (k: string) => (typeof stats[k] === "number" ? (stats[k] as number) : null);
  const direct = num("writeAmplification");
  if (direct !== null) return direct;
  const user = num("userBytesWritten") ?? num("userBytes");
  const disk = num("bytesWritten") ?? num("diskBytesWritten");
  return user && disk !== null ? disk / user : null;
}

export async function runLsmSuite(o: BenchOptions, progress: Progress): Promise<SuiteResult> {
  const plan = lsmPlan(o);
  const notes: string[] = [];
  const engines: BenchEngine[] = [await leveldbEngine()];
  const missing = ourEngineMissing();
  if (missing) notes.push(`ours: skipped — ${missing}`);
  else engines.unshift(await ourEngine());
  progress.log(
    `[lsm] ${plan.keys.toLocaleString("en-US")} keys, ${plan.runs} run(s) per engine, alternating ${engines.map((e) => e.label).join(" / ")}; cap ${plan.maxMs / 1000} s per loop`,
  );
  const runner = new Runner(plan, progress);
  await alternate(engines, plan.runs, (engine, run) => runner.sequence(engine, 1000 + run));

  let big: Awaited<ReturnType<Runner["big"]>> | null = null;
  const ours = engines.find((e) => e.system === "ours");
  if (o.big) {
    if (ours) big = await runner.big(ours, o.bigKeys);
    else notes.push("--big: skipped, our engine is not there");
  }

  for (const e of engines) {
    const f = runner.factsOf(e);
    const disk = f.diskBytes.length ? formatBytes(summarize(f.diskBytes).median) : "?";
    const top = Object.entries(f.peakRssByLoop).sort((a, b) => b[1] - a[1]).slice(0, 3);
    const where = top.length ? ` (highest loops: ${top.map(([loop, rss]) => `${loop} ${formatBytes(rss)}`).join(", ")})` : "";
    notes.push(`${e.label}: peak RSS of the process during its runs ${formatBytes(f.peakRss)}${where}; database after fill+overwrite+deletes ${disk} on disk`);
    if (f.capped.length > 4) notes.push(`${e.label}: ${f.capped.length} loops stopped by the ${plan.maxMs / 1000} s cap (rates are over what ran; the list is in --json)`);
    else if (f.capped.length) notes.push(`${e.label}: stopped by the ${plan.maxMs / 1000} s cap (rate over what ran): ${f.capped.join("; ")}`);
    const wa = f.stats.map(writeAmplification).filter((x): x is number => x !== null);
    if (e.system === "ours") {
      notes.push(wa.length ? `${e.label}: write amplification ${wa.map((x) => x.toFixed(2)).join(", ")}` : `${e.label}: stats() ${JSON.stringify(f.stats.at(-1) ?? null)}`);
      for (const line of engineDetails(f.stats.at(-1))) notes.push(`${e.label}: ${line}`);
    }
  }
  if (big) notes.push(`--big: ours fillrandom ${big.ops.toLocaleString("en-US")} keys batch1000: ${formatCount(big.opsPerSec)} ops/s, peak RSS ${formatBytes(big.peakRss)}, ${formatBytes(big.diskBytes)} on disk`);

  const order = (c: Comparison) => WORKLOAD_ORDER.indexOf(c.name) * 10 + VARIANT_ORDER.indexOf(c.variant);
  runner.comparisons.sort((a, b) => order(a) - order(b));
  const rows = runner.comparisons.map((c) => {
    const s = summaries(c);
    const mbps = (x: Summary | null | undefined) => (x && c.name !== "seekrandom" ? ((x.median * ENTRY_BYTES) / 1e6).toFixed(1) : "—");
    return [c.name, variantLabel(c, engines), formatSummary(s.ours), mbps(s.ours), formatSummary(s.leveldb), mbps(s.leveldb), formatRatio(ratio(s.ours, s.leveldb))];
  });
  const table = renderTable(
    [
      { header: "workload" },
      { header: "variant" },
      { header: "ours ops/s", align: "right" },
      { header: "MB/s", align: "right" },
      { header: "LevelDB ops/s", align: "right" },
      { header: "MB/s", align: "right" },
      { header: "ours/LevelDB", align: "right" },
    ],
    rows,
  );
  const chart = barChart({
    title: "kvraft LSM vs LevelDB (classic-level): db_bench workloads",
    subtitle: `${plan.keys.toLocaleString("en-US")} keys × (16 B key + 100 B value), median of ${plan.runs} run(s), whiskers min–max`,
    unit: "operations per second",
    log: true,
    noteHeader: "ours/LevelDB",
    series: engines.map((e) => ({ name: e.label, color: e.system === "ours" ? "#2f6fdf" : "#e0782f" })),
    groups: runner.comparisons.map((c) => {
      const s = summaries(c);
      return { label: `${c.name} ${c.variant}`, values: engines.map((e) => s[e.system] ?? null), note: engines.length > 1 ? formatRatio(ratio(s.ours, s.leveldb)) : undefined };
    }),
  });
  return {
    suite: "lsm",
    title: `LSM: db_bench workloads, ours vs LevelDB ${plan.runs > 1 ? "(median (min–max))" : ""}`.trim(),
    tables: [table],
    notes,
    charts: [{ file: "lsm-throughput.svg", svg: chart }],
    data: { plan, comparisons: runner.comparisons.map((c) => ({ ...c, summaries: summaries(c) })), facts: Object.fromEntries(runner.facts), big },
  };
}

function variantLabel(c: Comparison, engines: BenchEngine[]): string {
  if (c.variant !== "bulk") return c.variant;
  const by = (system: string) => (c.name === "readseq" ? engines.find((e) => e.system === system)?.bulkScan : engines.find((e) => e.system === system)?.bulkSeek);
  return `bulk (${[by("ours"), by("leveldb")].filter(Boolean).join(" / ")})`;
}
