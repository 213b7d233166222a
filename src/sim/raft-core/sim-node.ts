// One simulated server: a Raft core, its driver loop (persist → send → apply → advance), a disk
// that keeps only what was persisted, and a hash-chain state machine with snapshots.

import { cloneSnapshotMeta, metaWith } from "../../raft/core/membership.ts";
import { Raft, type RaftConfig } from "../../raft/core/raft.ts";
import { NONE, type Entry, type HardState, type Message, type NodeId, type ReadState, type SnapshotMeta } from "../../raft/types.ts";
import { mix, entryDigest, type Oracle } from "./checker.ts";
import type { Envelope } from "./network.ts";

/** Where an armed crash strikes while the driver handles a Ready. */
export type CrashPoint = "before-persist" | "after-persist" | "after-send";

/** What survives a crash: the Raft log store's contents and the state machine's last snapshot. */
export interface SimDisk {
  hardState: HardState;
  /** The log's compaction point. */
  logSnapshot: SnapshotMeta;
  /** Entries after logSnapshot.index. */
  entries: Entry[];
  /** The state machine's durable image (written at compaction or when a snapshot is installed). */
  smSnapshot: { meta: SnapshotMeta; state: number };
  /** The node lost durable state and has not caught up since (the kvserver's RECOVERING marker). */
  recovering: boolean;
}

/**
 * Disk faults (applied to a node that is down): wipe loses everything; truncate loses the newest
 * log entries; discard-state is the self-repair of a corrupt state machine (state machine and log
 * discarded, term and vote kept).
 */
export type DiskFault = "wipe" | "truncate" | "discard-state";

export const INITIAL_STATE = 0x2545f491;

/** The services a node needs from the simulated world around it. */
export interface SimHost {
  now(): number;
  send(envelope: Envelope): void;
  crash(id: NodeId, why: string): void;
  fail(invariant: string, detail: string): never;
  note(text: string): void;
  onReadState(node: NodeId, rs: ReadState): void;
  /** A leader's commitIndex advanced to `index`: a quorum of its voters must hold that entry on disk. */
  onLeaderCommit(node: NodeId, term: number, index: number, voters: readonly NodeId[]): void;
  /** `node` became leader of `term` with configuration `voters`. */
  onBecameLeader(node: NodeId, term: number, voters: readonly NodeId[]): void;
  readonly oracle: Oracle;
  readonly stats: { snapshotsSent: number; snapshotsInstalled: number; compactions: number; elections: number };
}

export class SimNode {
  raft: Raft | null = null;
  readonly disk: SimDisk;
  /** The in-memory state machine (lost on crash, rebuilt from smSnapshot and the log). */
  applied = 0;
  appliedTerm = 0;
  state = INITIAL_STATE;
  armedCrash: CrashPoint | null = null;
  /** Highest commitIndex seen in this incarnation (commitIndex must never decrease). */
  private lifetimeCommit = 0;
  /** While answering a RequestVote that this recovering node must refuse: the candidate. */
  private mustRefuse: NodeId = NONE;
  /** Snapshot transfers this node (as leader) has in flight: peer → tick sent. */
  private readonly snapshotsOut = new Map<NodeId, number>();

  constructor(
    readonly id: NodeId,
    private readonly config: RaftConfig,
    /** The bootstrap voters (empty for a spare node that waits to be added). */
    private readonly bootstrap: readonly NodeId[],
    private readonly host: SimHost,
    /** Compact after this many applied entries beyond the last snapshot (0 = never). */
    private readonly snapshotEvery: number,
    /** Ticks after which an unanswered snapshot transfer counts as failed. */
    private readonly snapshotTimeout: number,
  ) {
    const members = [...bootstrap];
    this.disk = {
      hardState: { term: 0, votedFor: NONE, commitIndex: 0 },
      logSnapshot: { index: 0, term: 0, members },
      entries: [],
      smSnapshot: { meta: { index: 0, term: 0, members }, state: INITIAL_STATE },
      recovering: false,
    };
  }

  /** Damages the disk of this (stopped) node; `cut` is how many newest entries truncate drops. */
  loseDisk(fault: DiskFault, cut: number): void {
    if (this.alive) throw new Error(`invariant: disk fault on running node ${this.id}`);
    const d = this.disk;
    const members = [...this.bootstrap];
    const emptyLog = (): void => {
      d.logSnapshot = { index: 0, term: 0, members };
      d.entries = [];
      d.smSnapshot = { meta: { index: 0, term: 0, members: [...members] }, state: INITIAL_STATE };
    };
    if (fault === "wipe") {
      d.hardState = { term: 0, votedFor: NONE, commitIndex: 0 };
      emptyLog();
    } else if (fault === "discard-state") {
      d.hardState = { ...d.hardState, commitIndex: 0 };
      emptyLog();
    } else {
      d.entries = d.entries.slice(0, Math.max(0, d.entries.length - cut));
      const last = d.logSnapshot.index + d.entries.length;
      // The truncated segments held the newest hard states too: commitIndex cannot be past the log.
      d.hardState = { ...d.hardState, commitIndex: Math.min(d.hardState.commitIndex, Math.max(last, d.smSnapshot.meta.index)) };
    }
    d.recovering = true;
  }

