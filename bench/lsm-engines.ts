// The two engines of the lsm suite behind one small interface: LevelDB through classic-level and
// our LSM engine (src/lsm), each used through its own fastest natural API for every workload.

import * as fs from "node:fs";
import * as path from "node:path";
import type { LoopBounds, LoopResult } from "./lsm-workloads.ts";

export type WriteOp = { type: "put"; key: Buffer; value: Buffer } | { type: "del"; key: Buffer };

export interface BenchDb {
  put(key: Buffer, value: Buffer, sync: boolean): Promise<unknown>;
  del(key: Buffer): Promise<unknown>;
  write(ops: WriteOp[], sync: boolean): Promise<unknown>;
  get(key: Buffer): Promise<Uint8Array | undefined>;
  getSync(key: Buffer): Uint8Array | undefined;
  /** Walks entries in order, one awaited step each (LevelDB next(), ours for-await). */
  scanStepwise(b: LoopBounds): Promise<LoopResult>;
  /** Walks entries with the engine's bulk form (LevelDB nextv(1000), ours synchronous cursor). */
  scanBulk(b: LoopBounds): Promise<LoopResult>;
  /** A reader for seekrandom: seek to `key`, read up to `n` entries, return how many were read. */
  seeker(mode: "stepwise" | "bulk"): Seeker;
  /** Engine counters (ours only), for write amplification and the like. */
  stats(): Record<string, unknown> | null;
  close(): Promise<void>;
}

export interface Seeker {
  seek(key: Buffer, n: number): Promise<number> | number;
  close(): Promise<void> | void;
}

export interface BenchEngine {
  system: "ours" | "leveldb";
  label: string;
  /** How the bulk variants read, for the table ("nextv(1000)", "sync cursor"). */
  bulkScan: string;
  bulkSeek: string;
  open(dir: string): Promise<BenchDb>;
}

function entriesDone(b: LoopBounds, n: number): boolean {
  if ((n & 255) === 0) b.progress?.tick(n);
  return n >= b.count;
}

// ---------------------------------------------------------------------------------------------
// LevelDB (classic-level)

interface ClassicIterator {
  next(): Promise<[Buffer, Buffer] | undefined>;
  nextv(size: number): Promise<[Buffer, Buffer][]>;
  seek(target: Buffer): void;
  close(): Promise<void>;
}

interface ClassicDb {
  open(): Promise<void>;
  close(): Promise<void>;
  put(key: Buffer, value: Buffer, options?: { sync?: boolean }): Promise<void>;
  del(key: Buffer): Promise<void>;
  batch(ops: WriteOp[], options?: { sync?: boolean }): Promise<void>;
  get(key: Buffer): Promise<Buffer | undefined>;
  getSync(key: Buffer): Buffer | undefined;
  iterator(options?: Record<string, unknown>): ClassicIterator;
}

export async function leveldbEngine(): Promise<BenchEngine> {
  const { ClassicLevel } = await import("classic-level");
  return {
    system: "leveldb",
    label: "LevelDB",
    bulkScan: "nextv(1000)",
    bulkSeek: "nextv(10)",
    async open(dir) {
      const db = new ClassicLevel<Buffer, Buffer>(dir, { keyEncoding: "buffer", valueEncoding: "buffer" }) as unknown as ClassicDb;
      await db.open();
      return {
        put: (key, value, sync) => db.put(key, value, sync ? { sync: true } : undefined),
        del: (key) => db.del(key),
        write: (ops, sync) => db.batch(ops, sync ? { sync: true } : undefined),
        get: (key) => db.get(key),
        getSync: (key) => db.getSync(key),
        async scanStepwise(b) {
          const start = performance.now();
          const it = db.iterator();
          let n = 0;
          try {
            while ((await it.next()) !== undefined && !entriesDone(b, ++n));
          } finally {
            await it.close();
          }
          return { ops: n, seconds: (performance.now() - start) / 1000, capped: false };
        },
        async scanBulk(b) {
          const start = performance.now();
          const it = db.iterator();
          let n = 0;
          try {
            for (;;) {
              const entries = await it.nextv(1000);
              if (entries.length === 0) break;
              n += entries.length;
              b.progress?.tick(n);
              if (n >= b.count) break;
            }
          } finally {
            await it.close();
          }
          return { ops: Math.min(n, b.count), seconds: (performance.now() - start) / 1000, capped: false };
        },
        seeker(mode) {
          // One long-lived iterator per reader: seek() repositions it without a new snapshot.
          const it = db.iterator();
          return {
            async seek(key, n) {
              it.seek(key);
              if (mode === "bulk") return (await it.nextv(n)).length;
              let read = 0;
              while (read < n && (await it.next()) !== undefined) read++;
              return read;
            },
            close: () => it.close(),
          };
        },
        stats: () => null,
        close: () => db.close(),
      };
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Ours (src/lsm), loaded at run time: when the engine fails to load, LevelDB's side still runs.

const OUR_ENGINE = path.resolve(import.meta.dir, "../src/lsm/index.ts");
type OurModule = typeof import("../src/lsm/index.ts");

/** Why our engine cannot be benchmarked, or null when it can. */
export function ourEngineMissing(): string | null {
  return fs.existsSync(OUR_ENGINE) ? null : "src/lsm/index.ts does not exist yet (engine not landed)";
}

/** Our engine; `options` are passed to DB.open (defaults when absent). */
export async function ourEngine(options: Record<string, unknown> = {}): Promise<BenchEngine> {
  const missing = ourEngineMissing();
  if (missing) throw new Error(missing);
  const { DB } = (await import(OUR_ENGINE)) as OurModule;
  return {
    system: "ours",
    label: "kvraft LSM",
    bulkScan: "nextv(1000)",
    bulkSeek: "nextv(10)",
    async open(dir) {
      const db = await DB.open(dir, options);
      return {
        put: (key, value, sync) => db.put(key, value, sync ? { sync: true } : undefined),
        del: (key) => db.del(key),
        write: (ops, sync) => db.write(ops, sync ? { sync: true } : undefined),
        get: (key) => db.get(key),
        getSync: (key) => db.getSync(key),
        async scanStepwise(b) {
          const start = performance.now();
          let n = 0;
          for await (const _ of db.iterator()) if (entriesDone(b, ++n)) break;
          return { ops: n, seconds: (performance.now() - start) / 1000, capped: false };
        },
        async scanBulk(b) {
          const start = performance.now();
          const it = db.iterator();
          let n = 0;
          try {
            for (;;) {
              const entries = it.nextv(1000);
              if (entries.length === 0) break;
              n += entries.length;
              b.progress?.tick(n);
              if (n >= b.count) break;
            }
          } finally {
            it.close();
          }
          return { ops: Math.min(n, b.count), seconds: (performance.now() - start) / 1000, capped: false };
        },
        seeker(mode) {
          // Like LevelDB's side: one long-lived iterator per reader, repositioned by seek().
          const it = db.iterator();
          return {
            seek(key, n) {
              it.seek(key);
              if (mode === "bulk") return it.nextv(n).length;
              let read = 0;
              while (read < n && it.read() !== undefined) read++;
              return read;
            },
            close: () => it.close(),
          };
        },
        stats: () => ({ ...db.stats() }),
        close: () => db.close(),
      };
    },
  };
}
