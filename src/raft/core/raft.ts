// The Raft consensus core: a deterministic state machine with no I/O, no clock and no ambient
// randomness. The driver feeds it ticks, messages and proposals and carries out its Ready.
// Roles, terms, the step function and Ready/advance live here; the follower's handlers in
// follower.ts, the voting rules in election.ts, the leader's replication in replication.ts.

import { type CampaignKind, countsVoteResponse, grantsVote, higherTermAction, voteRequests } from "./election.ts";
import { answerStaleMessage, type FollowerContext, handleAppendEntries, handleHeartbeat, handleInstallSnapshot, snapshotNeedsRestore } from "./follower.ts";
import { checkConfChange, type ConfChange } from "./config-change.ts";
import { cloneMembership, encodeMembership } from "./membership.ts";
import { MajorityConfig, VoteResult } from "./quorum.ts";
import { RaftLog, type RaftLogView } from "./raft-log.ts";
import { ReadOnly } from "./read-only.ts";
import { Recovery } from "./recovery.ts";
import { Outbox, type SoftState } from "./ready.ts";
import { type RaftConfig, resolveConfig } from "./raft-config.ts";
import type { ConfChangeResult, ProposeResult, RaftInitialState, RaftStatus, ReadIndexResult } from "./interface.ts";
import { Replication } from "./replication.ts";
import { EntryType, NONE, type HardState, type Message, type NodeId, type RaftRole, type Ready, type SnapshotMeta } from "../types.ts";

export type { ConfChange, ConfChangeRefusal } from "./config-change.ts";
export type { ConfChangeResult, ProgressStatus, ProposeResult, RaftInitialState, RaftStatus, ReadIndexResult } from "./interface.ts";
export type { RaftConfig } from "./raft-config.ts";

type MessageOf<T extends Message["type"]> = Extract<Message, { type: T }>;

export class Raft {
  readonly id: NodeId;
  private readonly config: Required<RaftConfig>;
  /** The voters of the latest configuration in the log, and which version of it that is. */
  private voters: MajorityConfig;
  private membershipSeen: number;
  private readonly log: RaftLog;

  private term: number;
  private votedFor: NodeId;
  private role: RaftRole = "Follower";
  private leaderId: NodeId = NONE;

  private electionElapsed = 0;
  private heartbeatElapsed = 0;
  private randomizedElectionTimeout = 0;

  private votes = new Map<NodeId, boolean>();
  /** The leader's view of its followers: non-null exactly while role is Leader. */
  private replication: Replication | null = null;
  private readonly readOnly: ReadOnly;
  private readonly recovery: Recovery;
  /** Proposals or reads waiting for the next ready() to go out as one broadcast. */
  private appendBroadcastPending = false;
  private readBroadcastPending = false;

  /** Messages, confirmed reads and a snapshot to install, waiting for the next Ready. */
  private readonly outbox: Outbox;

  constructor(config: RaftConfig, initial: RaftInitialState) {
    this.config = resolveConfig(config);
    this.id = config.id;
    const hs = initial.hardState;
    this.log = new RaftLog(initial.snapshot, initial.entries, hs.commitIndex, initial.appliedIndex);
    this.voters = new MajorityConfig(this.log.membership().voters);
    this.membershipSeen = this.log.membershipVersion;
    if (hs.term < this.log.lastTerm()) throw new RangeError(`persisted term ${hs.term} is below the last log term ${this.log.lastTerm()}`);
    this.term = hs.term;
    this.votedFor = hs.votedFor;
    this.outbox = new Outbox(hs, { role: this.role, leaderId: this.leaderId });
    this.readOnly = new ReadOnly(this.config.maxPendingReads);
    this.recovery = new Recovery(initial.recovering ?? false);
    this.resetRandomizedElectionTimeout();
  }

  // ---- Driver inputs ---------------------------------------------------------------------------

  tick(): void {
    if (this.role === "Leader") this.tickHeartbeat();
    else this.tickElection();
    this.afterInput();
  }

  /**
   * A leader's heartbeats to send at once, outside the Ready cycle (empty unless leading). For a
   * driver whose tick is overdue because its thread is busy with client work: they claim nothing
   * about this node's disk, so they need no ordering against its writes, and they advance no
   * clock here (checkQuorum and the election timeout still count real ticks only).
   */
  heartbeatsNow(): Message[] {
    if (this.role !== "Leader" || this.replication === null) return [];
    this.heartbeatElapsed = 0;
    return this.replication.heartbeats(this.readOnly.currentRound());
  }

