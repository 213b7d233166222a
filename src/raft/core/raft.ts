// The Raft consensus core: a deterministic state machine with no I/O, no clock and no ambient
// randomness. The driver feeds it ticks, messages and proposals and carries out its Ready.
// Roles, terms, the step function and Ready/advance live here; the follower's handlers in
// follower.ts, the voting rules in election.ts, the leader's replication in replication.ts.

import { type CampaignKind, countsVoteResponse, grantsVote, ignoresVoteRequest, voteRequests } from "./election.ts";
import {
  answerStaleMessage,
  type FollowerContext,
  handleAppendEntries,
  handleHeartbeat,
  handleInstallSnapshot,
  snapshotNeedsRestore,
} from "./follower.ts";
import { MajorityConfig, VoteResult } from "./quorum.ts";
import { RaftLog } from "./raft-log.ts";
import { ReadOnly } from "./read-only.ts";
import { Recovery } from "./recovery.ts";
import { Outbox, type SoftState } from "./ready.ts";
import { type RaftConfig, validateConfig } from "./raft-config.ts";
import { type ProgressStatus, Replication } from "./replication.ts";
import {
  EntryType,
  NONE,
  type Entry,
  type HardState,
  type Message,
  type NodeId,
  type RaftRole,
  type Ready,
  type SnapshotMeta,
} from "../types.ts";

export interface RaftInitialState {
  /** As persisted. */
  hardState: HardState;
  /** Log compaction point ({index:0, term:0, members: peers} when none). */
  snapshot: SnapshotMeta;
  /** Persisted entries after snapshot.index, in order. */
  entries: Entry[];
  /** The state machine's applied index: committed entries after it are re-delivered in committedEntries. */
  appliedIndex: number;
  /** The node may have lost durable state it acknowledged: no votes until caught up (recovery.ts). */
  recovering?: boolean;
}

export type ProposeResult =
  | { ok: true; index: number; term: number }
  | { ok: false; leaderId: NodeId; reason: "not-leader" | "backpressure" | "transferring" };

export type ReadIndexResult = { ok: true } | { ok: false; leaderId: NodeId; reason?: "not-leader" | "backpressure" };

export type { ProgressStatus } from "./replication.ts";
export type { RaftConfig } from "./raft-config.ts";

export interface RaftStatus {
  id: NodeId;
  role: RaftRole;
  term: number;
  leaderId: NodeId;
  commitIndex: number;
  appliedIndex: number;
  firstIndex: number;
  lastIndex: number;
  votedFor: NodeId;
  progress?: Record<NodeId, ProgressStatus>;
  /** Why this node does not vote yet ("" when it does): it is recovering lost durable state. */
  recovering: string;
}

type MessageOf<T extends Message["type"]> = Extract<Message, { type: T }>;

