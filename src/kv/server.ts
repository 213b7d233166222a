// KVServer: one replica of the KV service. Validates commands, answers retried writes from the
// session table, proposes writes to Raft and waits for them to apply, serves Gets by ReadIndex.
import {
  NONE,
  RaftNode,
  RealClock,
  type Clock,
  type Entry,
  type LogStore,
  type NodeId,
  type SnapshotMeta,
  type StateMachine,
  type Transport,
} from "../raft/index.ts";
import { encodeCommand } from "./command.ts";
import { DeadlineQueue } from "./deadlines.ts";
import { DiskWatch, type DiskWatchOptions } from "./disk-watch.ts";
import { type FatalError, isStateMachineCorruption, toFatal } from "./fail-stop.ts";
import { InvalidArgumentError, OverloadedError, UnavailableError } from "./errors.ts";
import { PendingWrites, replyFor } from "./pending-writes.ts";
import { ReadBatcher } from "./reads.ts";
import { NO_KEY, OK, WRONG_LEADER, refusal, type CommandArgs, type CommandReply } from "./replies.ts";
import { RelayTransport, discardReplica, openStorageRepaired, readMarker, removeMarker, watchCorruption, writeMarker, type OpenedStorage } from "./repair.ts";
import { KVStateMachine, type KVStateMachineOptions } from "./state-machine.ts";

export type { CommandArgs, CommandReply, KVErr, KVOp } from "./replies.ts";

export interface KVStatus {
  id: NodeId;
  state: "Leader" | "Follower" | "Candidate";
  term: number;
  lastApplied: number;
  commitIndex: number;
  /** LSM bytes on disk plus Raft log bytes. */
  storageSize: number;
  leaderId: NodeId;
  members: NodeId[];
  snapshotIndex: number;
  /** User keys in this replica's applied state. */
  keyCount: number;
  /** Live client sessions (duplicate-detection records). */
  sessions: number;
  /** Snapshots this node has installed from a leader since it started. */
  snapshotsInstalled: number;
  /** ReadIndex rounds this node has asked for since it started (Gets share rounds). */
  readIndexRounds: number;
  /** Storage conditions an operator should see ("" when healthy): low disk space, an unwritable directory. */
  storageHealth: string;
}

export interface KVLimits {
  /** Default 4 KiB. */
  maxKeyBytes?: number;
  /** Default 1 MiB. */
  maxValueBytes?: number;
  /** Commands in flight on this node before new ones fail fast with resource_exhausted. Default 10,000. */
  maxPendingCommands?: number;
  /** How long a command waits for commit/apply (or a read for its ReadIndex). Default 500 ms. */
  commandTimeoutMs?: number;
}

export interface KVRaftOptions {
  tickMs?: number;
  electionTicks?: number;
  heartbeatTicks?: number;
  seed?: number;
  snapshotThreshold?: number;
  snapshotChunkBytes?: number;
  maxPendingProposals?: number;
}

export interface KVStateOptions {
  memtableBytes?: number;
  blockCacheBytes?: number;
  /** Further LSM options (see DBOptions). */
  lsm?: KVStateMachineOptions["lsm"];
  sessionTtlEntries?: number;
  maxSessions?: number;
  syncEveryEntries?: number;
}

export interface KVServerOptions {
  id: NodeId;
  peers: NodeId[];
  /** Creates `<dir>/raft` (the Raft log, unless `logStore` is given) and `<dir>/state` (the LSM). */
  dir: string;
  transport: Transport;
  clock?: Clock;
  /** A log store to use instead of `<dir>/raft` (e.g. a MemoryLogStore in simulations). */
  logStore?: LogStore;
  raft?: KVRaftOptions;
  state?: KVStateOptions;
  limits?: KVLimits;
  /**
   * Called once when the node meets an error it cannot recover from (storage I/O, a broken
   * invariant). The server already refuses everything; the process should log the message and exit.
   */
  onFatal?: (error: FatalError) => void;
  /** Watch the data directory (deleted, unwritable, low on space); off unless given. */
  diskWatch?: Omit<DiskWatchOptions, "dir">;
  /**
   * This node may have lost durable state (e.g. its data directory was created anew while its
   * cluster may exist): it starts recovering, granting no vote until it has caught up.
   */
  lostState?: string;
  /** Where repairs and recovery are reported (default: stderr). */
  log?: (line: string) => void;
}