  propose(data: Uint8Array[]): ProposeResult {
    if (data.length === 0) throw new RangeError("propose needs at least one command");
    if (this.role !== "Leader") return { ok: false, leaderId: this.leaderId, reason: "not-leader" };
    if (this.leader().leadTransferee !== NONE) return { ok: false, leaderId: this.leaderId, reason: "transferring" };
    const uncommitted = this.log.lastIndex() - this.log.commitIndex;
    if (uncommitted + data.length > this.config.maxPendingProposals) return { ok: false, leaderId: this.id, reason: "backpressure" };
    const first = this.log.lastIndex() + 1;
    this.log.append(data.map((d, i) => ({ index: first + i, term: this.term, type: EntryType.Normal, data: d })));
    // Sent on the next ready(): proposals arriving together leave in one AppendEntries.
    this.appendBroadcastPending = true;
    return { ok: true, index: first, term: this.term };
  }

  readIndex(context: number): ReadIndexResult {
    if (this.role !== "Leader") return { ok: false, leaderId: this.leaderId, reason: "not-leader" };
    if (this.voters.voters.length === 1 && this.voters.includes(this.id)) {
      this.outbox.readStates.push({ context, index: this.log.commitIndex });
      return { ok: true };
    }
    if (this.readOnly.full()) return { ok: false, leaderId: this.id, reason: "backpressure" };
    if (!this.committedInCurrentTerm()) {
      // Until an entry of this term commits, this leader's commitIndex may lag the cluster's (§6.4).
      this.readOnly.defer(context);
      return { ok: true };
    }
    this.readOnly.add(context, this.log.commitIndex);
    this.readBroadcastPending = true;
    return { ok: true };
  }

  /**
   * Proposes one configuration change (config-change.ts). It takes effect as soon as it is in the
   * log; the next may be proposed once it commits.
   */
  proposeConfChange(change: ConfChange): ConfChangeResult {
    if (this.role !== "Leader") return { ok: false, leaderId: this.leaderId, reason: "not-leader" };
    const replication = this.leader();
    if (replication.leadTransferee !== NONE) return { ok: false, leaderId: this.id, reason: "transferring" };
    const checked = checkConfChange(change, {
      membership: this.log.membership(),
      lastConfigIndex: this.log.lastConfigIndex(),
      commitIndex: this.log.commitIndex,
      committedInCurrentTerm: this.committedInCurrentTerm(),
      lastIndex: this.log.lastIndex(),
      maxLearnerLag: this.config.maxLearnerLag,
      matchIndex: (id) => replication.progressOf(id).matchIndex,
    });
    if (!checked.ok) return { ...checked, leaderId: this.id };
    const index = this.log.lastIndex() + 1;
    this.log.append([{ index, term: this.term, type: EntryType.ConfChange, data: encodeMembership(checked.next) }]);
    this.appendBroadcastPending = true;
    this.afterInput();
    return { ok: true, index, term: this.term, membership: checked.next };
  }

  transferLeadership(to: NodeId): void {
    if (!this.voters.includes(to)) throw new RangeError(`transferLeadership: ${to} is not a voter`);
    if (this.role !== "Leader" || to === this.id || this.leader().leadTransferee === to) return;
    this.electionElapsed = 0; // the transfer is abandoned after one election timeout
    this.leader().transferTo(to);
  }

  reportSnapshot(to: NodeId, success: boolean): void {
    this.replication?.snapshotReported(to, success);
  }

  /**
   * Receiver-side pre-check of an InstallSnapshot before the driver restores the state machine.
   * True iff the sender is the current leader and the snapshot is ahead of our commitIndex; the
   * driver then restores and calls step(message). Either way it calls step(message) to get the answer.
   */
  acceptSnapshot(message: MessageOf<"InstallSnapshot">): boolean {
    if (message.term < this.term) return false;
    if (message.term > this.term || this.role !== "Follower" || this.leaderId !== message.from) {
      this.becomeFollower(message.term, message.from);
    }
    this.electionElapsed = 0;
    return snapshotNeedsRestore(this.log, message.snapshot);
  }

  /** The driver compacted its durable log through meta.index (<= appliedIndex). */
  compact(meta: SnapshotMeta): void {
    this.log.compact(meta);
  }

