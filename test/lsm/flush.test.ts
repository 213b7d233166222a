// A memtable flush as the table worker runs it: batches in, one table out, entries in internal
// key order (user key as unsigned bytes, newest first) whatever the keys look like.
import { afterEach, expect, test } from "bun:test";
import * as path from "node:path";
import { BATCH_HEADER, encodeBatch, opSize, setBatchSeq, type BatchOp } from "../../src/lsm/batch.ts";
import { BlockCache } from "../../src/lsm/cache.ts";
import { compareBytes, KIND_DEL, KIND_PUT } from "../../src/lsm/coding.ts";
import { tableFileName } from "../../src/lsm/manifest.ts";
import { flushBatches } from "../../src/lsm/table-jobs.ts";
import { TableReader } from "../../src/lsm/sstable.ts";
import { Memtable } from "../../src/lsm/memtable.ts";
import { key, removeDir, rng, tempDir, text } from "./helpers.ts";

let dir = "";
afterEach(() => {
  if (dir) removeDir(dir);
  dir = "";
});

test("flushed batches come out sorted by unsigned key bytes then newest first, with every version", async () => {
  dir = tempDir("flush");
  const r = rng(3);
  const written: { key: Uint8Array; seq: number; kind: number; value: Uint8Array }[] = [];
  const batches: Uint8Array[] = [];
  let seq = 1;
  let pool: Uint8Array[] = [];
  for (let b = 0; b < 30; b++) {
    const ops: BatchOp[] = [];
    for (let i = 0; i < 40; i++) {
      // Keys around the 18 bytes compared as numbers, from bytes {0, 1, 0xff}, often repeated
      // (several versions per key) or extended by zero bytes (prefixes of each other).
      let key: Uint8Array;
      if (pool.length > 0 && r() < 0.3) key = pool[(r() * pool.length) | 0];
      else {
        key = new Uint8Array((r() * 24) | 0);
        for (let j = 0; j < key.length; j++) key[j] = [0, 1, 0xff][(r() * 3) | 0];
        if (r() < 0.2) key = Uint8Array.from([...key, 0]);
        pool.push(key);
      }
      if (r() < 0.2) ops.push({ type: "del", key });
      else ops.push({ type: "put", key, value: Uint8Array.of(b, i) });
    }
    let size = BATCH_HEADER;
    for (const op of ops) size += opSize(op.key, op.type === "put" ? op.value : null);
    const encoded = encodeBatch(ops, size);
    setBatchSeq(encoded, seq);
    ops.forEach((op, i) =>
      written.push({ key: op.key, seq: seq + i, kind: op.type === "put" ? KIND_PUT : KIND_DEL, value: op.type === "put" ? op.value : new Uint8Array(0) }),
    );
    seq += ops.length;
    batches.push(encoded);
  }
  pool = [];
  const all = new Uint8Array(batches.reduce((n, b) => n + b.length, 0));
  const ends: number[] = [];
  let end = 0;
  for (const b of batches) {
    all.set(b, end);
    end += b.length;
    ends.push(end);
  }
  const table = { blockSize: 512, restartInterval: 4, bloomBitsPerKey: 10, compression: "lz4" as const };
  const result = await flushBatches({ type: "flush", id: 1, dir, number: 7, batches: all, batchEnds: ends, table });
  expect(result.file).not.toBeNull();
  const expected = written
    .slice()
    .sort((a, b) => compareBytes(a.key, b.key) || b.seq - a.seq)
    .map((e) => `${[...e.key].join(".")}@${e.seq}/${e.kind}=${[...e.value].join(".")}`);
  // Every read mode sees the same entries: pread per block, pread in chunks smaller and larger
  // than a block (compaction input), and the memory map (whose release reports its size once).
  const unmapped: number[] = [];
  const modes = [{ mmap: false }, { mmap: false, readaheadBytes: 300 }, { mmap: false, readaheadBytes: 64 * 1024 }, { mmap: true, onUnmap: (n: number) => unmapped.push(n) }];
  for (const mode of modes) {
    const reader = TableReader.open(path.join(dir, tableFileName(7)), tableFileName(7), 7, result.file!.size, new BlockCache(0), mode);
    const it = reader.iterator(false);
    const got: string[] = [];
    for (it.seekToFirst(); it.valid(); it.next()) got.push(`${[...it.key()].join(".")}@${it.seq()}/${it.kind()}=${[...it.value()].join(".")}`);
    it.close();
    reader.release();
    expect(got).toEqual(expected);
  }
  expect(unmapped).toEqual([result.file!.size]);
});

test("a memtable's order spares the sort; a wrong or partial order is ignored, never trusted", async () => {
  dir = tempDir("flush");
  const r = rng(5);
  const mem = new Memtable(1);
  const batches: Uint8Array[] = [];
  let seq = 1;
  for (let b = 0; b < 8; b++) {
    const ops: BatchOp[] = [];
    for (let i = 0; i < 50; i++) ops.push({ type: "put", key: key((r() * 200) | 0), value: Uint8Array.of(b, i) });
    let size = BATCH_HEADER;
    for (const op of ops) size += opSize(op.key, op.type === "put" ? op.value : null);
    const encoded = encodeBatch(ops, size);
    setBatchSeq(encoded, seq);
    mem.addBatch(encoded, seq, ops.length, BATCH_HEADER);
    seq += ops.length;
    batches.push(encoded);
  }
  const order = mem.sortedBatchPositions()!;
  expect(order.length).toBe(400);
  const all = new Uint8Array(batches.reduce((n, b) => n + b.length, 0));
  const ends: number[] = [];
  let end = 0;
  for (const b of batches) {
    all.set(b, end);
    end += b.length;
    ends.push(end);
  }
  const expected: string[] = [];
  const mi = mem.iterator();
  for (mi.seekToFirst(); mi.valid(); mi.next()) expected.push(`${text(mi.key())}@${mi.seq()}=${[...mi.value()].join(".")}`);
  const table = { blockSize: 512, restartInterval: 4, bloomBitsPerKey: 10, compression: "lz4" as const };
  const variants: (Int32Array | undefined)[] = [
    order,
    undefined,
    order.slice().reverse(), // a permutation, not sorted
    new Int32Array(400), // not a permutation
    order.slice(0, 10), // too short
  ];
  for (const [v, given] of variants.entries()) {
    const number = 20 + v;
    const result = await flushBatches({ type: "flush", id: 1, dir, number, batches: all.slice(), batchEnds: ends, order: given, table });
    const reader = TableReader.open(path.join(dir, tableFileName(number)), tableFileName(number), number, result.file!.size, new BlockCache(0), { mmap: false });
    const it = reader.iterator(false);
    const got: string[] = [];
    for (it.seekToFirst(); it.valid(); it.next()) got.push(`${text(it.key())}@${it.seq()}=${[...it.value()].join(".")}`);
    it.close();
    reader.release();
    expect(got).toEqual(expected);
  }
  // A memtable with a row added one by one (not from a batch) has no batch order to offer.
  mem.add(key(999), seq, KIND_PUT, Uint8Array.of(1));
  expect(mem.sortedBatchPositions()).toBeNull();
});
