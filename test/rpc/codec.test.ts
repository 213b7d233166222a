// Round trips of every Raft message type through the wire format (the protobuf-es mapping, the one
// Raft encoding), and the batch bytes the peer stream carries.
import { describe, expect, test } from "bun:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { MessageBatchSchema, MessageSchema, MessageType } from "../../src/gen/raftpb/raft_pb.ts";
import { EntryType, type Message } from "../../src/raft/types.ts";
import {
  RaftCodecError,
  batchFieldBytes,
  decodeBatchBytes,
  decodeMessage,
  encodeBatchBytes,
  encodeMessage,
  encodeMessageBytes,
} from "../../src/rpc/peers/raft-codec.ts";
import { Rng } from "../../src/util/rng.ts";
import { encodeMembership } from "../../src/raft/index.ts";

const big = Number.MAX_SAFE_INTEGER;

const samples: Message[] = [
  { type: "RequestVote", from: 0, to: 2, term: 7, lastLogIndex: 41, lastLogTerm: 6, preVote: true },
  { type: "RequestVote", from: 1, to: 2, term: 8, lastLogIndex: 41, lastLogTerm: 7, preVote: false, transfer: true },
  { type: "RequestVote", from: 1, to: 0, term: big, lastLogIndex: big, lastLogTerm: big - 1, preVote: false },
  { type: "RequestVoteResponse", from: 2, to: 0, term: 7, voteGranted: true, preVote: true },
  { type: "RequestVoteResponse", from: 2, to: 0, term: 8, voteGranted: false, preVote: false },
  {
    type: "AppendEntries",
    from: 0,
    to: 1,
    term: 3,
    prevLogIndex: 10,
    prevLogTerm: 2,
    entries: [
      { index: 11, term: 3, type: EntryType.Noop, data: new Uint8Array() },
      { index: 12, term: 3, type: EntryType.Normal, data: new Uint8Array([1, 2, 3, 255]) },
    ],
    leaderCommit: 9,
  },
  { type: "AppendEntries", from: 0, to: 1, term: 3, prevLogIndex: 0, prevLogTerm: 0, entries: [], leaderCommit: 0 },
  {
    type: "AppendEntriesResponse",
    from: 1,
    to: 0,
    term: 3,
    success: false,
    matchIndex: 0,
    conflictTerm: 2,
    conflictIndex: 5,
  },
  // A negative sentinel (NONE = -1) must survive the uint64 field.
  { type: "AppendEntriesResponse", from: 1, to: 0, term: 3, success: true, matchIndex: 12, conflictTerm: -1, conflictIndex: 0 },
  { type: "Heartbeat", from: 0, to: 2, term: 5, commitIndex: 100, readContext: 17 },
  { type: "HeartbeatResponse", from: 2, to: 0, term: 5, readContext: 17 },
  { type: "InstallSnapshot", from: 0, to: 1, term: 9, snapshot: { index: 5000, term: 8, members: [0, 1, 2] } },
  // Membership: a configuration entry, and a snapshot whose configuration has learners and addresses.
  {
    type: "AppendEntries",
    from: 0,
    to: 3,
    term: 9,
    prevLogIndex: 5000,
    prevLogTerm: 8,
    entries: [{ index: 5001, term: 9, type: EntryType.ConfChange, data: encodeMembership({ voters: [0, 1, 2], learners: [3], addresses: { 3: "h:1" } }) }],
    leaderCommit: 5000,
  },
  {
    type: "InstallSnapshot",
    from: 0,
    to: 3,
    term: 9,
    snapshot: { index: 5001, term: 9, members: [0, 1, 2], learners: [3], addresses: { 0: "a:1", 3: "[::1]:7003" } },
  },
  { type: "InstallSnapshotResponse", from: 1, to: 0, term: 9, success: true, matchIndex: 5000 },
  { type: "InstallSnapshotResponse", from: 1, to: 0, term: 10, success: false, matchIndex: 0 },
  { type: "TimeoutNow", from: 0, to: 1, term: 4 },
];

describe("raft codec", () => {
  test("every message type survives encode → binary → decode", () => {
    const seen = new Set<string>();
    for (const message of samples) {
      const bytes = toBinary(MessageSchema, encodeMessage(message));
      const back = decodeMessage(fromBinary(MessageSchema, bytes));
      expect(back).toEqual(message);
      seen.add(message.type);
    }
    expect(seen.size).toBe(9);
  });

  test("entry payload bytes are carried exactly", () => {
    const data = new Uint8Array(1000).map((_, i) => (i * 31) & 0xff);
    const message: Message = {
      type: "AppendEntries",
      from: 2,
      to: 0,
      term: 1,
      prevLogIndex: 0,
      prevLogTerm: 0,
      entries: [{ index: 1, term: 1, type: EntryType.Normal, data }],
      leaderCommit: 0,
    };
    const back = decodeMessage(fromBinary(MessageSchema, toBinary(MessageSchema, encodeMessage(message))));
    expect(back.type === "AppendEntries" && [...back.entries[0]!.data]).toEqual([...data]);
  });

  test("unknown message type is a RaftCodecError", () => {
    expect(() => decodeMessage(create(MessageSchema, { type: MessageType.MESSAGE_UNSPECIFIED }))).toThrow(RaftCodecError);
    expect(() => decodeMessage(create(MessageSchema, { type: 42 as MessageType }))).toThrow(/unknown type 42/);
  });

  test("InstallSnapshot without metadata is rejected", () => {
    expect(() => decodeMessage(create(MessageSchema, { type: MessageType.INSTALL_SNAPSHOT, term: 1n }))).toThrow(/no snapshot metadata/);
  });

  test("numbers beyond the safe-integer range are rejected both ways", () => {
    expect(() => decodeMessage(create(MessageSchema, { type: MessageType.TIMEOUT_NOW, term: 1n << 60n }))).toThrow(/term/);
    expect(() => encodeMessage({ type: "TimeoutNow", from: 0, to: 1, term: 2 ** 60 })).toThrow(RaftCodecError);
    expect(() => encodeMessage({ type: "TimeoutNow", from: 0, to: 1, term: 1.5 })).toThrow(RaftCodecError);
  });
});

