// Process CPU per operation for a few lsm-suite read variants, both engines in one process,
// alternating A/B rounds: on a shared machine CPU time is steadier than wall-clock ratios.
// Usage: bun bench/lsm-cpu.ts [keys=300000] [rounds=3]
//   ONLY=getSync,readseq  runs the variants whose names contain one of these
//   OURS='{"mmapTables":true}'  options for our engine's DB.open (defaults otherwise)

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { type BenchDb, leveldbEngine, ourEngine } from "./lsm-engines.ts";
import { makeKey, makeMissingKey, randomIndices, ValueSource } from "./lsm-workloads.ts";

const N = Number(process.argv[2] ?? 300_000);
const ROUNDS = Number(process.argv[3] ?? 3);
const OPS = Math.min(N, 200_000);
const only = process.env.ONLY?.split(",");

async function fill(db: BenchDb): Promise<void> {
  const values = new ValueSource(301);
  const next = randomIndices(7, N);
  for (let done = 0; done < N; done += 1000) {
    const ops = [];
    for (let j = 0; j < 1000; j++) ops.push({ type: "put" as const, key: makeKey(next(j)), value: values.next() });
    await db.write(ops, false);
  }
  // Make every key present too, in order, so readseq walks N entries.
  for (let done = 0; done < N; done += 1000) {
    const ops = [];
    for (let j = done; j < Math.min(N, done + 1000); j++) ops.push({ type: "put" as const, key: makeKey(j), value: values.next() });
    await db.write(ops, false);
  }
}

type Variant = { name: string; run: (db: BenchDb) => Promise<number> };
const variants: Variant[] = [
  {
    name: "readseq stepwise",
    run: async (db) => (await db.scanStepwise({ count: OPS, maxMs: 60_000 })).ops,
  },
  {
    name: "readseq bulk",
    run: async (db) => (await db.scanBulk({ count: OPS, maxMs: 60_000 })).ops,
  },
  {
    name: "seekrandom bulk",
    run: async (db) => {
      const s = db.seeker("bulk");
      const next = randomIndices(11, N);
      const n = OPS / 10;
      for (let i = 0; i < n; i++) await s.seek(makeKey(next(i)), 10);
      await s.close();
      return n;
    },
  },
  {
    name: "readrandom getSync",
    run: async (db) => {
      const next = randomIndices(13, N);
      for (let i = 0; i < OPS; i++) db.getSync(makeKey(next(i)));
      return OPS;
    },
  },
  {
    name: "readmissing getSync",
    run: async (db) => {
      const next = randomIndices(17, N);
      for (let i = 0; i < OPS; i++) db.getSync(makeMissingKey(next(i)));
      return OPS;
    },
  },
  {
    name: "readrandom get",
    run: async (db) => {
      const next = randomIndices(19, N);
      for (let i = 0; i < OPS; i++) await db.get(makeKey(next(i)));
      return OPS;
    },
  },
];

const root = fs.mkdtempSync(path.join(os.tmpdir(), "lsm-cpu-"));
try {
  const engines = [await ourEngine(JSON.parse(process.env.OURS ?? "{}")), await leveldbEngine()];
  const dbs: BenchDb[] = [];
  for (const e of engines) {
    const db = await e.open(path.join(root, e.system));
    await fill(db);
    dbs.push(db);
  }
  await Bun.sleep(2000); // let background compactions settle
  const cpu = new Map<string, number[][]>();
  for (let r = 0; r < ROUNDS; r++) {
    for (const v of variants) {
      if (only && !only.some((o) => v.name.includes(o))) continue;
      for (let e = 0; e < engines.length; e++) {
        const idx = r % 2 === 0 ? e : engines.length - 1 - e;
        const c0 = process.cpuUsage();
        const ops = await v.run(dbs[idx]!);
        const c = process.cpuUsage(c0);
        const us = (c.user + c.system) / ops;
        if (!cpu.has(v.name)) cpu.set(v.name, [[], []]);
        cpu.get(v.name)![idx]!.push(us);
      }
    }
  }
  const med = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1]!;
  console.log(`N=${N} ops/variant=${OPS} rounds=${ROUNDS}  CPU µs/op (median)`);
  console.log("variant".padEnd(22), "ours".padStart(8), "LevelDB".padStart(8), "  LevelDB/ours");
  for (const [name, [a, b]] of cpu) {
    console.log(name.padEnd(22), med(a!).toFixed(2).padStart(8), med(b!).toFixed(2).padStart(8), `  ${(med(b!) / med(a!)).toFixed(2)}×`, `  ours ${a!.map((x) => x.toFixed(2)).join(" ")} | ldb ${b!.map((x) => x.toFixed(2)).join(" ")}`);
  }
  for (const db of dbs) await db.close();
} finally {
  fs.rmSync(root, { recursive: true, force: true });
}
