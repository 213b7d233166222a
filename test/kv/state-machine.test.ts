// KVStateMachine on a real LSM: apply semantics, exactly-once sessions, restart from the LSM,
// snapshot streams taken while writes continue, and atomic install that survives a broken stream.
import { describe, expect, test } from "bun:test";
import { machineFixture } from "./machine-fixture.ts";
import * as fs from "node:fs";
import * as path from "node:path";
import { encodeCommand, type WriteCommand } from "../../src/kv/command.ts";
import { KVStateMachine } from "../../src/kv/state-machine.ts";
import {
  RESULT_COMMAND_REUSED,
  RESULT_NO_KEY,
  RESULT_OK,
  RESULT_SESSION_EXPIRED,
  RESULT_STALE_COMMAND,
  RESULT_TABLE_FULL,
  RESULT_VALUE_TOO_LARGE,
} from "../../src/kv/sessions.ts";
import { EntryType, type Entry } from "../../src/raft/index.ts";
import { DB } from "../../src/lsm/index.ts";
import { KEY_COUNT_KEY } from "../../src/kv/keys.ts";
import { isStateMachineCorruption } from "../../src/kv/fail-stop.ts";
import { FRAME_PREFIX_BYTES, SNAPSHOT_FILES_VERSION, sealFrame } from "../../src/kv/snapshot-frames.ts";

const { tempDir, open, reopen, close, crash } = machineFixture("kvraft-sm-");

const text = new TextDecoder();
const read = (m: KVStateMachine, key: string) => {
  const v = m.read(key);
  return v === null ? null : text.decode(v);
};

/** Builds consecutive entries from index `first` in term `term`. */
function entries(first: number, term: number, commands: (Partial<WriteCommand> | "noop")[]): Entry[] {
  return commands.map((c, i) =>
    c === "noop"
      ? { index: first + i, term, type: EntryType.Noop, data: new Uint8Array(0) }
      : {
          index: first + i,
          term,
          type: EntryType.Normal,
          data: encodeCommand({ op: "Put", clientId: 1n, commandId: BigInt(first + i), key: "k", value: "", ...c }),
        },
  );
}

async function collect(chunks: AsyncIterable<Uint8Array>): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  for await (const c of chunks) out.push(c);
  return out;
}

async function* replay(chunks: Uint8Array[], failAfter = Infinity): AsyncGenerator<Uint8Array> {
  let n = 0;
  for (const c of chunks) {
    if (n++ >= failAfter) throw new Error("network: link went down mid-stream");
    yield c;
  }
}

