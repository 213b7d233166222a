// Converts the Raft core's Message union (src/raft/types.ts) to and from the flat wire message
// raftpb.Message, the way etcd's raftpb carries every message type in one struct.
//
// Numbers: the core uses JS numbers, the wire uses uint64 (bigint in protobuf-es). Values are
// written as their 64-bit two's complement, so a negative sentinel (NONE = -1) survives a round
// trip; anything outside the safe-integer range on the way in is rejected with a RaftCodecError.

import { create } from "@bufbuild/protobuf";
import {
  EntrySchema,
  EntryType as WireEntryType,
  MessageSchema,
  MessageType as WireMessageType,
  SnapshotMetaSchema,
  type Entry as WireEntry,
  type Message as WireMessage,
  type SnapshotMeta as WireSnapshotMeta,
} from "../gen/raftpb/raft_pb.ts";
import { EntryType, type Entry, type Message, type SnapshotMeta } from "../raft/types.ts";

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
    type: entry.type === EntryType.Noop ? WireEntryType.ENTRY_NOOP : WireEntryType.ENTRY_NORMAL,
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
    default:
      throw new RaftCodecError(`raft entry has unknown type ${entry.type as number}`);
  }
  return { index: num(entry.index, "entry.index"), term: num(entry.term, "entry.term"), type, data: entry.data };
}

function encodeSnapshotMeta(meta: SnapshotMeta): WireSnapshotMeta {
  return create(SnapshotMetaSchema, {
    index: u64(meta.index, "snapshot.index"),
    term: u64(meta.term, "snapshot.term"),
    members: meta.members.map((m) => u64(m, "snapshot.members")),
  });
}

function decodeSnapshotMeta(meta: WireSnapshotMeta | undefined): SnapshotMeta {
  if (meta === undefined) throw new RaftCodecError("InstallSnapshot message carries no snapshot metadata");
  return {
    index: num(meta.index, "snapshot.index"),
    term: num(meta.term, "snapshot.term"),
    members: meta.members.map((m) => num(m, "snapshot.members")),
  };
}

/** Core message → wire message. Throws RaftCodecError only for numbers that are not safe integers. */
export function encodeMessage(message: Message): WireMessage {
  const wire = create(MessageSchema, {
    from: u64(message.from, "from"),
    to: u64(message.to, "to"),
    term: u64(message.term, "term"),
  });
  switch (message.type) {
    case "RequestVote":
      wire.type = WireMessageType.REQUEST_VOTE;
      wire.logIndex = u64(message.lastLogIndex, "lastLogIndex");
      wire.logTerm = u64(message.lastLogTerm, "lastLogTerm");
      wire.preVote = message.preVote;
      // types.ts: a transfer campaign travels in `ok`, which REQUEST_VOTE does not otherwise use.
      wire.ok = message.transfer === true;
      break;
    case "RequestVoteResponse":
      wire.type = WireMessageType.REQUEST_VOTE_RESPONSE;
      wire.ok = message.voteGranted;
      wire.preVote = message.preVote;
      break;
    case "AppendEntries":
      wire.type = WireMessageType.APPEND_ENTRIES;
      wire.logIndex = u64(message.prevLogIndex, "prevLogIndex");
      wire.logTerm = u64(message.prevLogTerm, "prevLogTerm");
      wire.entries = message.entries.map(encodeEntry);
      wire.commit = u64(message.leaderCommit, "leaderCommit");
      break;
    case "AppendEntriesResponse":
      wire.type = WireMessageType.APPEND_ENTRIES_RESPONSE;
      wire.ok = message.success;
      wire.matchIndex = u64(message.matchIndex, "matchIndex");
      wire.conflictTerm = u64(message.conflictTerm, "conflictTerm");
      wire.conflictIndex = u64(message.conflictIndex, "conflictIndex");
      break;
    case "Heartbeat":
      wire.type = WireMessageType.HEARTBEAT;
      wire.commit = u64(message.commitIndex, "commitIndex");
      wire.readContext = u64(message.readContext, "readContext");
      break;
    case "HeartbeatResponse":
      wire.type = WireMessageType.HEARTBEAT_RESPONSE;
      wire.readContext = u64(message.readContext, "readContext");
      break;
    case "InstallSnapshot":
      wire.type = WireMessageType.INSTALL_SNAPSHOT;
      wire.snapshot = encodeSnapshotMeta(message.snapshot);
      break;
    case "InstallSnapshotResponse":
      wire.type = WireMessageType.INSTALL_SNAPSHOT_RESPONSE;
      wire.ok = message.success;
      wire.matchIndex = u64(message.matchIndex, "matchIndex");
      break;
    case "TimeoutNow":
      wire.type = WireMessageType.TIMEOUT_NOW;
      break;
    default: {
      const unreachable: never = message;
      throw new RaftCodecError(`unknown raft message ${JSON.stringify(unreachable)}`);
    }
  }
  return wire;
}

/** Wire message → core message. Throws RaftCodecError for an unknown type or out-of-range number. */
export function decodeMessage(wire: WireMessage): Message {
  const from = num(wire.from, "from");
  const to = num(wire.to, "to");
  const term = num(wire.term, "term");
  switch (wire.type) {
    case WireMessageType.REQUEST_VOTE:
      return {
        type: "RequestVote",
        from,
        to,
        term,
        lastLogIndex: num(wire.logIndex, "lastLogIndex"),
        lastLogTerm: num(wire.logTerm, "lastLogTerm"),
        preVote: wire.preVote,
        ...(wire.ok ? { transfer: true } : {}),
      };
    case WireMessageType.REQUEST_VOTE_RESPONSE:
      return { type: "RequestVoteResponse", from, to, term, voteGranted: wire.ok, preVote: wire.preVote };
    case WireMessageType.APPEND_ENTRIES:
      return {
        type: "AppendEntries",
        from,
        to,
        term,
        prevLogIndex: num(wire.logIndex, "prevLogIndex"),
        prevLogTerm: num(wire.logTerm, "prevLogTerm"),
        entries: wire.entries.map(decodeEntry),
        leaderCommit: num(wire.commit, "leaderCommit"),
      };
    case WireMessageType.APPEND_ENTRIES_RESPONSE:
      return {
        type: "AppendEntriesResponse",
        from,
        to,
        term,
        success: wire.ok,
        matchIndex: num(wire.matchIndex, "matchIndex"),
        conflictTerm: num(wire.conflictTerm, "conflictTerm"),
        conflictIndex: num(wire.conflictIndex, "conflictIndex"),
      };
    case WireMessageType.HEARTBEAT:
      return {
        type: "Heartbeat",
        from,
        to,
        term,
        commitIndex: num(wire.commit, "commitIndex"),
        readContext: num(wire.readContext, "readContext"),
      };
    case WireMessageType.HEARTBEAT_RESPONSE:
      return { type: "HeartbeatResponse", from, to, term, readContext: num(wire.readContext, "readContext") };
    case WireMessageType.INSTALL_SNAPSHOT:
      return { type: "InstallSnapshot", from, to, term, snapshot: decodeSnapshotMeta(wire.snapshot) };
    case WireMessageType.INSTALL_SNAPSHOT_RESPONSE:
      return {
        type: "InstallSnapshotResponse",
        from,
        to,
        term,
        success: wire.ok,
        matchIndex: num(wire.matchIndex, "matchIndex"),
      };
    case WireMessageType.TIMEOUT_NOW:
      return { type: "TimeoutNow", from, to, term };
    default:
      throw new RaftCodecError(`raft message has unknown type ${wire.type as number}`);
  }
}