/** More self-repairs than this within REPAIR_WINDOW_MS is a disk that keeps corrupting: stop instead. */
const MAX_REPAIRS = 3;
const REPAIR_WINDOW_MS = 10 * 60_000;

const OPS = new Set<string>(["Get", "Put", "Append", "Delete"]);

export class KVServer {
  private closed = false;
  /** Commands in flight on this node (reads and writes). */
  private pending = 0;
  private readonly maxKeyBytes: number;
  private readonly maxValueBytes: number;
  private readonly maxPending: number;
  private fatalError: FatalError | null = null;
  private diskWatch: DiskWatch | null = null;
  private onFatal: ((error: FatalError) => void) | null = null;
  /** Why the replica is being discarded and rebuilt right now (self-repair), or null. */
  private repairing: string | null = null;
  private repairRun: Promise<void> | null = null;
  private readonly repairTimes: number[] = [];
  /** The RECOVERING marker exists: it is removed once Raft reports the node caught up. */
  private markerPresent = false;
  /** A fatal error from the node before start() returned, handled once it has. */
  private earlyRaftError: Error | null = null;
  private readonly deadlines: DeadlineQueue;
  private readonly relay: RelayTransport;
  private readonly log: (line: string) => void;
  // The replica: replaced as a whole by a self-repair (see repair()).
  private node!: RaftNode;
  private machine!: KVStateMachine;
  private writes!: PendingWrites;
  private reads!: ReadBatcher;
  /** Closed by close() only when this server opened it (not when the caller passed one in). */
  private ownedLogStore: LogStore | null = null;

  private constructor(
    readonly id: NodeId,
    private readonly options: KVServerOptions,
    private readonly clock: Clock,
  ) {
    const limits = options.limits ?? {};
    this.maxKeyBytes = limits.maxKeyBytes ?? 4096;
    this.maxValueBytes = limits.maxValueBytes ?? 1 << 20;
    this.maxPending = limits.maxPendingCommands ?? 10_000;
    this.deadlines = new DeadlineQueue(clock);
    this.relay = new RelayTransport(options.transport);
    this.log = options.log ?? ((line) => console.error(`kvraft: node ${options.id}: ${line}`));
    this.onFatal = options.onFatal ?? null;
  }

  static async open(options: KVServerOptions): Promise<KVServer> {
    const server = new KVServer(options.id, options, options.clock ?? new RealClock());
    if (options.lostState !== undefined && options.logStore === undefined && readMarker(options.dir) === null) {
      writeMarker(options.dir, { format: 1, reason: options.lostState, since: new Date().toISOString(), term: 0, votedFor: NONE });
      server.log(`${options.lostState}: starting as recovering, not voting until caught up with a leader`);
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
      ...definedOnly(o.state ?? {}),
    } as Omit<KVStateMachineOptions, "dir">;
    return openStorageRepaired(o.dir, machineOptions, o.logStore, this.log);
  }

  /** Starts a Raft node over opened storage and makes it this server's replica. */
  private async startNode(storage: OpenedStorage): Promise<void> {
    const o = this.options;
    const timeoutMs = o.limits?.commandTimeoutMs ?? 500;
    const writes = new PendingWrites(this.clock, this.deadlines, timeoutMs, storage.machine.lastApplied());
    let node: RaftNode;
    this.earlyRaftError = null;
    let started = false;
    try {
      node = await RaftNode.start({
        id: o.id,
        peers: o.peers,
        logStore: storage.logStore,
        transport: this.relay,
        stateMachine: this.applyLoop(storage.machine, writes),
        clock: this.clock,
        ...definedOnly(o.raft ?? {}),
        recovering: storage.recovering,
        onFatal: (error) => {
          if (started) this.raftFailed(error);
          else this.earlyRaftError = error;
        },
      });
    } catch (error) {
      await storage.machine.close();
      if (storage.owned) await storage.logStore.close();
      throw error;
    }
    this.node = node;
    this.machine = storage.machine;
    this.writes = writes;
    this.ownedLogStore = storage.owned ? storage.logStore : null;
    this.reads = new ReadBatcher(o.id, { readIndex: () => node.readIndex(), readApplied: (key) => this.readApplied(key) }, this.clock, this.deadlines, timeoutMs);
    this.markerPresent = storage.recovering && storage.owned;
    started = true;
    if (this.earlyRaftError !== null) this.raftFailed(this.earlyRaftError);
  }

