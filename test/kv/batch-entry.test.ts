// Batch entries (many client writes in one Raft entry) on a real LSM: each command exactly-once
// through its own session with its own result, refused and applied commands side by side, one
// revision per entry in the data and the watch history, and the same state after a restart.
import { describe, expect, test } from "bun:test";
import { machineFixture } from "./machine-fixture.ts";
import { batchItem, decodeBatchCommands, encodeBatchCommand, type BatchItem } from "../../src/kv/batch-command.ts";
import { decodeCommand, encodeCommand } from "../../src/kv/command.ts";
import { KVCorruptionError } from "../../src/kv/errors.ts";
import { EVENT_DELETE, EVENT_PUT, readEvents } from "../../src/kv/history.ts";
import { decodeStored } from "../../src/kv/revisions.ts";
import { userKey } from "../../src/kv/keys.ts";
import { KVStateMachine } from "../../src/kv/state-machine.ts";
import {
  RESULT_COMMAND_REUSED,
  RESULT_NO_KEY,
  RESULT_OK,
  RESULT_SESSION_EXPIRED,
  RESULT_STALE_COMMAND,
  RESULT_VALUE_TOO_LARGE,
} from "../../src/kv/sessions.ts";
import { EntryType, type Entry } from "../../src/raft/index.ts";

const machine = machineFixture("kvraft-batch-");
const close = machine.close;

async function open(dir = machine.tempDir()): Promise<{ m: KVStateMachine; dir: string }> {
  return { m: await machine.open(dir), dir };
}

type Op = "Put" | "Append" | "Delete";
const cmd = (op: Op, clientId: bigint, commandId: bigint, key: string, value = "", registered = false): BatchItem =>
  batchItem({ op, clientId, commandId, key, value, registered });

function batchEntry(index: number, items: BatchItem[], options: { timestamp?: number; maxValueBytes?: number } = {}): Entry {
  const data = encodeBatchCommand(items, { nonce: BigInt(1000 + index), timestamp: options.timestamp ?? 1_000, maxValueBytes: options.maxValueBytes ?? 0 });
  return { index, term: 1, type: EntryType.Normal, data };
}

function singleEntry(index: number, op: Op, clientId: bigint, commandId: bigint, key: string, value = ""): Entry {
  return { index, term: 1, type: EntryType.Normal, data: encodeCommand({ op, clientId, commandId, key, value, timestamp: 1_000 }) };
}

const text = new TextDecoder();
const read = (m: KVStateMachine, key: string) => {
  const v = m.read(key);
  return v === null ? null : text.decode(v);
};
const stored = (m: KVStateMachine, key: string) => decodeStored(m.store.getSync(userKey(key))!);

describe("batch entry encoding", () => {
  test("round trip: every command keeps its op, session ids, key and value; the header's time and limit apply to all", () => {
    const items = [cmd("Put", 7n, 1n, "a", "x"), cmd("Append", 8n, 3n, "ü", "yz", true), cmd("Delete", 0n, 0n, "c")];
    const data = encodeBatchCommand(items, { nonce: 99n, timestamp: 1234, maxValueBytes: 10 });
    const header = decodeCommand(data, 5);
    expect(header).toMatchObject({ op: 6, clientId: 0n, commandId: 99n, timestamp: 1234, maxValueBytes: 10 });
    const decoded = decodeBatchCommands(header, 5);
    expect(decoded.map((c) => [c.op, c.clientId, c.commandId, c.registered, text.decode(c.key), text.decode(c.value), c.timestamp, c.maxValueBytes])).toEqual([
      [0, 7n, 1n, false, "a", "x", 1234, 10],
      [1, 8n, 3n, true, "ü", "yz", 1234, 10],
      [3, 0n, 0n, false, "c", "", 1234, 10],
    ]);
  });

  test("a truncated, padded or lying body is corruption naming the entry, not a crash", () => {
    const data = encodeBatchCommand([cmd("Put", 7n, 1n, "a", "x"), cmd("Put", 7n, 2n, "b", "y")], { nonce: 1n, timestamp: 1, maxValueBytes: 0 });
    const broken = (bytes: Uint8Array) => () => decodeBatchCommands(decodeCommand(bytes, 42), 42);
    expect(broken(data.subarray(0, data.length - 1))).toThrow(KVCorruptionError);
    expect(broken(Uint8Array.from([...data, 0]))).toThrow(/entry 42: 1 bytes after the last batch command/);
    const lying = data.slice();
    lying[35] = 0xff; // count
    expect(broken(lying)).toThrow(/claims/);
    const badOp = data.slice();
    badOp[39] = 4; // a Txn cannot ride in a batch
    expect(broken(badOp)).toThrow(/op code 4/);
  });
});

