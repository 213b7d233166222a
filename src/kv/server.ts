// KVServer: one replica of the KV service. Opens its replica and rebuilds it on corruption (self-repair),
// sends writes down the write path (write-path.ts) and Gets to ReadIndex, fail-stops on fatal errors.
import { NONE, RaftNode, RealClock, type Clock, type LogStore, type NodeId } from "../raft/index.ts";
import { DeadlineQueue } from "./deadlines.ts";
import { DiskWatch } from "./disk-watch.ts";
import { type FatalError, isStateMachineCorruption, toFatal } from "./fail-stop.ts";
import { OVERLOADED_RETRY_AFTER_MS, OverloadedError, UnavailableError } from "./errors.ts";
import { PendingWrites, isApplied } from "./pending-writes.ts";
import { ReadBatcher } from "./reads.ts";
import { NO_KEY, WRONG_LEADER, type CommandArgs, type CommandReply, type RegisterReply } from "./replies.ts";
import { RESULT_TABLE_FULL } from "./sessions.ts";
import { applyLoop } from "./apply-loop.ts";
import { RelayTransport, discardReplica, handOverLeadership, openStorageRepaired, readMarker, removeMarker, writeMarker, type OpenedStorage } from "./repair.ts";
import type { KVServerOptions } from "./server-options.ts";
import { replicaDiagnostics, replicaStatus, type KVDiagnostics, type KVStatus, type ReplicaParts } from "./server-status.ts";
import { KVStateMachine, type KVStateMachineOptions } from "./state-machine.ts";
import { TxnServer } from "./txn-server.ts";
import { WatchHub } from "./watch-hub.ts";
import { proposeWrite, validateCommand, writeCommand, type WriteReplica } from "./write-path.ts";
import { writeBatch, type BatchAnswer, type BatchEntryLimits } from "./batch-path.ts";

export type { CommandArgs, CommandReply, KVErr, KVOp, RegisterReply } from "./replies.ts";
export type { BatchAnswer } from "./batch-path.ts";
export type { KVLimits, KVRaftOptions, KVServerOptions, KVStateOptions } from "./server-options.ts";
export type { KVDiagnostics, KVStatus } from "./server-status.ts";

/** More self-repairs than this within REPAIR_WINDOW_MS is a disk that keeps corrupting: stop instead. */
const MAX_REPAIRS = 3;
/** Commands in one batch entry at most (a Batch call carries at most 4096). */
const MAX_BATCH_ENTRY_COMMANDS = 4096;
/** How long a Batch call's writes wait for commit/apply by default (KVLimits.batchTimeoutMs says why). */
export const DEFAULT_BATCH_TIMEOUT_MS = 1_500;
const REPAIR_WINDOW_MS = 10 * 60_000;

export class KVServer {
  private closed = false;
  /** Commands in flight on this node (reads and writes). */
  private pending = 0;
  private readonly maxKeyBytes: number;
  private readonly maxValueBytes: number;
  private readonly maxPending: number;
  private readonly batchLimits: BatchEntryLimits;
  /** Range, DeleteRange and Txn (txn-server.ts). */
  api!: TxnServer;
  /** Watches served by this node (watch-hub.ts). */
  watches!: WatchHub;
  /**
   * Writes without a session and registrations carry a nonce as their commandId, so an entry that
   * applies before its propose() returned still finds its waiter. Random start: unique across restarts.
   */
  private nextNonce: bigint;
  private fatalError: FatalError | null = null;
  private diskWatch: DiskWatch | null = null;
  private readonly onFatal: ((error: FatalError) => void) | null;
  /** Why the replica is being discarded and rebuilt right now (self-repair), or null. */
  private repairing: string | null = null;
  private repairRun: Promise<void> | null = null;
  private readonly repairTimes: number[] = [];
  /** The RECOVERING marker exists: it is removed once Raft reports the node caught up. */
  private markerPresent = false;
  private readonly deadlines: DeadlineQueue;
  /** The Batch path's write waiters (a longer timeout than a command's; pending-writes.ts). */
  private readonly batchDeadlines: DeadlineQueue;
  private readonly relay: RelayTransport;
  private readonly log: (line: string) => void;
  // The replica, replaced as a whole by a self-repair (see repair()).
  private node!: RaftNode;
  private machine!: KVStateMachine;
  private writes!: PendingWrites;
  private reads!: ReadBatcher;
  /** Closed by close() only when this server opened it (not when the caller passed one in). */
  private ownedLogStore: LogStore | null = null;
  /** This server as the write path sees it (write-path.ts). */
  private readonly writePath: WriteReplica;