  /** Executes one client command. Throws KVError for bad input or overload; all else is a reply. */
  async command(args: CommandArgs): Promise<CommandReply> {
    this.validate(args);
    if (this.fatalError !== null) throw this.stoppedError();
    // Closing, or rebuilding its replica: the client tries another node.
    if (this.closed || this.repairing !== null) return WRONG_LEADER;
    if (this.pending >= this.maxPending) {
      throw new OverloadedError(`node ${this.id} has ${this.pending} commands in flight (limit ${this.maxPending}); retry with backoff`);
    }
    this.pending++;
    try {
      return args.op === "Get" ? await this.reads.get(args.key) : await this.write(args);
    } finally {
      this.pending--;
    }
  }

  async getStatus(): Promise<KVStatus> {
    // A stopped node does not pretend to be a follower: status fails like everything else.
    if (this.fatalError !== null) throw this.stoppedError();
    const status = this.node.status();
    return {
      id: this.id,
      state: status.role === "PreCandidate" ? "Candidate" : status.role,
      term: status.term,
      lastApplied: this.machine.lastApplied(),
      commitIndex: status.commitIndex,
      storageSize: (this.closed ? 0 : this.machine.diskBytes()) + status.logBytes,
      leaderId: status.leaderId,
      members: [...status.members],
      snapshotIndex: status.snapshotIndex,
      keyCount: this.machine.userKeyCount,
      sessions: this.machine.sessionCount,
      snapshotsInstalled: status.snapshotsReceived,
      readIndexRounds: this.reads.roundsStarted,
      storageHealth: [this.repairing === null ? "" : `repairing: ${this.repairing}`, status.recovering, this.diskWatch?.health() ?? ""]
        .filter((s) => s !== "")
        .join("; "),
    };
  }