describe("batch entry apply", () => {
  test("every command applies in order at the entry's revision, with one result each; the history holds one event per key", async () => {
    const { m } = await open();
    const results = await m.apply([
      singleEntry(1, "Put", 0n, 0n, "old", "1"),
      batchEntry(2, [cmd("Put", 1n, 1n, "a", "A"), cmd("Append", 2n, 1n, "old", "+"), cmd("Delete", 3n, 1n, "missing"), cmd("Put", 0n, 0n, "b", "B")]),
      batchEntry(3, [cmd("Delete", 4n, 1n, "a"), cmd("Put", 5n, 1n, "b", "B2")]),
    ]);
    expect(results.map((r) => r.index)).toEqual([1, 2, 3]);
    expect([...results[1]!.batch!]).toEqual([RESULT_OK, RESULT_OK, RESULT_NO_KEY, RESULT_OK]);
    expect([...results[2]!.batch!]).toEqual([RESULT_OK, RESULT_OK]);
    expect(m.lastApplied()).toBe(3);
    expect([read(m, "a"), read(m, "b"), read(m, "old")]).toEqual([null, "B2", "1+"]);
    expect(stored(m, "old")).toMatchObject({ createRevision: 1, modRevision: 2, version: 2 });
    expect(stored(m, "b")).toMatchObject({ createRevision: 2, modRevision: 3, version: 2 });
    expect(m.userKeyCount).toBe(2);
    const { events } = readEvents(m.store, 1, 3, 1 << 20, () => true);
    expect(events.map((e) => [e.revision, text.decode(e.event.key), e.event.type])).toEqual([
      [1, "old", EVENT_PUT],
      [2, "a", EVENT_PUT],
      [2, "b", EVENT_PUT],
      [2, "old", EVENT_PUT],
      [3, "a", EVENT_DELETE],
      [3, "b", EVENT_PUT],
    ]);
    expect(m.session(2n)).toMatchObject({ commandId: 1n, lastIndex: 2, result: RESULT_OK });
    expect(m.session(3n)).toMatchObject({ commandId: 1n, result: RESULT_NO_KEY });
  });

  test("exactly-once per command: a retried batch answers each command from its session, applied ones are not applied again", async () => {
    const { m } = await open();
    const first = [cmd("Append", 1n, 5n, "counter", "x"), cmd("Append", 2n, 5n, "log", "y")];
    await m.apply([batchEntry(1, first)]);
    // The same commands again (a client retry after a lost answer), next to new ones, and singly.
    const results = await m.apply([
      batchEntry(2, [...first, cmd("Append", 3n, 1n, "other", "z")]),
      singleEntry(3, "Append", 1n, 5n, "counter", "x"),
    ]);
    expect([...results[0]!.batch!]).toEqual([RESULT_OK, RESULT_OK, RESULT_OK]);
    expect(results[1]!.result).toBe(RESULT_OK);
    expect([read(m, "counter"), read(m, "log"), read(m, "other")]).toEqual(["x", "y", "z"]);
    // A retry refreshes the session's age without changing its command.
    expect(m.session(1n)).toMatchObject({ commandId: 5n, lastIndex: 3 });
  });

  test("a batch mixing applied and refused commands: each refusal changes nothing, the rest apply", async () => {
    const { m } = await open();
    await m.apply([batchEntry(1, [cmd("Put", 1n, 5n, "s1", "v"), cmd("Put", 2n, 5n, "s2", "v")])]);
    const results = await m.apply([
      batchEntry(2, [
        cmd("Put", 1n, 4n, "stale", "v"), // older than the session's last
        cmd("Put", 2n, 5n, "reused", "v"), // the last commandId for a different command
        cmd("Put", 9n, 1n, "gone", "v", true), // a registered session that does not exist
        cmd("Put", 3n, 1n, "big", "0123456789"), // over the entry's value limit
        cmd("Append", 4n, 1n, "s1", "12345"), // the resulting value would pass the limit
        cmd("Put", 5n, 1n, "fine", "ok"),
      ], { maxValueBytes: 5 }),
    ]);
    expect([...results[0]!.batch!]).toEqual([
      RESULT_STALE_COMMAND,
      RESULT_COMMAND_REUSED,
      RESULT_SESSION_EXPIRED,
      RESULT_VALUE_TOO_LARGE,
      RESULT_VALUE_TOO_LARGE,
      RESULT_OK,
    ]);
    expect(["stale", "reused", "gone", "big", "s1", "fine"].map((k) => read(m, k))).toEqual([null, null, null, null, "v", "ok"]);
    // Refusals of stale and reused ids leave the session as it was; no session for the missing one.
    expect(m.session(1n)).toMatchObject({ commandId: 5n, lastIndex: 1 });
    expect(m.session(2n)).toMatchObject({ commandId: 5n, lastIndex: 1 });
    expect(m.session(9n)).toBeUndefined();
    expect(m.session(3n)).toMatchObject({ commandId: 1n, result: RESULT_VALUE_TOO_LARGE });
  });

  test("restart: the LSM resumes at the batch entry, replays nothing twice, and a fresh replica applying the same log reaches the same state", async () => {
    const log = [
      batchEntry(1, [cmd("Append", 1n, 1n, "c", "a"), cmd("Put", 2n, 1n, "k", "1")]),
      batchEntry(2, [cmd("Append", 1n, 2n, "c", "b"), cmd("Append", 1n, 2n, "c2", "ignored"), cmd("Delete", 3n, 1n, "k")]),
      singleEntry(3, "Append", 1n, 3n, "c", "c"),
    ];
    const { m, dir } = await open();
    await m.apply(log);
    await close(m);
    const again = (await open(dir)).m;
    expect(again.lastApplied()).toBe(3);
    // The driver hands the tail again after a restart: nothing at or below the applied index applies twice.
    expect(await again.apply(log)).toEqual([]);
    const other = (await open()).m;
    const results = await other.apply(log);
    // Two commands of one session in one entry: the second reuses the first's id for another command.
    expect([...results[1]!.batch!]).toEqual([RESULT_OK, RESULT_COMMAND_REUSED, RESULT_OK]);
    for (const replica of [again, other]) {
      expect([read(replica, "c"), read(replica, "c2"), read(replica, "k")]).toEqual(["abc", null, null]);
      expect(stored(replica, "c")).toMatchObject({ createRevision: 1, modRevision: 3, version: 3 });
      expect(replica.session(1n)).toMatchObject({ commandId: 3n, lastIndex: 3 });
      expect(replica.session(3n)).toMatchObject({ commandId: 1n, lastIndex: 2 });
      expect(replica.userKeyCount).toBe(1);
    }
  });
});