  private constructor(
    readonly id: NodeId,
    private readonly options: KVServerOptions,
    private readonly clock: Clock,
  ) {
    const words = crypto.getRandomValues(new Uint32Array(2));
    this.nextNonce = (BigInt(words[0]! & 0x3fffffff) << 32n) | BigInt(words[1]!);
    const limits = options.limits ?? {};
    this.maxKeyBytes = limits.maxKeyBytes ?? 4096;
    this.maxValueBytes = limits.maxValueBytes ?? 1 << 20;
    this.maxPending = limits.maxPendingCommands ?? 10_000;
    // Never past the Raft entry limit (8 MiB by default): a larger entry would be refused whole.
    this.batchLimits = { maxEntryBytes: Math.min(limits.maxBatchEntryBytes ?? 1 << 20, 8 << 20), maxEntryCommands: MAX_BATCH_ENTRY_COMMANDS };
    this.deadlines = new DeadlineQueue(clock);
    this.batchDeadlines = new DeadlineQueue(clock);
    this.relay = new RelayTransport(options.transport);
    this.log = options.log ?? ((line) => console.error(`kvraft: node ${options.id}: ${line}`));
    this.onFatal = options.onFatal ?? null;
    const server = this;
    this.writePath = {
      id,
      clock,
      maxKeyBytes: this.maxKeyBytes,
      maxValueBytes: this.maxValueBytes,
      // Getters: a self-repair replaces the replica while a write may be waiting on Raft.
      get node() {
        return server.node;
      },
      get machine() {
        return server.machine;
      },
      get writes() {
        return server.writes;
      },
      nonce: () => this.nonce(),
      writeRefusal: () => this.diskWatch?.writeRefusal(),
    };
  }

  static async open(options: KVServerOptions): Promise<KVServer> {
    const server = new KVServer(options.id, options, options.clock ?? new RealClock());
    if (options.lostState !== undefined && options.logStore === undefined && readMarker(options.dir) === null) {
      writeMarker(options.dir, { format: 1, reason: options.lostState, since: new Date().toISOString(), term: 0, votedFor: NONE });
    }
    const storage = await server.openStorage();
    server.relay.attach();
    await server.startNode(storage);
    if (options.diskWatch !== undefined && server.fatalError === null) {
      server.diskWatch = new DiskWatch({ ...options.diskWatch, dir: options.dir }, (error) => server.failStop("data directory check", error));
      server.diskWatch.start();
    }
    return server;
  }

  private openStorage(): Promise<OpenedStorage> {
    const o = this.options;
    const machineOptions = {
      members: o.peers,
      snapshotChunkBytes: o.raft?.snapshotChunkBytes,
      // Flush at half the log's byte threshold, so compaction finds the durable index moved.
      syncEveryBytes: o.raft?.snapshotThresholdBytes === undefined ? undefined : Math.max(1, Math.floor(o.raft.snapshotThresholdBytes / 2)),
      txnLimits: o.txnLimits,
      ...definedOnly(o.state ?? {}),
    } as Omit<KVStateMachineOptions, "dir">;
    return openStorageRepaired(o.dir, machineOptions, o.logStore, this.log);
  }

