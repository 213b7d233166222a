// RaftNode: the driver that does all the I/O around the pure core — ticks, the persist → send →
// apply cycle, ReadIndex waiters, log compaction, and snapshots streamed to and from peers.

import { Rng } from "../util/rng.ts";
import { type Clock, RealClock, type TimerHandle } from "./clock.ts";
import { Raft } from "./core/raft.ts";
import { BackpressureError, EntryTooLargeError, NodeStoppedError, NotLeaderError, ReadIndexTimeoutError } from "./errors.ts";
import {
  type LogStore,
  type Message,
  NONE,
  type NodeId,
  type RaftRole,
  type Ready,
  type SnapshotMeta,
  type StateMachine,
  type Transport,
} from "./types.ts";

type InstallSnapshot = Extract<Message, { type: "InstallSnapshot" }>;
type InstallSnapshotResponse = Extract<Message, { type: "InstallSnapshotResponse" }>;

export interface RaftNodeOptions {
  id: NodeId;
  peers: NodeId[];
  logStore: LogStore;
  transport: Transport;
  stateMachine: StateMachine;
  /** Default RealClock. */
  clock?: Clock;
  /** Default 50. */
  tickMs?: number;
  /** Default 10. */
  electionTicks?: number;
  /**
   * Default 2: with the 50 ms tick a heartbeat every 100 ms (etcd's default) against a 500–1000 ms
   * election timeout. Heartbeats are most of an idle cluster's CPU; reads send their own at once.
   */
  heartbeatTicks?: number;
  /** Seed of the election-timeout Rng (default: random; give one in simulations). */
  seed?: number;
  /** Default true. */
  preVote?: boolean;
  /** Default true. */
  checkQuorum?: boolean;
  /** Default 64. */
  maxInflight?: number;
  /** Default 1 MiB. */
  maxBytesPerAppend?: number;
  /** Uncommitted entries before propose fails with BackpressureError (default 10 000). */
  maxPendingProposals?: number;
  /** A single command above this is refused with EntryTooLargeError (default 8 MiB). */
  maxEntryBytes?: number;
  /** Compact the log when (durable applied index − compaction point) exceeds this (default 10 000). */
  snapshotThreshold?: number;
  /** Default 1 MiB. */
  snapshotChunkBytes?: number;
  /** A readIndex() not served within this rejects with ReadIndexTimeoutError (default 3 election timeouts). */
  readTimeoutMs?: number;
  /** Called once if the node stops on a fatal error (disk failure, invariant violation). */
  onFatal?: (error: Error) => void;
  /** This node may have lost durable state it acknowledged: it votes only once caught up (core/recovery.ts). */
  recovering?: boolean;
}

export interface RaftNodeStatus {
  id: NodeId;
  role: RaftRole;
  term: number;
  leaderId: NodeId;
  commitIndex: number;
  /** The state machine's applied index. */
  lastApplied: number;
  /** The log's compaction point. */
  snapshotIndex: number;
  firstIndex: number;
  lastIndex: number;
  members: NodeId[];
  logBytes: number;
  pendingReads: number;
  snapshotsSent: number;
  snapshotsReceived: number;
  stopped: boolean;
  /** The fatal error that stopped the node, if any. */
  fatal: string | null;
  /** Why the node does not vote yet ("" when it does): recovering lost durable state. */
  recovering: string;
}

interface ReadWaiter {
  resolve: (index: number) => void;
  reject: (err: Error) => void;
  timer: TimerHandle;
  /** Set once a quorum confirmed leadership: the read is served when lastApplied reaches it. */
  index: number | null;
}

const DEFAULTS = {
  tickMs: 50,
  electionTicks: 10,
  heartbeatTicks: 2,
  maxInflight: 64,
  maxBytesPerAppend: 1024 * 1024,
  maxPendingProposals: 10_000,
  maxEntryBytes: 8 * 1024 * 1024,
  snapshotThreshold: 10_000,
  snapshotChunkBytes: 1024 * 1024,
};

export class RaftNode {
  readonly id: NodeId;
  private readonly raft: Raft;
  private readonly clock: Clock;
  private readonly opts: RaftNodeOptions & typeof DEFAULTS & { readTimeoutMs: number };
  private readonly log: LogStore;
  private readonly sm: StateMachine;
  private readonly transport: Transport;

  private tickTimer: TimerHandle | null = null;
  /** The running persist → send → apply loop, if any. */
  private cycle: Promise<void> | null = null;
  private cycleQueued = false;
  /** Between acceptSnapshot and step: no cycle may run and incoming messages wait. */
  private restoring = false;
  private heldMessages: Message[] = [];
  private readonly snapshotsInFlight = new Set<NodeId>();
  /** InstallSnapshot answers the core produces for a stream we are receiving, by leader id. */
  private readonly snapshotAnswers = new Map<NodeId, (m: InstallSnapshotResponse | null) => void>();
  private readonly reads = new Map<number, ReadWaiter>();
  private nextReadContext = 1;
  private stopped = false;
  private fatal: Error | null = null;
  private counters = { snapshotsSent: 0, snapshotsReceived: 0 };