describe("apply", () => {
  test("Put, Append, Delete in one batch see each other; Noop advances the index", async () => {
    const m = await open(tempDir());
    const seen = await m.apply(
      entries(1, 1, [
        "noop",
        { op: "Put", key: "a", value: "1" },
        { op: "Append", key: "a", value: "2" },
        { op: "Append", key: "b", value: "x" },
        { op: "Delete", key: "c" },
        { op: "Delete", key: "b" },
      ]),
    );
    expect(m.lastApplied()).toBe(6);
    expect(m.lastAppliedTerm()).toBe(1);
    expect(read(m, "a")).toBe("12");
    expect(read(m, "b")).toBeNull();
    expect(seen.map((c) => [c.index, c.result])).toEqual([
      [1, RESULT_OK],
      [2, RESULT_OK],
      [3, RESULT_OK],
      [4, RESULT_OK],
      [5, RESULT_NO_KEY],
      [6, RESULT_OK],
    ]);
  });

  test("a retried command (same clientId, commandId) is answered but not applied again", async () => {
    const m = await open(tempDir());
    await m.apply(entries(1, 1, [{ op: "Append", key: "k", value: "x", clientId: 7n, commandId: 1n }]));
    await m.apply(entries(2, 2, [{ op: "Append", key: "k", value: "x", clientId: 7n, commandId: 1n }]));
    await m.apply(entries(3, 2, [{ op: "Append", key: "k", value: "y", clientId: 7n, commandId: 2n }]));
    // An older command arriving late is not applied either.
    await m.apply(entries(4, 2, [{ op: "Append", key: "k", value: "x", clientId: 7n, commandId: 1n }]));
    expect(read(m, "k")).toBe("xy");
    expect(m.session(7n)?.commandId).toBe(2n);
  });

  test("entries at or below the applied index are skipped; a gap is refused", async () => {
    const m = await open(tempDir());
    await m.apply(entries(1, 1, [{ op: "Append", key: "k", value: "a", clientId: 1n, commandId: 1n }]));
    await m.apply(entries(1, 1, [{ op: "Append", key: "k", value: "a", clientId: 2n, commandId: 1n }, { op: "Append", key: "k", value: "b", clientId: 2n, commandId: 2n }]));
    expect(read(m, "k")).toBe("ab");
    await expect(m.apply(entries(9, 1, ["noop"]))).rejects.toThrow(/apply gap/);
  });

  test("restart resumes from the LSM: applied index, term, data and sessions", async () => {
    const dir = tempDir();
    let m = await open(dir);
    await m.apply(entries(1, 3, [{ op: "Put", key: "a", value: "v", clientId: 5n, commandId: 9n }, "noop"]));
    await m.sync();
    expect(m.durableAppliedIndex()).toBe(2);
    m = await reopen(m, dir);
    expect(m.lastApplied()).toBe(2);
    expect(m.lastAppliedTerm()).toBe(3);
    expect(read(m, "a")).toBe("v");
    expect(m.session(5n)).toMatchObject({ commandId: 9n, lastIndex: 1 });
    // The driver replays from the log: nothing at or below 2 is applied twice.
    await m.apply(entries(1, 3, [{ op: "Append", key: "a", value: "v", clientId: 6n, commandId: 1n }, "noop", { op: "Append", key: "a", value: "w", clientId: 6n, commandId: 2n }]));
    expect(read(m, "a")).toBe("vw");
  });

  test("big entries start a background flush by bytes applied, long before the entry count", async () => {
    const m = await open(tempDir(), { syncEveryEntries: 1_000_000, syncEveryBytes: 16 << 10 });
    const value = "v".repeat(2000);
    for (let i = 1; i <= 20; i++) {
      await m.apply(entries(i, 1, [{ op: "Put", key: `k${i}`, value, clientId: 1n, commandId: BigInt(i) }]));
      while (m.syncInFlight) await Bun.sleep(1);
    }
    // ~2 KB an entry: a flush every 8 entries or so moves the durable index.
    expect(m.durableAppliedIndex()).toBeGreaterThanOrEqual(8);
  });

  test("a crash keeps the applies up to the last flush; replaying the log from there gives the same state", async () => {
    const log = entries(1, 2, [
      { op: "Put", key: "a", value: "1", clientId: 5n, commandId: 1n },
      { op: "Append", key: "a", value: "2", clientId: 5n, commandId: 2n },
      { op: "Put", key: "b", value: "x", clientId: 6n, commandId: 1n },
      { op: "Append", key: "a", value: "3", clientId: 5n, commandId: 3n },
      { op: "Delete", key: "b", clientId: 6n, commandId: 2n },
    ]);
    const dir = tempDir();
    let m = await open(dir);
    await m.apply(log.slice(0, 2));
    expect(await m.sync()).toBe(2); // a flush: what a crash keeps
    await m.apply(log.slice(2));
    expect(m.durableAppliedIndex()).toBe(2);
    // kill -9: the state machine writes no LSM WAL, so applies 3..5 are gone with the memtable.
    await crash(m);
    m = await open(dir);
    expect(m.lastApplied()).toBe(2);
    expect([read(m, "a"), read(m, "b")]).toEqual(["12", null]);
    expect(m.session(5n)).toMatchObject({ commandId: 2n });
    // The driver hands the log again from the start: 1..2 are skipped, 3..5 applied once each.
    const results = await m.apply(log);
    expect(results.map((r) => r.index)).toEqual([3, 4, 5]);
    expect([read(m, "a"), read(m, "b")]).toEqual(["123", null]);
    expect(m.session(5n)).toMatchObject({ commandId: 3n });
  });

  test("sessions expire by log time (leader timestamps) and unregistered ones by LRU, identically after restart", async () => {
    const dir = tempDir();
    const limits = { sessionTtlMs: 1000, maxUnregisteredSessions: 3 };
    let m = await open(dir, limits);
    await m.apply(entries(1, 1, [1n, 2n, 3n, 4n].map((c) => ({ op: "Put", key: `k${c}`, value: "v", clientId: c, commandId: 1n, timestamp: 100 * Number(c) }) as const)));
    // maxUnregisteredSessions 3: client 1 (least recently used) is gone.
    expect([1n, 2n, 3n, 4n].map((c) => m.session(c) !== undefined)).toEqual([false, true, true, true]);
    // Noops carry no time; an entry stamped 1201 expires client 2 (last touched at 200).
    await m.apply(entries(5, 1, ["noop", "noop", { op: "Put", key: "t", value: "v", clientId: 0n, commandId: 0n, timestamp: 1201 }]));
    expect(m.session(2n)).toBeUndefined();
    expect(m.session(3n)).toBeDefined();
    m = await reopen(m, dir, limits);
    expect(m.session(2n)).toBeUndefined();
    expect(m.session(3n)).toBeDefined();
    expect(m.sessionCount).toBe(2);
    // The log time survived the restart: an older leader's timestamp does not move it back.
    await m.apply(entries(8, 2, [{ op: "Put", key: "t", value: "v", clientId: 0n, commandId: 0n, timestamp: 10 }]));
    await m.apply(entries(9, 2, [{ op: "Put", key: "t", value: "v", clientId: 0n, commandId: 0n, timestamp: 1302 }]));
    expect(m.session(3n)).toBeUndefined();
    expect(m.session(4n)).toBeDefined();
    // An unregistered client outside the window is applied again: the documented at-most-once limit.
    await m.apply(entries(10, 2, [{ op: "Append", key: "dup", value: "x", clientId: 1n, commandId: 1n }]));
    expect(read(m, "dup")).toBe("x");
  });

  test("no clientId: applied every time, never deduplicated, no session", async () => {
    const m = await open(tempDir());
    const results = await m.apply(entries(1, 1, [0, 1, 2].map(() => ({ op: "Append", key: "k", value: "x", clientId: 0n, commandId: 0n }) as const)));
    expect(results.map((r) => r.result)).toEqual([RESULT_OK, RESULT_OK, RESULT_OK]);
    expect(read(m, "k")).toBe("xxx");
    expect(m.sessionCount).toBe(0);
  });

  test("a stale or reused commandId is refused, never OK-but-not-applied; INT64_MAX does not block the session", async () => {
    const m = await open(tempDir());
    const max = (1n << 63n) - 1n;
    const results = await m.apply(
      entries(1, 1, [
        { op: "Append", key: "k", value: "a", clientId: 4n, commandId: 5n },
        { op: "Append", key: "k", value: "a", clientId: 4n, commandId: 5n }, // a retry: answered, not applied
        { op: "Append", key: "k", value: "b", clientId: 4n, commandId: 5n }, // same id, another command
        { op: "Append", key: "k", value: "c", clientId: 4n, commandId: 3n }, // older id
        { op: "Append", key: "k", value: "d", clientId: 4n, commandId: max },
        { op: "Append", key: "k", value: "e", clientId: 4n, commandId: 6n },
      ]),
    );
    expect(results.map((r) => r.result)).toEqual([RESULT_OK, RESULT_OK, RESULT_COMMAND_REUSED, RESULT_STALE_COMMAND, RESULT_OK, RESULT_STALE_COMMAND]);
    expect(read(m, "k")).toBe("ad");
  });

  test("RegisterSession: the id is the entry's index; a full table refuses; an expired session refuses its writes", async () => {
    const dir = tempDir();
    const limits = { sessionTtlMs: 1000, maxSessions: 2 };
    let m = await open(dir, limits);
    const register = (timestamp: number) => ({ op: "Register", clientId: 0n, commandId: 0n, key: "", value: "", timestamp }) as const;
    const results = await m.apply(entries(1, 1, [register(100), register(100), register(100)]));
    expect(results.map((r) => r.result)).toEqual([RESULT_OK, RESULT_OK, RESULT_TABLE_FULL]);
    expect(m.session(1n)).toMatchObject({ registered: true });
    expect(m.session(3n)).toBeUndefined();
    const write = (clientId: bigint, commandId: bigint, timestamp: number) =>
      ({ op: "Append", key: "r", value: `${clientId}.${commandId} `, clientId, commandId, registered: true, timestamp }) as const;
    const more = await m.apply(entries(4, 1, [write(1n, 1n, 500), write(9n, 1n, 500), write(1n, 2n, 1400)]));
    // Session 9 was never registered; session 2 expired at 1400 (idle since 100) and session 1 lives on.
    expect(more.map((r) => r.result)).toEqual([RESULT_OK, RESULT_SESSION_EXPIRED, RESULT_OK]);
    expect(m.session(2n)).toBeUndefined();
    m = await reopen(m, dir, limits);
    const after = await m.apply(entries(7, 1, [write(2n, 1n, 1500), register(1500), write(1n, 3n, 1500)]));
    expect(after.map((r) => r.result)).toEqual([RESULT_SESSION_EXPIRED, RESULT_OK, RESULT_OK]);
    expect(m.session(8n)).toMatchObject({ registered: true });
    expect(read(m, "r")).toBe("1.1 1.2 1.3 ");
  });

  test("limits at apply: a Put or an Append whose value would pass the proposer's limit changes nothing", async () => {
    const m = await open(tempDir());
    const limit = 10;
    const results = await m.apply(
      entries(1, 1, [
        { op: "Append", key: "a", value: "12345", clientId: 8n, commandId: 1n, maxValueBytes: limit },
        { op: "Append", key: "a", value: "67890", clientId: 8n, commandId: 2n, maxValueBytes: limit },
        { op: "Append", key: "a", value: "x", clientId: 8n, commandId: 3n, maxValueBytes: limit },
        { op: "Append", key: "a", value: "x", clientId: 8n, commandId: 3n, maxValueBytes: limit }, // its retry: the same answer
        { op: "Put", key: "b", value: "x".repeat(11), clientId: 8n, commandId: 4n, maxValueBytes: limit },
        { op: "Append", key: "c", value: "x".repeat(11), clientId: 0n, commandId: 0n, maxValueBytes: limit },
      ]),
    );
    expect(results.map((r) => r.result)).toEqual([RESULT_OK, RESULT_OK, RESULT_VALUE_TOO_LARGE, RESULT_VALUE_TOO_LARGE, RESULT_VALUE_TOO_LARGE, RESULT_VALUE_TOO_LARGE]);
    expect(read(m, "a")).toBe("1234567890");
    expect(read(m, "b")).toBeNull();
    expect(read(m, "c")).toBeNull();
    expect(m.userKeyCount).toBe(1);
  });

  test("a large apply is split into several atomic batches, each with its applied index", async () => {
    const dir = tempDir();
    let m = await open(dir, { maxBatchBytes: 10_000 });
    const big = "z".repeat(3000);
    await m.apply(entries(1, 1, Array.from({ length: 20 }, (_, i) => ({ op: "Put", key: `k${i}`, value: big, clientId: 1n, commandId: BigInt(i + 1) }) as const)));
    expect(m.lastApplied()).toBe(20);
    m = await reopen(m, dir);
    expect(m.lastApplied()).toBe(20);
    expect(read(m, "k19")).toBe(big);
  });
});

