// FileLogStore on real files: reopen after every kind of write, torn tails, corruption, group commit.

import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { FileLogStore, LogStoreError } from "../../src/raft/log/log-store.ts";
import { encodeMembership } from "../../src/raft/core/membership.ts";
import { type Entry, EntryType, NONE } from "../../src/raft/types.ts";

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvraft-logstore-"));
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

const enc = new TextEncoder();
function entry(index: number, term: number, text = `cmd-${index}-t${term}`): Entry {
  return { index, term, type: EntryType.Normal, data: enc.encode(text) };
}
function range(lo: number, hi: number, term: number): Entry[] {
  return Array.from({ length: hi - lo + 1 }, (_, i) => entry(lo + i, term));
}
const text = (e: Entry) => new TextDecoder().decode(e.data);

function segmentFiles(): string[] {
  return fs.readdirSync(dir).filter((n) => n.endsWith(".seg")).sort();
}
function lastSegmentPath(): string {
  const names = segmentFiles();
  return path.join(dir, names[names.length - 1]);
}
/** Where a segment's records end (segments are preallocated: the file is longer, zero-filled). */
function dataEnd(file: string): number {
  const bytes = fs.readFileSync(file);
  let at = 0;
  while (at + 9 <= bytes.length && bytes[at + 8] !== 0) at += 9 + bytes.readUInt32LE(at + 4);
  return at;
}
function overwrite(file: string, offset: number, data: Uint8Array): void {
  const fd = fs.openSync(file, "r+");
  try {
    fs.writeSync(fd, data, 0, data.length, offset);
  } finally {
    fs.closeSync(fd);
  }
}

