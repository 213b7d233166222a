// Round trips of every Raft message type through the wire format: the protobuf-es mapping, and the
// hand-written byte codec of the peer stream checked against it in both directions.
import { describe, expect, test } from "bun:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { MessageBatchSchema, MessageFramesSchema, MessageSchema, MessageType } from "../../src/gen/raftpb/raft_pb.ts";
import { EntryType, type Message } from "../../src/raft/types.ts";
import { RaftCodecError, decodeMessage, encodeMessage } from "../../src/rpc/peers/raft-codec.ts";
import { decodeMessageBytes, encodeBatchFrame, encodeMessageBytes, prepareMessage } from "../../src/rpc/peers/raft-wire.ts";
import { Rng } from "../../src/util/rng.ts";

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

describe("raft wire codec (hand-written, the peer stream's)", () => {
  test("the samples and 2,000 random messages: our bytes decode with protobuf-es and its bytes with ours", () => {
    const rng = new Rng(7);
    const all = [...samples, ...Array.from({ length: 2000 }, () => randomMessage(rng))];
    for (const message of all) {
      const ours = encodeMessageBytes(message);
      expect(decodeMessage(fromBinary(MessageSchema, ours))).toEqual(message);
      const theirs = toBinary(MessageSchema, encodeMessage(message));
      expect(decodeMessageBytes(theirs)).toEqual(message);
      // Same fields, same order, defaults left out: the very same bytes.
      expect(Buffer.compare(ours, theirs)).toBe(0);
    }
  });

  test("a frame is a Connect envelope around a MessageBatch, readable as MessageFrames", () => {
    const messages = samples.slice(0, 6);
    const frame = encodeBatchFrame(messages.map(prepareMessage));
    expect(frame[0]).toBe(0);
    expect(new DataView(frame.buffer).getUint32(1)).toBe(frame.length - 5);
    const batch = fromBinary(MessageBatchSchema, frame.subarray(5));
    expect(batch.messages.map(decodeMessage)).toEqual(messages);
    const frames = fromBinary(MessageFramesSchema, frame.subarray(5));
    expect(frames.messages.map((bytes) => decodeMessageBytes(bytes))).toEqual(messages);
  });

  test("unknown fields are skipped, unpacked members accepted, entry data copied out of the frame", () => {
    const message: Message = { type: "InstallSnapshot", from: 0, to: 1, term: 2, snapshot: { index: 9, term: 2, members: [0, 1, 2] } };
    // Field 20 (varint), field 21 (bytes), members written unpacked (tag 3, wire type 0).
    const unpackedMeta = [0x08, 9, 0x10, 2, 0x18, 0, 0x18, 1, 0x18, 2];
    const bytes = new Uint8Array([0x08, 7, 0x18, 1, 0x20, 2, 0xa0, 0x01, 5, 0xaa, 0x01, 2, 0xff, 0xff, 0x7a, unpackedMeta.length, ...unpackedMeta]);
    expect(decodeMessageBytes(bytes)).toEqual(message);
    const append = encodeMessageBytes(samples[5]!);
    const decoded = decodeMessageBytes(append);
    expect(decoded.type === "AppendEntries" && decoded.entries[1]!.data.buffer).not.toBe(append.buffer);
  });

  test("truncated, overlong and out-of-range input is a RaftCodecError", () => {
    const good = encodeMessageBytes(samples[5]!);
    for (let cut = 1; cut < good.length; cut++) {
      let error: unknown = null;
      try {
        decodeMessageBytes(good.subarray(0, cut));
      } catch (e) {
        error = e;
      }
      // A cut between fields can still parse as a shorter message; a cut inside one must not.
      if (error !== null) expect(error).toBeInstanceOf(RaftCodecError);
    }
    expect(() => decodeMessageBytes(new Uint8Array([0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]))).toThrow(/longer than 10 bytes/);
    // term = 2^60: beyond the safe range.
    expect(() => decodeMessageBytes(toBinary(MessageSchema, create(MessageSchema, { type: MessageType.TIMEOUT_NOW, term: 1n << 60n })))).toThrow(/term/);
    expect(() => decodeMessageBytes(new Uint8Array([0x08, 0x0a, 0x20, 0x01]))).toThrow(/unknown type 10/);
    expect(() => decodeMessageBytes(new Uint8Array([0x3a, 0x02, 0x18, 0x05]))).toThrow(/unknown type 5/);
    expect(() => decodeMessageBytes(new Uint8Array([0x09, 0, 0, 0, 0, 0, 0, 0, 0]))).toThrow(/wire type/);
    expect(() => encodeMessageBytes({ type: "TimeoutNow", from: 0, to: 1, term: 2 ** 60 })).toThrow(RaftCodecError);
    expect(() => encodeMessageBytes({ type: "TimeoutNow", from: 0, to: 1, term: 1.5 })).toThrow(RaftCodecError);
  });
});
