// Block compression: the LZ4 codec round-trips every shape of input, tables store blocks that do
// not shrink raw, tables written before compression (a committed fixture) stay readable, and a
// damaged compressed block is reported with its file and offset, never served.
import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { BlockIterator } from "../../src/lsm/block.ts";
import { readU32 } from "../../src/lsm/coding.ts";
import { BLOCK_LZ4, BLOCK_RAW, BLOCK_ZSTD, lz4Compress, lz4Decompress, maxCompressedLength } from "../../src/lsm/compression.ts";
import { DB, LsmError } from "../../src/lsm/index.ts";
import { BLOCK_CODEC_MASK, BLOCK_CRC32, blockTrailerCrc } from "../../src/lsm/block-checksum.ts";
import { bytes, key, removeDir, rng, tempDir, text } from "./helpers.ts";

let dirs: string[] = [];
afterEach(() => {
  for (const d of dirs) removeDir(d);
  dirs = [];
});

function dir(tag: string): string {
  const d = tempDir(tag);
  dirs.push(d);
  return d;
}

function roundTrip(src: Uint8Array): number {
  const out = new Uint8Array(maxCompressedLength(src.length) + 7);
  const end = lz4Compress(src, 0, src.length, out, 7);
  expect(end - 7).toBeLessThanOrEqual(maxCompressedLength(src.length));
  expect(lz4Decompress(out, 7, end)).toEqual(src);
  return end - 7;
}

/** The data blocks of a table file: [offset, size, codec, CRC-32 trailer?] from its index block. */
function dataBlocks(file: string): [number, number, number, boolean][] {
  const data = new Uint8Array(fs.readFileSync(file));
  const footer = data.length - 40;
  const indexOffset = readU32(data, footer);
  const indexSize = readU32(data, footer + 8);
  const it = new BlockIterator(data.subarray(indexOffset, indexOffset + indexSize));
  const out: [number, number, number, boolean][] = [];
  for (it.seekToFirst(); it.valid(); it.next()) {
    it.decodeHandle();
    const type = data[it.handleOffset + it.handleSize];
    out.push([it.handleOffset, it.handleSize, type & BLOCK_CODEC_MASK, (type & BLOCK_CRC32) !== 0]);
  }
  return out;
}

function ssts(d: string): string[] {
  return fs.readdirSync(d).filter((n) => n.endsWith(".sst"));
}

function caught(fn: () => unknown): LsmError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(LsmError);
    return e as LsmError;
  }
  throw new Error("expected an LsmError");
}

describe("lz4 codec", () => {
  test("round-trips empty, tiny, random, repetitive and overlapping inputs", () => {
    const r = rng(7);
    for (const n of [0, 1, 4, 11, 12, 13, 15, 16, 17, 64, 270, 271, 4096, 70_000]) {
      const random = new Uint8Array(n).map(() => Math.floor(r() * 256));
      const zeros = new Uint8Array(n);
      const period3 = new Uint8Array(n).map((_, i) => i % 3); // matches overlap their source
      const halves = new Uint8Array(n).map((_, i) => (i % 100 < 50 ? Math.floor(r() * 95) + 32 : 0));
      for (let i = 50; i < n; i++) if (i % 100 >= 50) halves[i] = halves[i - 50];
      roundTrip(random);
      const z = roundTrip(zeros);
      roundTrip(period3);
      roundTrip(halves);
      if (n >= 4096) expect(z).toBeLessThan(n / 100);
    }
  });

  test("a malformed stream is an error, never a read out of bounds", () => {
    const src = new Uint8Array(2000).map((_, i) => (i * 13) % 7);
    const out = new Uint8Array(maxCompressedLength(src.length));
    const end = lz4Compress(src, 0, src.length, out, 0);
    for (let cut = 1; cut < end; cut += 3) expect(() => lz4Decompress(out, 0, cut)).toThrow();
    const streams = [
      [10, 0x00, 5, 0], // a match that starts before the output
      [10, 0x10, 7, 0, 0], // a zero match offset
      [3, 0x40, 1, 2, 3, 4], // more literals than the stated length
      [10, 0xf0], // a literal length cut off
      [4, 0x10, 9, 1, 0, 7], // a match longer than the rest of the output
      [0x80, 0x80, 0x80, 0x80, 0x80, 0x01], // an uncompressed length varint too long
    ];
    for (const s of streams) expect(() => lz4Decompress(new Uint8Array(s), 0, s.length)).toThrow();
  });
});