describe("key count", () => {
  test("counts keys created and deleted, with repeats inside one batch, and survives a restart", async () => {
    const dir = tempDir();
    let m = await open(dir);
    let id = 0n;
    const c = (op: WriteCommand["op"], key: string): Partial<WriteCommand> => ({ op, key, value: "x", clientId: 3n, commandId: ++id });
    await m.apply(entries(1, 1, [c("Put", "a"), c("Put", "a"), c("Append", "b"), c("Append", "b"), c("Delete", "a"), c("Delete", "a"), c("Put", "a"), "noop"]));
    expect(m.userKeyCount).toBe(2);
    await m.apply(entries(9, 1, [c("Delete", "b"), c("Delete", "missing")]));
    expect(m.userKeyCount).toBe(1);
    m = await reopen(m, dir);
    expect(m.userKeyCount).toBe(1);
  });

  test("a state written before the count was kept is counted once at open", async () => {
    const dir = tempDir();
    let m = await open(dir);
    await m.apply(entries(1, 1, [{ op: "Put", key: "a", commandId: 1n }, { op: "Put", key: "b", commandId: 2n }, { op: "Put", key: "c", commandId: 3n }]));
    await close(m);
    // Remove the count record, as a state from an older build would lack it.
    const db = await DB.open(path.join(dir, "state-1"));
    await db.del(KEY_COUNT_KEY);
    await db.close();
    m = await open(dir);
    expect(m.userKeyCount).toBe(3);
  });
});