/** A random message of every type, with numbers across the varint lengths (1..8 bytes) and zeros. */
function randomMessage(rng: Rng): Message {
  const pick = () => {
    const bits = Math.floor(rng.next() * 54);
    const n = Math.floor(rng.next() * 2 ** bits);
    return rng.next() < 0.2 ? 0 : Math.min(n, Number.MAX_SAFE_INTEGER);
  };
  const base = { from: Math.floor(rng.next() * 5), to: Math.floor(rng.next() * 5), term: pick() };
  const flag = () => rng.next() < 0.5;
  switch (Math.floor(rng.next() * 9)) {
    case 0:
      return { type: "RequestVote", ...base, lastLogIndex: pick(), lastLogTerm: pick(), preVote: flag(), ...(flag() ? { transfer: true } : {}) };
    case 1:
      return { type: "RequestVoteResponse", ...base, voteGranted: flag(), preVote: flag() };
    case 2: {
      const count = Math.floor(rng.next() * 4);
      const entries = Array.from({ length: count }, () => ({
        index: pick(),
        term: pick(),
        type: flag() ? EntryType.Normal : EntryType.Noop,
        data: new Uint8Array(Math.floor(rng.next() * 300)).map(() => Math.floor(rng.next() * 256)),
      }));
      return { type: "AppendEntries", ...base, prevLogIndex: pick(), prevLogTerm: pick(), entries, leaderCommit: pick() };
    }
    case 3:
      return { type: "AppendEntriesResponse", ...base, success: flag(), matchIndex: pick(), conflictTerm: flag() ? -1 : pick(), conflictIndex: pick() };
    case 4:
      return { type: "Heartbeat", ...base, commitIndex: pick(), readContext: pick() };
    case 5:
      return { type: "HeartbeatResponse", ...base, readContext: pick() };
    case 6:
      return { type: "InstallSnapshot", ...base, snapshot: { index: pick(), term: pick(), members: Array.from({ length: Math.floor(rng.next() * 4) }, pick) } };
    case 7:
      return { type: "InstallSnapshotResponse", ...base, success: flag(), matchIndex: pick() };
    default:
      return { type: "TimeoutNow", ...base };
  }
}

describe("raft batch bytes (the peer stream's frames)", () => {
  test("the samples and 2,000 random messages survive a batch round trip", () => {
    const rng = new Rng(7);
    const all = [...samples, ...Array.from({ length: 2000 }, () => randomMessage(rng))];
    for (let at = 0; at < all.length; at += 50) {
      const part = all.slice(at, at + 50);
      const encoded = part.map(encodeMessageBytes);
      const batch = encodeBatchBytes(encoded);
      expect(batch.length).toBe(encoded.reduce((sum, bytes) => sum + batchFieldBytes(bytes), 0));
      expect(decodeBatchBytes(batch)).toEqual(part);
      // The concatenation of fields is exactly what protobuf-es writes for a MessageBatch.
      const theirs = toBinary(MessageBatchSchema, create(MessageBatchSchema, { messages: part.map(encodeMessage) }));
      expect(Buffer.compare(batch, theirs)).toBe(0);
    }
  });

  test("truncated and out-of-range input is a RaftCodecError", () => {
    const good = encodeBatchBytes([encodeMessageBytes(samples[5]!)]);
    for (let cut = 1; cut < good.length; cut++) {
      expect(() => decodeBatchBytes(good.subarray(0, cut))).toThrow(RaftCodecError);
    }
    const farTerm = toBinary(MessageSchema, create(MessageSchema, { type: MessageType.TIMEOUT_NOW, term: 1n << 60n }));
    expect(() => decodeBatchBytes(encodeBatchBytes([farTerm]))).toThrow(/term/);
    expect(() => decodeBatchBytes(new Uint8Array([0x0a, 0x02, 0x08, 0x0a]))).toThrow(/unknown type 10/);
    expect(() => encodeMessageBytes({ type: "TimeoutNow", from: 0, to: 1, term: 2 ** 60 })).toThrow(RaftCodecError);
  });
});
