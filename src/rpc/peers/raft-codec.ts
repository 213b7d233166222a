// Converts the Raft core's Message union (src/raft/types.ts) to and from the flat wire message
// raftpb.Message, the way etcd's raftpb carries every message type in one struct.
//
// Numbers: the core uses JS numbers, the wire uses uint64 (bigint in protobuf-es). Values are
// written as their 64-bit two's complement, so a negative sentinel (NONE = -1) survives a round
// trip; anything outside the safe-integer range on the way in is rejected with a RaftCodecError.
// This is the only Raft message encoding (the peer stream, InstallSnapshot headers, tests).

import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import {
  EntrySchema,
  MessageBatchSchema,
  EntryType as WireEntryType,
  MessageSchema,
  MessageType as WireMessageType,
  SnapshotMetaSchema,
  type Entry as WireEntry,
  type Message as WireMessage,
  type SnapshotMeta as WireSnapshotMeta,
} from "../../gen/raftpb/raft_pb.ts";
import { decodeMembership, encodeMembership, membershipOfMeta, metaWith } from "../../raft/index.ts";
import { EntryType, type Entry, type Membership, type Message, type SnapshotMeta } from "../../raft/types.ts";

/** A peer sent a message this node cannot interpret (unknown type, number out of range). */
export class RaftCodecError extends Error {
  readonly code = "invalid_argument";
  constructor(message: string) {
    super(message);
    this.name = "RaftCodecError";
  }
}

function u64(n: number, field: string): bigint {
  if (!Number.isSafeInteger(n)) {
    throw new RaftCodecError(`raft message field ${field} is ${n}, not a safe integer`);
  }
  return BigInt.asUintN(64, BigInt(n));
}

function num(b: bigint, field: string): number {
  const signed = BigInt.asIntN(64, b);
  if (signed > BigInt(Number.MAX_SAFE_INTEGER) || signed < BigInt(Number.MIN_SAFE_INTEGER)) {
    throw new RaftCodecError(`raft message field ${field} is ${signed}, beyond the safe-integer range`);
  }
  return Number(signed);
}

function encodeEntry(entry: Entry): WireEntry {
  return create(EntrySchema, {
    index: u64(entry.index, "entry.index"),
    term: u64(entry.term, "entry.term"),
    type: WIRE_ENTRY_TYPE[entry.type],
    data: entry.data,
  });
}

function decodeEntry(entry: WireEntry): Entry {
  let type: EntryType;
  switch (entry.type) {
    case WireEntryType.ENTRY_NORMAL:
      type = EntryType.Normal;
      break;
    case WireEntryType.ENTRY_NOOP:
      type = EntryType.Noop;
      break;
    case WireEntryType.ENTRY_CONF_CHANGE:
      type = EntryType.ConfChange;
      break;
    default:
      throw new RaftCodecError(`raft entry has unknown type ${entry.type as number}`);
  }
  return { index: num(entry.index, "entry.index"), term: num(entry.term, "entry.term"), type, data: entry.data };
}

const WIRE_ENTRY_TYPE: Record<EntryType, WireEntryType> = {
  [EntryType.Normal]: WireEntryType.ENTRY_NORMAL,
  [EntryType.Noop]: WireEntryType.ENTRY_NOOP,
  [EntryType.ConfChange]: WireEntryType.ENTRY_CONF_CHANGE,
};

function encodeSnapshotMeta(meta: SnapshotMeta): WireSnapshotMeta {
  const extras = (meta.learners?.length ?? 0) > 0 || Object.keys(meta.addresses ?? {}).length > 0;
  return create(SnapshotMetaSchema, {
    index: u64(meta.index, "snapshot.index"),
    term: u64(meta.term, "snapshot.term"),
    members: meta.members.map((m) => u64(m, "snapshot.members")),
    membership: extras ? encodeMembership(membershipOfMeta(meta)) : new Uint8Array(0),
  });
}

function decodeSnapshotMeta(meta: WireSnapshotMeta | undefined): SnapshotMeta {
  if (meta === undefined) throw new RaftCodecError("InstallSnapshot message carries no snapshot metadata");
  const index = num(meta.index, "snapshot.index");
  const term = num(meta.term, "snapshot.term");
  const members = meta.members.map((m) => num(m, "snapshot.members"));
  if (meta.membership.length === 0) return { index, term, members };
  let membership: Membership;
  try {
    membership = decodeMembership(meta.membership);
  } catch (err) {
    throw new RaftCodecError(`snapshot.membership: ${(err as Error).message}`);
  }
  if (membership.voters.join() !== [...members].sort((a, b) => a - b).join()) {
    throw new RaftCodecError(`snapshot.membership voters [${membership.voters.join(", ")}] differ from snapshot.members [${members.join(", ")}]`);
  }
  return metaWith(index, term, membership);
}

