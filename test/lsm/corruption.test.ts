// Damage on disk is detected and never served: a flipped byte in a table's data block fails the
// reads that touch it (naming file and block offset); one in the middle of the WAL fails open.
import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { DB, LsmError } from "../../src/lsm/index.ts";
import { readLog } from "../../src/lsm/wal.ts";
import { bytes, key, removeDir, tempDir, text } from "./helpers.ts";

let dirs: string[] = [];
afterEach(() => {
  for (const d of dirs) removeDir(d);
  dirs = [];
});

function caught(fn: () => unknown): LsmError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(LsmError);
    return e as LsmError;
  }
  throw new Error("expected an LsmError");
}

describe("corruption", () => {
  test("a block that goes bad on disk after it was read and cached is never served from a mapped table", async () => {
    const dir = tempDir("corrupt-cached");
    dirs.push(dir);
    let db = await DB.open(dir);
    const ops = [];
    for (let i = 0; i < 200; i++) ops.push({ type: "put" as const, key: key(i), value: bytes(`value-${i}-${"z".repeat(50)}`) });
    await db.write(ops);
    await db.compactRange();
    await db.close();
    db = await DB.open(dir, { mmapTables: true });
    try {
      expect(text(db.getSync(key(0)))).toBe(`value-0-${"z".repeat(50)}`); // verified and cached
      const sst = fs.readdirSync(dir).find((n) => n.endsWith(".sst"))!;
      const fd = fs.openSync(path.join(dir, sst), "r+");
      const b = Buffer.alloc(40);
      fs.readSync(fd, b, 0, 40, 20);
      for (let i = 0; i < b.length; i++) b[i] ^= 0x01; // through the page cache: the mapping sees it
      fs.writeSync(fd, b, 0, 40, 20);
      fs.closeSync(fd);
      // The cache must hold the bytes that were verified, not a view of the changed file.
      expect(text(db.getSync(key(0)))).toBe(`value-0-${"z".repeat(50)}`);
    } finally {
      await db.close();
    }
  });

  test("a flipped byte in an SSTable data block is detected on read, never served", async () => {
    const dir = tempDir("corrupt");
    dirs.push(dir);
    let db = await DB.open(dir);
    const ops = [];
    for (let i = 0; i < 2000; i++) ops.push({ type: "put" as const, key: key(i), value: bytes(`value-${i}-${"z".repeat(50)}`) });
    await db.write(ops);
    await db.compactRange();
    await db.close();
    const ssts = fs.readdirSync(dir).filter((n) => n.endsWith(".sst"));
    expect(ssts.length).toBe(1);
    const file = path.join(dir, ssts[0]);
    const data = fs.readFileSync(file);
    data[100] ^= 0x04; // inside the first data block
    fs.writeFileSync(file, data);

    db = await DB.open(dir);
    const err = caught(() => db.getSync(key(0)));
    expect(err.code).toBe("CORRUPTION");
    expect(err.file).toBe(ssts[0]);
    expect(err.offset).toBe(0);
    expect(err.message).toContain(ssts[0]);
    expect(caught(() => db.getSync(key(1))).code).toBe("CORRUPTION"); // not cached as good
    expect(text(db.getSync(key(1999)))).toBe(`value-1999-${"z".repeat(50)}`); // other blocks fine
    let iterError: unknown;
    try {
      for await (const _ of db.iterator()) {
      }
    } catch (e) {
      iterError = e;
    }
    expect((iterError as LsmError).code).toBe("CORRUPTION");
    await db.close();
  });

  for (const backgroundThread of [true, false]) {
    test(`a compaction that reads a damaged table fails with the file named (${backgroundThread ? "worker" : "main thread"})`, async () => {
      const dir = tempDir("corrupt");
      dirs.push(dir);
      const opts = { backgroundThread, logger: () => {} };
      let db = await DB.open(dir, opts);
      const ops = [];
      for (let i = 0; i < 2000; i++) ops.push({ type: "put" as const, key: key(i), value: bytes(`value-${i}-${"z".repeat(50)}`) });
      await db.write(ops);
      await db.compactRange();
      await db.close();
      const ssts = fs.readdirSync(dir).filter((n) => n.endsWith(".sst"));
      expect(ssts.length).toBe(1);
      const file = path.join(dir, ssts[0]);
      const data = fs.readFileSync(file);
      data[100] ^= 0x04; // inside the first data block
      fs.writeFileSync(file, data);

      db = await DB.open(dir, opts);
      await db.put(key(5), bytes("new")); // something to merge with the damaged table
      let err: unknown;
      try {
        await db.compactRange();
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(LsmError);
      expect((err as LsmError).code).toBe("CORRUPTION");
      expect((err as LsmError).file).toBe(ssts[0]);
      // The damaged table is still the live one: nothing was replaced by a partial merge.
      expect(fs.existsSync(file)).toBe(true);
      await db.close();
    });
  }

  test("a flipped byte in the middle of the WAL fails open with file and offset", async () => {
    const dir = tempDir("corrupt");
    const crashDir = tempDir("corrupt-crash");
    dirs.push(dir, crashDir);
    const db = await DB.open(dir);
    for (let i = 0; i < 20; i++) await db.put(key(i), bytes(`v${i}`), { sync: true });
    // Copy as a crash would leave it (before close() flushes the memtable to a table).
    for (const n of fs.readdirSync(dir)) if (n !== "LOCK") fs.copyFileSync(path.join(dir, n), path.join(crashDir, n));
    await db.close();
    const log = fs.readdirSync(crashDir).find((n) => n.endsWith(".log"))!;
    const file = path.join(crashDir, log);
    const data = fs.readFileSync(file);
    const offsets: number[] = [];
    readLog(data, log, (_, offset) => offsets.push(offset));
    expect(offsets.length).toBe(20);
    const target = offsets[3];
    data[target + 10] ^= 0x10; // inside the 4th record of 20
    fs.writeFileSync(file, data);
    let err: unknown;
    try {
      await DB.open(crashDir);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(LsmError);
    expect((err as LsmError).code).toBe("CORRUPTION");
    expect((err as LsmError).file).toBe(log);
    expect((err as LsmError).offset).toBe(target);
    // The refused open released the directory: a repaired copy opens.
    data[target + 10] ^= 0x10;
    fs.writeFileSync(file, data);
    const again = await DB.open(crashDir);
    expect(text(again.getSync(key(19)))).toBe("v19");
    await again.close();
  });
});