  get alive(): boolean {
    return this.raft !== null;
  }

  /** Boots (or reboots) from the disk alone, as a real process would after kill -9. */
  start(): void {
    const d = this.disk;
    const sm = d.smSnapshot.meta;
    // A snapshot installed into the state machine may be ahead of the log's reset (crash in
    // between): the log must resume where the state machine stands.
    if (sm.index > d.logSnapshot.index) {
      const held = d.entries[sm.index - d.logSnapshot.index - 1];
      d.entries = held !== undefined && held.term === sm.term ? d.entries.slice(sm.index - d.logSnapshot.index) : [];
      d.logSnapshot = cloneSnapshotMeta(sm);
      if (d.hardState.term < sm.term) d.hardState = { term: sm.term, votedFor: NONE, commitIndex: d.hardState.commitIndex };
    }
    this.applied = sm.index;
    this.appliedTerm = sm.term;
    this.state = d.smSnapshot.state;
    this.raft = new Raft(this.config, {
      hardState: { ...d.hardState },
      snapshot: cloneSnapshotMeta(d.logSnapshot),
      entries: d.entries.slice(),
      appliedIndex: sm.index,
      recovering: d.recovering,
    });
    this.lifetimeCommit = this.raft.status().commitIndex;
    this.snapshotsOut.clear();
    this.armedCrash = null;
  }

  stop(): void {
    this.raft = null;
    this.armedCrash = null;
    this.snapshotsOut.clear();
  }

  tick(): void {
    const raft = this.raft;
    if (raft === null) return;
    raft.tick();
    for (const [to, sentAt] of this.snapshotsOut) {
      if (this.host.now() - sentAt > this.snapshotTimeout) {
        this.snapshotsOut.delete(to);
        raft.reportSnapshot(to, false);
      }
    }
    this.processReady();
  }

  deliver(env: Envelope): void {
    const raft = this.raft;
    if (raft === null) return;
    const m = env.message;
    if (m.type === "InstallSnapshot") {
      if (env.payload === undefined) this.host.fail("simulator", `InstallSnapshot ${m.from}->${m.to} without a payload`);
      if (raft.acceptSnapshot(m)) {
        // Restore the state machine from the streamed image (atomic and durable), then tell the core.
        this.host.oracle.onRestore(this.id, m.snapshot.index, m.snapshot.term, env.payload.state);
        this.applied = m.snapshot.index;
        this.appliedTerm = m.snapshot.term;
        this.state = env.payload.state;
        this.disk.smSnapshot = { meta: cloneSnapshotMeta(m.snapshot), state: env.payload.state };
        this.host.stats.snapshotsInstalled++;
        this.host.note(`n${this.id} installed snapshot ${m.snapshot.index}/${m.snapshot.term} from n${m.from}`);
      }
    } else if (m.type === "InstallSnapshotResponse") {
      this.snapshotsOut.delete(m.from);
    }
    // A recovering node grants no vote to a candidate that is not recovering itself (checked as it answers).
    this.mustRefuse = m.type === "RequestVote" && raft.recovering && m.recovering !== true ? m.from : NONE;
    raft.step(m);
    this.processReady();
    this.mustRefuse = NONE;
  }

  /** The driver loop: for each Ready, persist, then send, then apply, then advance. */
  processReady(): void {
    for (let rounds = 0; this.raft !== null && this.raft.hasReady(); rounds++) {
      if (rounds > 10_000) this.host.fail("simulator", `node ${this.id}'s Ready loop did not settle`);
      const raft = this.raft;
      const rd = raft.ready();
      if (rd.softState !== null) {
        this.host.note(`n${this.id} is ${rd.softState.role} in term ${rd.softState.term} (leader ${rd.softState.leaderId})`);
        if (rd.softState.role !== "Follower" && !raft.status().membership.voters.includes(this.id)) {
          this.host.fail("learners never campaign", `node ${this.id} is ${rd.softState.role} in term ${rd.softState.term} but not a voter of its configuration`);
        }
        if (rd.softState.role === "Leader") this.onBecameLeader(rd.softState.term);
      }
      // As node.ts: a leader's own messages leave before its write (thesis §10.2.1), the rest after.
      for (const m of rd.messages) if (isLeaderMessage(m)) this.sendMessage(m);
      if (this.armedCrash === "before-persist") return this.host.crash(this.id, "before persisting a Ready");
      this.persist(rd.hardState, rd.entries, rd.snapshot);
      if (this.armedCrash === "after-persist") return this.host.crash(this.id, "after persisting, before sending");
      for (const m of rd.messages) if (!isLeaderMessage(m)) this.sendMessage(m);
      if (this.armedCrash === "after-send") return this.host.crash(this.id, "after sending, before applying");
      for (const e of rd.committedEntries) this.apply(e);
      for (const rs of rd.readStates) this.host.onReadState(this.id, rs);
      raft.advance(rd);
      if (this.disk.recovering && !raft.recovering) {
        this.disk.recovering = false;
        this.host.note(`n${this.id} caught up: recovery of its lost disk is over`);
      }
      this.maybeCompact();
      const s = raft.status();
      const commit = s.commitIndex;
      if (commit < this.lifetimeCommit) this.host.fail("commitIndex monotonic", `node ${this.id}'s commitIndex fell from ${this.lifetimeCommit} to ${commit}`);
      if (s.role === "Leader" && commit > this.lifetimeCommit) this.host.onLeaderCommit(this.id, s.term, commit, s.membership.voters);
      this.lifetimeCommit = commit;
    }
  }

