// Block trailers under both checksums: new tables carry native CRC-32 (flag bit in the type byte),
// tables written before it carry CRC-32C and still read, verify, ship and compact; a flipped byte
// is a loud CORRUPTION under either, at a point read and in the snapshot sender's stream check.
import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { BLOCK_CODEC_MASK, BLOCK_CRC32, type BlockChecksum } from "../../src/lsm/block-checksum.ts";
import { bloomHash } from "../../src/lsm/bloom.ts";
import { BlockCache } from "../../src/lsm/cache.ts";
import { KIND_PUT } from "../../src/lsm/coding.ts";
import { DB, LsmError, TableStreamVerifier } from "../../src/lsm/index.ts";
import { TableBuilder, TableReader, type TableGetResult } from "../../src/lsm/sstable.ts";
import { crc32cUpdate, maskCrc } from "../../src/util/crc32c.ts";
import { bytes, key, removeDir, tempDir, text } from "./helpers.ts";

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

const value = (i: number): Uint8Array => bytes(`value-${i}-${"abcdefgh".repeat(1 + (i % 9))}`);

async function buildTable(file: string, checksum: BlockChecksum | undefined, n: number): Promise<number> {
  const b = new TableBuilder(file, path.basename(file), { blockSize: 1024, restartInterval: 16, bloomBitsPerKey: 10, compression: "lz4", checksum });
  for (let i = 0; i < n; i++) b.add(key(i), 5, KIND_PUT, value(i));
  return (await b.finish()).fileSize;
}

/** Every block of a table, data blocks first: [offset, stored size]. */
function handles(file: string): [number, number][] {
  const r = TableReader.open(file, path.basename(file), 1, fs.statSync(file).size, new BlockCache(0), { mmap: false });
  try {
    return r.blockHandles();
  } finally {
    r.release();
  }
}

/** Rewrites every block trailer of `file` as the format before CRC-32 wrote it: flag clear, CRC-32C. */
function downgrade(file: string): void {
  const data = new Uint8Array(fs.readFileSync(file));
  for (const [offset, size] of handles(file)) {
    data[offset + size] = data[offset + size]! & BLOCK_CODEC_MASK;
    const masked = maskCrc(crc32cUpdate(0, data, offset, offset + size + 1));
    new DataView(data.buffer).setUint32(offset + size + 1, masked, true);
  }
  fs.writeFileSync(file, data);
}

function trailerKinds(file: string): Set<string> {
  const data = fs.readFileSync(file);
  return new Set(handles(file).map(([offset, size]) => ((data[offset + size]! & BLOCK_CRC32) !== 0 ? "crc32" : "crc32c")));
}

function streamVerify(file: string, data: Uint8Array): void {
  const v = TableStreamVerifier.open(file, path.basename(file), data.length);
  for (let at = 0; at < data.length; at += 333) v.update(data.subarray(at, at + 333));
  v.finish();
}

function caught(f: () => unknown): LsmError {
  try {
    f();
  } catch (e) {
    if (e instanceof LsmError) return e;
    throw e;
  }
  throw new Error("expected an LsmError");
}

