// Large merges split in two key ranges that run on two worker threads at once
// (splitCompaction): the halves together must write exactly what one merge would.
import { afterEach, expect, test } from "bun:test";
import { splitCompaction, type Compaction } from "../../src/lsm/compaction.ts";
import { DB } from "../../src/lsm/index.ts";
import { fileMeta, type FileMeta } from "../../src/lsm/version.ts";
import { bytes, key, removeDir, rng, tempDir, text } from "./helpers.ts";

let dir = "";
let db: DB | null = null;
afterEach(async () => {
  await db?.close();
  db = null;
  if (dir) removeDir(dir);
  dir = "";
});

/** A table of `size` bytes holding user keys lo..hi (internal keys with seq 1, kind put). */
function table(number: number, size: number, lo: string, hi: string): FileMeta {
  const internal = (u: string): Uint8Array => {
    const b = new Uint8Array(u.length + 8);
    b.set(bytes(u));
    b[u.length] = 1;
    b[u.length + 1] = 1;
    return b;
  };
  return fileMeta(number, size, internal(lo), internal(hi));
}

test("a merge splits at a boundary between lower-level files, near half of their bytes", () => {
  const upper = [table(10, 3000, "a", "z"), table(11, 3000, "b", "y")];
  const lower = [table(1, 1000, "a", "c"), table(2, 1000, "d", "f"), table(3, 1000, "g", "i"), table(4, 1000, "j", "l")];
  const c: Compaction = { level: 0, inputs: [upper, lower], grandparentBytes: 0 };
  const halves = splitCompaction(c, 1000)!;
  expect(halves).not.toBeNull();
  expect(halves[0].begin).toBeNull();
  expect(text(halves[0].end!)).toBe("g");
  expect(text(halves[1].begin!)).toBe("g");
  expect(halves[1].end).toBeNull();
  // Too little input for four output tables, or one lower file only: one merge.
  expect(splitCompaction(c, 3000)).toBeNull();
  expect(splitCompaction({ level: 0, inputs: [upper, [lower[0]]], grandparentBytes: 0 }, 10)).toBeNull();
});

test("split merges keep every key's newest version, tombstones and snapshots (reopened too)", async () => {
  dir = tempDir("split");
  // Writes stop at L0 = 4: merges run split only after writers waited for one.
  const opts = {
    memtableBytes: 64 * 1024, targetFileSize: 16 * 1024, level1MaxBytes: 128 * 1024, blockCacheBytes: 256 * 1024,
    l0SlowdownTrigger: 4, l0StopTrigger: 4,
  };
  db = await DB.open(dir, opts);
  const r = rng(9);
  const model = new Map<number, string>();
  let snapModel: Map<number, string> | null = null;
  let snap: ReturnType<DB["snapshot"]> | null = null;
  for (let round = 0; round < 60; round++) {
    const ops = [];
    for (let i = 0; i < 200; i++) {
      const k = (r() * 4000) | 0;
      if (r() < 0.15) {
        ops.push({ type: "del" as const, key: key(k) });
        model.delete(k);
      } else {
        const v = `v${round}-${i}-${"x".repeat((r() * 150) | 0)}`;
        ops.push({ type: "put" as const, key: key(k), value: bytes(v) });
        model.set(k, v);
      }
    }
    await db.write(ops);
    if (round === 30) {
      snap = db.snapshot();
      snapModel = new Map(model);
    }
  }
  await db.compactRange();
  const s = db.stats();
  expect(s.splitCompactions).toBeGreaterThan(0);
  for (let k = 0; k < 4000; k++) expect(text(db.getSync(key(k)))).toBe(model.get(k));
  for (let k = 0; k < 4000; k += 3) expect(text(db.getSync(key(k), { snapshot: snap! }))).toBe(snapModel!.get(k));
  snap!.release();
  const expected = [...model.keys()].sort((a, b) => a - b).map((k) => `${text(key(k))}=${model.get(k)}`);
  const seen: string[] = [];
  for await (const [k, v] of db.iterator()) seen.push(`${text(k)}=${text(v)}`);
  expect(seen).toEqual(expected);
  await db.close();
  db = await DB.open(dir, opts);
  for (let k = 0; k < 4000; k++) expect(text(db.getSync(key(k)))).toBe(model.get(k));
});

test("closing while split merges run stops both halves and loses no acknowledged write", async () => {
  dir = tempDir("split-close");
  const opts = {
    memtableBytes: 64 * 1024, targetFileSize: 16 * 1024, level1MaxBytes: 128 * 1024, blockCacheBytes: 256 * 1024,
    l0SlowdownTrigger: 4, l0StopTrigger: 4,
  };
  const model = new Map<number, string>();
  const r = rng(11);
  let splits = 0;
  for (let round = 0; round < 3; round++) {
    db = await DB.open(dir, opts);
    for (let b = 0; b < 25; b++) {
      const ops = [];
      for (let i = 0; i < 200; i++) {
        const k = (r() * 4000) | 0;
        const v = `r${round}-${b}-${i}-${"y".repeat((r() * 150) | 0)}`;
        ops.push({ type: "put" as const, key: key(k), value: bytes(v) });
        model.set(k, v);
      }
      await db.write(ops);
    }
    splits += db.stats().splitCompactions;
    // Close right away: merges (split or not) in flight are aborted, their outputs discarded.
    await db.close();
    db = null;
  }
  db = await DB.open(dir, opts);
  for (let k = 0; k < 4000; k++) expect(text(db.getSync(key(k)))).toBe(model.get(k));
  expect(splits).toBeGreaterThan(0);
  await db.compactRange();
  for (let k = 0; k < 4000; k += 5) expect(text(db.getSync(key(k)))).toBe(model.get(k));
});
