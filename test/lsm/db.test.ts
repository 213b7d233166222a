// The engine through its public API: reads after writes, atomic batches, reopen across many
// flushes and compactions, snapshot isolation while the tree changes, iterators, limits, locks.
import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { DB, LsmError } from "../../src/lsm/index.ts";
import { bytes, collectingLogger, key, removeDir, rng, tempDir, text } from "./helpers.ts";

let dir = "";
let db: DB | null = null;
afterEach(async () => {
  if (db) await db.close();
  db = null;
  if (dir) removeDir(dir);
});

const small = { memtableBytes: 64 * 1024, targetFileSize: 64 * 1024, level1MaxBytes: 256 * 1024, blockCacheBytes: 256 * 1024 };

async function collect(d: DB, opts: Parameters<DB["iterator"]>[0] = {}): Promise<string[]> {
  const out: string[] = [];
  for await (const [k, v] of d.iterator(opts)) out.push(`${text(k)}=${text(v)}`);
  return out;
}

async function expectCode(p: Promise<unknown> | (() => unknown), code: string): Promise<void> {
  let err: unknown;
  try {
    await (typeof p === "function" ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(LsmError);
  expect((err as LsmError).code as string).toBe(code);
}

describe("DB", () => {
  test("writes slowed by a full L0 (large batches, delays in proportion) keep their order and all land", async () => {
    dir = tempDir("db");
    // Slow down from the first L0 table and stop late: batches written while L0 holds a table
    // take the delayed path.
    db = await DB.open(dir, { ...small, l0CompactionTrigger: 1, l0SlowdownTrigger: 1, l0StopTrigger: 1000 });
    const value = new Uint8Array(200).fill(7);
    const writes: Promise<void>[] = [];
    let slowed = 0;
    for (let b = 0; b < 40; b++) {
      if (db.stats().levels[0].files >= 1) slowed++;
      const ops = [];
      // Each batch spans the whole key range, so flushed tables overlap and stay in L0.
      for (let i = 0; i < 100; i++) ops.push({ type: "put" as const, key: key(i * 40 + b), value });
      // The last batch overwrites the first key: a later write must not be overtaken.
      if (b === 39) ops.push({ type: "put" as const, key: key(0), value: bytes("last") });
      writes.push(db.write(ops));
      // Let every other batch finish so flushes land in L0 while the loop still writes.
      if (b % 2 === 1) await Promise.all(writes);
    }
    await Promise.all(writes);
    expect(db.stats().flushes).toBeGreaterThan(0);
    expect(slowed).toBeGreaterThan(0);
    expect(text(await db.get(key(0)))).toBe("last");
    for (let i = 1; i < 4000; i += 97) expect(await db.get(key(i))).toEqual(value);
    const all = await collect(db);
    expect(all.length).toBe(4000);
  });

  test("put, get, del, atomic write, overwrite", async () => {
    dir = tempDir("db");
    db = await DB.open(dir);
    await db.put(bytes("a"), bytes("1"));
    await db.put(bytes("b"), bytes("2"), { sync: true });
    expect(text(await db.get(bytes("a")))).toBe("1");
    expect(text(db.getSync(bytes("b")))).toBe("2");
    await db.del(bytes("a"));
    expect(await db.get(bytes("a"))).toBeUndefined();
    await db.write([
      { type: "put", key: bytes("c"), value: bytes("3") },
      { type: "del", key: bytes("b") },
      { type: "put", key: bytes("c"), value: bytes("4") }, // later op in a batch wins
    ]);
    expect(await collect(db)).toEqual(["c=4"]);
    const v = db.getSync(bytes("c"))!;
    v[0] = 0; // the caller owns returned bytes: mutating them changes nothing stored
    expect(text(db.getSync(bytes("c")))).toBe("4");
    await db.put(bytes("empty"), new Uint8Array(0));
    expect(db.getSync(bytes("empty"))).toEqual(new Uint8Array(0));
  });

  // Tables are built in the table worker by default; the main-thread path must agree.
  for (const backgroundThread of [true, false]) {
    const mode = backgroundThread ? "tables built in the worker" : "tables built on the main thread";
    const opts = { ...small, backgroundThread };

    test(`data survives reopen across many flushes and compactions (${mode})`, async () => {
      dir = tempDir("db");
      db = await DB.open(dir, opts);
      const r = rng(42);
      const model = new Map<number, string>();
      for (let round = 0; round < 40; round++) {
        const ops = [];
        for (let i = 0; i < 250; i++) {
          const k = (r() * 3000) | 0;
          if (r() < 0.15) {
            ops.push({ type: "del" as const, key: key(k) });
            model.delete(k);
          } else {
            const v = `v${round}-${i}-${"x".repeat((r() * 200) | 0)}`;
            ops.push({ type: "put" as const, key: key(k), value: bytes(v) });
            model.set(k, v);
          }
        }
        await db.write(ops);
        if (round === 20) {
          await db.close();
          db = await DB.open(dir, opts);
        }
      }
      const s = db.stats();
      expect(s.flushes + s.compactions).toBeGreaterThan(0);
      await db.close();
      db = await DB.open(dir, opts);
      const before = db.stats();
      expect(before.levels.reduce((a, l) => a + l.files, 0)).toBeGreaterThan(1);
      for (let k = 0; k < 3000; k++) expect(text(db.getSync(key(k)))).toBe(model.get(k));
      const expected = [...model.keys()].sort((a, b) => a - b).map((k) => `${text(key(k))}=${model.get(k)}`);
      expect(await collect(db)).toEqual(expected);
      await db.compactRange();
      const after = db.stats();
      expect(after.levels[0].files).toBe(0);
      expect(await collect(db)).toEqual(expected);
      // Only live tables, the current WAL and manifest remain on disk.
      const ssts = fs.readdirSync(dir).filter((n) => n.endsWith(".sst")).length;
      expect(ssts).toBe(after.levels.reduce((a, l) => a + l.files, 0));
      expect(fs.readdirSync(dir).filter((n) => n.endsWith(".log")).length).toBeLessThanOrEqual(1 + after.immutableMemtables);
    });

    test(`a snapshot sees its point in time while writes, flushes and compactions go on (${mode})`, async () => {
      dir = tempDir("db");
      db = await DB.open(dir, opts);
      for (let i = 0; i < 500; i++) await db.put(key(i), bytes(`old${i}`));
      const snap = db.snapshot();
      const it = db.iterator({ snapshot: snap, gte: key(100), lt: key(110) });
      for (let round = 0; round < 20; round++) {
        const ops = [];
        for (let i = 0; i < 500; i++) {
          ops.push(i % 2 === 0 ? { type: "del" as const, key: key(i) } : { type: "put" as const, key: key(i), value: bytes(`new${round}-${"y".repeat(100)}`) });
        }
        await db.write(ops);
      }
      await db.put(key(10_000), bytes("after"));
      await db.compactRange();
      expect(db.stats().compactions).toBeGreaterThan(0);
      for (let i = 0; i < 500; i += 7) expect(text(db.getSync(key(i), { snapshot: snap }))).toBe(`old${i}`);
      expect(db.getSync(key(10_000), { snapshot: snap })).toBeUndefined();
      expect(db.getSync(key(2))).toBeUndefined();
      const viaIterator = it.nextv(100).map(([k, v]) => `${text(k)}=${text(v)}`);
      expect(viaIterator.length).toBe(10);
      expect(viaIterator[0]).toBe("key00000100=old100");
      it.close();
      const all = await collect(db, { snapshot: snap });
      expect(all.length).toBe(500);
      snap.release();
      snap.release(); // idempotent
      await expectCode(() => db!.getSync(key(1), { snapshot: snap }), "INVALID_ARGUMENT");
      await db.compactRange();
      expect((await collect(db)).length).toBe(251);
    });
  }

  test("iterator bounds, reverse, limit, seek and direction changes", async () => {
    dir = tempDir("db");
    db = await DB.open(dir, small);
    for (let i = 0; i < 100; i++) await db.put(key(i), bytes(String(i)));
    for (let i = 0; i < 100; i += 10) await db.del(key(i));
    await db.compactRange(); // part on disk, part in memory
    for (let i = 0; i < 100; i += 3) await db.put(key(i), bytes(`m${i}`));
    const keysOf = (xs: string[]) => xs.map((x) => Number(x.slice(3, 11)));
    expect(keysOf(await collect(db, { gt: key(5), lte: key(12) }))).toEqual([6, 7, 8, 9, 11, 12]);
    expect(keysOf(await collect(db, { gte: key(5), lt: key(12), reverse: true }))).toEqual([11, 9, 8, 7, 6, 5]);
    expect(keysOf(await collect(db, { reverse: true, limit: 3 }))).toEqual([99, 98, 97]);
    expect(keysOf(await collect(db, { limit: 0 }))).toEqual([]);
    expect((await collect(db)).length).toBe(100 - 10 + 4); // 0,30,60,90 rewritten after deletion

    const it = db.iterator({ gte: key(20), lt: key(40) });
    it.seek(key(25));
    expect(text(it.key())).toBe("key00000025");
    it.prev();
    expect(text(it.key())).toBe("key00000024");
    it.next();
    it.next();
    expect(text(it.key())).toBe("key00000026");
    it.seek(key(10)); // before the lower bound: clamps
    expect(text(it.key())).toBe("key00000021"); // 20 was deleted
    it.seek(key(50));
    expect(it.valid()).toBe(false);
    it.close();
    await expectCode(() => it.next(), "CLOSED");

    const rev = db.iterator({ reverse: true, lte: key(50) });
    rev.seek(key(40)); // deleted and not rewritten: the next key down
    expect(text(rev.key())).toBe("key00000039");
    rev.next();
    expect(text(rev.key())).toBe("key00000038");
    rev.prev();
    expect(text(rev.key())).toBe("key00000039");
    rev.close();
  });

  test("bad input, limits and use after close get typed errors", async () => {
    dir = tempDir("db");
    db = await DB.open(dir, { maxKeyBytes: 16, maxValueBytes: 32, maxBatchBytes: 2048 });
    await expectCode(db.put("k" as unknown as Uint8Array, bytes("v")), "INVALID_ARGUMENT");
    await expectCode(db.put(bytes("k"), 5 as unknown as Uint8Array), "INVALID_ARGUMENT");
    await expectCode(db.write([{ type: "bogus", key: bytes("k") } as never]), "INVALID_ARGUMENT");
    await expectCode(db.put(new Uint8Array(17), bytes("v")), "LIMIT");
    await expectCode(db.put(bytes("k"), new Uint8Array(33)), "LIMIT");
    const big = Array.from({ length: 100 }, (_, i) => ({ type: "put" as const, key: key(i), value: new Uint8Array(30) }));
    await expectCode(db.write(big), "LIMIT");
    expect(db.getSync(key(0))).toBeUndefined(); // a refused batch applies nothing
    await expectCode(() => db!.iterator({ gt: "a" as unknown as Uint8Array }), "INVALID_ARGUMENT");
    await expectCode(DB.open(dir, { memtableBytes: -1 }), "INVALID_ARGUMENT");
    const closed = db;
    await db.close();
    db = null;
    await closed.close(); // idempotent
    await expectCode(closed.put(bytes("a"), bytes("b")), "CLOSED");
    await expectCode(() => closed.getSync(bytes("a")), "CLOSED");
  });

  test("a directory opens once: same process and other processes are refused", async () => {
    dir = tempDir("db");
    db = await DB.open(dir);
    await expectCode(DB.open(dir), "LOCKED");
    const script = `import { DB } from ${JSON.stringify(path.resolve("src/lsm/index.ts"))};
      try { await DB.open(${JSON.stringify(dir)}); console.log("opened"); } catch (e) { console.log(e.code); }`;
    const child = Bun.spawnSync(["bun", "-e", script], { stdout: "pipe", stderr: "pipe" });
    expect(child.stdout.toString().trim()).toBe("LOCKED");
    await db.put(bytes("k"), bytes("v"));
    await db.close();
    db = await DB.open(dir);
    expect(text(db.getSync(bytes("k")))).toBe("v");
  });

  test("writes without the WAL: durable through flush(), sync() or close(); flushedSequence says how far", async () => {
    dir = tempDir("unlogged");
    db = await DB.open(dir, small);
    expect(db.flushedSequence).toBe(db.lastSequence);
    await db.write([{ type: "put", key: key(1), value: bytes("a") }], { wal: false });
    await db.write([{ type: "put", key: key(2), value: bytes("b") }]);
    expect(db.lastSequence).toBe(2);
    expect(db.flushedSequence).toBe(0);
    await expectCode(db.write([{ type: "put", key: key(3), value: bytes("c") }], { wal: false, sync: true }), "INVALID_ARGUMENT");
    await db.flush();
    expect(db.flushedSequence).toBe(2);
    expect(text(db.getSync(key(1)))).toBe("a");
    await db.write([{ type: "put", key: key(3), value: bytes("c") }], { wal: false });
    await db.sync(); // with writes outside the WAL in the memtable: a flush
    expect(db.flushedSequence).toBe(3);
    await db.write([{ type: "del", key: key(1) }], { wal: false });
    const closing = db.close(); // flushes what no WAL holds
    // A write after close() began is refused, never left behind unflushed.
    await expectCode(db.write([{ type: "put", key: key(4), value: bytes("d") }], { wal: false }), "CLOSED");
    await closing;
    db = await DB.open(dir, small);
    expect(db.getSync(key(4))).toBeUndefined();
    expect([db.getSync(key(1)), text(db.getSync(key(2))), text(db.getSync(key(3)))]).toEqual([undefined, "b", "c"]);
    expect(db.flushedSequence).toBe(4);
  });

  test("stats, approximateSize and sync", async () => {
    dir = tempDir("db");
    // Sizes below are of raw data: these values would compress to almost nothing.
    db = await DB.open(dir, { ...small, compression: "none" });
    const ops = [];
    for (let i = 0; i < 3000; i++) ops.push({ type: "put" as const, key: key(i), value: new Uint8Array(100).fill(i & 0xff) });
    await db.write(ops, { sync: true });
    await db.sync();
    await db.compactRange();
    const s = db.stats();
    expect(s.levels.length).toBe(7);
    expect(s.diskBytes).toBeGreaterThan(300_000);
    expect(s.writeAmplification).toBeGreaterThan(1);
    expect(s.lastSequence).toBe(3000);
    const whole = db.approximateSize(key(0), key(3000));
    const half = db.approximateSize(key(0), key(1500));
    expect(whole).toBeGreaterThan(300_000);
    expect(half).toBeGreaterThan(whole * 0.3);
    expect(half).toBeLessThan(whole * 0.7);
    expect(db.approximateSize(key(5000), key(6000))).toBe(0);
  });

  test("tables are mapped only within maxMappedBytes; the rest are read with pread", async () => {
    dir = tempDir("db");
    const budget = 150 * 1024;
    db = await DB.open(dir, { ...small, mmapTables: true, maxMappedBytes: budget, compression: "none" });
    for (let b = 0; b < 6000; b += 100) {
      const ops = [];
      for (let i = b; i < b + 100; i++) ops.push({ type: "put" as const, key: key(i), value: new Uint8Array(100).fill(i & 0xff) });
      await db.write(ops);
    }
    await db.compactRange();
    expect(db.stats().levels.reduce((n, l) => n + l.files, 0)).toBeGreaterThan(4);
    for (let i = 0; i < 6000; i += 7) expect(db.getSync(key(i))).toEqual(new Uint8Array(100).fill(i & 0xff));
    const s = db.stats();
    expect(s.openTables).toBeGreaterThan(4);
    expect(s.mappedTableBytes).toBeGreaterThan(0);
    expect(s.mappedTableBytes).toBeLessThanOrEqual(budget);
    expect(s.diskBytes).toBeGreaterThan(budget * 2); // so some tables were read with pread
    expect((await collect(db)).length).toBe(6000);
  });

  test("recovery truncates a torn WAL tail and warns", async () => {
    dir = tempDir("db");
    db = await DB.open(dir);
    await db.put(key(1), bytes("one"), { sync: true });
    await db.put(key(2), bytes("two"), { sync: true });
    // Simulate a crash: copy the live files away before close() flushes anything.
    const crashDir = tempDir("db-crash");
    for (const n of fs.readdirSync(dir)) if (n !== "LOCK") fs.copyFileSync(path.join(dir, n), path.join(crashDir, n));
    await db.close();
    db = null;
    removeDir(dir);
    dir = crashDir;
    const log = fs.readdirSync(dir).find((n) => n.endsWith(".log"))!;
    fs.truncateSync(path.join(dir, log), fs.statSync(path.join(dir, log)).size - 2);
    const { logger, messages } = collectingLogger();
    db = await DB.open(dir, { logger });
    expect(text(db.getSync(key(1)))).toBe("one");
    expect(db.getSync(key(2))).toBeUndefined();
    expect(messages.join("\n")).toContain(`${log}: truncated torn tail`);
  });
});
