// RaftNode: the driver that does all the I/O around the pure core — ticks, the persist → send →
// apply cycle and receiving snapshots. Options in node-options.ts, ReadIndex waiters in
// node-reads.ts, snapshot sending in node-snapshots.ts, log compaction in node-compaction.ts.

import { Rng } from "../util/rng.ts";
import { traceSpan, tracing, wallNow } from "../util/trace.ts";
import { type Clock, RealClock, type TimerHandle } from "./clock.ts";
import { Raft } from "./core/raft.ts";
import type { ConfChange } from "./core/config-change.ts";
import { metaWith } from "./core/membership.ts";
import {
  BackpressureError,
  ConfChangePendingError,
  EntryTooLargeError,
  InvalidConfChangeError,
  NodeStoppedError,
  NotLeaderError,
} from "./errors.ts";
import { maybeCompact } from "./node-compaction.ts";
import { ConfChangeWaiters } from "./node-conf-changes.ts";
import { coreConfig, type RaftNodeOptions, type RaftNodeStatus, type ResolvedNodeOptions, resolveOptions } from "./node-options.ts";
import { ReadWaiters } from "./node-reads.ts";
import { SnapshotSender } from "./node-snapshots.ts";
import { type Entry, EntryType, type LogStore, type Membership, type Message, type NodeId, type Ready, type SnapshotMeta, type StateMachine, type Transport } from "./types.ts";

export type { RaftNodeOptions, RaftNodeStatus, RaftObserver } from "./node-options.ts";

type InstallSnapshot = Extract<Message, { type: "InstallSnapshot" }>;
type InstallSnapshotResponse = Extract<Message, { type: "InstallSnapshotResponse" }>;

export class RaftNode {
  readonly id: NodeId;
  private readonly raft: Raft;
  private readonly clock: Clock;
  private readonly opts: ResolvedNodeOptions;
  private readonly log: LogStore;
  private readonly sm: StateMachine;
  private readonly transport: Transport;

  private tickTimer: TimerHandle | null = null;
  /** When the last tick ran or pulse() sent heartbeats (clock ms). */
  private lastBeatAt = 0;
  /** The running persist → send → apply loop, if any. */
  private cycle: Promise<void> | null = null;
  private cycleQueued = false;
  /**
   * Messages (or client answers) were handed to sockets in this macrotask. Bun's HTTP/2 sends a
   * frame only once the current macrotask ends, so work done before then delays it.
   */
  private unflushed = false;
  /** Between acceptSnapshot and step: no cycle may run and incoming messages wait. */
  private restoring = false;
  private heldMessages: Message[] = [];
  private readonly snapshotSender: SnapshotSender;
  /** InstallSnapshot answers the core produces for a stream we are receiving, by leader id. */
  private readonly snapshotAnswers = new Map<NodeId, (m: InstallSnapshotResponse | null) => void>();
  private readonly reads: ReadWaiters;
  private readonly confChanges: ConfChangeWaiters;
  /** The configuration version last reported to onMembershipChange. */
  private membershipSeen = -1;
  private stopped = false;
  private fatal: Error | null = null;
  private snapshotsReceived = 0;
  /** Bytes of snapshot streams read by this node as a follower (installed or not). */
  private snapshotBytesReceived = 0;
  private appliedBeforeOwnSync = 0;
  /**
   * While the leader's log write runs: the last index it writes. Entries through it that commit
   * meanwhile (on the followers' disks) are applied without waiting for it (thesis §10.2.1).
   */
  private savingThrough = 0;
  /** The last index handed to the apply queue (the machine may not have reached it yet). */
  private queuedThrough = 0;
  /** Applies run one at a time in log order: the overlapped, early and post-write ones share it. */
  private applyTail: Promise<void> = Promise.resolve();
  /** This node's log end before the running write (what is durable while it runs). */
  private durableBefore = 0;
  /** The first failed apply: every later one is refused with it, and the cycle halts the node. */
  private applyFailure: Error | null = null;
  /** A log write is in flight (the cycle waits for it). */
  private saveInFlight = false;
  /** Applies queued or running. */
  private appliesPending = 0;
  /** An early apply ran in this cycle: the machine holds entries this node's disk may not. */
  private appliedAhead = false;