  private constructor(options: RaftNodeOptions, raft: Raft) {
    this.id = options.id;
    this.raft = raft;
    this.clock = options.clock ?? new RealClock();
    const merged = { ...DEFAULTS, ...stripUndefined(options) } as RaftNodeOptions & typeof DEFAULTS;
    this.opts = { ...merged, readTimeoutMs: options.readTimeoutMs ?? 3 * merged.electionTicks * merged.tickMs };
    this.log = options.logStore;
    this.sm = options.stateMachine;
    this.transport = options.transport;
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
    if (applied > 0 && (applied > log.lastIndex() || log.term(applied) !== appliedTerm)) {
      // The machine installed a snapshot and the node crashed before the log was reset to it.
      await log.resetToSnapshot({ index: applied, term: appliedTerm, members: [...options.peers] });
    }
    const snapshot = log.snapshotMeta();
    const rng = new Rng(options.seed ?? Math.floor(Math.random() * 2 ** 32));
    const raft = new Raft(
      {
        id: options.id,
        peers: options.peers,
        electionTicks: options.electionTicks ?? DEFAULTS.electionTicks,
        heartbeatTicks: options.heartbeatTicks ?? DEFAULTS.heartbeatTicks,
        random: () => rng.next(),
        preVote: options.preVote ?? true,
        checkQuorum: options.checkQuorum ?? true,
        maxInflight: options.maxInflight ?? DEFAULTS.maxInflight,
        maxBytesPerAppend: options.maxBytesPerAppend ?? DEFAULTS.maxBytesPerAppend,
        maxPendingProposals: options.maxPendingProposals ?? DEFAULTS.maxPendingProposals,
      },
      {
        hardState: log.hardState(),
        snapshot: snapshot.index === 0 ? { ...snapshot, members: [...options.peers] } : snapshot,
        entries: log.lastIndex() >= log.firstIndex() ? log.entries(log.firstIndex(), log.lastIndex() + 1) : [],
        appliedIndex: applied,
        recovering: options.recovering ?? false,
      },
    );
    const node = new RaftNode(options, raft);
    node.transport.listen({
      onMessages: (messages) => node.receive(messages),
      onSnapshot: (message, chunks) => node.receiveSnapshot(message, chunks),
    });
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
    const context = this.nextReadContext++;
    const result = this.raft.readIndex(context);
    if (!result.ok) {
      return Promise.reject(
        result.reason === "backpressure" ? new BackpressureError("backpressure") : new NotLeaderError(result.leaderId),
      );
    }
    const promise = new Promise<number>((resolve, reject) => {
      const timer = this.clock.setTimeout(() => {
        if (this.reads.delete(context)) reject(new ReadIndexTimeoutError(this.opts.readTimeoutMs));
      }, this.opts.readTimeoutMs);
      this.reads.set(context, { resolve, reject, timer, index: null });
    });
    this.kick();
    return promise;
  }

  transferLeadership(to: NodeId): void {
    this.assertRunning();
    this.raft.transferLeadership(to);
    this.kick();
  }