describe("FileLogStore", () => {
  test("a new log is empty; appended entries and hard state survive reopen", async () => {
    const store = await FileLogStore.open(dir);
    expect(store.hardState()).toEqual({ term: 0, votedFor: NONE, commitIndex: 0 });
    expect([store.firstIndex(), store.lastIndex()]).toEqual([1, 0]);
    expect(store.term(0)).toBe(0);

    await store.save({ term: 1, votedFor: 2, commitIndex: 0 }, range(1, 5, 1));
    await store.save({ term: 2, votedFor: NONE, commitIndex: 3 }, range(6, 8, 2));
    await store.close();

    const reopened = await FileLogStore.open(dir);
    expect(reopened.hardState()).toEqual({ term: 2, votedFor: NONE, commitIndex: 3 });
    expect(reopened.lastIndex()).toBe(8);
    expect(reopened.term(5)).toBe(1);
    expect(reopened.term(6)).toBe(2);
    expect(reopened.entries(1, 9).map(text)).toEqual([...range(1, 5, 1), ...range(6, 8, 2)].map(text));
    expect(reopened.stats().recovery).toBeNull();
    await reopened.close();
  });

  test("entries() honours maxBytes but always returns at least one entry, and rejects compacted ranges", async () => {
    const store = await FileLogStore.open(dir);
    await store.save(null, range(1, 10, 1));
    expect(store.entries(1, 11, 0)).toHaveLength(1);
    expect(store.entries(1, 11, text(entry(1, 1)).length * 3)).toHaveLength(3);
    await store.compact({ index: 4, term: 1, members: [0, 1, 2] });
    expect(() => store.entries(3, 6)).toThrow(LogStoreError);
    expect(() => store.entries(5, 12)).toThrow(/holds \[5, 11\)/);
    await store.close();
  });

  test("a conflicting append truncates the suffix, also after reopen", async () => {
    const store = await FileLogStore.open(dir);
    await store.save({ term: 1, votedFor: 0, commitIndex: 2 }, range(1, 10, 1));
    await store.save({ term: 3, votedFor: 1, commitIndex: 2 }, range(4, 6, 3));
    expect(store.lastIndex()).toBe(6);
    await store.close();

    const reopened = await FileLogStore.open(dir);
    expect(reopened.lastIndex()).toBe(6);
    expect(reopened.entries(1, 7).map((e) => e.term)).toEqual([1, 1, 1, 3, 3, 3]);
    expect(reopened.hardState().term).toBe(3);
    await expect(reopened.save(null, [entry(9, 3)])).rejects.toThrow(/cannot append at index 9/);
    await reopened.close();
  });

  test("compaction drops whole segments, keeps the rest, and survives reopen", async () => {
    const store = await FileLogStore.open(dir, { segmentBytes: 4096 });
    for (let i = 0; i < 40; i++) await store.save({ term: 1, votedFor: 0, commitIndex: i * 10 }, range(i * 10 + 1, i * 10 + 10, 1));
    const before = segmentFiles().length;
    expect(before).toBeGreaterThan(2);
    const sizeBefore = store.sizeBytes();

    await store.compact({ index: 150, term: 1, members: [0, 1, 2] });
    expect(store.firstIndex()).toBe(151);
    expect(segmentFiles().length).toBeLessThan(before);
    expect(store.sizeBytes()).toBeLessThan(sizeBefore);
    await store.save(null, range(401, 405, 2));
    await store.close();

    const reopened = await FileLogStore.open(dir, { segmentBytes: 4096 });
    expect(reopened.snapshotMeta()).toEqual({ index: 150, term: 1, members: [0, 1, 2] });
    expect([reopened.firstIndex(), reopened.lastIndex()]).toEqual([151, 405]);
    expect(reopened.term(150)).toBe(1);
    expect(reopened.entries(151, 406).map(text)).toEqual([...range(151, 400, 1), ...range(401, 405, 2)].map(text));
    expect(reopened.hardState().commitIndex).toBe(390);
    await reopened.close();
  });

  test("a truncation that reaches back below the compaction point is replayed correctly", async () => {
    const store = await FileLogStore.open(dir, { segmentBytes: 4096 });
    await store.save(null, range(1, 100, 1));
    await store.save(null, range(90, 95, 2)); // conflict: the log is now 1..89 (t1), 90..95 (t2)
    await store.compact({ index: 93, term: 2, members: [0] });
    await store.close();

    const reopened = await FileLogStore.open(dir, { segmentBytes: 4096 });
    expect([reopened.firstIndex(), reopened.lastIndex()]).toEqual([94, 95]);
    expect(reopened.entries(94, 96).map(text)).toEqual(range(94, 95, 2).map(text));
    await reopened.close();
  });

  test("resetToSnapshot discards the log, continues after the snapshot, and survives reopen", async () => {
    const store = await FileLogStore.open(dir, { segmentBytes: 4096 });
    await store.save({ term: 2, votedFor: 1, commitIndex: 40 }, range(1, 120, 2));
    await store.resetToSnapshot({ index: 500, term: 4, members: [0, 1, 2] });
    expect([store.firstIndex(), store.lastIndex(), store.term(500)]).toEqual([501, 500, 4]);
    await store.save({ term: 4, votedFor: 1, commitIndex: 501 }, [entry(501, 4)]);
    await store.close();
    expect(segmentFiles()).toHaveLength(1);

    const reopened = await FileLogStore.open(dir, { segmentBytes: 4096 });
    expect(reopened.snapshotMeta()).toEqual({ index: 500, term: 4, members: [0, 1, 2] });
    expect(reopened.lastIndex()).toBe(501);
    expect(reopened.entries(501, 502).map(text)).toEqual([text(entry(501, 4))]);
    expect(reopened.hardState()).toEqual({ term: 4, votedFor: 1, commitIndex: 501 });
    await reopened.close();
  });

  test("the configuration with learners and addresses survives compaction, reset and reopen; ConfChange entries too", async () => {
    const meta = { index: 4, term: 1, members: [0, 1, 2], learners: [7], addresses: { 0: "10.0.0.1:7000", 7: "[::1]:7007" } };
    const store = await FileLogStore.open(dir);
    const conf: Entry = { index: 11, term: 1, type: EntryType.ConfChange, data: encodeMembership({ voters: [0, 1, 2, 7], learners: [], addresses: {} }) };
    await store.save({ term: 1, votedFor: 0, commitIndex: 4 }, [...range(1, 10, 1), conf]);
    await store.compact(meta);
    await store.close();
    let reopened = await FileLogStore.open(dir);
    expect(reopened.snapshotMeta()).toEqual(meta);
    expect(reopened.entries(11, 12)[0]).toEqual(conf);
    await reopened.resetToSnapshot({ ...meta, index: 20, term: 2 });
    await reopened.close();
    reopened = await FileLogStore.open(dir);
    expect(reopened.snapshotMeta()).toEqual({ ...meta, index: 20, term: 2 });
    await reopened.close();
  });

  test("hard state alone round-trips, including across segment rotation", async () => {
    const store = await FileLogStore.open(dir, { segmentBytes: 4096 });
    for (let term = 1; term <= 300; term++) await store.save({ term, votedFor: term % 3, commitIndex: 0 }, []);
    expect(segmentFiles().length).toBeGreaterThan(1);
    await store.close();
    const reopened = await FileLogStore.open(dir, { segmentBytes: 4096 });
    expect(reopened.hardState()).toEqual({ term: 300, votedFor: 0, commitIndex: 0 });
    await reopened.close();
  });

  test("a commitIndex-only hard state costs no fsync; it rides with the next synced save", async () => {
    const store = await FileLogStore.open(dir);
    await store.save({ term: 1, votedFor: 0, commitIndex: 0 }, range(1, 5, 1));
    const synced = store.stats().fsyncs;
    await store.save({ term: 1, votedFor: 0, commitIndex: 3 }, []);
    expect(store.stats().fsyncs).toBe(synced);
    expect(store.stats().lazyHardStates).toBe(1);
    expect(store.hardState().commitIndex).toBe(3);
    // Not on disk yet: a process dying now would restart from commitIndex 0 (recoverable).
    const crashed = await FileLogStore.open(dir);
    expect(crashed.hardState()).toEqual({ term: 1, votedFor: 0, commitIndex: 0 });
    await crashed.close();
    // The next save that must sync carries it, after its own entries.
    await store.save(null, [entry(6, 1)]);
    expect(store.stats().fsyncs).toBe(synced + 1);
    const afterSync = await FileLogStore.open(dir);
    expect(afterSync.hardState()).toEqual({ term: 1, votedFor: 0, commitIndex: 3 });
    expect(afterSync.lastIndex()).toBe(6);
    await afterSync.close();
    // A term or vote change always syncs; close writes a pending commitIndex.
    await store.save({ term: 2, votedFor: 1, commitIndex: 3 }, []);
    expect(store.stats().fsyncs).toBe(synced + 2);
    await store.save({ term: 2, votedFor: 1, commitIndex: 6 }, []);
    await store.close();
    const reopened = await FileLogStore.open(dir);
    expect(reopened.hardState()).toEqual({ term: 2, votedFor: 1, commitIndex: 6 });
    await reopened.close();
  });

  test("an entry larger than a segment allows is refused with advice", async () => {
    const store = await FileLogStore.open(dir, { segmentBytes: 4096 });
    const big: Entry = { index: 1, term: 1, type: EntryType.Normal, data: new Uint8Array(5000) };
    const err = await store.save(null, [big]).catch((e) => e);
    expect(err).toBeInstanceOf(LogStoreError);
    expect(err.code).toBe("RECORD_TOO_LARGE");
    expect(err.message).toMatch(/segmentBytes/);
    await store.save(null, [entry(1, 1)]); // the store is still usable
    await store.close();
  });

  test("a record cut off mid-write (file grown, no preallocation) is cut and reported", async () => {
    const store = await FileLogStore.open(dir, { preallocate: false });
    await store.save({ term: 1, votedFor: 0, commitIndex: 0 }, range(1, 9, 1));
    await store.save(null, [entry(10, 1)]);
    await store.close();
    const file = lastSegmentPath();
    const size = fs.statSync(file).size;
    expect(size).toBe(dataEnd(file));
    fs.truncateSync(file, size - 7); // the last entry record loses its tail

    const reopened = await FileLogStore.open(dir, { preallocate: false });
    expect(reopened.lastIndex()).toBe(9);
    const recovery = reopened.stats().recovery!;
    expect(recovery.file).toBe(file);
    expect(recovery.reason).toBe("truncated payload");
    expect(recovery.truncatedBytes).toBe(size - 7 - recovery.offset);
    await reopened.save(null, [entry(10, 1, "rewritten")]);
    await reopened.close();
    const again = await FileLogStore.open(dir);
    expect(text(again.entries(10, 11)[0])).toBe("rewritten");
    expect(again.stats().recovery).toBeNull();
    await again.close();
  });

  test("a torn record followed by zeros in a preallocated segment is zeroed, reported and overwritten", async () => {
    const store = await FileLogStore.open(dir);
    await store.save({ term: 1, votedFor: 0, commitIndex: 0 }, range(1, 9, 1));
    await store.save(null, [entry(10, 1, "x".repeat(200))]);
    await store.close();
    const file = lastSegmentPath();
    const end = dataEnd(file);
    expect(fs.statSync(file).size).toBeGreaterThan(end);
    overwrite(file, end - 100, new Uint8Array(100)); // the last record's second half never reached disk

    const reopened = await FileLogStore.open(dir);
    expect(reopened.lastIndex()).toBe(9);
    const recovery = reopened.stats().recovery!;
    expect(recovery.file).toBe(file);
    expect(recovery.reason).toBe("checksum mismatch");
    expect(recovery.truncatedBytes).toBe(end - 100 - recovery.offset);
    expect(dataEnd(file)).toBe(recovery.offset); // the torn bytes are now zeros
    await reopened.save(null, [entry(10, 1, "rewritten")]);
    await reopened.close();
    const again = await FileLogStore.open(dir);
    expect(text(again.entries(10, 11)[0])).toBe("rewritten");
    expect(again.stats().recovery).toBeNull();
    await again.close();
  });

  test("random garbage after the last record is a torn tail", async () => {
    const store = await FileLogStore.open(dir);
    await store.save(null, range(1, 5, 1));
    await store.close();
    const file = lastSegmentPath();
    const validSize = dataEnd(file);
    let seed = 12345;
    const garbage = Uint8Array.from({ length: 300 }, () => (seed = (seed * 1103515245 + 12345) >>> 0) >>> 24);
    garbage[299] |= 1;
    overwrite(file, validSize, garbage);

    const reopened = await FileLogStore.open(dir);
    expect(reopened.lastIndex()).toBe(5);
    expect(reopened.stats().recovery).toMatchObject({ file, offset: validSize, truncatedBytes: 300 });
    await reopened.close();
  });

  test("zeros after the last record (file grown, data never written) are the clean end of the log", async () => {
    const store = await FileLogStore.open(dir, { preallocate: false });
    await store.save(null, range(1, 5, 1));
    await store.close();
    fs.appendFileSync(lastSegmentPath(), new Uint8Array(4096));
    const reopened = await FileLogStore.open(dir);
    expect(reopened.lastIndex()).toBe(5);
    expect(reopened.stats().recovery).toBeNull();
    await reopened.save(null, [entry(6, 1)]);
    await reopened.close();
    const again = await FileLogStore.open(dir);
    expect(again.entries(1, 7).map(text)).toEqual(range(1, 6, 1).map(text));
    await again.close();
  });

  test("a flipped byte before the tail fails open with the file and offset", async () => {
    const store = await FileLogStore.open(dir);
    await store.save(null, range(1, 20, 1));
    await store.close();
    const file = lastSegmentPath();
    const bytes = fs.readFileSync(file);
    const target = Math.floor(dataEnd(file) / 2);
    bytes[target] ^= 0x40;
    fs.writeFileSync(file, bytes);

    const err = await FileLogStore.open(dir).catch((e) => e);
    expect(err).toBeInstanceOf(LogStoreError);
    expect(err.code).toBe("CORRUPTION");
    expect(err.file).toBe(file);
    expect(err.offset).toBeLessThanOrEqual(target);
    expect(err.offset).toBeGreaterThan(target - 60);
    expect(err.message).toContain(file);
    expect(err.message).toContain(`offset ${err.offset}`);
  });

  test("damage to a record's length field is corruption, not a torn tail", async () => {
    const store = await FileLogStore.open(dir);
    await store.save(null, range(1, 20, 1));
    await store.close();
    const file = lastSegmentPath();
    const bytes = fs.readFileSync(file);
    // Walk the frames to the 5th entry record and corrupt its length.
    let at = 0;
    for (let i = 0; i < 2 + 4; i++) at += 9 + bytes.readUInt32LE(at + 4);
    bytes.writeUInt32LE(1_000_000, at + 4);
    fs.writeFileSync(file, bytes);
    const err = await FileLogStore.open(dir).catch((e) => e);
    expect(err).toMatchObject({ code: "CORRUPTION", file, offset: at });
  });

  test("corruption in an older segment is never treated as a torn tail", async () => {
    const store = await FileLogStore.open(dir, { segmentBytes: 4096 });
    await store.save(null, range(1, 200, 1));
    await store.close();
    const first = path.join(dir, segmentFiles()[0]);
    overwrite(first, dataEnd(first) - 3, new Uint8Array(3));
    const err = await FileLogStore.open(dir, { segmentBytes: 4096 }).catch((e) => e);
    expect(err).toMatchObject({ code: "CORRUPTION", file: first });
  });

  test("concurrent saves share fsyncs (group commit) and land in order", async () => {
    const store = await FileLogStore.open(dir);
    const before = store.stats().fsyncs;
    const saves: Promise<void>[] = [];
    for (let i = 1; i <= 200; i++) saves.push(store.save({ term: 1, votedFor: 0, commitIndex: i - 1 }, [entry(i, 1)]));
    await Promise.all(saves);
    const stats = store.stats();
    expect(stats.saves).toBe(200);
    expect(stats.fsyncs - before).toBeLessThan(20);
    expect(stats.writes).toBeLessThan(20);
    await store.close();
    const reopened = await FileLogStore.open(dir);
    expect(reopened.lastIndex()).toBe(200);
    expect(reopened.hardState().commitIndex).toBe(199);
    await reopened.close();
  });

  test("saves after a reset are written after it, not folded into an earlier batch", async () => {
    const store = await FileLogStore.open(dir);
    const a = store.save(null, range(1, 3, 1));
    const b = store.resetToSnapshot({ index: 10, term: 2, members: [0] });
    const c = store.save(null, [entry(11, 2)]);
    await Promise.all([a, b, c]);
    await store.close();
    const reopened = await FileLogStore.open(dir);
    expect([reopened.firstIndex(), reopened.lastIndex()]).toEqual([11, 11]);
    await reopened.close();
  });

  test("a segment torn while being created (no valid header) is removed on open", async () => {
    const store = await FileLogStore.open(dir);
    await store.save(null, range(1, 3, 1));
    await store.close();
    const torn = path.join(dir, "log-0000000000000002.seg");
    fs.writeFileSync(torn, new Uint8Array([1, 2, 3, 4, 5]));
    const reopened = await FileLogStore.open(dir);
    expect(fs.existsSync(torn)).toBe(false);
    expect(reopened.lastIndex()).toBe(3);
    await reopened.save(null, [entry(4, 1)]);
    await reopened.close();
    expect(segmentFiles()).toEqual(["log-0000000000000001.seg"]);
  });

  test("a missing segment in the middle is corruption", async () => {
    const store = await FileLogStore.open(dir, { segmentBytes: 4096 });
    await store.save(null, range(1, 300, 1));
    await store.close();
    const names = segmentFiles();
    expect(names.length).toBeGreaterThan(2);
    fs.unlinkSync(path.join(dir, names[1]));
    await expect(FileLogStore.open(dir, { segmentBytes: 4096 })).rejects.toMatchObject({ code: "CORRUPTION" });
  });

  test("appends overwrite preallocated zeros ahead of them and survive reopen", async () => {
    const store = await FileLogStore.open(dir, { segmentBytes: 64 * 1024 });
    const file = lastSegmentPath();
    expect(fs.statSync(file).size).toBe(64 * 1024); // the whole (small) segment zero-filled at creation
    expect(store.stats().preallocatedBytes).toBe(64 * 1024);
    await store.save({ term: 1, votedFor: 0, commitIndex: 2 }, range(1, 20, 1));
    expect(fs.statSync(file).size).toBe(64 * 1024);
    expect(store.stats().allocationWaits).toBe(0);
    await store.close();

    const reopened = await FileLogStore.open(dir, { segmentBytes: 64 * 1024 });
    expect(reopened.stats().recovery).toBeNull();
    expect(reopened.entries(1, 21).map(text)).toEqual(range(1, 20, 1).map(text));
    await reopened.save(null, range(21, 30, 1));
    await reopened.close();
    const again = await FileLogStore.open(dir, { segmentBytes: 64 * 1024 });
    expect(again.entries(1, 31).map(text)).toEqual(range(1, 30, 1).map(text));
    expect(again.hardState().commitIndex).toBe(2);
    await again.close();
    expect(segmentFiles()).toHaveLength(1);
  });

  test("a large segment is zero-filled step by step ahead of the appends", async () => {
    const segmentBytes = 16 * 1024 * 1024;
    const store = await FileLogStore.open(dir, { segmentBytes });
    const file = lastSegmentPath();
    const step = fs.statSync(file).size;
    expect(step).toBeLessThan(segmentBytes);
    const big = (i: number): Entry => ({ index: i, term: 1, type: EntryType.Normal, data: new Uint8Array(256 * 1024).fill(i) });
    // Past half a step: the next step is filled in the background, before the appends reach it.
    for (let i = 1; i <= 10; i++) await store.save(null, [big(i)]);
    await store.close(); // waits for background fills
    expect(fs.statSync(file).size).toBe(2 * step);
    const reopened = await FileLogStore.open(dir, { segmentBytes });
    expect(reopened.lastIndex()).toBe(10);
    expect(reopened.entries(7, 8)[0].data[100]).toBe(7);
    await reopened.close();
  });

  test("a spare segment is prepared in the background and used on rollover", async () => {
    const segmentBytes = 64 * 1024;
    const store = await FileLogStore.open(dir, { segmentBytes });
    expect(store.stats().spareReady).toBe(false);
    let index = 0;
    const fill = async (until: () => boolean) => {
      for (let n = 0; n < 2000 && !until(); n++) {
        await store.save(null, [entry(++index, 1, "v".repeat(500))]);
      }
    };
    await fill(() => dataEnd(lastSegmentPath()) >= segmentBytes / 2);
    // Preparation runs beside the appends; give it a bounded moment.
    for (let n = 0; n < 400 && !store.stats().spareReady; n++) await Bun.sleep(5);
    expect(store.stats().spareReady).toBe(true);
    expect(fs.statSync(path.join(dir, "segment.spare")).size).toBe(segmentBytes);
    await fill(() => segmentFiles().length > 1);
    const stats = store.stats();
    expect(stats.segments).toBe(2);
    expect(stats.sparesUsed).toBe(1);
    expect(stats.spareWaits).toBe(0);
    expect(fs.statSync(lastSegmentPath()).size).toBe(segmentBytes);
    await store.close();

    const reopened = await FileLogStore.open(dir, { segmentBytes });
    expect(reopened.lastIndex()).toBe(index);
    expect(reopened.entries(1, index + 1).map(text)).toEqual(
      Array.from({ length: index }, (_, i) => text(entry(i + 1, 1, "v".repeat(500)))),
    );
    await reopened.close();
    expect(fs.existsSync(path.join(dir, "segment.spare"))).toBe(false);
  });

  test("a log written without preallocation is extended in place when reopened with it", async () => {
    const plain = await FileLogStore.open(dir, { preallocate: false, segmentBytes: 4096 });
    await plain.save({ term: 1, votedFor: 0, commitIndex: 0 }, range(1, 100, 1));
    await plain.save(null, range(101, 200, 1));
    await plain.close();
    const sizes = segmentFiles().map((n) => fs.statSync(path.join(dir, n)).size);
    expect(sizes.length).toBeGreaterThan(1);
    expect(sizes[sizes.length - 1]).toBe(dataEnd(lastSegmentPath()));
    const store = await FileLogStore.open(dir, { segmentBytes: 4096 });
    await store.save(null, range(201, 300, 2));
    await store.close();
    expect(fs.statSync(lastSegmentPath()).size).toBe(4096);
    const reopened = await FileLogStore.open(dir, { segmentBytes: 4096 });
    expect(reopened.entries(1, 301).map(text)).toEqual([...range(1, 200, 1), ...range(201, 300, 2)].map(text));
    expect(reopened.stats().recovery).toBeNull();
    await reopened.close();
  });

  test("a closed store refuses writes", async () => {
    const store = await FileLogStore.open(dir);
    await store.close();
    await expect(store.save(null, [entry(1, 1)])).rejects.toMatchObject({ code: "CLOSED" });
  });
});