  /** Starts a Raft node over opened storage and makes it, with its readers and watches, this server's replica. */
  private async startNode(storage: OpenedStorage): Promise<void> {
    const o = this.options;
    const timeoutMs = o.limits?.commandTimeoutMs ?? 500;
    const { machine } = storage;
    const batchTimeoutMs = Math.min(Math.max(o.limits?.batchTimeoutMs ?? DEFAULT_BATCH_TIMEOUT_MS, timeoutMs), timeoutMs * 100);
    const writes = new PendingWrites(this.clock, this.deadlines, timeoutMs, machine.lastApplied(), { deadlines: this.batchDeadlines, timeoutMs: batchTimeoutMs });
    let node: RaftNode;
    // Bound once the node exists; applies before that have no watcher to wake.
    let hub: WatchHub | null = null;
    let started = false;
    let early: Error | null = null;
    try {
      node = await RaftNode.start({
        id: o.id,
        peers: o.peers,
        logStore: storage.logStore,
        transport: this.relay,
        stateMachine: applyLoop(machine, writes, {
          applied: () => {
            hub?.applied();
            if (this.markerPresent) this.checkRecovered();
          },
          corrupt: (error) => this.storageFailed("snapshot read", error),
        }),
        clock: this.clock,
        ...definedOnly(o.raft ?? {}),
        recovering: storage.recovering,
        onFatal: (error) => {
          if (started) this.storageFailed("raft", error);
          else early = error;
        },
      });
    } catch (error) {
      await machine.close();
      if (storage.owned) await storage.logStore.close();
      throw error;
    }
    this.node = node;
    this.machine = machine;
    this.writes = writes;
    this.ownedLogStore = storage.owned ? storage.logStore : null;
    this.reads = new ReadBatcher(o.id, { readIndex: () => node.readIndex(), readApplied: (key) => this.readApplied(key) }, this.clock, this.deadlines, timeoutMs);
    hub = new WatchHub({ id: o.id, machine, logFirstIndex: () => node.status().firstIndex, term: () => node.status().term }, o.watchLimits);
    this.watches = hub;
    this.api = new TxnServer({
      id: o.id,
      node,
      machine,
      writes,
      reads: this.reads,
      now: () => this.clock.now(),
      // One nonce space with Command's writes without a session: no two waiters share (0, nonce).
      nonce: () => this.nonce(),
      maxKeyBytes: this.maxKeyBytes,
      maxValueBytes: this.maxValueBytes,
      maxPending: this.maxPending,
      limits: o.txnLimits,
      closed: () => this.closed || this.repairing !== null,
    });
    this.markerPresent = storage.recovering && storage.owned;
    started = true;
    if (early !== null) this.storageFailed("raft", early);
  }

  /** Executes one client command. Throws KVError for bad input or overload; all else is a reply. */
  async command(args: CommandArgs): Promise<CommandReply> {
    validateCommand(args, this.writePath);
    if (this.fatalError !== null) throw this.stoppedError();
    // Closing, or rebuilding its replica: the client tries another node.
    if (this.closed || this.repairing !== null) return WRONG_LEADER;
    if (this.pending >= this.maxPending) {
      throw new OverloadedError(`node ${this.id} has ${this.pending} commands in flight (limit ${this.maxPending}); retry with backoff`, { retryAfterMs: OVERLOADED_RETRY_AFTER_MS });
    }
    this.pending++;
    try {
      return args.op === "Get" ? await this.reads.get(args.key) : await writeCommand(this.writePath, args);
    } finally {
      this.pending--;
    }
  }

  /**
   * Many commands at once (the Batch RPC): its writes go into the log as a few batch entries
   * (batch-path.ts), its Gets each through ReadIndex as Command's do. One answer per command, in
   * order: a reply, or the typed error a Command call of it would have thrown.
   */
  async batch(commands: readonly CommandArgs[]): Promise<BatchAnswer[]> {
    if (this.fatalError !== null) throw this.stoppedError();
    if (this.closed || this.repairing !== null) return commands.map(() => WRONG_LEADER);
    if (this.pending + commands.length > this.maxPending) {
      throw new OverloadedError(`node ${this.id} has ${this.pending} commands in flight (limit ${this.maxPending}); a batch of ${commands.length} does not fit: retry with backoff`);
    }
    const answers = new Array<BatchAnswer | Promise<BatchAnswer>>(commands.length);
    const writes: CommandArgs[] = [];
    const writeAt: number[] = [];
    for (let i = 0; i < commands.length; i++) {
      const args = commands[i]!;
      try {
        validateCommand(args, this.writePath);
      } catch (error) {
        answers[i] = error as Error;
        continue;
      }
      if (args.op === "Get") {
        answers[i] = this.reads.get(args.key).catch((error: unknown) => error as Error);
      } else {
        writes.push(args);
        writeAt.push(i);
      }
    }
    this.pending += commands.length;
    try {
      if (writes.length > 0) {
        let written: BatchAnswer[];
        try {
          written = await writeBatch(this.writePath, writes, this.batchLimits);
        } catch (error) {
          written = writes.map(() => error as Error);
        }
        for (let j = 0; j < written.length; j++) answers[writeAt[j]!] = written[j]!;
      }
      for (let i = 0; i < answers.length; i++) {
        const answer = answers[i];
        if (answer instanceof Promise) answers[i] = await answer;
      }
      return answers as BatchAnswer[];
    } finally {
      this.pending -= commands.length;
    }
  }