  /** One logical clock tick; the clock calls it every tickMs. */
  tick(): void {
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
      members: [...this.opts.peers],
      logBytes: this.log.sizeBytes(),
      pendingReads: this.reads.size,
      snapshotsSent: this.counters.snapshotsSent,
      snapshotsReceived: this.counters.snapshotsReceived,
      stopped: this.stopped,
      fatal: this.fatal ? this.fatal.message : null,
      recovering: s.recovering,
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
        // Checked synchronously: most cycles have nothing to compact and should not pay an await.
        if (this.raft.appliedIndex - (this.log.firstIndex() - 1) > this.opts.snapshotThreshold) await this.maybeCompact();
      }
    } catch (err) {
      this.halt(err as Error);
    }
  }

  private async handleReady(rd: Ready): Promise<void> {
    // 1. The leader's own messages go out while its log write runs (thesis §10.2.1): they claim
    //    nothing about this node's disk, and the core counts the leader's own entries toward
    //    commit only once advance() reports them durable. Everything else waits for the write.
    let early: Message[] | null = null;
    let late: Message[] | null = null;
    for (const m of rd.messages) {
      if (isLeaderMessage(m)) (early ??= []).push(m);
      else (late ??= []).push(m);
    }
    if (early !== null) this.dispatch(early);
    // 2. Durable before anything else is said about it.
    if (rd.snapshot) await this.log.resetToSnapshot(rd.snapshot);
    if (rd.hardState || rd.entries.length > 0) await this.log.save(rd.hardState, rd.entries);
    if (this.stopped) return;
    if (late !== null) this.dispatch(late);
    // The core answers an installed snapshot in the first Ready after step(); none means no answer.
    this.settleSnapshotAnswers();
    // 3. Apply, then serve reads.
    if (rd.committedEntries.length > 0) await this.sm.apply(rd.committedEntries);
    for (const rs of rd.readStates) {
      const waiter = this.reads.get(rs.context);
      if (waiter) waiter.index = rs.index;
    }
    this.serveReads();
    if (rd.softState && rd.softState.role !== "Leader") this.failUnconfirmedReads(rd.softState.leaderId);
  }

  private dispatch(messages: Message[]): void {
    let outgoing: Message[] | null = null;
    for (const m of messages) {
      if (m.type === "InstallSnapshot") this.sendSnapshot(m);
      else if (m.type === "InstallSnapshotResponse" && this.snapshotAnswers.has(m.to)) {
        this.snapshotAnswers.get(m.to)!(m);
        this.snapshotAnswers.delete(m.to);
      } else (outgoing ??= []).push(m);
    }
    if (outgoing !== null) this.transport.send(outgoing);
  }

  private serveReads(): void {
    const applied = this.sm.lastApplied();
    for (const [context, waiter] of this.reads) {
      if (waiter.index !== null && waiter.index <= applied) {
        this.reads.delete(context);
        this.clock.clearTimeout(waiter.timer);
        waiter.resolve(waiter.index);
      }
    }
  }

  /** A deposed leader's unconfirmed reads will never be confirmed: send the clients to the new leader. */
  private failUnconfirmedReads(leaderId: NodeId): void {
    for (const [context, waiter] of this.reads) {
      if (waiter.index === null) {
        this.reads.delete(context);
        this.clock.clearTimeout(waiter.timer);
        waiter.reject(new NotLeaderError(leaderId));
      }
    }
  }

  /**
   * Compacts the log through what the state machine has made durable, once that is more than
   * snapshotThreshold entries past the compaction point; forces a sync at twice the threshold.
   */
  private async maybeCompact(): Promise<void> {
    const point = this.log.firstIndex() - 1;
    const applied = this.raft.appliedIndex;
    if (applied - point <= this.opts.snapshotThreshold) return;
    let durable = Math.min(this.sm.durableAppliedIndex(), applied);
    if (durable - point <= this.opts.snapshotThreshold) {
      if (applied - point <= 2 * this.opts.snapshotThreshold) return;
      durable = Math.min(await this.sm.sync(), applied);
      if (durable <= point) return;
    }
    const term = this.log.term(durable);
    if (term === undefined) return; // not in the durable log (e.g. just reset to a snapshot)
    const meta: SnapshotMeta = { index: durable, term, members: [...this.opts.peers] };
    await this.log.compact(meta);
    this.raft.compact(meta);
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
    this.kick();
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
          await this.sm.restore(message.snapshot, chunks);
        } catch {
          return refuse(); // a failed stream leaves the machine as it was; the leader retries
        }
        this.counters.snapshotsReceived++;
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

  // ---- sending snapshots -----------------------------------------------------------------------

  /** Leader side: stream the state machine's current image; one transfer per follower at a time. */
  private sendSnapshot(request: InstallSnapshot): void {
    const to = request.to;
    if (this.snapshotsInFlight.has(to)) return;
    this.snapshotsInFlight.add(to);
    void (async () => {
      let ok = false;
      try {
        const image = await this.sm.snapshot();
        const meta = { ...image.meta, members: image.meta.members.length > 0 ? image.meta.members : [...this.opts.peers] };
        const message: InstallSnapshot = { ...request, snapshot: meta };
        const response = await this.transport.sendSnapshot(message, rechunk(image.chunks, this.opts.snapshotChunkBytes));
        if (this.stopped) return;
        this.counters.snapshotsSent++;
        ok = true;
        this.receive([response]);
      } catch {
        // Network or snapshot failure: the core goes back to probing and asks again later.
      } finally {
        this.snapshotsInFlight.delete(to);
        if (!ok && !this.stopped) {
          this.guard(() => this.raft.reportSnapshot(to, false));
          this.kick();
        }
      }
    })();
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
    const stoppedError = new NodeStoppedError(this.id, error ?? undefined);
    for (const waiter of this.reads.values()) {
      this.clock.clearTimeout(waiter.timer);
      waiter.reject(stoppedError);
    }
    this.reads.clear();
    this.settleSnapshotAnswers();
    if (error) this.opts.onFatal?.(error);
  }
}

/** Messages only a leader sends, which carry no claim about the sender's own disk. */
function isLeaderMessage(m: Message): boolean {
  return m.type === "AppendEntries" || m.type === "Heartbeat" || m.type === "InstallSnapshot";
}

/** Re-cuts a stream into chunks of at most `max` bytes, joining small ones. */
async function* rechunk(source: AsyncIterable<Uint8Array>, max: number): AsyncGenerator<Uint8Array> {
  let parts: Uint8Array[] = [];
  let size = 0;
  const flush = () => {
    const out = new Uint8Array(size);
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    parts = [];
    size = 0;
    return out;
  };
  for await (let chunk of source) {
    while (chunk.length > 0) {
      const take = Math.min(max - size, chunk.length);
      parts.push(chunk.subarray(0, take));
      size += take;
      chunk = chunk.subarray(take);
      if (size === max) yield flush();
    }
  }
  if (size > 0) yield flush();
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
