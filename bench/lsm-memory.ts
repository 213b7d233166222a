// Where the memory of the lsm suite goes: runs the suite's mixed sequence on one engine and prints,
// after each phase, peak and current RSS, the JS heap (bun:jsc heapStats) and the engine's own
// accounting (stats()). `bun bench/lsm-memory.ts [--keys N] [--engine ours|leveldb] [--types]
// [--opt name=value]... [--gc]` (--gc: also a full collection after each phase, for the live heap).
import { heapStats } from "bun:jsc";
import * as fs from "node:fs";
import { leveldbEngine, ourEngine, type BenchDb, type WriteOp } from "./lsm-engines.ts";
import {
  batchLoop, concurrentLoop, makeKey, makeMissingKey, randomIndices, serialLoop, syncLoop, ValueSource, type LoopBounds,
} from "./lsm-workloads.ts";
import { makeTempDir, removeTempDir } from "./proc.ts";

const args = process.argv.slice(2);
const flag = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const N = Number(flag("--keys") ?? 200_000);
const engineName = flag("--engine") ?? "ours";
const showTypes = args.includes("--types");
const collect = args.includes("--gc");
const MiB = 1024 * 1024;

let peak = 0;
const sample = (): void => {
  const rss = process.memoryUsage.rss();
  if (rss > peak) peak = rss;
};
const bounds = (count: number): LoopBounds => ({ count, maxMs: 60_000, sample });

function report(phase: string, db: BenchDb | null): void {
  sample();
  const h = heapStats();
  const s = db?.stats() as Record<string, any> | null | undefined;
  const mb = (n: number): string => (n / MiB).toFixed(1).padStart(6);
  // File-backed RSS is mapped table pages; anonymous RSS is heaps and malloc (all threads).
  const status = fs.readFileSync("/proc/self/status", "utf8");
  const kb = (name: string): number => Number(new RegExp(`${name}:\\s+(\\d+)`).exec(status)?.[1] ?? 0) * 1024;
  let line = `${phase.padEnd(22)} peak ${mb(peak)}  rss ${mb(process.memoryUsage.rss())} (anon ${mb(kb("RssAnon"))} file ${mb(kb("RssFile"))})  heap ${mb(h.heapSize)}  extra ${mb(h.extraMemorySize)}  objects ${String(h.objectCount).padStart(8)}`;
  if (s) {
    const m = s.memory as Record<string, { bytes: number; budget: number }> | undefined;
    if (m) line += "  " + Object.entries(m).map(([k, v]) => `${k} ${mb(v.bytes).trim()}/${mb(v.budget).trim()}`).join(" ");
    else line += `  mapped ${mb(s.mappedTableBytes)} cache ${mb(s.blockCache.bytes)} mem ${mb(s.memtableBytes)} tables ${s.openTables}`;
  }
  console.log(line);
  if (collect) {
    Bun.gc(true);
    const live = heapStats();
    console.log(`  after a full GC: heap ${mb(live.heapSize)}  extra ${mb(live.extraMemorySize)}  rss ${mb(process.memoryUsage.rss())}`);
    if (showTypes) {
      const top = Object.entries(live.objectTypeCounts).sort((a, b) => b[1] - a[1]).slice(0, 10);
      console.log(`  live: ${top.map(([t, n]) => `${t} ${n}`).join(", ")}`);
    }
  }
  if (showTypes) {
    const top = Object.entries(h.objectTypeCounts).sort((a, b) => b[1] - a[1]).slice(0, 8);
    console.log(`  ${top.map(([t, n]) => `${t} ${n}`).join(", ")}`);
  }
  peak = 0;
}

// --opt name=value (repeatable): a DB option for our engine, e.g. --opt compression=none.
const options: Record<string, unknown> = {};
for (let i = 0; i < args.length; i++) {
  if (args[i] !== "--opt") continue;
  const [k, v] = args[i + 1].split("=");
  options[k] = v === "true" ? true : v === "false" ? false : /^\d+$/.test(v) ? Number(v) : v;
}
const engine = engineName === "leveldb" ? await leveldbEngine() : await ourEngine(options);
const values = new ValueSource(1);
const writes = async (db: BenchDb, variant: string, keyOf: (i: number) => Buffer, del = false): Promise<void> => {
  const op = (i: number) => (del ? db.del(keyOf(i)) : db.put(keyOf(i), values.next(), false));
  if (variant === "serial") await serialLoop(bounds(N), op);
  else if (variant === "conc64") await concurrentLoop(bounds(N), 64, op);
  else {
    await batchLoop(bounds(N), 1000, (first, size) => {
      const ops: WriteOp[] = [];
      for (let j = 0; j < size; j++) ops.push(del ? { type: "del", key: keyOf(first + j) } : { type: "put", key: keyOf(first + j), value: values.next() });
      return db.write(ops, false);
    });
  }
};
const fresh = async (name: string, fn: (db: BenchDb) => Promise<void>): Promise<void> => {
  const dir = makeTempDir("lsm-mem");
  const db = await engine.open(dir);
  try {
    await fn(db);
    report(name, db);
  } finally {
    await db.close();
    removeTempDir(dir);
  }
};

Bun.gc(true);
report("start", null);
for (const v of ["serial", "conc64"]) await fresh(`fillseq ${v}`, (db) => writes(db, v, makeKey));
for (const v of ["serial", "conc64", "batch1000"]) {
  const random = randomIndices(2, N);
  await fresh(`fillrandom ${v}`, (db) => writes(db, v, () => makeKey(random(0))));
}
const dir = makeTempDir("lsm-mem");
const db = await engine.open(dir);
await writes(db, "batch1000", makeKey);
report("fillseq batch1000", db);
for (const v of ["serial", "conc64", "batch1000"]) {
  const random = randomIndices(3, N);
  await writes(db, v, () => makeKey(random(0)));
  report(`overwrite ${v}`, db);
}
for (const [name, keyOf] of [["readrandom", makeKey], ["readmissing", makeMissingKey]] as const) {
  const random = randomIndices(4, N);
  await serialLoop(bounds(N), () => db.get(keyOf(random(0))));
  await concurrentLoop(bounds(N), 64, () => db.get(keyOf(random(0))));
  syncLoop(bounds(N), () => db.getSync(keyOf(random(0))));
  report(name, db);
}
await db.scanStepwise(bounds(N));
await db.scanBulk(bounds(N));
report("readseq", db);
{
  const random = randomIndices(5, N);
  const readers = Array.from({ length: 64 }, () => db.seeker("stepwise"));
  await concurrentLoop(bounds(N / 10), 64, async () => {
    const r = readers.pop()!;
    try {
      return await r.seek(makeKey(random(0)), 10);
    } finally {
      readers.push(r);
    }
  });
  for (const r of readers) await r.close();
  report("seekrandom", db);
}
for (const v of ["serial", "conc64", "batch1000"]) {
  const random = randomIndices(6, N);
  await writes(db, v, () => makeKey(random(0)), true);
  report(`deleterandom ${v}`, db);
}
await db.close();
removeTempDir(dir);
Bun.gc(true);
report("closed", null);