  private constructor(options: RaftNodeOptions, raft: Raft) {
    this.id = options.id;
    this.raft = raft;
    this.clock = options.clock ?? new RealClock();
    this.opts = resolveOptions(options);
    this.log = options.logStore;
    this.sm = options.stateMachine;
    this.transport = options.transport;
    this.reads = new ReadWaiters(this.clock, this.opts.readTimeoutMs);
    this.confChanges = new ConfChangeWaiters(this.clock, this.opts.confChangeTimeoutMs);
    const node = this;
    this.snapshotSender = new SnapshotSender({
      get stopped() {
        return node.stopped;
      },
      sm: this.sm,
      transport: this.transport,
      chunkBytes: this.opts.snapshotChunkBytes,
      metaAt: (index) => this.snapshotMetaAt(index),
      deliver: (response) => this.receive([response]),
      failed: (to) => {
        this.guard(() => this.raft.reportSnapshot(to, false));
        this.kick();
      },
    });
  }

  /** Recovers from the log store and the state machine, then starts ticking and listening. */
  static async start(options: RaftNodeOptions): Promise<RaftNode> {
    const { logStore: log, stateMachine: sm } = options;
    const applied = sm.lastApplied();
    const appliedTerm = sm.lastAppliedTerm();
    const compacted = log.snapshotMeta();
    if (applied < compacted.index) {
      throw new Error(
        `raft node ${options.id}: the state machine (applied ${applied}) is behind the log's compaction point ` +
          `(${compacted.index}); the entries between were discarded — restore this node from a peer`,
      );
    }
    const bootstrap = metaWith(0, 0, { voters: [...options.peers], learners: [], addresses: { ...options.addresses } });
    if (applied > 0 && (applied > log.lastIndex() || log.term(applied) !== appliedTerm)) {
      // The machine installed a snapshot and the node crashed before the log was reset to it:
      // resume from that snapshot, with the configuration it carried if the machine kept it.
      const restored = sm.restoredSnapshot?.() ?? null;
      const fromMachine = restored !== null && restored.index === applied && restored.term === appliedTerm;
      await log.resetToSnapshot(fromMachine ? restored : { ...bootstrap, index: applied, term: appliedTerm });
    }
    const snapshot = log.snapshotMeta();
    const rng = new Rng(options.seed ?? Math.floor(Math.random() * 2 ** 32));
    const raft = new Raft(
      coreConfig(options, () => rng.next()),
      {
        hardState: log.hardState(),
        snapshot: snapshot.index === 0 ? bootstrap : snapshot,
        entries: log.lastIndex() >= log.firstIndex() ? log.entries(log.firstIndex(), log.lastIndex() + 1) : [],
        appliedIndex: applied,
        recovering: options.recovering ?? false,
      },
    );
    const node = new RaftNode(options, raft);
    node.queuedThrough = applied;
    node.transport.listen({
      onMessages: (messages) => node.receive(messages),
      onSnapshot: (message, chunks) => node.receiveSnapshot(message, chunks),
    });
    node.reportMembership(); // the stored configuration, before any traffic
    node.scheduleTick();
    node.kick(); // committed entries after the applied index are replayed at once
    return node;
  }

  // ---- client API ------------------------------------------------------------------------------

  /** Appends a command to the leader's log; resolves with its place (not its commit: watch apply). */
  async propose(data: Uint8Array): Promise<{ index: number; term: number }> {
    return this.proposeBatch([data]);
  }

  /** Appends several commands at consecutive indexes; resolves with the first one's place. */
  async proposeBatch(data: Uint8Array[]): Promise<{ index: number; term: number }> {
    this.assertRunning();
    for (const d of data) {
      if (d.length > this.opts.maxEntryBytes) throw new EntryTooLargeError(d.length, this.opts.maxEntryBytes);
    }
    const result = this.raft.propose(data);
    if (!result.ok) {
      if (result.reason === "not-leader") throw new NotLeaderError(result.leaderId);
      throw new BackpressureError(result.reason);
    }
    this.kick();
    this.opts.observer?.proposed(data.length);
    return { index: result.index, term: result.term };
  }