  step(m: Message): void {
    if (m.to !== this.id) throw new RangeError(`node ${this.id} was handed a message addressed to ${m.to}`);
    // Senders outside our configuration are heard too: a joining node learns its configuration
    // from the leader's log. What counts (votes, acknowledgements) is decided by configuration.
    if (m.from === this.id) return;
    this.stepMessage(m);
    this.afterInput();
  }

  private stepMessage(m: Message): void {
    if (m.term > this.term) {
      const action = higherTermAction(m, { ...this.config, leaderId: this.leaderId, electionElapsed: this.electionElapsed });
      if (action === "ignore") return;
      if (action !== "keep-term") this.becomeFollower(m.term, action === "follow-sender" ? m.from : NONE);
    } else if (m.term < this.term) {
      if (this.config.checkQuorum || this.config.preVote) answerStaleMessage(this.followerContext(), m);
      return;
    }

    switch (m.type) {
      case "RequestVote":
        this.handleRequestVote(m);
        return;
      case "RequestVoteResponse":
        this.handleVoteResponse(m);
        return;
      case "AppendEntries":
      case "Heartbeat":
      case "InstallSnapshot":
        if (this.role === "Leader") {
          throw new Error(`invariant: leader ${this.id} received ${m.type} from ${m.from} in its own term ${this.term}`);
        }
        if (this.role !== "Follower" || this.leaderId !== m.from) this.becomeFollower(this.term, m.from);
        this.electionElapsed = 0;
        if (m.type === "AppendEntries") this.recovery.heardFromLeader(m);
        if (m.type === "AppendEntries") handleAppendEntries(this.followerContext(), m);
        else if (m.type === "Heartbeat") handleHeartbeat(this.followerContext(), m);
        else this.outbox.snapshot = handleInstallSnapshot(this.followerContext(), m) ?? this.outbox.snapshot;
        if (this.recovery.active) this.recovery.maybeFinish(this.log.commitIndex, this.log.term(this.log.commitIndex), this.term);
        return;
      case "AppendEntriesResponse":
        if (this.role === "Leader") this.leader().handleAppendResponse(m);
        return;
      case "HeartbeatResponse":
        if (this.role === "Leader") this.handleHeartbeatResponse(m);
        return;
      case "InstallSnapshotResponse":
        if (this.role === "Leader") this.leader().handleSnapshotResponse(m);
        return;
      case "TimeoutNow":
        if (this.role === "Follower") this.campaign("transfer");
        return;
      default:
        assertNever(m);
    }
  }

  // ---- Ready / advance -------------------------------------------------------------------------

  hasReady(): boolean {
    if (this.outbox.busy) return false;
    return this.appendBroadcastPending || this.readBroadcastPending || this.outbox.hasWork(this.log, this.hardState(), this.softState());
  }

  /** What to persist, send and apply next. Call advance(ready) before the next ready(). */
  ready(): Ready {
    if (this.outbox.busy) throw new Error("Raft.ready() called again before advance() of the previous Ready");
    this.flushBroadcasts();
    return this.outbox.take(this.log, this.hardState(), this.softState(), this.config.maxCommittedBytesPerReady);
  }

  /** The driver persisted, sent and applied everything in `rd`. */
  advance(rd: Ready): void {
    this.outbox.advance(rd, this.log);
    this.replication?.leaderPersisted();
    this.afterInput();
  }

  // ---- Inspection ------------------------------------------------------------------------------

  /** The applied index, without building a whole status (the driver asks once per cycle). */
  get appliedIndex(): number {
    return this.log.appliedIndex;
  }

  status(): RaftStatus {
    const s: RaftStatus = {
      id: this.id,
      role: this.role,
      term: this.term,
      leaderId: this.leaderId,
      commitIndex: this.log.commitIndex,
      appliedIndex: this.log.appliedIndex,
      firstIndex: this.log.firstIndex(),
      lastIndex: this.log.lastIndex(),
      votedFor: this.votedFor,
      recovering: this.recovery.describe(),
      membership: cloneMembership(this.log.membership()),
    };
    if (this.replication !== null) s.progress = this.replication.status();
    return s;
  }

  get isLeader(): boolean {
    return this.role === "Leader";
  }

  /** True while recovering lost durable state (no votes, no campaigns; see recovery.ts). */
  get recovering(): boolean {
    return this.recovery.active;
  }

  /** Read-only view of the in-memory log (used by the simulator's invariant checks). */
  get raftLog(): RaftLogView {
    return this.log;
  }

