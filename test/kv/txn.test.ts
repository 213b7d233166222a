// Revisions, Range, DeleteRange and Txn on a real LSM through KVStateMachine: every write stamped
// with its entry's index, compares and operations atomic at one revision, a retried Txn answered
// from its session, the revisions carried by a snapshot, and a state of the old layout refused.
import { describe, expect, test } from "bun:test";
import { machineFixture } from "./machine-fixture.ts";
import * as fs from "node:fs";
import * as path from "node:path";
import { encodeCommand, type WriteCommand } from "../../src/kv/command.ts";
import { KVStateMachine } from "../../src/kv/state-machine.ts";
import { EntryType, type Entry } from "../../src/raft/index.ts";
import { DB } from "../../src/lsm/index.ts";
import { APPLIED_KEY, encodeApplied, userKey } from "../../src/kv/keys.ts";
import { encodeTxnCommand, type TxnOp, type TxnRequest, type TxnResult } from "../../src/kv/txn-types.ts";
import { prefixEnd, scanRange, type RangeSpec } from "../../src/kv/range.ts";
import { validateTxn, txnLimits } from "../../src/kv/txn.ts";
import { EVENT_PREFIX, EVENT_PUT, EVENT_VALUE_PREFIX, encodeEvent, eventKey, prevValue, readEvents } from "../../src/kv/history.ts";
import { InvalidArgumentError } from "../../src/kv/errors.ts";

const { tempDir, open, reopen } = machineFixture("kvraft-txn-");

function scan(db: DB, gte: Uint8Array, lt: Uint8Array): Uint8Array[] {
  const keys: Uint8Array[] = [];
  const it = db.iterator({ gte, lt });
  for (let e = it.read(); e !== undefined; e = it.read()) keys.push(e[0]);
  it.close();
  return keys;
}

const enc = new TextEncoder();
const dec = new TextDecoder();
const b = (s: string) => enc.encode(s);
const s = (u: Uint8Array) => dec.decode(u);

let nextIndex = 1;
function put(key: string, value: string, extra: Partial<WriteCommand> = {}): Entry {
  const index = nextIndex++;
  return { index, term: 1, type: EntryType.Normal, data: encodeCommand({ op: "Put", clientId: 1n, commandId: BigInt(index), key, value, ...extra }) };
}
function txn(request: Partial<TxnRequest>, clientId = 2n, commandId?: bigint): Entry {
  const index = nextIndex++;
  const full: TxnRequest = { compare: [], success: [], failure: [], ...request };
  return { index, term: 1, type: EntryType.Normal, data: encodeTxnCommand({ clientId, commandId: commandId ?? BigInt(index), registered: false, timestamp: 0 }, full) };
}
const putOp = (key: string, value: string, prevKv = false): TxnOp => ({ type: "put", key: b(key), value: b(value), prevKv });
const delOp = (key: string, rangeEnd = "", prevKv = false): TxnOp => ({ type: "delete", key: b(key), rangeEnd: b(rangeEnd), prevKv });
const rangeSpec = (key: string, rangeEnd: Uint8Array | string, extra: Partial<RangeSpec> = {}): RangeSpec => ({
  key: b(key),
  rangeEnd: typeof rangeEnd === "string" ? b(rangeEnd) : rangeEnd,
  limit: 0,
  keysOnly: false,
  countOnly: false,
  ...extra,
});
const range = (m: KVStateMachine, spec: RangeSpec, bytes = 1 << 20) => scanRange(m.store, spec, { bytes });

async function applyTxn(m: KVStateMachine, entry: Entry): Promise<TxnResult> {
  const [applied] = await m.apply([entry]);
  return applied!.txn!;
}