  /** The Raft node under this server: membership administration (ClusterService) talks to it directly. */
  get raft(): RaftNode {
    return this.node;
  }

  async getStatus(): Promise<KVStatus> {
    // A stopped node does not pretend to be a follower: status fails like everything else.
    if (this.fatalError !== null) throw this.stoppedError();
    return replicaStatus(this.parts());
  }

  /** Live views for metrics and health (src/obs), read when scraped: no copies kept, no hooks. */
  diagnostics(): KVDiagnostics {
    return replicaDiagnostics(this.parts());
  }

  private parts(): ReplicaParts {
    return {
      id: this.id,
      node: this.node,
      machine: this.machine,
      reads: this.reads,
      closed: this.closed,
      repairing: this.repairing,
      diskWatch: this.diskWatch,
      ownedLogStore: this.ownedLogStore,
      pending: this.pending,
    };
  }

  /** True when the Raft driver has nothing in flight (for simulations that wait on real I/O). */
  isIdle(): boolean {
    // A background LSM sync moves the durable applied index, and with it the log compaction point.
    return this.node.isIdle() && !this.machine.syncInFlight;
  }

  /** Idle but for a Raft log write in flight (a simulator holding this node's syncs). */
  waitsOnlyForLog(): boolean {
    return this.node.waitsOnlyForLog() && !this.machine.syncInFlight;
  }

  /**
   * This replica's applied value of `key`, without ReadIndex: possibly stale, never
   * linearizable. For diagnostics and tests that inspect one replica; clients use command().
   */
  readLocal(key: string): string | null {
    if (this.closed) throw new UnavailableError(`node ${this.id} is closed`);
    const value = this.machine.read(key);
    return value === null ? null : decoder.decode(value);
  }