  /**
   * A linearizable read point: resolves with an index once a quorum has confirmed this node still
   * leads and the state machine has applied through it.
   */
  readIndex(): Promise<number> {
    try {
      this.assertRunning();
    } catch (err) {
      return Promise.reject(err);
    }
    const context = this.reads.newContext();
    const result = this.raft.readIndex(context);
    if (!result.ok) {
      return Promise.reject(
        result.reason === "backpressure" ? new BackpressureError("backpressure") : new NotLeaderError(result.leaderId),
      );
    }
    const promise = this.reads.wait(context);
    this.kick();
    return promise;
  }

  /**
   * Proposes one membership change on the leader; resolves with the new configuration once the
   * change is committed and applied here. Refused with NotLeaderError, BackpressureError
   * (transferring), ConfChangePendingError (one change at a time; learner catching up) or
   * InvalidConfChangeError; fails with ConfChangeLostError if it did not commit.
   */
  async proposeConfChange(change: ConfChange): Promise<Membership> {
    this.assertRunning();
    const result = this.raft.proposeConfChange(change);
    if (!result.ok) {
      switch (result.reason) {
        case "not-leader":
          throw new NotLeaderError(result.leaderId);
        case "transferring":
          throw new BackpressureError("transferring");
        case "invalid":
          throw new InvalidConfChangeError(result.detail ?? "refused");
        default:
          throw new ConfChangePendingError(result.reason, result.detail);
      }
    }
    const done = this.confChanges.wait(result.index, result.term, result.membership);
    this.kick();
    return done;
  }

  /** The configuration in force on this node (the latest in its log, committed or not). */
  membership(): Membership {
    return this.raft.status().membership;
  }

  transferLeadership(to: NodeId): void {
    this.assertRunning();
    this.raft.transferLeadership(to);
    this.kick();
  }

  /**
   * Heartbeats now, if this node leads and its last tick is a heartbeat interval old: for code
   * paths that may keep the thread busy past a tick (the RPC lanes call it per client call). A
   * burst of client calls runs for hundreds of ms without yielding to timers; without this the
   * followers' election timers run out meanwhile and they depose a leader that is only busy. It
   * moves no clock of the core: a leader cut off from its quorum still steps down on real ticks.
   */
  pulse(): void {
    if (this.stopped || this.restoring) return;
    const now = this.clock.now();
    if (now - this.lastBeatAt < this.opts.heartbeatTicks * this.opts.tickMs) return;
    this.lastBeatAt = now;
    let beats: Message[] = [];
    this.guard(() => {
      beats = this.raft.heartbeatsNow();
    });
    if (beats.length > 0) this.transport.send(beats);
  }

  /** One logical clock tick; the clock calls it every tickMs. */
  tick(): void {
    this.lastBeatAt = this.clock.now();
    if (this.stopped || this.restoring) return;
    this.guard(() => this.raft.tick());
    this.kick();
  }

  status(): RaftNodeStatus {
    const s = this.raft.status();
    return {
      id: this.id,
      role: s.role,
      term: s.term,
      leaderId: s.leaderId,
      commitIndex: s.commitIndex,
      lastApplied: this.sm.lastApplied(),
      snapshotIndex: this.log.snapshotMeta().index,
      firstIndex: s.firstIndex,
      lastIndex: s.lastIndex,
      members: [...s.membership.voters],
      learners: [...s.membership.learners],
      addresses: { ...s.membership.addresses },
      logBytes: this.log.sizeBytes(),
      pendingReads: this.reads.size,
      snapshotsSent: this.snapshotSender.sent,
      snapshotsReceived: this.snapshotsReceived,
      snapshotBytesReceived: this.snapshotBytesReceived,
      appliedBeforeOwnSync: this.appliedBeforeOwnSync,
      stopped: this.stopped,
      fatal: this.fatal ? this.fatal.message : null,
      recovering: s.recovering,
      progress: s.progress,
    };
  }

