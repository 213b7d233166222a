// Checkpoint + TableImporter: a database shipped as its table files plus memtable entries is
// rebuilt exactly as it stood at the checkpoint, while the source keeps writing and compacting;
// the importer refuses a table of the wrong length, entries out of order and overlapping levels.
import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { type Checkpoint, DB, LsmError, TableImporter, TableStreamVerifier } from "../../src/lsm/index.ts";
import { bytes, key, removeDir, tempDir, text } from "./helpers.ts";

const dirs: string[] = [];
function dir(): string {
  const d = tempDir("ckpt");
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) removeDir(d);
});

const small = { targetFileSize: 16 * 1024, blockSize: 1024, memtableBytes: 32 * 1024, logger: () => {} };

/** Ships a checkpoint into `target` as a snapshot transfer would: files in pieces, then entries. */
async function ship(checkpoint: Checkpoint, target: string, piece = 5000): Promise<{ db: DB; entries: number }> {
  const importer = await TableImporter.create(target, small);
  for (const f of checkpoint.files) {
    importer.beginFile(f);
    const data = fs.readFileSync(f.path);
    for (let at = 0; at < data.length; at += piece) {
      importer.writeFile(new Uint8Array(data.subarray(at, at + piece)));
      await importer.settle();
    }
    importer.endFile();
  }
  while (checkpoint.nextEntries(7, (k, seq, kind, v) => (importer.addEntry(k.slice(), seq, kind, v.slice()), true)) > 0);
  return { db: await importer.finish(checkpoint.seq), entries: importer.entries };
}

async function contents(db: DB, snapshot?: ReturnType<DB["snapshot"]>): Promise<[string, string][]> {
  const out: [string, string][] = [];
  for await (const [k, v] of db.iterator(snapshot ? { snapshot } : {})) out.push([text(k)!, text(v)!]);
  return out;
}