/** The flat form of raftpb.Message with JS numbers: the meaning of each wire field lives here. */
export interface FlatMessage {
  type: WireMessageType;
  from: number;
  to: number;
  term: number;
  logIndex: number;
  logTerm: number;
  entries: Entry[];
  commit: number;
  ok: boolean;
  preVote: boolean;
  /** RequestVote only: the candidate is recovering lost durable state. */
  recovering: boolean;
  matchIndex: number;
  conflictTerm: number;
  conflictIndex: number;
  readContext: number;
  snapshot: SnapshotMeta | undefined;
}

/** A flat message with every field at its proto3 default; `entries` is the array to fill. */
export function emptyFlat(entries: Entry[]): FlatMessage {
  return {
    type: WireMessageType.MESSAGE_UNSPECIFIED,
    from: 0,
    to: 0,
    term: 0,
    logIndex: 0,
    logTerm: 0,
    entries,
    commit: 0,
    ok: false,
    preVote: false,
    recovering: false,
    matchIndex: 0,
    conflictTerm: 0,
    conflictIndex: 0,
    readContext: 0,
    snapshot: undefined,
  };
}

/** Core message → flat wire fields (unused fields zero, as proto3 defaults). */
export function toFlat(message: Message): FlatMessage {
  const flat = emptyFlat(NO_ENTRIES);
  flat.from = message.from;
  flat.to = message.to;
  flat.term = message.term;
  switch (message.type) {
    case "RequestVote":
      flat.type = WireMessageType.REQUEST_VOTE;
      flat.logIndex = message.lastLogIndex;
      flat.logTerm = message.lastLogTerm;
      flat.preVote = message.preVote;
      // types.ts: a transfer campaign travels in `ok`, which REQUEST_VOTE does not otherwise use.
      flat.ok = message.transfer === true;
      flat.recovering = message.recovering === true;
      break;
    case "RequestVoteResponse":
      flat.type = WireMessageType.REQUEST_VOTE_RESPONSE;
      flat.ok = message.voteGranted;
      flat.preVote = message.preVote;
      break;
    case "AppendEntries":
      flat.type = WireMessageType.APPEND_ENTRIES;
      flat.logIndex = message.prevLogIndex;
      flat.logTerm = message.prevLogTerm;
      flat.entries = message.entries;
      flat.commit = message.leaderCommit;
      break;
    case "AppendEntriesResponse":
      flat.type = WireMessageType.APPEND_ENTRIES_RESPONSE;
      flat.ok = message.success;
      flat.matchIndex = message.matchIndex;
      flat.conflictTerm = message.conflictTerm;
      flat.conflictIndex = message.conflictIndex;
      break;
    case "Heartbeat":
      flat.type = WireMessageType.HEARTBEAT;
      flat.commit = message.commitIndex;
      flat.readContext = message.readContext;
      break;
    case "HeartbeatResponse":
      flat.type = WireMessageType.HEARTBEAT_RESPONSE;
      flat.readContext = message.readContext;
      break;
    case "InstallSnapshot":
      flat.type = WireMessageType.INSTALL_SNAPSHOT;
      flat.snapshot = message.snapshot;
      break;
    case "InstallSnapshotResponse":
      flat.type = WireMessageType.INSTALL_SNAPSHOT_RESPONSE;
      flat.ok = message.success;
      flat.matchIndex = message.matchIndex;
      break;
    case "TimeoutNow":
      flat.type = WireMessageType.TIMEOUT_NOW;
      break;
    default: {
      const unreachable: never = message;
      throw new RaftCodecError(`unknown raft message ${JSON.stringify(unreachable)}`);
    }
  }
  return flat;
}

