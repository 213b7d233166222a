// The leader's side of log replication for one term: per-member Progress (voters and learners),
// building AppendEntries, heartbeats and InstallSnapshot, handling the answers, advancing
// commitIndex by the voters' quorum, and leadership transfer. Pure, no I/O.

import { cloneSnapshotMeta, membersOf } from "./membership.ts";
import { Progress } from "./progress.ts";
import { MajorityConfig } from "./quorum.ts";
import type { RaftLog } from "./raft-log.ts";
import { NONE, type Membership, type Message, type NodeId } from "../types.ts";

type MessageOf<T extends Message["type"]> = Extract<Message, { type: T }>;

export interface ProgressStatus {
  matchIndex: number;
  nextIndex: number;
  state: string;
  inflight: number;
}

export interface ReplicationContext {
  id: NodeId;
  /** The leader's term: a Replication lives for exactly one term of leadership. */
  term: number;
  log: RaftLog;
  membership: Membership;
  maxInflight: number;
  maxBytesPerAppend: number;
  send: (m: Message) => void;
  /** commitIndex advanced; firstOfTerm when it is the first entry of this term to commit. */
  onCommit: (firstOfTerm: boolean) => void;
}

export class Replication {
  /** Every member's progress, and always the leader's own (even once it removed itself). */
  private readonly progress = new Map<NodeId, Progress>();
  private voters: MajorityConfig;
  /** Every member but the leader, voters first: whom appends and heartbeats go to. */
  private peers: NodeId[] = [];
  /** The voter leadership is being handed to (§3.10 of the thesis), or NONE. */
  private transferee: NodeId = NONE;
  /** A TimeoutNow went out for the current transfer. */
  timeoutNowSent = false;

  constructor(private readonly ctx: ReplicationContext) {
    this.voters = new MajorityConfig(ctx.membership.voters);
    const self = new Progress(ctx.id, ctx.log.lastIndex() + 1, ctx.maxInflight);
    // Only what is durable here counts toward commit (an outstanding Ready may still be saving).
    self.matchIndex = ctx.log.stableIndex;
    self.becomeReplicate();
    this.progress.set(ctx.id, self);
    this.track(ctx.membership);
  }

  /**
   * The configuration changed (an entry appended, or truncated away): track new members from the
   * end of the log in probe state, forget removed ones, and re-count the commit index.
   */
  setMembership(membership: Membership): void {
    this.track(membership);
    this.maybeCommit();
  }

  private track(membership: Membership): void {
    this.voters = new MajorityConfig(membership.voters);
    const members = membersOf(membership);
    this.peers = members.filter((id) => id !== this.ctx.id);
    for (const id of [...this.progress.keys()]) {
      if (id !== this.ctx.id && !members.includes(id)) this.progress.delete(id);
    }
    for (const id of this.peers) {
      if (this.progress.has(id)) continue;
      const pr = new Progress(id, this.ctx.log.lastIndex() + 1, this.ctx.maxInflight);
      // Counts as recently active for the next CheckQuorum round, as every member does at election.
      pr.recentActive = true;
      this.progress.set(id, pr);
    }
    if (this.transferee !== NONE && !this.voters.includes(this.transferee)) this.abandonTransfer();
  }
  progressOf(id: NodeId): Progress {
    const pr = this.progress.get(id);
    if (pr === undefined) throw new Error(`invariant: no progress for ${id} on leader ${this.ctx.id}`);
    return pr;
  }

  status(): Record<NodeId, ProgressStatus> {
    const out: Record<NodeId, ProgressStatus> = {};
    for (const [id, pr] of this.progress) {
      out[id] = { matchIndex: pr.matchIndex, nextIndex: pr.nextIndex, state: pr.state, inflight: pr.inflights.size };
    }
    return out;
  }

  /**
   * CheckQuorum at the end of an election timeout: whether a quorum was heard from since the last
   * check. Starts the next round (everyone but the leader inactive again).
   */
  quorumActive(): boolean {
    const active = this.voters.hasQuorum((id) => id === this.ctx.id || this.progressOf(id).recentActive);
    for (const [id, pr] of this.progress) pr.recentActive = id === this.ctx.id;
    return active;
  }

  /** The leader's own log is durable through stableIndex: count it, as a follower's ack would. */
  leaderPersisted(): void {
    if (this.progressOf(this.ctx.id).maybeUpdate(this.ctx.log.stableIndex)) this.maybeCommit();
  }