describe("snapshot stream versions", () => {
  /** The stream with its header frame's version byte set to `version` (header resealed). */
  function withVersion(chunks: Uint8Array[], version: number): Uint8Array[] {
    const first = new Uint8Array(chunks[0]!);
    const length = new DataView(first.buffer).getUint32(0, true);
    expect(first[FRAME_PREFIX_BYTES]).toBe(1); // the header frame's type
    first[FRAME_PREFIX_BYTES + 1] = version;
    sealFrame(first, length);
    return [first, ...chunks.slice(1)];
  }

  test("a leader sends table files as version 5; version 4 (older leaders) still installs; a newer version is refused by name", async () => {
    const source = await open(tempDir(), { snapshotFormat: "files" });
    await source.apply(entries(1, 2, [{ op: "Put", key: "a", value: "1", clientId: 7n, commandId: 1n }]));
    const { meta, chunks } = await source.snapshot();
    const collected = await collect(chunks);
    expect(collected[0]![FRAME_PREFIX_BYTES + 1]).toBe(SNAPSHOT_FILES_VERSION);
    expect(SNAPSHOT_FILES_VERSION).toBe(5);

    const fromOlder = await open(tempDir());
    await fromOlder.restore(meta, replay(withVersion(collected, 4)));
    expect(read(fromOlder, "a")).toBe("1");

    const target = await open(tempDir());
    await target.apply(entries(1, 1, [{ op: "Put", key: "kept", value: "x", clientId: 1n, commandId: 1n }]));
    await expect(target.restore(meta, replay(withVersion(collected, 6)))).rejects.toThrow(/version 6 is not supported.*newer build; upgrade this node/);
    expect(read(target, "kept")).toBe("x");
  });
});

