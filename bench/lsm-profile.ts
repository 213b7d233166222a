// A focused micro-benchmark of the LSM engine against LevelDB (classic-level) in one process:
// selected db_bench workloads, engines alternating run by run, median of runs and ratio.
//
//   bun bench/lsm-profile.ts [--n 200000] [--runs 3] [--warmup 50000] [--only readseq-nextv,seekrandom-nextv10]
//                            [--engines ours,leveldb] [--sync-ops 1000] [--opt name=value]...
//   bun --cpu-prof --cpu-prof-dir=/tmp/prof bench/lsm-profile.ts --engines ours --only readseq
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { leveldbEngine, ourEngine, type BenchDb, type BenchEngine, type WriteOp } from "./lsm-engines.ts";
import { makeKey, makeMissingKey, Rng, ValueSource } from "./lsm-workloads.ts";

const WORKLOADS = [
  "fillseq", "fillrandom", "overwrite64", "readrandom-getSync", "readrandom-get", "readmissing",
  "readseq-nextv", "readseq-forawait", "seekrandom-nextv10", "seekrandom-read10", "fillsync",
] as const;
type Workload = (typeof WORKLOADS)[number];

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

let N = Number(arg("n", "200000"));
/** Entries of an unmeasured first pass per engine (JIT warm-up of our JS code); 0 to skip. */
const WARMUP = Number(arg("warmup", String(Math.min(50_000, Math.floor(N / 4)))));
const RUNS = Number(arg("runs", "3"));
const only = new Set(arg("only", WORKLOADS.join(",")).split(",")) as Set<string>;
const engineNames = arg("engines", "ours,leveldb").split(",");
const SYNC_OPS = Number(arg("sync-ops", "1000"));

function shuffled(n: number, seed: number): Uint32Array {
  const a = new Uint32Array(n);
  for (let i = 0; i < n; i++) a[i] = i;
  const rng = new Rng(seed);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.below(i + 1);
    const t = a[i];
    a[i] = a[j];
    a[j] = t;
  }
  return a;
}

async function fillBatches(db: BenchDb, order: Uint32Array | null, values: ValueSource): Promise<number> {
  const t = performance.now();
  for (let i = 0; i < N; i += 1000) {
    const ops: WriteOp[] = [];
    for (let j = i; j < Math.min(N, i + 1000); j++) ops.push({ type: "put", key: makeKey(order ? order[j] : j), value: values.next() });
    await db.write(ops, false);
  }
  return N / ((performance.now() - t) / 1000);
}

/** Runs one engine's selected workloads on fresh directories; returns ops/s per workload. */
async function runEngine(engine: BenchEngine, run: number): Promise<Map<Workload, number>> {
  const out = new Map<Workload, number>();
  const root = fs.mkdtempSync(path.join(os.tmpdir(), `lsm-profile-${engine.system}-`));
  const values = new ValueSource(42 + run);
  const order = shuffled(N, 7 + run);
  const reads = shuffled(N, 99 + run);
  try {
    if (only.has("fillseq")) {
      const db = await engine.open(path.join(root, "seq"));
      out.set("fillseq", await fillBatches(db, null, values));
      await db.close();
    }
    const db = await engine.open(path.join(root, "rand"));
    const rate = await fillBatches(db, order, values);
    if (only.has("fillrandom")) out.set("fillrandom", rate);
    if (only.has("overwrite64")) {
      const t = performance.now();
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < N) {
          const i = next++;
          await db.put(makeKey(order[i]), values.next(), false);
        }
      };
      await Promise.all(Array.from({ length: 64 }, worker));
      out.set("overwrite64", N / ((performance.now() - t) / 1000));
    }
    // Let background flushes/compactions settle a little, as a reader would usually see.
    await new Promise((r) => setTimeout(r, 200));
    if (only.has("readrandom-getSync")) {
      const t = performance.now();
      let found = 0;
      for (let i = 0; i < N; i++) if (db.getSync(makeKey(reads[i])) !== undefined) found++;
      if (found !== N) throw new Error(`${engine.system}: getSync found ${found}/${N}`);
      out.set("readrandom-getSync", N / ((performance.now() - t) / 1000));
    }
    if (only.has("readrandom-get")) {
      const count = Math.min(N, 100_000);
      const t = performance.now();
      for (let i = 0; i < count; i++) await db.get(makeKey(reads[i]));
      out.set("readrandom-get", count / ((performance.now() - t) / 1000));
    }
    if (only.has("readmissing")) {
      const t = performance.now();
      for (let i = 0; i < N; i++) if (db.getSync(makeMissingKey(reads[i])) !== undefined) throw new Error("found a missing key");
      out.set("readmissing", N / ((performance.now() - t) / 1000));
    }
    if (only.has("readseq-nextv")) {
      const r = await db.scanBulk({ count: N, maxMs: 60_000 });
      if (r.ops !== N) throw new Error(`${engine.system}: scan saw ${r.ops}/${N}`);
      out.set("readseq-nextv", r.ops / r.seconds);
    }
    if (only.has("readseq-forawait")) {
      const r = await db.scanStepwise({ count: N, maxMs: 60_000 });
      out.set("readseq-forawait", r.ops / r.seconds);
    }
    for (const [w, mode, n] of [["seekrandom-nextv10", "bulk", 10], ["seekrandom-read10", "stepwise", 10]] as const) {
      if (!only.has(w)) continue;
      const seeks = Math.max(1000, Math.floor(N / 20));
      const seeker = db.seeker(mode);
      const t = performance.now();
      let read = 0;
      for (let i = 0; i < seeks; i++) read += await seeker.seek(makeKey(reads[i]), n);
      await seeker.close();
      if (read < seeks * 5) throw new Error(`${engine.system}: seeks read only ${read}`);
      out.set(w, seeks / ((performance.now() - t) / 1000));
    }
    if (only.has("fillsync")) {
      const t = performance.now();
      for (let i = 0; i < SYNC_OPS; i++) await db.put(makeKey(N + i), values.next(), true);
      out.set("fillsync", SYNC_OPS / ((performance.now() - t) / 1000));
    }
    await db.close();
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
  return out;
}