export class Raft {
  readonly id: NodeId;
  private readonly config: Required<RaftConfig>;
  private readonly voters: MajorityConfig;
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
    validateConfig(config);
    this.config = {
      maxPendingProposals: 10_000,
      maxPendingReads: 10_000,
      maxCommittedBytesPerReady: 16 * 1024 * 1024,
      ...config,
    };
    this.id = config.id;
    this.voters = new MajorityConfig(config.peers);
    const hs = initial.hardState;
    this.log = new RaftLog(initial.snapshot, initial.entries, hs.commitIndex, initial.appliedIndex);
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
  }

  propose(data: Uint8Array[]): ProposeResult {
    if (data.length === 0) throw new RangeError("propose needs at least one command");
    if (this.role !== "Leader") return { ok: false, leaderId: this.leaderId, reason: "not-leader" };
    if (this.leader().leadTransferee !== NONE) return { ok: false, leaderId: this.leaderId, reason: "transferring" };
    const uncommitted = this.log.lastIndex() - this.log.commitIndex;
    if (uncommitted + data.length > this.config.maxPendingProposals) return { ok: false, leaderId: this.id, reason: "backpressure" };
    const first = this.log.lastIndex() + 1;
    this.appendEntries(data.map((d, i) => ({ index: first + i, term: this.term, type: EntryType.Normal, data: d })));
    // Sent on the next ready(): proposals arriving together leave in one AppendEntries.
    this.appendBroadcastPending = true;
    return { ok: true, index: first, term: this.term };
  }

  readIndex(context: number): ReadIndexResult {
    if (this.role !== "Leader") return { ok: false, leaderId: this.leaderId, reason: "not-leader" };
    if (this.voters.voters.length === 1) {
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

  transferLeadership(to: NodeId): void {
    if (!this.voters.voters.includes(to)) throw new RangeError(`transferLeadership: ${to} is not a member`);
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
    if (!this.voters.voters.includes(m.from) || m.from === this.id) return; // not a peer: ignore
    if (m.term > this.term) {
      if (m.type === "RequestVote" && ignoresVoteRequest(m, { ...this.config, leaderId: this.leaderId, electionElapsed: this.electionElapsed })) {
        return;
      }
      if (m.type === "RequestVote" && m.preVote) {
        // A pre-vote does not change anyone's term.
      } else if (m.type === "RequestVoteResponse" && m.preVote && m.voteGranted) {
        // Granted pre-votes carry the term we would campaign in.
      } else if (m.type === "AppendEntries" || m.type === "Heartbeat" || m.type === "InstallSnapshot") {
        this.becomeFollower(m.term, m.from);
      } else {
        this.becomeFollower(m.term, NONE);
      }
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
    };
    if (this.replication !== null) s.progress = this.replication.status();
    return s;
  }

  /** True while recovering lost durable state (no votes, no campaigns; see recovery.ts). */
  get recovering(): boolean {
    return this.recovery.active;
  }

  /** Read-only view of the in-memory log (used by the simulator's invariant checks). */
  get raftLog(): Pick<RaftLog, "snapshot" | "term" | "entry" | "firstIndex" | "lastIndex" | "commitIndex" | "heldEntries"> {
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
    this.recovery.becameLeader();
    const last = this.log.lastIndex();
    const replication = new Replication({
      id: this.id,
      term: this.term,
      log: this.log,
      voters: this.voters,
      maxInflight: this.config.maxInflight,
      maxBytesPerAppend: this.config.maxBytesPerAppend,
      send: (m) => this.send(m),
      onCommit: (firstOfTerm) => this.committed(firstOfTerm),
    });
    this.replication = replication;
    // The no-op commits every earlier-term entry this leader holds (§5.4.2, §8).
    this.appendEntries([{ index: last + 1, term: this.term, type: EntryType.Noop, data: new Uint8Array(0) }]);
    replication.broadcastAppend();
  }

  private campaign(kind: CampaignKind): void {
    if (!this.voters.voters.includes(this.id)) return;
    if (this.recovery.blocksCampaign(this.log)) return;
    let voteTerm: number;
    if (kind === "pre-vote") {
      this.becomePreCandidate();
      voteTerm = this.term + 1;
    } else {
      this.becomeCandidate();
      voteTerm = this.term;
    }
    this.votes.set(this.id, true);
    if (this.voters.voteResult(this.votes) === VoteResult.Won) {
      if (kind === "pre-vote") this.campaign("election");
      else this.becomeLeader();
      return;
    }
    for (const m of voteRequests(this.id, this.voters.voters, voteTerm, this.log, kind)) this.send(m);
  }

  private tickElection(): void {
    this.electionElapsed++;
    if (this.electionElapsed >= this.randomizedElectionTimeout) {
      this.electionElapsed = 0;
      this.campaign(this.config.preVote ? "pre-vote" : "election");
    }
  }

  private tickHeartbeat(): void {
    this.heartbeatElapsed++;
    this.electionElapsed++;
    if (this.electionElapsed >= this.config.electionTicks) {
      this.electionElapsed = 0;
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
      grantsVote(m, { term: this.term, votedFor: this.votedFor, leaderId: this.leaderId }, this.log) && !this.recovery.refusesVote(m, this.log);
    this.send({ type: "RequestVoteResponse", from: this.id, to: m.from, term: granted ? m.term : this.term, voteGranted: granted, preVote: m.preVote });
    if (granted && !m.preVote) {
      this.votedFor = m.from;
      this.electionElapsed = 0;
    }
  }

  private handleVoteResponse(m: MessageOf<"RequestVoteResponse">): void {
    if (!countsVoteResponse(this.role, this.term, m)) return;
    this.votes.set(m.from, m.voteGranted);
    const result = this.voters.voteResult(this.votes);
    if (result === VoteResult.Won) {
      if (this.role === "PreCandidate") this.campaign("election");
      else this.becomeLeader();
    } else if (result === VoteResult.Lost) {
      this.becomeFollower(this.term, NONE);
    }
  }

  private followerContext(): FollowerContext {
    return { id: this.id, term: this.term, log: this.log, send: (m) => this.send(m) };
  }

  // ---- Leader side (replication itself is in replication.ts) -----------------------------------

  private leader(): Replication {
    if (this.replication === null) throw new Error(`invariant: node ${this.id} is ${this.role}, not the leader`);
    return this.replication;
  }

  /**
   * The leader's own append. It does not count toward commit yet: the driver may send these
   * entries to followers before its own write is durable (thesis §10.2.1), so the leader's
   * matchIndex advances only when advance() reports them stable (Replication.leaderPersisted).
   */
  private appendEntries(entries: Entry[]): void {
    this.log.append(entries);
  }

  /** commitIndex advanced: reads held back until this term committed an entry may now go ahead. */
  private committed(firstOfTerm: boolean): void {
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
      const confirmed = this.readOnly.ack(m.from, m.readContext, (acked) =>
        this.voters.committedIndex((id) => (id === this.id ? Number.MAX_SAFE_INTEGER : (acked.get(id) ?? 0))),
      );
      for (const rs of confirmed) this.outbox.readStates.push(rs);
    }
  }

  private send(m: Message): void {
    this.outbox.messages.push(m);
  }
}

function assertNever(x: never): never {
  throw new Error(`unhandled message ${JSON.stringify(x)}`);
}