  snapshotReported(to: NodeId, success: boolean): void {
    const pr = this.progress.get(to);
    if (pr === undefined || pr.state !== "snapshot") return;
    if (!success) pr.pendingSnapshot = 0;
    pr.becomeProbe();
    pr.probeSent = true; // wait for the next heartbeat's answer before probing again
  }

  // ---- leadership transfer ---------------------------------------------------------------------

  get leadTransferee(): NodeId {
    return this.transferee;
  }

  /**
   * This leader's removal committed: hand leadership to the most caught-up voter. True when the
   * leader should step down now (TimeoutNow sent, or no voter to hand to).
   */
  handOver(): boolean {
    if (this.transferee === NONE) {
      const to = this.mostCaughtUpVoter();
      if (to !== NONE) this.transferTo(to);
    }
    return this.timeoutNowSent || this.transferee === NONE;
  }

  /** The voter whose log matches the leader's furthest (lowest id on ties), or NONE. */
  private mostCaughtUpVoter(): NodeId {
    let best = NONE;
    let bestMatch = -1;
    for (const id of this.voters.voters) {
      const match = this.progressOf(id).matchIndex;
      if (id !== this.ctx.id && match > bestMatch) {
        best = id;
        bestMatch = match;
      }
    }
    return best;
  }

  /** Brings `to` up to date, then sends it TimeoutNow; proposals are refused meanwhile. */
  transferTo(to: NodeId): void {
    if (to === this.ctx.id || this.transferee === to) return;
    this.transferee = to;
    if (this.progressOf(to).matchIndex === this.ctx.log.lastIndex()) this.sendTimeoutNow(to);
    else this.sendAppend(to);
  }

  /** A transfer not done within an election timeout is abandoned. */
  abandonTransfer(): void {
    this.transferee = NONE;
    this.timeoutNowSent = false;
  }

  private sendTimeoutNow(to: NodeId): void {
    this.ctx.send({ type: "TimeoutNow", from: this.ctx.id, to, term: this.ctx.term });
    this.timeoutNowSent = true;
  }

  // ---- sending ---------------------------------------------------------------------------------

  broadcastAppend(): void {
    for (const id of this.peers) {
      if (!this.sendAppend(id)) continue;
      this.fillWindow(id);
    }
  }

  broadcastHeartbeat(readContext: number): void {
    for (const m of this.heartbeats(readContext)) this.ctx.send(m);
  }

  /** A heartbeat to every peer (commit capped at what each is known to hold, as etcd does). */
  heartbeats(readContext: number): Message[] {
    const { id: from, term, log } = this.ctx;
    const out: Message[] = [];
    for (const id of this.peers) {
      const commitIndex = Math.min(this.progressOf(id).matchIndex, log.commitIndex);
      out.push({ type: "Heartbeat", from, to: id, term, commitIndex, readContext });
    }
    return out;
  }

  /** Sends the follower what it needs next; false if nothing was sent. */
  sendAppend(to: NodeId, sendIfEmpty = true): boolean {
    const { id: from, term, log } = this.ctx;
    const pr = this.progressOf(to);
    if (pr.isPaused()) return false;
    const prevLogIndex = pr.nextIndex - 1;
    const prevLogTerm = log.term(prevLogIndex);
    if (prevLogTerm === undefined) {
      if (prevLogIndex > log.lastIndex()) throw new Error(`invariant: nextIndex ${pr.nextIndex} of ${to} beyond last index ${log.lastIndex()}`);
      // The entries it needs are compacted: the driver streams the state machine's snapshot.
      pr.becomeSnapshot(log.snapshot.index);
      this.ctx.send({ type: "InstallSnapshot", from, to, term, snapshot: cloneSnapshotMeta(log.snapshot) });
      return true;
    }
    const entries = log.slice(pr.nextIndex, log.lastIndex() + 1, this.ctx.maxBytesPerAppend);
    if (entries.length === 0 && !sendIfEmpty) return false;
    this.ctx.send({ type: "AppendEntries", from, to, term, prevLogIndex, prevLogTerm, entries, leaderCommit: log.commitIndex });
    pr.sentEntries(prevLogIndex + entries.length, entries.length);
    return true;
  }

  /** Pipelines further appends to a replicating follower until its in-flight window is full. */
  private fillWindow(id: NodeId): void {
    const pr = this.progressOf(id);
    while (pr.state === "replicate" && this.sendAppend(id, false)) {
      // Each send adds an in-flight append (bounded by maxInflight) or sends nothing and stops.
    }
  }

  // ---- answers ---------------------------------------------------------------------------------

