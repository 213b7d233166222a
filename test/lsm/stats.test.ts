// stats(): every cache and buffer is reported beside its budget and stays within it, and the
// write amplification is broken down per level.
import { afterEach, expect, test } from "bun:test";
import { DB } from "../../src/lsm/index.ts";
import { key, removeDir, rng, tempDir } from "./helpers.ts";

let dirs: string[] = [];
afterEach(() => {
  for (const d of dirs) removeDir(d);
  dirs = [];
});

test("every cache and buffer stays within the budget stats() reports for it", async () => {
  const dir = tempDir("stats");
  dirs.push(dir);
  const opts = {
    memtableBytes: 64 * 1024,
    targetFileSize: 32 * 1024,
    level1MaxBytes: 128 * 1024,
    blockCacheBytes: 64 * 1024,
    tableCacheBytes: 64 * 1024,
    mmapTables: true,
    maxMappedBytes: 96 * 1024,
  };
  const db = await DB.open(dir, opts);
  const r = rng(5);
  const value = (i: number): Uint8Array => new Uint8Array(100).map((_, j) => (j < 50 ? (i * 31 + j) & 0xff : Math.floor(r() * 256)));
  const within = (): void => {
    const m = db.stats().memory;
    for (const [name, use] of Object.entries(m)) {
      expect(use.budget, name).toBeGreaterThan(0);
      // Each memtable may pass its size by the one batch that fills it (100 ops, ~25 KiB here).
      expect(use.bytes, name).toBeLessThanOrEqual(use.budget + (name === "memtables" ? 3 * 30 * 1024 : 0));
    }
  };
  for (let b = 0; b < 20_000; b += 100) {
    const ops = [];
    for (let i = b; i < b + 100; i++) ops.push({ type: "put" as const, key: key((i * 7919) % 20_000), value: value(i) });
    await db.write(ops);
    within();
  }
  await db.compactRange();
  for (let i = 0; i < 5000; i++) db.getSync(key(Math.floor(r() * 20_000)));
  within();
  const s = db.stats();
  expect(s.memory.blockCache.bytes).toBeGreaterThan(0);
  expect(s.memory.tableCache.bytes).toBeGreaterThan(0);
  expect(s.memory.mappedTables.bytes).toBeGreaterThan(0);
  expect(s.memory.tableCache.budget).toBe(64 * 1024);
  expect(s.memory.mappedTables.budget).toBe(96 * 1024);
  // Write amplification: the WAL's share plus each level's adds up to the whole.
  const perLevel = s.levels.reduce((a, l) => a + l.writeAmplification, 0);
  expect(s.writeAmplification).toBeCloseTo(s.walBytesWritten / s.userBytesWritten + perLevel, 1);
  expect(s.levels[0].bytesWritten + s.levels[1].bytesWritten).toBeGreaterThan(0);
  expect(s.levels.some((l, i) => i > 0 && l.bytesRead > 0)).toBe(true);
  expect(s.compression.codec).toBe("lz4");
  expect(s.compression.ratio).toBeLessThan(1);
  expect(s.compression.ratio).toBeGreaterThan(0.3);
  await db.close();
}, 60_000);

test("the flush buffer is kept for the next flush only within its budget", async () => {
  const dir = tempDir("stats-flushbuf");
  dirs.push(dir);
  const db = await DB.open(dir, { memtableBytes: 64 * 1024 });
  const value = new Uint8Array(100).fill(7);
  // Small batches: the buffer handed to the flush worker comes back and is kept.
  for (let b = 0; b < 1000; b += 100) {
    await db.write(Array.from({ length: 100 }, (_, i) => ({ type: "put" as const, key: key(b + i), value })));
  }
  await db.flush();
  let m = db.stats().memory.flushBuffer;
  expect(m.budget).toBe(64 * 1024 + 8 * 1024);
  expect(m.bytes).toBeGreaterThan(0);
  expect(m.bytes).toBeLessThanOrEqual(m.budget);
  // One batch of ~1.1 MiB overfills the memtable: its flush buffer is too large to keep.
  await db.write(Array.from({ length: 10_000 }, (_, i) => ({ type: "put" as const, key: key(1000 + i), value })));
  await db.flush();
  m = db.stats().memory.flushBuffer;
  expect(m.bytes).toBeLessThanOrEqual(m.budget);
  expect(await db.get(key(10_999))).toEqual(value);
  await db.close();
});