  /**
   * True when no cycle is running or due: everything handed to the node has been processed. While a
   * snapshot is being received the node waits on the network, which only simulated time advances.
   */
  isIdle(): boolean {
    if (this.stopped) return true;
    if (this.cycle !== null || this.cycleQueued) return false;
    return this.restoring || !this.raft.hasReady();
  }

  /**
   * True when the node waits only for its log write (no apply running or queued): for simulators
   * that hold a disk's syncs on purpose and must still know when everything else has settled.
   */
  waitsOnlyForLog(): boolean {
    return this.stopped || (this.saveInFlight && this.appliesPending === 0 && !this.cycleQueued);
  }

  /** Stops ticking and receiving, drains the running cycle; closes nothing it did not open. */
  async stop(): Promise<void> {
    if (this.stopped) {
      await this.cycle;
      return;
    }
    this.halt(null);
    await this.cycle?.catch(() => {});
  }

  // ---- the ready cycle -------------------------------------------------------------------------

  /** Makes sure a cycle runs soon; everything that arrives meanwhile is batched into it. */
  private kick(): void {
    if (this.stopped || this.cycleQueued || this.cycle) return;
    this.cycleQueued = true;
    queueMicrotask(() => {
      this.cycleQueued = false;
      if (!this.cycle && !this.stopped) {
        this.cycle = this.runCycles().finally(() => {
          this.cycle = null;
          // Work that arrived after the loop's last hasReady() check but before this point.
          if (!this.stopped && !this.restoring && this.raft.hasReady()) this.kick();
        });
      }
    });
  }

  private async runCycles(): Promise<void> {
    try {
      while (!this.stopped && !this.restoring && this.raft.hasReady()) {
        const ready = this.raft.ready();
        await this.handleReady(ready);
        if (this.stopped) return;
        this.raft.advance(ready);
        this.reportMembership();
        // Checked synchronously: most cycles have nothing to compact and should not pay an await.
        if (this.raft.appliedIndex - (this.log.firstIndex() - 1) > this.opts.snapshotThreshold || this.raft.raftLog.heldBytes > this.opts.snapshotThresholdBytes) {
          await maybeCompact(this.raft, this.log, this.sm, { entries: this.opts.snapshotThreshold, bytes: this.opts.snapshotThresholdBytes });
        }
      }
    } catch (err) {
      this.halt(err as Error);
    }
  }