describe("block checksums", () => {
  test("a table with CRC-32C trailers (the older format) reads and verifies, and is a new table with only its trailers changed", async () => {
    const d = dir("legacy-table");
    const n = 3000;
    const oldFile = path.join(d, "000001.sst");
    const newFile = path.join(d, "000002.sst");
    await buildTable(oldFile, "crc32c", n);
    await buildTable(newFile, undefined, n);
    expect(trailerKinds(oldFile)).toEqual(new Set(["crc32c"]));
    expect(trailerKinds(newFile)).toEqual(new Set(["crc32"]));
    downgrade(newFile);
    expect(fs.readFileSync(newFile).equals(fs.readFileSync(oldFile))).toBe(true);

    const r = TableReader.open(oldFile, "000001.sst", 1, fs.statSync(oldFile).size, new BlockCache(1 << 20), { mmap: false });
    const out: TableGetResult = { kind: 0, value: new Uint8Array(0) };
    for (let i = 0; i < n; i++) {
      expect(r.get(key(i), 10, bloomHash(key(i)), out)).toBe(true);
      expect(text(out.value)).toBe(text(value(i)));
    }
    r.release();
    streamVerify(oldFile, new Uint8Array(fs.readFileSync(oldFile)));
  });

  for (const checksum of ["crc32", "crc32c"] as const) {
    test(`a flipped byte under ${checksum} is CORRUPTION at a point read and in the stream check`, async () => {
      const d = dir(`flip-${checksum}`);
      const file = path.join(d, "000003.sst");
      const size = await buildTable(file, checksum, 2000);
      const good = new Uint8Array(fs.readFileSync(file));
      streamVerify(file, good);
      const [offset, stored] = handles(file)[2]!;
      for (const at of [offset, offset + (stored >>> 1), offset + stored, offset + stored + 3]) {
        const bad = good.slice();
        bad[at]! ^= 0x04; // contents, type byte (the flag's neighbour bit) and the stored CRC
        expect(() => streamVerify(file, bad)).toThrow(/block checksum mismatch/);
        fs.writeFileSync(file, bad);
        const r = TableReader.open(file, "000003.sst", 3, size, new BlockCache(1 << 20), { mmap: false });
        const out: TableGetResult = { kind: 0, value: new Uint8Array(0) };
        let err: LsmError | null = null;
        for (let i = 0; i < 2000 && err === null; i++) {
          try {
            r.get(key(i), 10, bloomHash(key(i)), out);
          } catch (e) {
            err = e as LsmError;
          }
        }
        r.release();
        expect(err?.code).toBe("CORRUPTION");
        expect(err?.offset).toBe(offset);
        expect(err?.message).toContain("block checksum mismatch");
      }
      // The flag bit itself: a CRC-32 block read as CRC-32C (or the reverse) must not pass.
      const flipped = good.slice();
      flipped[offset + stored]! ^= BLOCK_CRC32;
      expect(() => streamVerify(file, flipped)).toThrow(/block checksum mismatch/);
    });
  }

  test("a database whose tables have CRC-32C trailers opens, reads, streams its checkpoint and compacts into CRC-32 tables", async () => {
    const d = dir("legacy-db");
    let db = await DB.open(d);
    for (let i = 0; i < 4000; i += 500) {
      const ops = [];
      for (let j = i; j < i + 500; j++) ops.push({ type: "put" as const, key: key(j), value: value(j) });
      await db.write(ops);
      await db.flush();
    }
    await db.close();
    const tables = () => fs.readdirSync(d).filter((f) => f.endsWith(".sst")).map((f) => path.join(d, f));
    for (const f of tables()) downgrade(f);
    for (const f of tables()) expect(trailerKinds(f)).toEqual(new Set(["crc32c"]));

    db = await DB.open(d);
    for (let i = 0; i < 4000; i++) expect(text(db.getSync(key(i)))).toBe(text(value(i)));
    const checkpoint = db.checkpoint();
    try {
      for (const f of checkpoint.files) streamVerify(f.path, new Uint8Array(fs.readFileSync(f.path)));
    } finally {
      checkpoint.release();
    }
    for (let i = 7; i < 4000; i += 500) await db.put(key(i), bytes("new")); // overlaps every table
    await db.compactRange();
    for (const f of tables()) expect(trailerKinds(f)).toEqual(new Set(["crc32"]));
    for (let i = 0; i < 4000; i++) expect(text(db.getSync(key(i)))).toBe(i % 500 === 7 ? "new" : text(value(i)));
    await db.close();

    // A damaged old-format block is still found on a read after reopening.
    const [file] = tables();
    downgrade(file!);
    const data = new Uint8Array(fs.readFileSync(file!));
    const [offset, stored] = handles(file!)[0]!;
    data[offset + (stored >>> 1)]! ^= 0x01;
    fs.writeFileSync(file!, data);
    db = await DB.open(d);
    const err = caught(() => db.getSync(key(0)));
    expect(err.code).toBe("CORRUPTION");
    expect(err.offset).toBe(offset);
    expect(err.message).toContain("block checksum mismatch");
    await db.close();
  });
});