  /** Handles a follower's answer (and completes a transfer to it once it has caught up). */
  handleAppendResponse(m: MessageOf<"AppendEntriesResponse">): void {
    const log = this.ctx.log;
    const pr = this.progress.get(m.from);
    if (pr === undefined) return; // not (or no longer) a member
    pr.recentActive = true;
    if (!m.success) {
      // conflictIndex 0: not an answer to an append but a report of lost entries (follower.ts handleHeartbeat).
      if (m.conflictIndex === 0) {
        if (pr.lostEntries(m.matchIndex)) this.sendAppend(m.from);
        return;
      }
      if (pr.maybeDecreaseTo(m.matchIndex, this.nextIndexHint(m))) {
        if (pr.state === "replicate") pr.becomeProbe();
        this.sendAppend(m.from);
      }
      return;
    }
    if (m.matchIndex > log.lastIndex()) {
      throw new Error(`invariant: follower ${m.from} acknowledged index ${m.matchIndex} beyond leader's last index ${log.lastIndex()}`);
    }
    const wasPaused = pr.isPaused();
    if (!pr.maybeUpdate(m.matchIndex)) return;
    if (pr.state === "probe") pr.becomeReplicate();
    else if (pr.state === "snapshot" && pr.matchIndex >= pr.pendingSnapshot) pr.becomeReplicate();
    else if (pr.state === "replicate") pr.inflights.freeLE(pr.matchIndex);
    // Followers learn a new commitIndex from the next AppendEntries or Heartbeat (within one
    // heartbeat interval), not from a round of empty appends per commit: that round would double
    // the messages of every write at low load, and nothing waits on a follower's commitIndex.
    this.maybeCommit();
    if (wasPaused) this.sendAppend(m.from);
    this.fillWindow(m.from);
    if (m.from === this.transferee && pr.matchIndex === log.lastIndex()) this.sendTimeoutNow(m.from);
  }

  /** The follower is alive: resume a stalled probe or window (read confirmation is the caller's). */
  handleHeartbeatResponse(m: MessageOf<"HeartbeatResponse">): void {
    const pr = this.progress.get(m.from);
    if (pr === undefined) return;
    pr.recentActive = true;
    pr.probeSent = false;
    // A full window whose appends were all lost would never drain: free one so an append goes
    // out, and the follower's rejection (or acceptance) resynchronises.
    if (pr.state === "replicate" && pr.inflights.full()) pr.inflights.freeFirst();
    if (pr.matchIndex < this.ctx.log.lastIndex()) this.sendAppend(m.from);
  }

  handleSnapshotResponse(m: MessageOf<"InstallSnapshotResponse">): void {
    const log = this.ctx.log;
    const pr = this.progress.get(m.from);
    if (pr === undefined) return;
    pr.recentActive = true;
    if (m.success) {
      if (m.matchIndex > log.lastIndex()) {
        throw new Error(`invariant: follower ${m.from} installed snapshot ${m.matchIndex} beyond leader's last index ${log.lastIndex()}`);
      }
      pr.maybeUpdate(m.matchIndex);
      if (pr.state !== "replicate") pr.becomeReplicate();
      this.maybeCommit();
      this.sendAppend(m.from);
    } else if (pr.state === "snapshot") {
      this.snapshotReported(m.from, false);
    }
  }

  /** Where to resume after a rejection, from the follower's conflicting term and its first index. */
  private nextIndexHint(m: MessageOf<"AppendEntriesResponse">): number {
    const log = this.ctx.log;
    if (m.conflictTerm > 0) {
      // If we hold entries of conflictTerm, resume right after our last one of them.
      for (let i = Math.min(m.matchIndex, log.lastIndex()); i > log.snapshot.index; i--) {
        const t = log.term(i) as number;
        if (t === m.conflictTerm) return i + 1;
        if (t < m.conflictTerm) break;
      }
    }
    return Math.max(1, m.conflictIndex);
  }

  // ---- commit ----------------------------------------------------------------------------------

  /** Commits the highest index a quorum holds, but only if it is of this term (§5.4.2, Figure 8). */
  private maybeCommit(): boolean {
    const { log, term } = this.ctx;
    const index = this.voters.committedIndex((id) => this.progressOf(id).matchIndex);
    if (index <= log.commitIndex || log.term(index) !== term) return false;
    const firstOfTerm = log.term(log.commitIndex) !== term;
    log.commitTo(index);
    this.ctx.onCommit(firstOfTerm);
    return true;
  }
}