// Every snapshot test runs with both formats a leader can send: table files (version 5) and pairs (version 3).
for (const snapshotFormat of ["files", "pairs"] as const) describe(`snapshot and restore (${snapshotFormat})`, () => {
  async function fill(m: KVStateMachine, n: number, valueBytes: number): Promise<void> {
    const value = "v".repeat(valueBytes);
    for (let start = 1; start <= n; start += 100) {
      const cmds = Array.from({ length: Math.min(100, n - start + 1) }, (_, i) => ({ op: "Put", key: `key-${start + i}`, value, clientId: BigInt(start + i), commandId: 1n }) as const);
      await m.apply(entries(m.lastApplied() + 1, 2, cmds));
    }
  }

  test("a restored snapshot's configuration (learners, addresses) is kept and survives a reopen", async () => {
    const source = await open(tempDir(), { snapshotFormat });
    await fill(source, 20, 10);
    const { meta, chunks } = await source.snapshot();
    const collected = await collect(chunks);
    const withConfig = { ...meta, members: [0, 1, 2], learners: [5], addresses: { 5: "127.0.0.1:7005" } };
    const targetDir = tempDir();
    const target = await open(targetDir);
    expect(target.restoredSnapshot()).toBeNull();
    await target.restore(withConfig, replay(collected));
    expect(target.restoredSnapshot()).toEqual(withConfig);
    const again = await reopen(target, targetDir);
    expect(again.restoredSnapshot()).toEqual(withConfig);
    await again.close();
    await source.close();
  });

  test("a snapshot taken before more writes restores exactly the state at its index", async () => {
    const source = await open(tempDir(), { snapshotChunkBytes: 4096, snapshotFormat });
    await fill(source, 500, 100);
    const { meta, chunks } = await source.snapshot();
    expect(meta).toEqual({ index: 500, term: 2, members: [0, 1, 2] });
    // Writes after the snapshot must not leak into its stream.
    await source.apply(entries(501, 3, [{ op: "Put", key: "key-1", value: "changed", clientId: 999n, commandId: 1n }, { op: "Put", key: "late", value: "x", clientId: 999n, commandId: 2n }]));
    const collected = await collect(chunks);
    for (const c of collected) expect(c.length).toBeLessThanOrEqual(4096);

    const targetDir = tempDir();
    const target = await open(targetDir);
    await target.apply(entries(1, 1, [{ op: "Put", key: "stale", value: "old", clientId: 1n, commandId: 1n }]));
    await target.restore(meta, replay(collected));
    expect(target.lastApplied()).toBe(500);
    expect(target.lastAppliedTerm()).toBe(2);
    expect(target.durableAppliedIndex()).toBe(500);
    expect(read(target, "stale")).toBeNull();
    expect(target.userKeyCount).toBe(500); // counted from the stream, not carried over

    expect(read(target, "key-1")).toBe("v".repeat(100));
    expect(read(target, "key-500")).toBe("v".repeat(100));
    expect(read(target, "late")).toBeNull();
    expect(target.session(250n)?.commandId).toBe(1n);
    expect(target.session(999n)).toBeUndefined();
    // Exactly one state directory remains, and it is what CURRENT names.
    const states = fs.readdirSync(targetDir).filter((n) => n.startsWith("state-"));
    expect(states).toEqual([fs.readFileSync(path.join(targetDir, "CURRENT"), "utf8").trim()]);
    // The install is durable: a restart sees it.
    const again = await reopen(target, targetDir);
    expect(again.lastApplied()).toBe(500);
    expect(read(again, "key-77")).toBe("v".repeat(100));
  });

  test("a stream that fails midway leaves the old state intact, in memory and on disk", async () => {
    const source = await open(tempDir(), { snapshotChunkBytes: 2048, snapshotFormat });
    await fill(source, 300, 50);
    const { meta, chunks } = await source.snapshot();
    const collected = await collect(chunks);
    expect(collected.length).toBeGreaterThan(4);

    const targetDir = tempDir();
    let target = await open(targetDir);
    await target.apply(entries(1, 1, [{ op: "Put", key: "mine", value: "kept", clientId: 4n, commandId: 3n }]));
    await expect(target.restore(meta, replay(collected, Math.floor(collected.length / 2)))).rejects.toThrow(/link went down/);
    expect(target.lastApplied()).toBe(1);
    expect(read(target, "mine")).toBe("kept");
    expect(read(target, "key-1")).toBeNull();
    expect(target.session(4n)?.commandId).toBe(3n);
    expect(fs.readdirSync(targetDir).filter((n) => n.startsWith("state-"))).toEqual(["state-1"]);
    // A truncated stream (ends early without error) is refused the same way.
    await expect(target.restore(meta, replay(collected.slice(0, -1)))).rejects.toThrow(/truncated/);
    // So is a stream for a different index than the install asked for.
    await expect(target.restore({ ...meta, index: meta.index + 1 }, replay(collected))).rejects.toThrow(/index/);
    target = await reopen(target, targetDir);
    expect(read(target, "mine")).toBe("kept");
    expect(target.lastApplied()).toBe(1);
    // And the machine still works: a good stream installs.
    await target.restore(meta, replay(collected));
    expect(read(target, "key-300")).toBe("v".repeat(50));
  });

  test("leftovers of an install interrupted by a crash are removed at open", async () => {
    const dir = tempDir();
    let m = await open(dir);
    await m.apply(entries(1, 1, [{ op: "Put", key: "a", value: "1" }]));
    await close(m);
    // A crash after building state-2 but before the pointer switch.
    fs.mkdirSync(path.join(dir, "state-2"));
    fs.writeFileSync(path.join(dir, "state-2", "junk"), "partial");
    fs.writeFileSync(path.join(dir, "CURRENT.tmp"), "state-2\n");
    m = await open(dir);
    expect(read(m, "a")).toBe("1");
    expect(fs.existsSync(path.join(dir, "state-2"))).toBe(false);
    expect(fs.existsSync(path.join(dir, "CURRENT.tmp"))).toBe(false);
  });
  test("a flipped byte in any chunk is refused and the old state kept; the untouched stream then installs", async () => {
    const source = await open(tempDir(), { snapshotChunkBytes: 4096, snapshotFormat });
    await fill(source, 400, 60);
    // Deletions too: in the files format they travel as memtable entries over values in tables.
    await source.apply(entries(401, 2, [{ op: "Delete", key: "key-7", clientId: 7n, commandId: 2n }]));
    const { meta, chunks } = await source.snapshot();
    const collected = await collect(chunks);
    const targetDir = tempDir();
    const target = await open(targetDir);
    await target.apply(entries(1, 1, [{ op: "Put", key: "mine", value: "kept", clientId: 4n, commandId: 3n }]));
    for (const at of [0, 1, Math.floor(collected.length / 2), collected.length - 1]) {
      const damaged = collected.map((c) => c.slice());
      const chunk = damaged[at]!;
      chunk[Math.floor(chunk.length / 2)]! ^= 0x40;
      await expect(target.restore(meta, replay(damaged))).rejects.toThrow(/checksum|corrupt|length|frame/i);
      expect(read(target, "mine")).toBe("kept");
      expect(target.lastApplied()).toBe(1);
      expect(fs.readdirSync(targetDir).filter((n) => n.startsWith("state-"))).toEqual(["state-1"]);
    }
    await target.restore(meta, replay(collected));
    expect(target.lastApplied()).toBe(401);
    expect(read(target, "key-7")).toBeNull();
    expect(read(target, "key-8")).toBe("v".repeat(60));
    expect(target.userKeyCount).toBe(399);
  });
});

