// The follower's side of replication: answering AppendEntries, Heartbeat and InstallSnapshot from
// the current leader, and telling senders of an older term ours. Pure functions over the core's log.

import type { RaftLog } from "./raft-log.ts";
import type { Message, NodeId, SnapshotMeta } from "../types.ts";

type MessageOf<T extends Message["type"]> = Extract<Message, { type: T }>;

/** What a follower handler reads and writes: the node's id, current term, log and outbox. */
export interface FollowerContext {
  readonly id: NodeId;
  readonly term: number;
  readonly log: RaftLog;
  send(m: Message): void;
}

export function handleAppendEntries(ctx: FollowerContext, m: MessageOf<"AppendEntries">): void {
  const { log } = ctx;
  const reply = (success: boolean, matchIndex: number, conflictTerm = 0, conflictIndex = 0) =>
    ctx.send({ type: "AppendEntriesResponse", from: ctx.id, to: m.from, term: ctx.term, success, matchIndex, conflictTerm, conflictIndex });
  if (m.prevLogIndex < log.commitIndex) {
    // Everything up to our commitIndex matches the leader's log already (a stale or duplicate append).
    reply(true, log.commitIndex);
    return;
  }
  if (log.matchTerm(m.prevLogIndex, m.prevLogTerm)) {
    const lastNew = log.appendFromLeader(m.prevLogIndex, m.entries);
    log.commitTo(Math.min(m.leaderCommit, lastNew));
    reply(true, lastNew);
    return;
  }
  // Rejected: matchIndex names the rejected prevLogIndex so the leader can spot stale answers.
  if (m.prevLogIndex > log.lastIndex()) {
    reply(false, m.prevLogIndex, 0, log.lastIndex() + 1);
    return;
  }
  const conflictTerm = log.term(m.prevLogIndex);
  if (conflictTerm === undefined) throw new Error(`invariant: no term for index ${m.prevLogIndex} >= commitIndex ${log.commitIndex}`);
  let conflictIndex = m.prevLogIndex;
  while (conflictIndex - 1 > log.commitIndex && log.term(conflictIndex - 1) === conflictTerm) conflictIndex--;
  reply(false, m.prevLogIndex, conflictTerm, conflictIndex);
}

export function handleHeartbeat(ctx: FollowerContext, m: MessageOf<"Heartbeat">): void {
  if (m.commitIndex > ctx.log.lastIndex()) {
    // A heartbeat's commitIndex is capped by what the leader counts as ours, which is only what
    // we acknowledged in this term: our log lost durable entries (wiped or truncated). Report our
    // real end (conflictIndex 0 marks a report, not an answer to an append) so the leader probes.
    const lastIndex = ctx.log.lastIndex();
    ctx.send({ type: "AppendEntriesResponse", from: ctx.id, to: m.from, term: ctx.term, success: false, matchIndex: lastIndex, conflictTerm: 0, conflictIndex: 0 });
  }
  ctx.log.commitTo(Math.min(m.commitIndex, ctx.log.lastIndex()));
  ctx.send({ type: "HeartbeatResponse", from: ctx.id, to: m.from, term: ctx.term, readContext: m.readContext });
}

/**
 * A snapshot replaces the log only if it is ahead of our commitIndex and our log does not
 * already hold its last entry: entries we hold past it may have been acknowledged as durable
 * to the leader and must not be dropped.
 */
export function snapshotNeedsRestore(log: RaftLog, meta: SnapshotMeta): boolean {
  return meta.index > log.commitIndex && !log.matchTerm(meta.index, meta.term);
}

/** Answers an InstallSnapshot; returns the snapshot the driver must install, or null if none. */
export function handleInstallSnapshot(ctx: FollowerContext, m: MessageOf<"InstallSnapshot">): SnapshotMeta | null {
  const { log } = ctx;
  const reply = (matchIndex: number) =>
    ctx.send({ type: "InstallSnapshotResponse", from: ctx.id, to: m.from, term: ctx.term, success: true, matchIndex });
  if (m.snapshot.index <= log.commitIndex) {
    // Already have it (acceptSnapshot said no, so the state machine was not touched).
    reply(log.commitIndex);
    return null;
  }
  if (!snapshotNeedsRestore(log, m.snapshot)) {
    // Our log holds the snapshot's last entry: it is committed, so just fast-forward.
    log.commitTo(m.snapshot.index);
    reply(m.snapshot.index);
    return null;
  }
  log.restore(m.snapshot);
  reply(m.snapshot.index);
  return { index: m.snapshot.index, term: m.snapshot.term, members: [...m.snapshot.members] };
}

/** Tells a stale sender our term so that a deposed leader or pre-candidate learns it at once. */
export function answerStaleMessage(ctx: FollowerContext, m: Message): void {
  const base = { from: ctx.id, to: m.from, term: ctx.term };
  if (m.type === "AppendEntries" || m.type === "Heartbeat") {
    ctx.send({ ...base, type: "AppendEntriesResponse", success: false, matchIndex: 0, conflictTerm: 0, conflictIndex: 0 });
  } else if (m.type === "RequestVote" && m.preVote) {
    ctx.send({ ...base, type: "RequestVoteResponse", voteGranted: false, preVote: true });
  } else if (m.type === "InstallSnapshot") {
    ctx.send({ ...base, type: "InstallSnapshotResponse", success: false, matchIndex: 0 });
  }
}