describe("revisions", () => {
  test("each write is stamped with its entry's index: create, mod and version per key", async () => {
    nextIndex = 1;
    const m = await open(tempDir());
    await m.apply([put("a", "1"), put("b", "1"), put("a", "2")]);
    const r = range(m, rangeSpec("a", "\0"));
    expect(r.kvs.map((kv) => [s(kv.key), s(kv.value), kv.createRevision, kv.modRevision, kv.version])).toEqual([
      ["a", "2", 1, 3, 2],
      ["b", "1", 2, 2, 1],
    ]);
    // Deleted and put again: a new life, created at the new revision.
    await m.apply([put("a", "", { op: "Delete" }), put("a", "3")]);
    expect(range(m, rangeSpec("a", "")).kvs.map((kv) => [kv.createRevision, kv.modRevision, kv.version])).toEqual([[5, 5, 1]]);
    expect(s(m.read("a")!)).toBe("3");
  });

  test("the watch history holds every change by revision, prev revisions included", async () => {
    nextIndex = 1;
    const m = await open(tempDir());
    await m.apply([put("k", "1"), put("k", "2"), txn({ success: [delOp("k", "", true)] })]);
    const { events } = readEvents(m.store, 1, 3, 1 << 20, () => true);
    expect(events.map((e) => [e.revision, e.event.type, s(e.event.key), s(e.event.value), e.event.prev?.modRevision ?? 0])).toEqual([
      [1, 0, "k", "1", 0],
      [2, 0, "k", "2", 1],
      [3, 1, "k", "", 2],
    ]);
    await m.trimHistory(3);
    expect(m.historyStart).toBe(3);
    expect(readEvents(m.store, 1, 3, 1 << 20, () => true).events.map((e) => e.revision)).toEqual([3]);
  });

  test("a put's event keeps its value after the key changes again, across applies and a restart; trimming drops the moved values", async () => {
    nextIndex = 1;
    const dir = tempDir();
    let m = await open(dir);
    await m.apply([put("k", "1")]);
    await m.apply([put("k", "2"), put("j", "1")]);
    await m.apply([txn({ success: [delOp("k", "", true)] })]);
    m = await reopen(m, dir);
    await m.apply([put("k", "3")]);
    const values = () =>
      readEvents(m.store, 1, 5, 1 << 20, () => true).events.map((e) => [e.revision, e.event.type, s(e.event.key), s(e.event.value), e.event.meta.version]);
    expect(values()).toEqual([
      [1, 0, "k", "1", 1],
      [2, 0, "k", "2", 2],
      [3, 0, "j", "1", 1],
      [4, 1, "k", "", 0],
      [5, 0, "k", "3", 1],
    ]);
    // A watch with prev_kv reads the value before each change from the earlier event.
    const events = readEvents(m.store, 1, 5, 1 << 20, () => true).events;
    expect(events.map((e) => (e.event.prev === null ? null : s(prevValue(m.store, e.event) ?? b("?"))))).toEqual([null, "1", null, "2", null]);
    // Values moved out of the key's record (revisions 1 and 2) are history: trimmed with it.
    const moved = () => scan(m.store, EVENT_VALUE_PREFIX, EVENT_PREFIX).length;
    expect(moved()).toBe(2);
    // (A restarted machine's history starts after its applied index: trimming goes past that.)
    await m.trimHistory(6);
    expect(moved()).toBe(0);
    expect(values()).toEqual([]);
  });

  test("a put event written inline by an older build is still read", async () => {
    const m = await open(tempDir());
    const stored = new Uint8Array(24 + 1);
    stored.set([7], 0); // create 7
    stored.set([7], 8); // mod 7
    stored.set([1], 16); // version 1
    stored[24] = 0x78;
    await m.store.write([{ type: "put", key: eventKey(7, b("old")), value: encodeEvent(EVENT_PUT, null, stored) }]);
    expect(readEvents(m.store, 7, 7, 1 << 20, () => true).events.map((e) => [s(e.event.key), s(e.event.value), e.event.meta.modRevision])).toEqual([["old", "x", 7]]);
  });

  test("a snapshot carries revisions and Txn answers; the receiver's history starts after it", async () => {
    nextIndex = 1;
    const a = await open(tempDir());
    const first = [put("x", "1"), put("x", "2")];
    const original = txn({ success: [putOp("y", "1")] }, 9n, 1n);
    await a.apply([...first, original]);
    const { meta, chunks } = await a.snapshot();
    const bm = await open(tempDir());
    await bm.restore(meta, chunks);
    expect(range(bm, rangeSpec("x", "z")).kvs.map((kv) => [s(kv.key), kv.createRevision, kv.modRevision, kv.version])).toEqual([
      ["x", 1, 2, 2],
      ["y", 3, 3, 1],
    ]);
    expect(bm.historyStart).toBe(4);
    // The retried Txn is answered from the session on the new replica, with the original answer.
    const retry = await applyTxn(bm, { ...original, index: 4 });
    expect(retry.revision).toBe(3);
    expect(s(bm.read("y")!)).toBe("1");
  });

  test("a state directory of the layout before revisions is refused with advice", async () => {
    const dir = tempDir();
    // What an older build left: CURRENT, one LSM with an applied index and a bare value.
    fs.writeFileSync(path.join(dir, "CURRENT"), "state-1\n");
    const db = await DB.open(path.join(dir, "state-1"));
    await db.write([
      { type: "put", key: userKey("old"), value: b("bare value") },
      { type: "put", key: APPLIED_KEY, value: encodeApplied(7, 1, 0) },
    ]);
    await db.close();
    await expect(open(dir)).rejects.toThrow(/layout of kvraft before revisions.*Move this node's data directory aside/s);
    // An old state without keys has nothing to convert: it opens.
    const empty = tempDir();
    fs.writeFileSync(path.join(empty, "CURRENT"), "state-1\n");
    const db2 = await DB.open(path.join(empty, "state-1"));
    await db2.write([{ type: "put", key: APPLIED_KEY, value: encodeApplied(7, 1, 0) }]);
    await db2.close();
    const m = await open(empty);
    expect(m.lastApplied()).toBe(7);
  });
});

describe("range", () => {
  test("[key, range_end), prefix, all keys, limit with more and next_key, keys_only, count_only, byte bound", async () => {
    nextIndex = 1;
    const m = await open(tempDir());
    await m.apply(["a", "ab", "abc", "b", "c"].map((k) => put(k, `v-${k}`)));
    const keys = (spec: RangeSpec, bytes?: number) => range(m, spec, bytes).kvs.map((kv) => s(kv.key));
    expect(keys(rangeSpec("a", "b"))).toEqual(["a", "ab", "abc"]);
    expect(keys(rangeSpec("ab", prefixEnd(b("ab"))))).toEqual(["ab", "abc"]);
    expect(keys(rangeSpec("", "\0"))).toEqual(["a", "ab", "abc", "b", "c"]);
    expect(keys(rangeSpec("b", ""))).toEqual(["b"]);
    const page = range(m, rangeSpec("a", "\0", { limit: 2 }));
    expect([page.kvs.length, page.more, page.count, s(page.nextKey)]).toEqual([2, true, 5, "abc"]);
    const rest = range(m, rangeSpec(s(page.nextKey), "\0", { limit: 10 }));
    expect([rest.kvs.map((kv) => s(kv.key)), rest.more]).toEqual([["abc", "b", "c"], false]);
    expect(range(m, rangeSpec("a", "\0", { keysOnly: true })).kvs.every((kv) => kv.value.length === 0)).toBe(true);
    const counted = range(m, rangeSpec("a", "\0", { countOnly: true }));
    expect([counted.kvs.length, counted.count]).toEqual([0, 5]);
    // A tiny byte bound still answers one key, and says there is more.
    const cut = range(m, rangeSpec("a", "\0"), 1);
    expect([cut.kvs.length, cut.more, s(cut.nextKey)]).toEqual([1, true, "ab"]);
  });

  test("an inverted range and a huge limit are refused with what to do", () => {
    const limits = txnLimits({});
    const bad = (op: TxnOp) => () => validateTxn({ compare: [], success: [op], failure: [] }, limits, 4096, 1 << 20);
    expect(bad({ type: "range", range: rangeSpec("z", "a") })).toThrow(/inverted or empty: range_end "a" is not after key "z"/);
    expect(bad({ type: "range", range: rangeSpec("a", "z", { limit: 10_000_000 }) })).toThrow(/limit 10000000 is above this cluster's maximum of 100000/);
    expect(bad(delOp("", ""))).toThrow(InvalidArgumentError);
  });
});

describe("txn", () => {
  test("compare-and-swap on value: succeeds once, then the failure branch runs", async () => {
    nextIndex = 1;
    const m = await open(tempDir());
    await m.apply([put("lock", "free")]);
    const cas = (expect: string, value: string) =>
      txn({
        compare: [{ key: b("lock"), target: "value", result: "equal", value: b(expect), number: 0 }],
        success: [putOp("lock", value, true)],
        failure: [{ type: "range", range: rangeSpec("lock", "") }],
      });
    const first = await applyTxn(m, cas("free", "alice"));
    expect(first.succeeded).toBe(true);
    expect(first.revision).toBe(2);
    const prev = first.responses[0]!;
    expect(prev.type === "put" && prev.prevKv !== null ? s(prev.prevKv.value) : null).toBe("free");
    const second = await applyTxn(m, cas("free", "bob"));
    expect(second.succeeded).toBe(false);
    const seen = second.responses[0]!;
    expect(seen.type === "range" ? seen.range.kvs.map((kv) => [s(kv.value), kv.modRevision]) : null).toEqual([["alice", 2]]);
    expect(s(m.read("lock")!)).toBe("alice");
  });

  test("compares on version, create and mod revision with each result; a missing key has zeros and no value", async () => {
    nextIndex = 1;
    const m = await open(tempDir());
    await m.apply([put("k", "v"), put("k", "w")]); // create 1, mod 2, version 2
    const check = async (target: "version" | "create" | "mod" | "value", result: "equal" | "not_equal" | "greater" | "less", number: number, key = "k", value = "") =>
      (await applyTxn(m, txn({ compare: [{ key: b(key), target, result, number, value: b(value) }] }))).succeeded;
    expect(await check("version", "equal", 2)).toBe(true);
    expect(await check("version", "greater", 1)).toBe(true);
    expect(await check("create", "equal", 1)).toBe(true);
    expect(await check("mod", "less", 3)).toBe(true);
    expect(await check("mod", "not_equal", 2)).toBe(false);
    expect(await check("value", "greater", 0, "k", "v")).toBe(true);
    expect(await check("create", "equal", 0, "missing")).toBe(true);
    expect(await check("value", "not_equal", 0, "missing", "x")).toBe(false);
  });

  test("operations of one Txn share one revision and see each other; DeleteRange counts and returns prev kvs", async () => {
    nextIndex = 1;
    const m = await open(tempDir());
    await m.apply([put("p/1", "a"), put("p/2", "b"), put("q", "c")]);
    const r = await applyTxn(m, txn({ success: [delOp("p/", s(prefixEnd(b("p/"))), true), putOp("q", "d"), { type: "range", range: rangeSpec("", "\0") }] }));
    const [deleted, , listed] = r.responses;
    expect(deleted!.type === "delete" ? [deleted!.deleted, deleted!.prevKvs.map((kv) => s(kv.value))] : null).toEqual([2, ["a", "b"]]);
    expect(listed!.type === "range" ? listed!.range.kvs.map((kv) => [s(kv.key), s(kv.value), kv.modRevision]) : null).toEqual([["q", "d", 4]]);
    expect(m.userKeyCount).toBe(1);
  });

  test("a retried Txn is answered with its first result and applied once, also within one batch", async () => {
    nextIndex = 1;
    const m = await open(tempDir());
    const first = txn({ success: [{ type: "put", key: b("n"), value: b("1"), prevKv: false }] }, 5n, 1n);
    const again = { ...first, index: nextIndex++ };
    const [a, b2] = await m.apply([first, again]);
    expect(a!.txn!.revision).toBe(1);
    expect(b2!.txn!.revision).toBe(1);
    expect(range(m, rangeSpec("n", "")).kvs[0]!.version).toBe(1);
  });

  test("too many operations and a key put twice are refused before proposing", () => {
    const limits = txnLimits({ maxTxnOps: 4 });
    const ops = Array.from({ length: 5 }, (_, i) => putOp(`k${i}`, "v"));
    expect(() => validateTxn({ compare: [], success: ops, failure: [] }, limits, 4096, 1 << 20)).toThrow(/has 5 success operations; at most 4/);
    expect(() => validateTxn({ compare: [], success: [putOp("k", "1"), putOp("k", "2")], failure: [] }, limits, 4096, 1 << 20)).toThrow(/put key "k" twice/);
    expect(() => validateTxn({ compare: [], success: [delOp("a", "z"), putOp("k", "2")], failure: [] }, limits, 4096, 1 << 20)).toThrow(/both put and delete key "k"/);
    const small = txnLimits({ maxTxnBytes: 1000 });
    const big = [putOp("a", "x".repeat(600)), putOp("b", "y".repeat(600))];
    expect(() => validateTxn({ compare: [], success: big, failure: [] }, small, 4096, 1 << 20)).toThrow(/holds 1202 bytes of keys and values; at most 1000/);
  });
});