test("an abandoned snapshot stream releases its LSM snapshot, even if never read", async () => {
  const m = await open(tempDir());
  await m.apply(entries(1, 1, [{ op: "Put", key: "a", value: "1" }]));
  const db = (m as unknown as { db: { stats(): { liveSnapshots: number } } }).db;
  const unread = await m.snapshot();
  expect(db.stats().liveSnapshots).toBe(1);
  await (unread.chunks as AsyncIterableIterator<Uint8Array>).return!();
  expect(db.stats().liveSnapshots).toBe(0);
  const partly = await m.snapshot();
  const iterator = (partly.chunks as AsyncIterable<Uint8Array>)[Symbol.asyncIterator]();
  await iterator.next();
  await iterator.return!();
  const whole = await m.snapshot();
  await collect(whole.chunks);
  expect(db.stats().liveSnapshots).toBe(0);
});

test("a table gone bad on the sending replica fails its snapshot stream as state-machine corruption, never shipped", async () => {
  const dir = tempDir();
  let m = await open(dir, { snapshotFormat: "files" });
  const value = "v".repeat(200);
  for (let start = 1; start <= 2000; start += 100) {
    const cmds = Array.from({ length: 100 }, (_, i) => ({ op: "Put", key: `key-${start + i}`, value, clientId: BigInt(start + i), commandId: 1n }) as const);
    await m.apply(entries(m.lastApplied() + 1, 2, cmds));
  }
  await m.sync();
  m = await reopen(m, dir, { snapshotFormat: "files" });
  // Flip a byte in the middle of the largest table (a data block): the replica does not read it until it ships it.
  const state = path.join(dir, fs.readFileSync(path.join(dir, "CURRENT"), "utf8").trim());
  const tables = fs.readdirSync(state).filter((n) => n.endsWith(".sst")).map((n) => path.join(state, n));
  const largest = tables.sort((a, b) => fs.statSync(b).size - fs.statSync(a).size)[0]!;
  const bytes = fs.readFileSync(largest);
  bytes[Math.floor(bytes.length / 3)]! ^= 0x20;
  fs.writeFileSync(largest, bytes);
  const { chunks } = await m.snapshot();
  const error = await collect(chunks).then(() => null, (e: unknown) => e);
  expect(isStateMachineCorruption(error)).toBe(true);
  expect(String(error)).toMatch(/checksum mismatch/);
});

