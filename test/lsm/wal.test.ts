// The log format: fragmentation across 32 KiB blocks (records larger than a block included),
// torn-tail truncation, and corruption in the middle refusing to be read.
import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { LsmError } from "../../src/lsm/errors.ts";
import { BLOCK_SIZE, HEADER_SIZE, LogWriter, readLog } from "../../src/lsm/wal.ts";
import { removeDir, rng, tempDir } from "./helpers.ts";

let dir = "";
afterEach(() => dir && removeDir(dir));

function record(size: number, seed: number): Uint8Array {
  const r = rng(seed);
  const b = new Uint8Array(size);
  for (let i = 0; i < size; i++) b[i] = (r() * 256) | 0;
  return b;
}

async function writeLog(file: string, sizes: number[]): Promise<Uint8Array[]> {
  const w = new LogWriter(file, path.basename(file));
  const records = sizes.map((s, i) => record(s, i + 1));
  for (const r of records) w.add(r);
  await w.close(true);
  return records;
}

function readAll(file: string): { records: Uint8Array[]; offsets: number[]; result: ReturnType<typeof readLog> } {
  const records: Uint8Array[] = [];
  const offsets: number[] = [];
  const result = readLog(fs.readFileSync(file), path.basename(file), (p, o) => (records.push(p.slice()), offsets.push(o)));
  return { records, offsets, result };
}

describe("write-ahead log", () => {
  test("records of every size round trip, including ones spanning several blocks", async () => {
    dir = tempDir("wal");
    const file = path.join(dir, "000001.log");
    // Sizes chosen to hit: empty, tiny, exact block fill, a tail < header size, multi-block.
    const sizes = [0, 1, 100, BLOCK_SIZE - HEADER_SIZE - 107 - 115, 3, BLOCK_SIZE * 3 + 17, 5000, BLOCK_SIZE - 7, 1];
    const written = await writeLog(file, sizes);
    const { records, result } = readAll(file);
    expect(result.tornTail).toBeUndefined();
    expect(records.length).toBe(written.length);
    for (let i = 0; i < written.length; i++) expect(records[i]).toEqual(written[i]);
    expect(fs.statSync(file).size).toBeGreaterThan(BLOCK_SIZE * 4);
  });

  test("a record cut off by a crash is a torn tail: earlier records survive", async () => {
    dir = tempDir("wal");
    const file = path.join(dir, "000001.log");
    const written = await writeLog(file, [200, 300, BLOCK_SIZE * 2]);
    const full = fs.statSync(file).size;
    for (const cut of [full - 1, full - BLOCK_SIZE, 200 + HEADER_SIZE + 3 + 300 + HEADER_SIZE + 2]) {
      fs.truncateSync(file, cut);
      const { records, result } = readAll(file);
      expect(result.tornTail).toBeDefined();
      expect(records.length).toBe(2);
      expect(records[1]).toEqual(written[1]);
      expect(result.validEnd).toBe(2 * HEADER_SIZE + 500);
    }
  });

  test("a zero-filled tail (preallocated, never written) ends the log quietly", async () => {
    dir = tempDir("wal");
    const file = path.join(dir, "000001.log");
    await writeLog(file, [100, 100]);
    fs.appendFileSync(file, new Uint8Array(5000));
    const { records, result } = readAll(file);
    expect(records.length).toBe(2);
    expect(result.validEnd).toBe(2 * (HEADER_SIZE + 100));
  });

  test("a damaged last record is a torn tail, a damaged earlier record is corruption", async () => {
    dir = tempDir("wal");
    const file = path.join(dir, "000001.log");
    await writeLog(file, [100, 100, 100]);
    const data = fs.readFileSync(file);
    const last = 2 * (HEADER_SIZE + 100);
    data[last + HEADER_SIZE + 50] ^= 0x01;
    fs.writeFileSync(file, data);
    const { records, result } = readAll(file);
    expect(records.length).toBe(2);
    expect(result.tornTail).toContain("checksum");

    data[last + HEADER_SIZE + 50] ^= 0x01; // repair, then damage the middle record
    data[HEADER_SIZE + 100 + HEADER_SIZE + 10] ^= 0x80;
    fs.writeFileSync(file, data);
    let err: unknown;
    try {
      readAll(file);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(LsmError);
    expect((err as LsmError).code).toBe("CORRUPTION");
    expect((err as LsmError).file).toBe("000001.log");
    expect((err as LsmError).offset).toBe(HEADER_SIZE + 100);
  });

  test("concurrent sync writers share fsyncs and all resolve; flushed() hands bytes to the OS", async () => {
    dir = tempDir("wal");
    const file = path.join(dir, "000001.log");
    const w = new LogWriter(file, "000001.log");
    const waits: Promise<void>[] = [];
    for (let i = 0; i < 50; i++) {
      w.add(record(64, i));
      waits.push(i % 2 === 0 ? w.sync() : w.flushed());
    }
    await Promise.all(waits);
    expect(fs.statSync(file).size).toBe(50 * (HEADER_SIZE + 64));
    await w.close(true);
    expect(readAll(file).records.length).toBe(50);
  });

  test("a new log's writes wait for the previous log's last writes (a crash leaves a prefix)", async () => {
    dir = tempDir("wal");
    const first = new LogWriter(path.join(dir, "000001.log"), "000001.log");
    const second = new LogWriter(path.join(dir, "000002.log"), "000002.log");
    const done: string[] = [];
    // A large write to the old log and a tiny one to the new: ungated, the tiny one would finish first.
    for (let i = 0; i < 64; i++) first.add(record(60_000, i));
    const firstWritten = first.flushed();
    second.startAfter(firstWritten);
    second.add(record(10, 1));
    const secondWritten = second.flushed().then(() => {
      done.push("second");
      expect(fs.statSync(path.join(dir, "000001.log")).size).toBe(first.size);
    });
    await Promise.all([firstWritten.then(() => done.push("first")), secondWritten]);
    expect(done).toEqual(["first", "second"]);
    await first.close(true);
    await second.close(true);
  });
});