  // ---- Roles -----------------------------------------------------------------------------------

  private hardState(): HardState {
    return { term: this.term, votedFor: this.votedFor, commitIndex: this.log.commitIndex };
  }

  private softState(): SoftState {
    return { role: this.role, leaderId: this.leaderId, term: this.term };
  }

  private reset(term: number): void {
    if (this.term !== term) {
      if (term < this.term) throw new Error(`invariant: term moving backwards from ${this.term} to ${term}`);
      this.term = term;
      this.votedFor = NONE;
    }
    this.leaderId = NONE;
    this.electionElapsed = 0;
    this.heartbeatElapsed = 0;
    this.resetRandomizedElectionTimeout();
    this.votes.clear();
    this.replication = null;
    this.readOnly.reset();
    this.appendBroadcastPending = false;
    this.readBroadcastPending = false;
  }

  private becomeFollower(term: number, leaderId: NodeId): void {
    this.reset(term);
    this.role = "Follower";
    this.leaderId = leaderId;
  }

  private becomePreCandidate(): void {
    if (this.role === "Leader") throw new Error("invariant: a leader cannot become a pre-candidate");
    // Keeps term and vote: a pre-vote only asks whether an election could be won.
    this.reset(this.term);
    this.role = "PreCandidate";
  }

  private becomeCandidate(): void {
    if (this.role === "Leader") throw new Error("invariant: a leader cannot become a candidate");
    this.reset(this.term + 1);
    this.votedFor = this.id;
    this.role = "Candidate";
  }

  private becomeLeader(): void {
    if (this.role !== "Candidate") throw new Error(`invariant: only a candidate becomes leader (was ${this.role})`);
    this.reset(this.term);
    this.role = "Leader";
    this.leaderId = this.id;
    const last = this.log.lastIndex();
    const replication = new Replication({
      id: this.id,
      term: this.term,
      log: this.log,
      membership: this.log.membership(),
      maxInflight: this.config.maxInflight,
      maxBytesPerAppend: this.config.maxBytesPerAppend,
      send: (m) => this.send(m),
      onCommit: (firstOfTerm) => this.committed(firstOfTerm),
    });
    this.replication = replication;
    // The no-op commits every earlier-term entry this leader holds (§5.4.2, §8).
    this.log.append([{ index: last + 1, term: this.term, type: EntryType.Noop, data: new Uint8Array(0) }]);
    replication.broadcastAppend();
  }

  private campaign(kind: CampaignKind): void {
    if (!this.voters.includes(this.id)) return; // learners and non-members never campaign
    let voteTerm: number;
    if (kind === "pre-vote") {
      this.becomePreCandidate();
      voteTerm = this.term + 1;
    } else {
      this.becomeCandidate();
      voteTerm = this.term;
    }
    this.votes.set(this.id, true);
    if (this.tally() === VoteResult.Won) {
      if (kind === "pre-vote") this.campaign("election");
      else this.becomeLeader();
      return;
    }
    for (const m of voteRequests(this.id, this.voters.voters, voteTerm, this.log, kind)) {
      if (this.recovery.active && m.type === "RequestVote") m.recovering = true;
      this.send(m);
    }
  }

  private tickElection(): void {
    this.electionElapsed++;
    // A learner or removed node never campaigns; its timer keeps running, so once a whole election
    // timeout passes without a leader it is out of the lease and answers a candidate's votes.
    if (this.electionElapsed >= this.randomizedElectionTimeout && this.voters.includes(this.id)) {
      this.electionElapsed = 0;
      this.campaign(this.config.preVote ? "pre-vote" : "election");
    }
  }

  private tickHeartbeat(): void {
    this.heartbeatElapsed++;
    this.electionElapsed++;
    if (this.electionElapsed >= this.config.electionTicks) {
      this.electionElapsed = 0;
      if (this.removalCommitted()) {
        // Its hand-over did not finish within an election timeout: the voters elect without it.
        this.becomeFollower(this.term, NONE);
        return;
      }
      if (this.config.checkQuorum) {
        if (!this.leader().quorumActive()) {
          // Cut off from a majority for a whole election timeout: stop accepting work (§6.2).
          this.becomeFollower(this.term, NONE);
          return;
        }
      }
      this.leader().abandonTransfer();
    }
    if (this.heartbeatElapsed >= this.config.heartbeatTicks) {
      this.heartbeatElapsed = 0;
      this.leader().broadcastHeartbeat(this.readOnly.currentRound());
    }
  }