  /** True when the Raft driver has nothing in flight (for simulations that wait on real I/O). */
  isIdle(): boolean {
    // A background LSM sync moves the durable applied index, and with it the log compaction point.
    return this.node.isIdle() && !this.machine.syncInFlight;
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

  /** Stops Raft, answers every waiting command with ErrWrongLeader, closes storage. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.diskWatch?.stop();
    await this.repairRun;
    this.writes.close(WRONG_LEADER);
    this.reads.close();
    this.deadlines.clear();
    await this.node.stop();
    await this.machine.close();
    await this.ownedLogStore?.close();
  }

  private validate(args: CommandArgs): void {
    if (typeof args.op !== "string" || !OPS.has(args.op)) {
      throw new InvalidArgumentError(`unknown op ${JSON.stringify(args.op)}: expected Get, Put, Append or Delete`);
    }
    if (typeof args.key !== "string" || args.key.length === 0) {
      throw new InvalidArgumentError("the key is empty: every command needs a non-empty key");
    }
    // A UTF-16 code unit is at most 3 UTF-8 bytes: short strings need no byte count.
    const keyBytes = args.key.length * 3 <= this.maxKeyBytes ? 0 : Buffer.byteLength(args.key, "utf8");
    if (keyBytes > this.maxKeyBytes) {
      throw new InvalidArgumentError(`the key is ${keyBytes} bytes; keys are limited to ${this.maxKeyBytes} bytes`);
    }
    if (typeof args.value !== "string") throw new InvalidArgumentError("the value must be a string");
    const valueBytes = args.value.length * 3 <= this.maxValueBytes ? 0 : Buffer.byteLength(args.value, "utf8");
    if (valueBytes > this.maxValueBytes) {
      throw new InvalidArgumentError(
        `the value of key ${JSON.stringify(args.key.slice(0, 64))} is ${valueBytes} bytes; values are limited to ${this.maxValueBytes} bytes`,
      );
    }
    if (typeof args.clientId !== "bigint" || typeof args.commandId !== "bigint") {
      throw new InvalidArgumentError("clientId and commandId must be 64-bit integers");
    }
  }

  /**
   * A write: answered from the session table when it already applied; otherwise registered as
   * waiting, then proposed; the apply loop answers it (see PendingWrites).
   */
  private async write(args: CommandArgs): Promise<CommandReply> {
    const known = answerFromSession(this.machine, args.clientId, args.commandId);
    if (known !== null) return known;
    const lowSpace = this.diskWatch?.writeRefusal();
    if (lowSpace) throw lowSpace;
    const data = encodeCommand({ op: args.op as "Put" | "Append" | "Delete", clientId: args.clientId, commandId: args.commandId, key: args.key, value: args.value });
    const { waiter, reply } = this.writes.open(args.clientId, args.commandId);
    try {
      const { index, term } = await this.node.propose(data);
      this.writes.place(waiter, index, term);
    } catch (error) {
      let refused: CommandReply;
      try {
        refused = refusal(error, this.id);
      } catch (typed) {
        this.writes.answer(waiter, WRONG_LEADER);
        throw typed;
      }
      this.writes.answer(waiter, refused);
    }
    return reply;
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
    void this.node.stop();
    if (this.onFatal !== null) this.onFatal(fatal);
    else console.error(`kvraft: node ${this.id} stopped: ${fatal.message}`);
  }

  private raftFailed(error: Error): void {
    this.storageFailed("raft", error);
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
      await this.stepDown();
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

  /** A leader hands leadership to a peer first (bounded wait), so clients are not left waiting for an election. */
  private async stepDown(): Promise<void> {
    const status = this.node.status();
    if (status.role !== "Leader") return;
    const peer = status.members.find((m) => m !== this.id);
    if (peer === undefined) return;
    try {
      this.node.transferLeadership(peer);
    } catch {
      return;
    }
    const tick = this.options.raft?.tickMs ?? 50;
    const waitMs = tick * (this.options.raft?.electionTicks ?? 10);
    for (let waited = 0; waited < waitMs && this.node.status().role === "Leader"; waited += tick) {
      await new Promise<void>((resolve) => this.clock.setTimeout(resolve, tick));
    }
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

  /**
   * What the Raft driver applies committed entries to: the state machine, whose per-entry results
   * then answer the writes waiting for them (and a snapshot install answers the ones it covers).
   */
  private applyLoop(machine: KVStateMachine, writes: PendingWrites): StateMachine {
    return {
      apply: async (entries: Entry[]) => {
        writes.applied(await machine.apply(entries));
        if (this.markerPresent) this.checkRecovered();
      },
      restore: async (meta: SnapshotMeta, chunks: AsyncIterable<Uint8Array>) => {
        await machine.restore(meta, chunks);
        writes.restored(machine.lastApplied(), (clientId, commandId) => answerFromSession(machine, clientId, commandId));
      },
      lastApplied: () => machine.lastApplied(),
      lastAppliedTerm: () => machine.lastAppliedTerm(),
      durableAppliedIndex: () => machine.durableAppliedIndex(),
      sync: () => machine.sync(),
      // A corrupt block met while streaming a snapshot to a follower is this replica's problem.
      snapshot: async () => {
        const image = await machine.snapshot();
        return { meta: image.meta, chunks: watchCorruption(image.chunks, (error) => this.storageFailed("snapshot read", error)) };
      },
    };
  }

  private stoppedError(): UnavailableError {
    return new UnavailableError(`node ${this.id} stopped after a fatal error: ${this.fatalError!.message}`, { cause: this.fatalError });
  }
}

/** The answer to a write the session table shows as applied already, or null. */
function answerFromSession(machine: KVStateMachine, clientId: bigint, commandId: bigint): CommandReply | null {
  const session = machine.session(clientId);
  if (session === undefined || commandId > session.commandId) return null;
  return commandId === session.commandId ? replyFor(session.result) : OK;
}

const decoder = new TextDecoder();

function definedOnly<T extends object>(options: T): Partial<T> {
  return Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as Partial<T>;
}