describe("compressed tables", () => {
  for (const compression of ["lz4", "zstd", "none"] as const) {
    test(`${compression}: values read back through flush, compaction and reopen; incompressible blocks stay raw`, async () => {
      const d = dir(`compress-${compression}`);
      let db = await DB.open(d, { compression, blockSize: 1024 });
      const r = rng(3);
      const expected = new Map<string, Uint8Array>();
      const ops = [];
      for (let i = 0; i < 3000; i++) {
        // Keys below 1500 hold random bytes (no block of them shrinks), the rest repeat.
        const v = i < 1500 ? new Uint8Array(100).map(() => Math.floor(r() * 256)) : bytes(`value ${i} `.repeat(8));
        expected.set(text(key(i))!, v);
        ops.push({ type: "put" as const, key: key(i), value: v });
      }
      await db.write(ops);
      await db.compactRange();
      const files = ssts(d);
      expect(files.length).toBeGreaterThan(0);
      const types = new Set<number>();
      let rawBlocksOfRandomKeys = 0;
      for (const f of files) {
        for (const [, , type] of dataBlocks(path.join(d, f))) types.add(type);
      }
      const want = compression === "lz4" ? BLOCK_LZ4 : compression === "zstd" ? BLOCK_ZSTD : BLOCK_RAW;
      expect(types.has(want)).toBe(true);
      for (const t of types) expect([BLOCK_RAW, want]).toContain(t);
      if (compression !== "none") {
        // The random half is in raw blocks: the first blocks of the first table hold keys 0...
        const first = files.sort()[0];
        rawBlocksOfRandomKeys = dataBlocks(path.join(d, first)).filter(([, , t]) => t === BLOCK_RAW).length;
        expect(rawBlocksOfRandomKeys).toBeGreaterThan(0);
        expect(db.stats().compression.storedDataBytes).toBeLessThan(db.stats().compression.rawDataBytes);
      }
      await db.close();
      db = await DB.open(d, { compression: "none" }); // the codec is per block: any setting reads all
      for (const [k, v] of expected) expect(db.getSync(bytes(k))).toEqual(v);
      let n = 0;
      for await (const [k, v] of db.iterator()) {
        expect(v).toEqual(expected.get(text(k)!)!);
        n++;
      }
      expect(n).toBe(3000);
      await db.close();
    });
  }

  // Raw blocks (stored uncompressed, mapped or read with pread) go through the same pool.
  test.each([
    { compression: "lz4" as const, mmapTables: true },
    { compression: "none" as const, mmapTables: true },
    { compression: "none" as const, mmapTables: false },
  ])("decoded blocks are recycled once evicted, never while an iterator is on them (%o)", async (opts) => {
    const d = dir("recycle");
    // A cache of ~60 of ~450 blocks: most reads evict one, and its buffer is reused at once.
    const db = await DB.open(d, { blockSize: 1024, blockCacheBytes: 64 * 1024, ...opts });
    const value = (i: number): Uint8Array => bytes(`value ${i} `.repeat(10));
    const ops = [];
    for (let i = 0; i < 4000; i++) ops.push({ type: "put" as const, key: key(i), value: value(i) });
    await db.write(ops);
    await db.compactRange();
    const r = rng(11);
    const it = db.iterator();
    let i = 0;
    for (const [k, v] of it.nextv(4000) as [Uint8Array, Uint8Array][]) {
      // nextv copies: also walk a second, stepwise iterator whose views live in cached blocks.
      expect(text(k)).toBe(text(key(i)));
      expect(v).toEqual(value(i));
      i++;
    }
    it.close();
    const stepwise = db.iterator();
    for (let n = 0; n < 4000; n++) {
      const entry = stepwise.read();
      expect(entry).toBeDefined();
      // Enough misses between two steps to evict the iterator's block (~9 entries) many times.
      for (let g = 0; g < (n < 300 ? 150 : 1); g++) {
        const j = Math.floor(r() * 4000);
        expect(db.getSync(key(j))).toEqual(value(j));
      }
      expect(text(entry![0])).toBe(text(key(n)));
      expect(entry![1]).toEqual(value(n));
    }
    stepwise.close();
    expect(db.stats().blockCache.misses).toBeGreaterThan(4000);
    await db.close();
  });

  test("a level iterator rebound from table to table by random seeks reads each table's own entries", async () => {
    const d = dir("rebind");
    // Small tables: a random seek usually lands in another file of the level, reusing the iterator.
    const db = await DB.open(d, { blockSize: 1024, blockCacheBytes: 32 * 1024, targetFileSize: 16 * 1024, memtableBytes: 64 * 1024 });
    const value = (i: number): Uint8Array => bytes(`value ${i} `.repeat(6));
    for (let b = 0; b < 5000; b += 500) {
      const ops = [];
      for (let i = b; i < b + 500; i++) ops.push({ type: "put" as const, key: key(2 * i), value: value(2 * i) });
      await db.write(ops);
    }
    await db.compactRange();
    expect(db.stats().levels.reduce((n: number, l: { files: number }) => n + l.files, 0)).toBeGreaterThanOrEqual(8);
    const r = rng(17);
    const it = db.iterator();
    for (let s = 0; s < 2000; s++) {
      const target = Math.floor(r() * 10_000);
      it.seek(key(target));
      const first = target + (target % 2); // the next even key at or after the target
      const got = it.nextv(3);
      for (let j = 0; j < got.length; j++) {
        expect(text(got[j][0])).toBe(text(key(first + 2 * j)));
        expect(got[j][1]).toEqual(value(first + 2 * j));
      }
      expect(got.length).toBe(Math.min(3, Math.max(0, (10_000 - first) / 2)));
      // Point reads between seeks evict blocks the iterator was on.
      for (let g = 0; g < 5; g++) {
        const j = 2 * Math.floor(r() * 5000);
        expect(db.getSync(key(j))).toEqual(value(j));
      }
    }
    it.close();
    await db.close();
  });

  test("a merge on the main thread keeps the cached blocks it reads while point reads evict them", async () => {
    const d = dir("recycle-merge");
    // No worker: the merge reads tables through the shared cache, in slices between reads.
    const db = await DB.open(d, { backgroundThread: false, blockSize: 1024, blockCacheBytes: 64 * 1024, memtableBytes: 64 * 1024 });
    const value = (i: number, round: number): Uint8Array => bytes(`value ${i} ${round} `.repeat(8));
    const r = rng(13);
    for (let round = 0; round < 2; round++) {
      const ops = [];
      for (let i = 0; i < 3000; i++) ops.push({ type: "put" as const, key: key(i), value: value(i, round) });
      await db.write(ops);
      // Warm the cache with every table's blocks, so the merge finds them there.
      for (let i = 0; i < 3000; i += 3) db.getSync(key(i));
    }
    let reading = true;
    const reader = (async () => {
      while (reading) {
        for (let g = 0; g < 200; g++) db.getSync(key(Math.floor(r() * 3000)));
        await new Promise((resolve) => setImmediate(resolve));
      }
    })();
    await db.compactRange();
    reading = false;
    await reader;
    for (let i = 0; i < 3000; i++) expect(db.getSync(key(i))).toEqual(value(i, 1));
    await db.close();
  });

  test("a database written before block compression opens, reads and compacts", async () => {
    const d = dir("old-format");
    const fixture = path.join(import.meta.dir, "fixtures", "uncompressed-db");
    for (const f of fs.readdirSync(fixture)) fs.copyFileSync(path.join(fixture, f), path.join(d, f));
    // Written before compression and before CRC-32 trailers: raw blocks under CRC-32C.
    for (const f of ssts(d)) {
      for (const [, , type, crc32] of dataBlocks(path.join(d, f))) {
        expect(type).toBe(BLOCK_RAW);
        expect(crc32).toBe(false);
      }
    }
    const value = (i: number): string => `value ${i} `.repeat(6);
    const name = (i: number): Uint8Array => bytes(`key${String(i).padStart(5, "0")}`);
    const db = await DB.open(d);
    for (let i = 0; i < 300; i++) expect(text(db.getSync(name(i)))).toBe(i === 7 ? undefined : value(i));
    await db.put(name(150), bytes("new"));
    await db.compactRange(); // merges into the old table's range: rewritten with compressed blocks
    const blocks = ssts(d).flatMap((f) => dataBlocks(path.join(d, f)));
    expect(blocks.some(([, , t]) => t === BLOCK_LZ4)).toBe(true);
    expect(blocks.every(([, , , crc32]) => crc32)).toBe(true); // rewritten tables: CRC-32 trailers
    for (let i = 0; i < 300; i++) expect(text(db.getSync(name(i)))).toBe(i === 7 ? undefined : i === 150 ? "new" : value(i));
    await db.close();
  });

  test("a flipped byte in a compressed block is a checksum error naming file and offset", async () => {
    const d = dir("corrupt-lz4");
    let db = await DB.open(d);
    const ops = [];
    for (let i = 0; i < 2000; i++) ops.push({ type: "put" as const, key: key(i), value: bytes(`value-${i}-${"z".repeat(50)}`) });
    await db.write(ops);
    await db.compactRange();
    await db.close();
    const [name] = ssts(d);
    const file = path.join(d, name);
    const blocks = dataBlocks(file);
    const [offset, size, type] = blocks[1];
    expect(type).toBe(BLOCK_LZ4);
    const data = fs.readFileSync(file);
    data[offset + (size >>> 1)] ^= 0x10;
    fs.writeFileSync(file, data);
    db = await DB.open(d);
    const firstKeyOfBlock = (() => {
      // Keys are dense: find one that lands in the damaged block by reading until one fails.
      for (let i = 0; i < 2000; i++) {
        try {
          db.getSync(key(i));
        } catch {
          return i;
        }
      }
      return -1;
    })();
    expect(firstKeyOfBlock).toBeGreaterThan(0);
    const err = caught(() => db.getSync(key(firstKeyOfBlock)));
    expect(err.code).toBe("CORRUPTION");
    expect(err.file).toBe(name);
    expect(err.offset).toBe(offset);
    expect(err.message).toContain("checksum mismatch");
    expect(text(db.getSync(key(0)))).toBe(`value-0-${"z".repeat(50)}`); // other blocks fine
    await db.close();
  });

  test("a compressed block that passes its checksum but does not decode is corruption, not a crash", async () => {
    const d = dir("corrupt-decode");
    let db = await DB.open(d);
    const ops = [];
    for (let i = 0; i < 500; i++) ops.push({ type: "put" as const, key: key(i), value: bytes(`value-${i}-${"z".repeat(50)}`) });
    await db.write(ops);
    await db.compactRange();
    await db.close();
    const [name] = ssts(d);
    const file = path.join(d, name);
    const [offset, size, type] = dataBlocks(file)[0];
    expect(type).toBe(BLOCK_LZ4);
    const data = new Uint8Array(fs.readFileSync(file));
    data[offset + 1] = 0xff; // the first token: 15+ literals and a long match, past the block
    data[offset + 2] = 0xff;
    const masked = blockTrailerCrc(data[offset + size]!, data, offset, offset + size + 1);
    data[offset + size + 1] = masked & 0xff;
    data[offset + size + 2] = (masked >>> 8) & 0xff;
    data[offset + size + 3] = (masked >>> 16) & 0xff;
    data[offset + size + 4] = masked >>> 24;
    fs.writeFileSync(file, data);
    db = await DB.open(d);
    const err = caught(() => db.getSync(key(0)));
    expect(err.code).toBe("CORRUPTION");
    expect(err.file).toBe(name);
    expect(err.offset).toBe(offset);
    expect(err.message).toContain("does not decompress");
    await db.close();
  });
});