describe("applied ahead of the Raft log (a leader's early apply)", () => {
  test("no background flush and no flush at close makes an applied index above the limit durable", async () => {
    const dir = tempDir();
    const m = await open(dir, { syncEveryEntries: 2 });
    await m.apply(entries(1, 1, [{ key: "a", value: "1" }, { key: "b", value: "2" }]));
    while (m.syncInFlight) await Bun.sleep(1);
    expect(m.durableAppliedIndex()).toBe(2);
    // The node's log is durable through 2; entries 3..6 are committed elsewhere but not on its disk.
    m.limitDurableApplied(2);
    await m.apply(entries(3, 1, [{ key: "c", value: "3" }, { key: "d", value: "4" }, { key: "e", value: "5" }, { key: "f", value: "6" }]));
    expect(m.syncInFlight).toBe(false);
    expect(m.durableAppliedIndex()).toBe(2);
    await expect(m.sync()).rejects.toThrow(/durable only through 2/);
    // The node stops during its write: what the close keeps must not be ahead of the log.
    const again = await reopen(m, dir);
    expect(again.lastApplied()).toBe(2);
    expect(read(again, "c")).toBeNull();
    expect(read(again, "b")).toBe("2");
  });

  test("once the limit is lifted the next apply flushes as usual", async () => {
    const dir = tempDir();
    const m = await open(dir, { syncEveryEntries: 2 });
    m.limitDurableApplied(0);
    await m.apply(entries(1, 1, [{ key: "a", value: "1" }, { key: "b", value: "2" }, { key: "c", value: "3" }]));
    expect(m.syncInFlight).toBe(false);
    m.limitDurableApplied(null);
    await m.apply(entries(4, 1, [{ key: "d", value: "4" }]));
    while (m.syncInFlight) await Bun.sleep(1);
    expect(m.durableAppliedIndex()).toBe(4);
    const again = await reopen(m, dir);
    expect(again.lastApplied()).toBe(4);
  });
});