  private async handleReady(rd: Ready): Promise<void> {
    // 1. The leader's own messages go out while its log write runs (thesis §10.2.1): they claim
    //    nothing about this node's disk, and the core counts the leader's own entries toward
    //    commit only once advance() reports them durable. Everything else waits for the write.
    // A configuration appended since the last cycle: the transport learns new members' addresses
    // before the first message to them goes out.
    this.reportMembership();
    let early: Message[] | null = null;
    let late: Message[] | null = null;
    for (const m of rd.messages) {
      if (isLeaderMessage(m)) (early ??= []).push(m);
      else (late ??= []).push(m);
    }
    if (early !== null) this.dispatch(early);
    // 2. Durable before anything else is said about it.
    if (rd.snapshot) {
      await this.log.resetToSnapshot(rd.snapshot);
      this.confChanges.skipped(rd.snapshot);
    }
    if (rd.softState) this.opts.observer?.softState(rd.softState);
    // Committed entries this node already holds durably are applied while the write below runs.
    let applied = 0;
    let applying: Promise<unknown> | null = null;
    let appliedEarly = false;
    if (rd.hardState || rd.entries.length > 0) {
      // Let the AppendEntries just dispatched leave before this turn spends time encoding and writing.
      if (rd.entries.length > 0) await this.flushTurn();
      const started = this.opts.observer && rd.entries.length > 0 ? performance.now() : 0;
      const durableBefore = this.log.lastIndex();
      applied = rd.snapshot ? 0 : durablePrefix(rd, durableBefore);
      const traced = tracing ? wallNow() : 0;
      const saving = this.log.save(rd.hardState, rd.entries);
      if (tracing) void saving.then(() => traceSpan("save", traced, rd.entries.length), () => {});
      if (applied > 0) applying = this.applyDuringSave(rd.committedEntries.slice(0, applied));
      if (this.opts.applyBeforeLeaderSync && rd.entries.length > 0 && !rd.snapshot && this.raft.isLeader) {
        this.savingThrough = rd.entries[rd.entries.length - 1].index;
        this.durableBefore = durableBefore;
        this.applyEarly(); // entries committed before this Ready's write started
      }
      this.saveInFlight = true;
      try {
        await saving;
      } catch (err) {
        this.saveInFlight = false;
        this.savingThrough = 0;
        // Never leave an apply running unobserved; the failed write is what halts the node (the
        // machine keeps its limit: nothing above the old durable end may become durable).
        await this.applyTail;
        throw err;
      }
      this.saveInFlight = false;
      this.savingThrough = 0;
      if (this.appliedAhead) {
        this.appliedAhead = false;
        appliedEarly = true;
        this.sm.limitDurableApplied?.(null);
      }
      if (started > 0) this.opts.observer?.saved(rd.entries, (performance.now() - started) / 1000);
    }
    if (this.stopped) {
      await this.applyTail;
      return;
    }
    // Answers that claim the write go out as soon as it is durable, before the overlapped apply ends.
    if (late !== null) this.dispatch(late);
    // The core answers an installed snapshot in the first Ready after step(); none means no answer.
    this.settleSnapshotAnswers();
    // The overlapped and early applies end before the rest (and before advance); a failed one
    // halts the node here, before advance() could count its entries as applied.
    if (applying !== null || appliedEarly) {
      await this.applyTail;
      if (this.applyFailure !== null) throw this.applyFailure;
    }
    // 3. Apply (what the write above did not overlap), then serve reads.
    if (rd.committedEntries.length > 0) {
      if (applied < rd.committedEntries.length) {
        // A follower's acknowledgement goes out before the apply: it is what the leader waits for.
        await this.flushTurn();
        await this.applyInOrder(applied > 0 ? rd.committedEntries.slice(applied) : rd.committedEntries, "apply");
      }
      this.confChanges.committed(rd.committedEntries);
    }
    this.reads.confirm(rd.readStates);
    this.reads.serve(this.sm.lastApplied());
    // Writes applied and reads served answer clients: their replies are pending on sockets too.
    if (rd.committedEntries.length > 0 || rd.readStates.length > 0) this.unflushed = true;
    if (rd.softState && rd.softState.role !== "Leader") this.reads.failUnconfirmed(rd.softState.leaderId);
  }

  /**
   * Applies committed entries while this cycle's log write is in flight. It starts in the next
   * macrotask, after the write has been issued and its fdatasync handed to the thread pool, so the
   * apply's CPU fills the wait for the disk instead of following it (a follower under a bulk load
   * spends about half its time applying).
   */
  private applyDuringSave(entries: Entry[]): Promise<unknown> {
    // If the write finished first and its answers went out meanwhile, they leave before the apply.
    return this.applyInOrder(entries, "apply-overlap", async () => {
      await new Promise<void>((resolve) => setImmediate(resolve));
      await this.flushTurn();
    });
  }

  /**
   * Leader only, while its own log write runs: applies the entries of that write (and earlier) that
   * have committed meanwhile, i.e. that a majority holds durably without counting this node (the
   * core counts the leader's own entries only once advance() reports them durable). Their clients
   * are answered before this node's fdatasync returns, as etcd's leader does: the entry survives a
   * crash of this node on the followers' disks. The state machine is told not to make anything
   * above the old durable end durable until the write completes, so a crash can never leave it
   * ahead of this node's log.
   */
  private applyEarly(): void {
    if (this.savingThrough === 0 || this.stopped) return;
    const log = this.raft.raftLog;
    const through = Math.min(log.commitIndex, this.savingThrough);
    const from = Math.max(this.queuedThrough, this.raft.appliedIndex) + 1;
    if (through < from) return;
    const entries: Entry[] = [];
    for (let i = from; i <= through; i++) entries.push(log.entry(i)!);
    this.appliedBeforeOwnSync += entries.length;
    if (!this.appliedAhead) {
      this.appliedAhead = true;
      this.sm.limitDurableApplied?.(this.durableBefore);
    }
    void this.applyInOrder(entries, "apply-early").then(
      () => {
        if (this.stopped) return;
        // Writes answered (and reads now covered) leave when this macrotask ends.
        this.unflushed = true;
        this.reads.serve(this.sm.lastApplied());
      },
      (err) => this.halt(err as Error),
    );
  }