function median(xs: number[]): number {
  const s = xs.slice().sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.floor((s.length - 1) / 2)];
}

function fmt(x: number): string {
  if (!Number.isFinite(x)) return "-";
  return x >= 10_000 ? `${(x / 1000).toFixed(1)}k` : x.toFixed(0);
}

async function main(): Promise<void> {
  const engines: BenchEngine[] = [];
  // --opt name=value (repeatable): a DB option for our engine, e.g. --opt mmapTables=false.
  const options: Record<string, unknown> = {};
  process.argv.forEach((a, i) => {
    if (a !== "--opt" || i + 1 >= process.argv.length) return;
    const [k, v] = process.argv[i + 1].split("=");
    options[k] = v === "true" ? true : v === "false" ? false : /^\d+$/.test(v) ? Number(v) : v;
  });
  for (const name of engineNames) engines.push(name === "ours" ? await ourEngine(options) : await leveldbEngine());
  const results = new Map<string, Map<Workload, number[]>>();
  for (const e of engines) results.set(e.system, new Map());
  if (WARMUP > 0) {
    const measured = N;
    N = WARMUP;
    for (const e of engines) await runEngine(e, 100);
    N = measured;
    console.error(`warm-up pass of ${WARMUP} entries per engine done (not counted)`);
  }
  for (let run = 0; run < RUNS; run++) {
    // Alternate who goes first, so drift of the machine falls on both.
    const orderOfEngines = run % 2 === 0 ? engines : engines.slice().reverse();
    for (const e of orderOfEngines) {
      const r = await runEngine(e, run);
      const line: string[] = [];
      for (const [w, v] of r) {
        const arr = results.get(e.system)!.get(w) ?? [];
        arr.push(v);
        results.get(e.system)!.set(w, arr);
        line.push(`${w}=${fmt(v)}`);
      }
      console.error(`run ${run + 1}/${RUNS} ${e.system}: ${line.join(" ")}`);
    }
  }
  console.log(`N=${N}, runs=${RUNS}, medians (ops/s; readseq in entries/s)`);
  console.log(["workload".padEnd(22), ...engines.map((e) => e.system.padStart(10)), engines.length === 2 ? "ratio".padStart(8) : ""].join(" "));
  for (const w of WORKLOADS) {
    if (!only.has(w)) continue;
    const meds = engines.map((e) => median(results.get(e.system)!.get(w) ?? []));
    const ratio = meds.length === 2 ? `${(meds[0] / meds[1]).toFixed(2)}x` : "";
    console.log([w.padEnd(22), ...meds.map((m) => fmt(m).padStart(10)), ratio.padStart(8)].join(" "));
  }
}

await main();