describe("FileLogStore under kill -9", () => {
  test("a child killed mid-writes loses nothing it acknowledged", async () => {
    const writer = path.join(import.meta.dir, "crash-writer.ts");
    let highestAck = 0;
    let rng = 7;
    for (let round = 0; round < 4; round++) {
      rng = (rng * 1103515245 + 12345) >>> 0;
      const killAfter = 20 + (rng % 200); // acknowledgements to see before the kill
      const child = Bun.spawn(["bun", writer, dir, "5000"], { stdout: "pipe", stderr: "inherit" });
      const reader = child.stdout.getReader();
      const decoder = new TextDecoder();
      let buffered = "";
      let acks = 0;
      const deadline = Date.now() + 15_000;
      while (acks < killAfter && Date.now() < deadline) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        const lines = buffered.split("\n");
        buffered = lines.pop()!;
        for (const line of lines) {
          const [, last] = line.split(" ");
          highestAck = Math.max(highestAck, Number(last));
          acks++;
        }
      }
      child.kill("SIGKILL");
      await child.exited;
      expect(acks).toBeGreaterThan(0);

      // The writer preallocates: every segment file is a whole zero-filled 64 KiB.
      for (const name of segmentFiles()) expect(fs.statSync(path.join(dir, name)).size).toBe(64 * 1024);
      const store = await FileLogStore.open(dir, { segmentBytes: 64 * 1024 });
      expect(store.lastIndex()).toBeGreaterThanOrEqual(highestAck);
      expect(store.hardState().commitIndex).toBeGreaterThanOrEqual(highestAck);
      const all = store.entries(1, store.lastIndex() + 1);
      all.forEach((e, i) => {
        expect(e.index).toBe(i + 1);
        expect(text(e)).toBe(`value-${i + 1}`);
      });
      await store.close();
    }
  });
});