  private resetRandomizedElectionTimeout(): void {
    const r = this.config.random();
    if (!(r >= 0 && r < 1)) throw new RangeError(`RaftConfig.random() must return a number in [0,1), got ${r}`);
    this.randomizedElectionTimeout = this.config.electionTicks + Math.floor(r * this.config.electionTicks);
  }

  // ---- Votes -----------------------------------------------------------------------------------

  private handleRequestVote(m: MessageOf<"RequestVote">): void {
    const granted =
      grantsVote(m, { term: this.term, votedFor: this.votedFor, leaderId: this.leaderId }, this.log) && !this.recovery.refusesVote(m);
    this.send({ type: "RequestVoteResponse", from: this.id, to: m.from, term: granted ? m.term : this.term, voteGranted: granted, preVote: m.preVote });
    if (granted && !m.preVote) {
      this.votedFor = m.from;
      this.electionElapsed = 0;
    }
  }

  private handleVoteResponse(m: MessageOf<"RequestVoteResponse">): void {
    if (!countsVoteResponse(this.role, this.term, m)) return;
    this.votes.set(m.from, m.voteGranted);
    const result = this.tally();
    if (result === VoteResult.Won) {
      if (this.role === "PreCandidate") this.campaign("election");
      else this.becomeLeader();
    } else if (result === VoteResult.Lost) {
      this.becomeFollower(this.term, NONE);
    }
  }

  /** The campaign's outcome: a majority, or for a recovering candidate every other voter (recovery.ts). */
  private tally(): VoteResult {
    return this.recovery.active ? this.recovery.tally(this.id, this.voters.voters, this.votes) : this.voters.voteResult(this.votes);
  }

  private followerContext(): FollowerContext {
    return { id: this.id, term: this.term, log: this.log, send: (m) => this.send(m) };
  }

  // ---- Configuration ---------------------------------------------------------------------------

  /** After every input: use the log's latest configuration, and hand over if it removed this leader. */
  private afterInput(): void {
    if (this.log.membershipVersion !== this.membershipSeen) {
      this.membershipSeen = this.log.membershipVersion;
      const membership = this.log.membership();
      this.voters = new MajorityConfig(membership.voters);
      this.replication?.setMembership(membership);
    }
    // A leader whose removal committed hands over to the most caught-up voter (TimeoutNow once it
    // holds the whole log), refusing proposals meanwhile, and steps down.
    if (this.role === "Leader" && this.removalCommitted() && this.leader().handOver()) this.becomeFollower(this.term, NONE);
  }

  /** This leader is not a voter of the configuration, and that configuration is committed. */
  private removalCommitted(): boolean {
    return !this.voters.includes(this.id) && this.log.commitIndex >= this.log.lastConfigIndex();
  }

  // ---- Leader side (replication itself is in replication.ts) -----------------------------------

  private leader(): Replication {
    if (this.replication === null) throw new Error(`invariant: node ${this.id} is ${this.role}, not the leader`);
    return this.replication;
  }

  /** commitIndex advanced: reads held back until this term committed an entry may now go ahead. */
  private committed(firstOfTerm: boolean): void {
    if (firstOfTerm) this.recovery.leaderCommitted();
    if (firstOfTerm && this.readOnly.addDeferred(this.log.commitIndex)) this.readBroadcastPending = true;
  }

  private committedInCurrentTerm(): boolean {
    return this.log.term(this.log.commitIndex) === this.term;
  }

  private flushBroadcasts(): void {
    if (this.replication === null) return;
    if (this.appendBroadcastPending) {
      this.appendBroadcastPending = false;
      this.replication.broadcastAppend();
    }
    if (this.readBroadcastPending) {
      this.readBroadcastPending = false;
      this.replication.broadcastHeartbeat(this.readOnly.currentRound());
    }
  }

  private handleHeartbeatResponse(m: MessageOf<"HeartbeatResponse">): void {
    this.leader().handleHeartbeatResponse(m);
    if (m.readContext > 0) {
      for (const rs of this.readOnly.ack(m.from, m.readContext, this.voters, this.id)) this.outbox.readStates.push(rs);
    }
  }

  private send(m: Message): void {
    this.outbox.messages.push(m);
  }
}

function assertNever(x: never): never {
  throw new Error(`unhandled message ${JSON.stringify(x)}`);
}