describe("checkpoint and import", () => {
  test("the imported database is the source at the checkpoint: tables of several levels, memtable puts and deletions", async () => {
    const source = await DB.open(path.join(dir(), "src"), small);
    try {
      for (let i = 0; i < 3000; i++) await source.put(key(i), bytes(`first-${i}`));
      await source.compactRange(null, null); // tables below level 0
      for (let i = 0; i < 3000; i += 3) await source.put(key(i), bytes(`second-${i}`));
      // The newest changes stay in the memtable: deletions of keys whose values lie in tables.
      for (let i = 1; i < 3000; i += 50) await source.del(key(i));
      await source.put(key(5000), bytes("only-in-memtable"));
      const levels = source.stats().levels.filter((l) => l.files > 0).length;
      expect(levels).toBeGreaterThan(1);

      const checkpoint = source.checkpoint();
      const expected = await contents(source, checkpoint.snapshot);
      // The source moves on: overwrites, deletes and a full compaction that obsoletes every pinned table.
      for (let i = 0; i < 3000; i += 2) await source.put(key(i), bytes(`later-${i}`));
      await source.del(key(5000));
      await source.compactRange(null, null);
      for (const f of checkpoint.files) expect(fs.existsSync(f.path)).toBe(true);

      const target = path.join(dir(), "dst");
      const { db: imported, entries } = await ship(checkpoint, target);
      checkpoint.release();
      expect(entries).toBeGreaterThan(0);
      try {
        expect(await contents(imported)).toEqual(expected);
        expect(text(imported.getSync(key(3)))).toBe("second-3");
        expect(imported.getSync(key(51))).toBeUndefined();
        expect(text(imported.getSync(key(5000)))).toBe("only-in-memtable");
        // Writes after the import take sequence numbers above the checkpoint's and win.
        await imported.put(key(3), bytes("after"));
        expect(text(imported.getSync(key(3)))).toBe("after");
      } finally {
        await imported.close();
      }
      const reopened = await DB.open(target, small);
      try {
        expect(text(reopened.getSync(key(3)))).toBe("after");
        expect(text(reopened.getSync(key(2998)))).toBe("first-2998");
        await reopened.compactRange(null, null);
        expect(reopened.getSync(key(51))).toBeUndefined();
        expect(text(reopened.getSync(key(5000)))).toBe("only-in-memtable");
      } finally {
        await reopened.close();
      }
      // Released: the tables only the checkpoint held are deleted by the source's next cleanup.
      await source.compactRange(null, null);
      const live = new Set(fs.readdirSync(source.dir));
      expect(checkpoint.files.some((f) => !live.has(path.basename(f.path)))).toBe(true);
    } finally {
      await source.close();
    }
  });

  test("a table gone bad at the source is caught by the sender's check, block by block, and a junk table by the importer", async () => {
    const source = await DB.open(path.join(dir(), "src"), small);
    try {
      for (let i = 0; i < 2000; i++) await source.put(key(i), bytes(`value-${i}`.repeat(3)));
      await source.compactRange(null, null);
      const checkpoint = source.checkpoint();
      try {
        const file = checkpoint.files[0]!;
        const verify = (data: Uint8Array) => {
          const verifier = TableStreamVerifier.open(file.path, "t.sst", file.size);
          for (let at = 0; at < data.length; at += 777) verifier.update(data.subarray(at, at + 777));
          verifier.finish();
        };
        const good = new Uint8Array(fs.readFileSync(file.path));
        verify(good);
        for (const at of [10, Math.floor(good.length / 3), good.length - 100, good.length - 20]) {
          const bad = good.slice();
          bad[at]! ^= 0x10;
          expect(() => verify(bad)).toThrow(/checksum mismatch/);
        }
      } finally {
        checkpoint.release();
      }
    } finally {
      await source.close();
    }
    const junk = await TableImporter.create(path.join(dir(), "junk"), small);
    junk.beginFile({ level: 1, number: 9, size: 100, smallest: internal("a"), largest: internal("b") });
    junk.writeFile(new Uint8Array(100));
    junk.endFile();
    await expect(junk.finish(10)).rejects.toThrow(/magic|corrupt/i);
  });

  test("refuses a table shorter or longer than announced, entries out of order, and overlapping tables of a level", async () => {
    const meta = { level: 1, number: 7, size: 100, smallest: internal("a"), largest: internal("c") };
    const short = await TableImporter.create(path.join(dir(), "a"), small);
    short.beginFile(meta);
    short.writeFile(new Uint8Array(60));
    expect(() => short.endFile()).toThrow(/ended after 60 of its 100 bytes/);
    await short.abort();

    const long = await TableImporter.create(path.join(dir(), "b"), small);
    long.beginFile(meta);
    expect(() => long.writeFile(new Uint8Array(101))).toThrow(/longer than its 100 bytes/);
    await long.abort();

    const unordered = await TableImporter.create(path.join(dir(), "c"), small);
    unordered.addEntry(bytes("b"), 5, 1, bytes("x"));
    expect(() => unordered.addEntry(bytes("a"), 6, 1, bytes("y"))).toThrow(LsmError);
    await unordered.abort();

    const overlapping = await TableImporter.create(path.join(dir(), "d"), small);
    for (const [number, lo, hi] of [[7, "a", "m"], [8, "k", "z"]] as const) {
      overlapping.beginFile({ level: 2, number, size: 10, smallest: internal(lo), largest: internal(hi) });
      overlapping.writeFile(new Uint8Array(10));
      overlapping.endFile();
    }
    await expect(overlapping.finish(100)).rejects.toThrow(/overlap in level 2/);

    const repeated = await TableImporter.create(path.join(dir(), "e"), small);
    repeated.beginFile({ ...meta, size: 1 });
    repeated.writeFile(new Uint8Array(1));
    repeated.endFile();
    expect(() => repeated.beginFile({ ...meta, size: 1 })).toThrow(/invalid or repeated/);
    await repeated.abort();
  });
});

/** An internal key: the user key and an 8-byte trailer (kind put, sequence 1). */
function internal(user: string): Uint8Array {
  const out = new Uint8Array(user.length + 8);
  out.set(bytes(user));
  out[user.length] = 1;
  out[user.length + 1] = 1;
  return out;
}