  private persist(hardState: HardState | null, entries: Entry[], snapshot: SnapshotMeta | null): void {
    const d = this.disk;
    if (snapshot !== null) {
      d.logSnapshot = cloneSnapshotMeta(snapshot);
      d.entries = [];
    }
    if (entries.length > 0) {
      const first = entries[0]!.index;
      const lastOnDisk = d.logSnapshot.index + d.entries.length;
      if (first <= d.logSnapshot.index || first > lastOnDisk + 1) {
        this.host.fail("simulator", `node ${this.id} asked to persist entries from ${first}; disk holds ${d.logSnapshot.index + 1}..${lastOnDisk}`);
      }
      d.entries = d.entries.slice(0, first - d.logSnapshot.index - 1).concat(entries);
    }
    if (hardState === null) return;
    // MustSync (as the log stores do): a commitIndex-only change costs no fsync and may be lost in
    // a crash. The simulated disk keeps the harshest case: it is never written on its own.
    const commitOnly =
      entries.length === 0 && snapshot === null && hardState.term === d.hardState.term && hardState.votedFor === d.hardState.votedFor;
    if (!commitOnly) d.hardState = { ...hardState };
  }

  private sendMessage(m: Message): void {
    if (m.type === "RequestVoteResponse" && m.voteGranted && this.mustRefuse === m.to) {
      this.host.fail("recovering node votes", `node ${this.id} lost durable state and has not caught up, yet granted a vote to ${m.to} (not recovering) in term ${m.term}`);
    }
    if (m.type === "InstallSnapshot") {
      // The driver streams the state machine's current image, not the log's compaction point.
      const meta = this.metaAtApplied();
      this.snapshotsOut.set(m.to, this.host.now());
      this.host.stats.snapshotsSent++;
      this.host.send({ message: { ...m, snapshot: meta }, payload: { state: this.state }, sentAt: this.host.now() });
      return;
    }
    this.host.send({ message: m, sentAt: this.host.now() });
  }

  private apply(e: Entry): void {
    if (e.index !== this.applied + 1) this.host.fail("simulator", `node ${this.id} was handed entry ${e.index} to apply after ${this.applied}`);
    this.state = mix(this.state, entryDigest(e));
    this.applied = e.index;
    this.appliedTerm = e.term;
    this.host.oracle.onApply(this.id, e, this.state);
  }

  private maybeCompact(): void {
    const raft = this.raft!;
    if (this.snapshotEvery <= 0 || this.applied - this.disk.logSnapshot.index < this.snapshotEvery) return;
    const meta = this.metaAtApplied();
    this.disk.smSnapshot = { meta, state: this.state };
    this.disk.entries = this.disk.entries.slice(meta.index - this.disk.logSnapshot.index);
    this.disk.logSnapshot = cloneSnapshotMeta(meta);
    raft.compact(meta);
    this.host.stats.compactions++;
  }

  /** The state machine's image as a snapshot: its applied index, with the configuration in force there. */
  private metaAtApplied(): SnapshotMeta {
    const membership = this.raft!.raftLog.membershipAt(this.applied);
    if (membership === undefined) this.host.fail("simulator", `node ${this.id} has no configuration at its applied index ${this.applied}`);
    return metaWith(this.applied, this.appliedTerm, membership);
  }

  /** Leader completeness: a new leader holds every entry the cluster has applied. */
  private onBecameLeader(term: number): void {
    if (this.host.oracle.onLeader(this.id, term)) this.host.stats.elections++;
    this.host.onBecameLeader(this.id, term, this.raft!.status().membership.voters);
    const log = this.raft!.raftLog;
    const oracle = this.host.oracle;
    for (let i = Math.max(1, log.snapshot.index); i <= oracle.maxApplied; i++) {
      const t = log.term(i);
      if (t !== oracle.at(i)!.term) {
        this.host.fail("leader completeness", `node ${this.id} became leader of term ${term} holding term ${t} at index ${i}, where term ${oracle.at(i)!.term} was applied`);
      }
    }
  }
}

function isLeaderMessage(m: Message): boolean {
  return m.type === "AppendEntries" || m.type === "Heartbeat" || m.type === "InstallSnapshot";
}