  /**
   * Queues an apply behind every earlier one; entries the machine already holds (applied early)
   * are skipped. `before` runs first, in the queue (the overlapped apply's turn ending).
   */
  private applyInOrder(entries: Entry[], kind: string, before?: () => Promise<void>): Promise<void> {
    if (entries.length === 0) return this.applyTail;
    const last = entries[entries.length - 1].index;
    if (last > this.queuedThrough) this.queuedThrough = last;
    this.appliesPending++;
    const run = this.applyTail.then(async () => {
      if (before) await before();
      if (this.applyFailure !== null) throw this.applyFailure;
      if (this.stopped) return; // a stopped node applies nothing more; a restart replays the log
      const done = this.sm.lastApplied();
      const fresh = entries[0].index > done ? entries : entries.filter((e) => e.index > done);
      if (fresh.length === 0) return;
      const traced = tracing ? wallNow() : 0;
      try {
        await this.sm.apply(withoutConfChanges(fresh));
      } catch (err) {
        this.applyFailure ??= err as Error;
        throw err;
      }
      if (tracing) traceSpan(kind, traced, fresh.length);
    });
    this.applyTail = run.catch(() => {}).finally(() => {
      this.appliesPending--;
    });
    return run;
  }

  /**
   * Ends the macrotask if something was written in it, so those frames reach the wire before the
   * CPU-heavy work that follows (a log write, an apply): one heartbeat-sized hop instead of a hop
   * plus that work. Nothing to wait for when nothing was written.
   */
  private flushTurn(): Promise<void> | void {
    if (!this.unflushed) return;
    this.unflushed = false;
    return new Promise<void>((resolve) => setImmediate(resolve));
  }

  private dispatch(messages: Message[]): void {
    let outgoing: Message[] | null = null;
    for (const m of messages) {
      if (m.type === "InstallSnapshot") this.snapshotSender.send(m);
      else if (m.type === "InstallSnapshotResponse" && this.snapshotAnswers.has(m.to)) {
        this.snapshotAnswers.get(m.to)!(m);
        this.snapshotAnswers.delete(m.to);
      } else (outgoing ??= []).push(m);
    }
    if (outgoing !== null) {
      this.unflushed = true;
      this.opts.observer?.sent(outgoing);
      this.transport.send(outgoing);
    }
  }

  // ---- receiving -------------------------------------------------------------------------------

  private receive(messages: Message[]): void {
    if (this.stopped) return;
    if (this.restoring) {
      // Bounded by what the network delivers during one restore; dropping beyond is safe (Raft retries).
      if (this.heldMessages.length < 10_000) this.heldMessages.push(...messages);
      return;
    }
    this.guard(() => {
      for (const m of messages) if (m.to === this.id) this.raft.step(m);
    });
    if (this.savingThrough > 0) this.applyEarly();
    this.kick();
  }

  /** The stream as given, each chunk's size added to snapshotBytesReceived as it is read. */
  private async *countingBytes(chunks: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
    for await (const chunk of chunks) {
      this.snapshotBytesReceived += chunk.length;
      yield chunk;
    }
  }

  /** Follower side: check, restore the state machine from the stream, then let the core install it. */
  private async receiveSnapshot(message: InstallSnapshot, chunks: AsyncIterable<Uint8Array>): Promise<InstallSnapshotResponse> {
    const refuse = (): InstallSnapshotResponse => ({
      type: "InstallSnapshotResponse",
      from: this.id,
      to: message.from,
      term: this.raft.status().term,
      success: false,
      matchIndex: 0,
    });
    if (this.stopped || this.restoring || message.to !== this.id) return refuse();
    this.restoring = true;
    try {
      await this.cycle; // the core must have no outstanding Ready while it installs
      if (this.stopped) return refuse();
      if (this.raft.acceptSnapshot(message)) {
        try {
          await this.sm.restore(message.snapshot, this.countingBytes(chunks));
        } catch {
          return refuse(); // a failed stream leaves the machine as it was; the leader retries
        }
        this.snapshotsReceived++;
      }
      const answer = new Promise<InstallSnapshotResponse | null>((resolve) => this.snapshotAnswers.set(message.from, resolve));
      this.guard(() => this.raft.step(message));
      this.restoring = false;
      this.releaseHeldMessages();
      // The next cycle resets the log to the snapshot, persists, and hands over the core's answer.
      this.kick();
      return (await answer) ?? refuse();
    } finally {
      this.snapshotAnswers.delete(message.from);
      if (this.restoring) {
        this.restoring = false;
        this.releaseHeldMessages();
        this.kick();
      }
    }
  }