  /**
   * Stops Raft, answers every waiting command with ErrWrongLeader, closes storage. `asCrash`
   * leaves the state machine as a crash would (applies not yet flushed lost): for simulators.
   */
  async close(options?: { asCrash?: boolean }): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.diskWatch?.stop();
    await this.repairRun;
    this.writes.close(WRONG_LEADER);
    this.reads.close();
    this.watches?.close();
    this.deadlines.clear();
    this.batchDeadlines.clear();
    await this.node.stop();
    await this.machine.close(options);
    await this.ownedLogStore?.close();
  }

  /**
   * Registers a new client session (Raft dissertation §6.3): its id is the index of the
   * registration's log entry. Refused with OverloadedError when every session slot is taken.
   */
  async registerSession(): Promise<RegisterReply> {
    if (this.fatalError !== null) throw this.stoppedError();
    if (this.closed || this.repairing !== null) return { err: "ErrWrongLeader", value: "" };
    const outcome = await proposeWrite(this.writePath, { op: "Register", clientId: 0n, commandId: this.nonce(), key: "", value: "" });
    if (!isApplied(outcome)) return outcome as RegisterReply;
    if (outcome.result === RESULT_TABLE_FULL) {
      throw new OverloadedError(`node ${this.id}: the session table is full (every registered session is live); retry later`);
    }
    return { err: "OK", clientId: BigInt(outcome.index) };
  }

  /** A Get's value from the applied state; a storage error there is never served. */
  private readApplied(key: string): CommandReply {
    let value: Uint8Array | null;
    try {
      value = this.machine.read(key);
    } catch (error) {
      // Never served: the client tries another node while this one repairs itself or stops.
      this.storageFailed("state machine read", error);
      return WRONG_LEADER;
    }
    return value === null ? NO_KEY : { err: "OK", value: decoder.decode(value) };
  }

  /**
   * Fail-stop: refuse everything from now on, stop Raft, and hand one FatalError to onFatal
   * (the process logs it and exits non-zero, so a supervisor restarts it).
   */
  failStop(what: string, error: unknown): void {
    if (this.fatalError !== null || this.closed) return;
    const fatal = toFatal(what, error);
    this.fatalError = fatal;
    this.diskWatch?.stop();
    this.writes.close(WRONG_LEADER);
    this.reads.close();
    this.watches?.close();
    void this.node.stop();
    if (this.onFatal !== null) this.onFatal(fatal);
    else console.error(`kvraft: node ${this.id} stopped: ${fatal.message}`);
  }

  private stoppedError(): UnavailableError {
    return new UnavailableError(`node ${this.id} stopped after a fatal error: ${this.fatalError!.message}`, { cause: this.fatalError });
  }

  /** Corruption of the state machine is repaired from the leader; anything else stops the node. */
  private storageFailed(what: string, error: unknown): void {
    if (isStateMachineCorruption(error) && this.ownedLogStore !== null) {
      this.repairRun ??= this.repair(what, error).finally(() => {
        this.repairRun = null;
      });
    } else {
      this.failStop(what, error);
    }
  }

  /**
   * Self-repair: never serve from a corrupt state machine, and never crash-loop on it. Step down,
   * stop Raft, discard the state machine and the Raft log (keeping term and vote), and start an
   * empty replica that recovers (no votes) until the leader has rebuilt it by snapshot or log.
   */
  private async repair(what: string, error: unknown): Promise<void> {
    if (this.repairing !== null || this.fatalError !== null || this.closed) return;
    const now = this.clock.now();
    while (this.repairTimes.length > 0 && now - this.repairTimes[0]! > REPAIR_WINDOW_MS) this.repairTimes.shift();
    if (this.repairTimes.length >= MAX_REPAIRS) {
      this.failStop(`self-repair (the ${MAX_REPAIRS + 1}th corruption in ${REPAIR_WINDOW_MS / 60_000} minutes)`, error);
      return;
    }
    this.repairTimes.push(now);
    const reason = `${what} found corruption: ${(error as Error).message}`;
    this.repairing = reason;
    this.log(`${reason}; not serving from this replica: stepping down, discarding its state machine and Raft log (keeping term and vote), rebuilding from the leader`);
    try {
      this.writes.close(WRONG_LEADER);
      this.reads.close();
      this.watches.close();
      await handOverLeadership(this.node, this.clock, this.options.raft?.tickMs ?? 50, this.options.raft?.electionTicks ?? 10);
      const logStore = this.ownedLogStore!;
      const hard = logStore.hardState();
      this.relay.detach();
      await this.node.stop();
      await this.machine.close().catch(() => {});
      await logStore.close().catch(() => {});
      if (this.closed) return;
      discardReplica(this.options.dir, reason, hard);
      await this.startNode(await this.openStorage());
      this.log(`rebuilt an empty replica (term ${hard.term}); it recovers from the leader and votes again once caught up`);
    } catch (failure) {
      this.repairing = null;
      this.failStop("self-repair", failure);
      return;
    }
    this.repairing = null;
  }

  /** Recovery is over once Raft says so: the marker goes, and the node votes again after a restart too. */
  private checkRecovered(): void {
    if (!this.markerPresent || this.node.status().recovering !== "") return;
    this.markerPresent = false;
    try {
      removeMarker(this.options.dir);
      this.log("caught up with the leader: recovery of lost durable state is over");
    } catch (error) {
      this.failStop("removing the RECOVERING marker", error);
    }
  }

  private nonce(): bigint {
    this.nextNonce = this.nextNonce === (1n << 63n) - 1n ? 1n : this.nextNonce + 1n;
    return this.nextNonce;
  }
}

const decoder = new TextDecoder();

function definedOnly<T extends object>(options: T): Partial<T> {
  return Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as Partial<T>;
}