/** Flat wire fields → core message. Throws RaftCodecError for an unknown type or a missing snapshot. */
export function fromFlat(f: FlatMessage): Message {
  const { from, to, term } = f;
  switch (f.type) {
    case WireMessageType.REQUEST_VOTE:
      return {
        type: "RequestVote",
        from,
        to,
        term,
        lastLogIndex: f.logIndex,
        lastLogTerm: f.logTerm,
        preVote: f.preVote,
        ...(f.ok ? { transfer: true } : {}),
        ...(f.recovering ? { recovering: true } : {}),
      };
    case WireMessageType.REQUEST_VOTE_RESPONSE:
      return { type: "RequestVoteResponse", from, to, term, voteGranted: f.ok, preVote: f.preVote };
    case WireMessageType.APPEND_ENTRIES:
      return { type: "AppendEntries", from, to, term, prevLogIndex: f.logIndex, prevLogTerm: f.logTerm, entries: f.entries, leaderCommit: f.commit };
    case WireMessageType.APPEND_ENTRIES_RESPONSE:
      return {
        type: "AppendEntriesResponse",
        from,
        to,
        term,
        success: f.ok,
        matchIndex: f.matchIndex,
        conflictTerm: f.conflictTerm,
        conflictIndex: f.conflictIndex,
      };
    case WireMessageType.HEARTBEAT:
      return { type: "Heartbeat", from, to, term, commitIndex: f.commit, readContext: f.readContext };
    case WireMessageType.HEARTBEAT_RESPONSE:
      return { type: "HeartbeatResponse", from, to, term, readContext: f.readContext };
    case WireMessageType.INSTALL_SNAPSHOT:
      if (f.snapshot === undefined) throw new RaftCodecError("InstallSnapshot message carries no snapshot metadata");
      return { type: "InstallSnapshot", from, to, term, snapshot: f.snapshot };
    case WireMessageType.INSTALL_SNAPSHOT_RESPONSE:
      return { type: "InstallSnapshotResponse", from, to, term, success: f.ok, matchIndex: f.matchIndex };
    case WireMessageType.TIMEOUT_NOW:
      return { type: "TimeoutNow", from, to, term };
    default:
      throw new RaftCodecError(`raft message has unknown type ${f.type as number}`);
  }
}

const NO_ENTRIES: Entry[] = [];

/** Core message → protobuf-es message. Throws RaftCodecError only for numbers that are not safe integers. */
export function encodeMessage(message: Message): WireMessage {
  const f = toFlat(message);
  const wire = create(MessageSchema, {
    type: f.type,
    from: u64(f.from, "from"),
    to: u64(f.to, "to"),
    term: u64(f.term, "term"),
    logIndex: u64(f.logIndex, "logIndex"),
    logTerm: u64(f.logTerm, "logTerm"),
    entries: f.entries.map(encodeEntry),
    commit: u64(f.commit, "commit"),
    ok: f.ok,
    preVote: f.preVote,
    recovering: f.recovering,
    matchIndex: u64(f.matchIndex, "matchIndex"),
    conflictTerm: u64(f.conflictTerm, "conflictTerm"),
    conflictIndex: u64(f.conflictIndex, "conflictIndex"),
    readContext: u64(f.readContext, "readContext"),
  });
  if (f.snapshot !== undefined) wire.snapshot = encodeSnapshotMeta(f.snapshot);
  return wire;
}

/** Protobuf-es message → core message. Throws RaftCodecError for an unknown type or out-of-range number. */
export function decodeMessage(wire: WireMessage): Message {
  return fromFlat({
    type: wire.type,
    from: num(wire.from, "from"),
    to: num(wire.to, "to"),
    term: num(wire.term, "term"),
    logIndex: num(wire.logIndex, "logIndex"),
    logTerm: num(wire.logTerm, "logTerm"),
    entries: wire.entries.map(decodeEntry),
    commit: num(wire.commit, "commit"),
    ok: wire.ok,
    preVote: wire.preVote,
    recovering: wire.recovering,
    matchIndex: num(wire.matchIndex, "matchIndex"),
    conflictTerm: num(wire.conflictTerm, "conflictTerm"),
    conflictIndex: num(wire.conflictIndex, "conflictIndex"),
    readContext: num(wire.readContext, "readContext"),
    snapshot: wire.snapshot === undefined ? undefined : decodeSnapshotMeta(wire.snapshot),
  });
}

/** Core message → raftpb.Message bytes. Throws RaftCodecError only for numbers that are not safe integers. */
export function encodeMessageBytes(message: Message): Uint8Array {
  return toBinary(MessageSchema, encodeMessage(message));
}

/**
 * Encoded messages (from encodeMessageBytes) → one raftpb.MessageBatch: a batch is the
 * concatenation of its messages as field 1, so a sender can size and cut frames per message.
 */
export function encodeBatchBytes(messages: readonly Uint8Array[]): Uint8Array {
  const writer = new BinaryWriter();
  for (const bytes of messages) writer.tag(1, WireType.LengthDelimited).bytes(bytes);
  return writer.finish();
}

/** Bytes one encoded message adds to a batch (tag, length, message). */
export function batchFieldBytes(bytes: Uint8Array): number {
  return 1 + varintBytes(bytes.length) + bytes.length;
}

function varintBytes(n: number): number {
  let size = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 0x80);
    size++;
  }
  return size;
}

/** raftpb.MessageBatch bytes → core messages. Throws RaftCodecError for bytes that are not a valid batch. */
export function decodeBatchBytes(bytes: Uint8Array): Message[] {
  let batch;
  try {
    batch = fromBinary(MessageBatchSchema, bytes);
  } catch (error) {
    throw new RaftCodecError(`raft message batch is not valid protobuf: ${(error as Error).message}`);
  }
  return batch.messages.map(decodeMessage);
}