  private settleSnapshotAnswers(): void {
    for (const resolve of this.snapshotAnswers.values()) resolve(null);
    this.snapshotAnswers.clear();
  }

  private releaseHeldMessages(): void {
    const held = this.heldMessages;
    this.heldMessages = [];
    if (held.length > 0) this.receive(held);
  }

  // ---- membership ------------------------------------------------------------------------------

  /** A snapshot meta at `index` carrying the configuration in force there (for compaction and transfers). */
  private snapshotMetaAt(index: number): SnapshotMeta {
    const log = this.raft.raftLog;
    const membership = log.membershipAt(index);
    const term = log.term(index);
    if (membership === undefined || term === undefined) {
      throw new RangeError(`no configuration known at index ${index} (the log holds ${log.snapshot.index}..${log.lastIndex()})`);
    }
    return metaWith(index, term, membership);
  }

  private reportMembership(): void {
    const version = this.raft.raftLog.membershipVersion;
    if (version === this.membershipSeen) return;
    this.membershipSeen = version;
    this.opts.onMembershipChange?.(this.membership());
  }

  // ---- lifecycle -------------------------------------------------------------------------------

  private scheduleTick(): void {
    this.tickTimer = this.clock.setTimeout(() => {
      this.tickTimer = null;
      if (this.stopped) return;
      this.tick();
      this.scheduleTick();
    }, this.opts.tickMs);
  }

  private assertRunning(): void {
    if (this.stopped) throw new NodeStoppedError(this.id, this.fatal ?? undefined);
  }

  /** Runs a core call; an exception there is a broken invariant and stops the node. */
  private guard(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.halt(err as Error);
    }
  }

  private halt(error: Error | null): void {
    if (this.stopped) return;
    this.stopped = true;
    this.fatal = error;
    if (this.tickTimer !== null) this.clock.clearTimeout(this.tickTimer);
    this.tickTimer = null;
    this.reads.rejectAll(new NodeStoppedError(this.id, error ?? undefined));
    this.confChanges.rejectAll(new NodeStoppedError(this.id, error ?? undefined));
    this.settleSnapshotAnswers();
    if (error) this.opts.onFatal?.(error);
  }
}

/** Messages only a leader sends, which carry no claim about the sender's own disk. */
function isLeaderMessage(m: Message): boolean {
  return m.type === "AppendEntries" || m.type === "Heartbeat" || m.type === "InstallSnapshot";
}

/**
 * How many of the Ready's committed entries are already durable in this node's log: those at or
 * below the log's last index before this Ready's write (every earlier write has completed) and
 * below the first entry this write (re)places. Committed entries are never truncated, so the
 * second bound only matters for a resent suffix.
 */
function durablePrefix(rd: Ready, lastDurable: number): number {
  const bound = rd.entries.length > 0 ? Math.min(lastDurable, rd.entries[0].index - 1) : lastDurable;
  let n = 0;
  while (n < rd.committedEntries.length && rd.committedEntries[n].index <= bound) n++;
  return n;
}

/** State machines see configuration entries as Noops: membership is the driver's business. */
function withoutConfChanges(entries: Entry[]): Entry[] {
  if (!entries.some((e) => e.type === EntryType.ConfChange)) return entries;
  return entries.map((e) => (e.type === EntryType.ConfChange ? { index: e.index, term: e.term, type: EntryType.Noop, data: new Uint8Array(0) } : e));
}
