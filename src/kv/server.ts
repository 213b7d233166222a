// KVServer: one replica of the KV service. Validates commands, answers retried writes from the
// session table, proposes writes to Raft and waits for them to apply, serves Gets by ReadIndex.
import * as path from "node:path";
import {
  FileLogStore,
  BackpressureError,
  EntryTooLargeError,
  NodeStoppedError,
  NotLeaderError,
  ReadIndexTimeoutError,
  RaftNode,
  RealClock,
  NONE,
  type Clock,
  type LogStore,
  type NodeId,
  type SnapshotMeta,
  type TimerHandle,
  type Transport,
} from "../raft/index.ts";
import { encodeCommand } from "./command.ts";
import { DeadlineQueue, type Deadline } from "./deadlines.ts";
import { DiskWatch, type DiskWatchOptions } from "./disk-watch.ts";
import { type FatalError, toFatal } from "./fail-stop.ts";
import { KVError } from "./errors.ts";
import { RESULT_NO_KEY } from "./sessions.ts";
import { KVStateMachine, type AppliedCommand, type KVStateMachineOptions } from "./state-machine.ts";

export type KVOp = "Get" | "Put" | "Append" | "Delete";
export type KVErr = "OK" | "ErrNoKey" | "ErrWrongLeader" | "ErrTimeout";

export interface CommandArgs {
  key: string;
  value: string;
  op: KVOp;
  clientId: bigint;
  commandId: bigint;
}

export interface CommandReply {
  err: KVErr;
  value: string;
  /** With ErrWrongLeader: the node this one believes leads, when it knows one. */
  leaderId?: number;
}

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
}

/** A proposed write waiting for its entry to apply. */
class WriteWaiter implements Deadline {
  settled = false;
  constructor(
    readonly index: number,
    readonly term: number,
    readonly clientId: bigint,
    readonly commandId: bigint,
    readonly deadline: number,
    private readonly server: KVServer,
    private readonly resolve: (reply: CommandReply) => void,
  ) {}

  expire(): void {
    this.server.finishWrite(this, TIMEOUT);
  }

  settle(reply: CommandReply): void {
    this.settled = true;
    this.resolve(reply);
  }
}

/** A linearizable Get waiting for a ReadIndex round that started after it arrived. */
class ReadWaiter implements Deadline {
  settled = false;
  constructor(
    readonly key: string,
    readonly deadline: number,
    private readonly server: KVServer,
    private readonly resolve: (reply: CommandReply) => void,
    private readonly reject: (error: unknown) => void,
  ) {}

  expire(): void {
    if (this.settled) return;
    this.settle(TIMEOUT);
    this.server.readExpired();
  }

  settle(reply: CommandReply): void {
    this.settled = true;
    this.resolve(reply);
  }

  fail(error: unknown): void {
    this.settled = true;
    this.reject(error);
  }
}

/** ReadIndex rounds in flight at once; Gets beyond them wait for the next round. */
const MAX_READ_ROUNDS = 2;

const TIMEOUT: CommandReply = Object.freeze({ err: "ErrTimeout", value: "" }) as CommandReply;
const WRONG_LEADER: CommandReply = Object.freeze({ err: "ErrWrongLeader", value: "" }) as CommandReply;
const OK: CommandReply = Object.freeze({ err: "OK", value: "" }) as CommandReply;
const NO_KEY: CommandReply = Object.freeze({ err: "ErrNoKey", value: "" }) as CommandReply;

const OPS = new Set<string>(["Get", "Put", "Append", "Delete"]);

export class KVServer {
  private readonly waiters = new Map<number, WriteWaiter>();
  private readonly deadlines: DeadlineQueue;
  /** Gets that arrived after the ReadIndex round in flight was asked for: they share the next one. */
  private readQueue: ReadWaiter[] = [];
  /** Gets each ReadIndex round in flight will answer. */
  private readonly readRounds = new Set<ReadWaiter[]>();
  private readIndexRounds = 0;
  private readRoundScheduled = false;
  private pending = 0;
  private closed = false;
  private readonly maxKeyBytes: number;
  private readonly maxValueBytes: number;
  private readonly maxPending: number;
  private readonly timeoutMs: number;
  private fatalError: FatalError | null = null;
  private diskWatch: DiskWatch | null = null;
  private onFatal: ((error: FatalError) => void) | null = null;

  private constructor(
    readonly id: NodeId,
    private readonly node: RaftNode,
    private readonly machine: KVStateMachine,
    /** Closed by close() only when this server opened it (not when the caller passed one in). */
    private readonly ownedLogStore: LogStore | null,
    private readonly clock: Clock,
    limits: KVLimits,
  ) {
    this.maxKeyBytes = limits.maxKeyBytes ?? 4096;
    this.maxValueBytes = limits.maxValueBytes ?? 1 << 20;
    this.maxPending = limits.maxPendingCommands ?? 10_000;
    this.timeoutMs = limits.commandTimeoutMs ?? 500;
    this.deadlines = new DeadlineQueue(clock);
    machine.listener = {
      applied: (commands) => this.onApplied(commands),
      restored: (meta) => this.onRestored(meta),
    };
  }

  static async open(options: KVServerOptions): Promise<KVServer> {
    const clock = options.clock ?? new RealClock();
    const machine = await KVStateMachine.open({
      dir: path.join(options.dir, "state"),
      members: options.peers,
      snapshotChunkBytes: options.raft?.snapshotChunkBytes,
      ...definedOnly(options.state ?? {}),
    } as Parameters<typeof KVStateMachine.open>[0]);
    let logStore: LogStore;
    try {
      logStore = options.logStore ?? (await FileLogStore.open(path.join(options.dir, "raft")));
    } catch (error) {
      await machine.close();
      throw error;
    }
    const owned = options.logStore === undefined ? logStore : null;
    // The node's fatal errors reach the server once it exists; one before that fails open().
    let server: KVServer | null = null;
    let early: Error | null = null;
    let node: RaftNode;
    try {
      node = await RaftNode.start({
        id: options.id,
        peers: options.peers,
        logStore,
        transport: options.transport,
        stateMachine: machine,
        clock,
        ...definedOnly(options.raft ?? {}),
        onFatal: (error) => {
          if (server !== null) server.failStop("raft", error);
          else early = error;
        },
      });
    } catch (error) {
      await machine.close();
      await owned?.close();
      throw error;
    }
    server = new KVServer(options.id, node, machine, owned, clock, options.limits ?? {});
    server.onFatal = options.onFatal ?? null;
    if (early !== null) server.failStop("raft", early);
    if (options.diskWatch !== undefined && server.fatalError === null) {
      server.diskWatch = new DiskWatch({ ...options.diskWatch, dir: options.dir }, (error) => server!.failStop("data directory check", error));
      server.diskWatch.start();
    }
    return server;
  }

  /** Executes one client command. Throws KVError for bad input or overload; all else is a reply. */
  async command(args: CommandArgs): Promise<CommandReply> {
    this.validate(args);
    if (this.fatalError !== null) throw this.stoppedError();
    if (this.closed) return WRONG_LEADER;
    if (this.pending >= this.maxPending) {
      throw new KVError(
        "resource_exhausted",
        `node ${this.id} has ${this.pending} commands in flight (limit ${this.maxPending}); retry with backoff`,
      );
    }
    this.pending++;
    try {
      return args.op === "Get" ? await this.get(args.key) : await this.write(args);
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
      sessions: this.machine.sessionCount,
      snapshotsInstalled: status.snapshotsReceived,
      readIndexRounds: this.readIndexRounds,
      storageHealth: this.diskWatch?.health() ?? "",
    };
  }

  /**
   * This replica's applied value of `key`, without ReadIndex: possibly stale, never
   * linearizable. For diagnostics and tests that inspect one replica; clients use command().
   */
  /** True when the Raft driver has nothing in flight (for simulations that wait on real I/O). */
  isIdle(): boolean {
    // A background LSM sync moves the durable applied index, and with it the log compaction point.
    return this.node.isIdle() && !this.machine.syncInFlight;
  }

  readLocal(key: string): string | null {
    if (this.closed) throw new KVError("unavailable", `node ${this.id} is closed`);
    const value = this.machine.read(key);
    return value === null ? null : decoder.decode(value);
  }

  /** Stops Raft, answers every waiting command with ErrWrongLeader, closes storage. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.diskWatch?.stop();
    for (const waiter of [...this.waiters.values()]) this.finishWrite(waiter, WRONG_LEADER);
    for (const waiter of [...[...this.readRounds].flat(), ...this.readQueue]) if (!waiter.settled) waiter.settle(WRONG_LEADER);
    this.readRounds.clear();
    this.readQueue = [];
    this.deadlines.clear();
    await this.node.stop();
    await this.machine.close();
    await this.ownedLogStore?.close();
  }

  private validate(args: CommandArgs): void {
    if (typeof args.op !== "string" || !OPS.has(args.op)) {
      throw new KVError("invalid_argument", `unknown op ${JSON.stringify(args.op)}: expected Get, Put, Append or Delete`);
    }
    if (typeof args.key !== "string" || args.key.length === 0) {
      throw new KVError("invalid_argument", "the key is empty: every command needs a non-empty key");
    }
    // A UTF-16 code unit is at most 3 UTF-8 bytes: short strings need no byte count.
    const keyBytes = args.key.length * 3 <= this.maxKeyBytes ? 0 : Buffer.byteLength(args.key, "utf8");
    if (keyBytes > this.maxKeyBytes) {
      throw new KVError("invalid_argument", `the key is ${keyBytes} bytes; keys are limited to ${this.maxKeyBytes} bytes`);
    }
    if (typeof args.value !== "string") throw new KVError("invalid_argument", "the value must be a string");
    const valueBytes = args.value.length * 3 <= this.maxValueBytes ? 0 : Buffer.byteLength(args.value, "utf8");
    if (valueBytes > this.maxValueBytes) {
      throw new KVError(
        "invalid_argument",
        `the value of key ${JSON.stringify(args.key.slice(0, 64))} is ${valueBytes} bytes; values are limited to ${this.maxValueBytes} bytes`,
      );
    }
    if (typeof args.clientId !== "bigint" || typeof args.commandId !== "bigint") {
      throw new KVError("invalid_argument", "clientId and commandId must be 64-bit integers");
    }
  }

  /**
   * A linearizable read. Gets are batched much as etcd batches them: at most MAX_READ_ROUNDS
   * ReadIndex rounds in flight, and every Get that arrives meanwhile shares the next round (one
   * heartbeat round confirms them all; a round per Get would cost two peer RPCs per Get). Once the
   * node has applied through the round's index the values are read from the LSM synchronously.
   * Two rounds rather than etcd's one: a Get arriving just after a round left then waits about one
   * round trip, not one and a half.
   */
  private get(key: string): Promise<CommandReply> {
    return new Promise<CommandReply>((resolve, reject) => {
      const waiter = new ReadWaiter(key, this.clock.now() + this.timeoutMs, this, resolve, reject);
      this.readQueue.push(waiter);
      this.deadlines.add(waiter);
      this.scheduleReadRound();
    });
  }

  /** Starts a round at the end of this turn, so Gets that arrive together share it. */
  private scheduleReadRound(): void {
    if (this.readRoundScheduled || this.readRounds.size >= MAX_READ_ROUNDS) return;
    this.readRoundScheduled = true;
    queueMicrotask(() => {
      this.readRoundScheduled = false;
      if (this.readQueue.length > 0 && !this.closed && this.readRounds.size < MAX_READ_ROUNDS) this.startReadRound();
    });
  }

  private startReadRound(): void {
    const round = this.readQueue;
    this.readQueue = [];
    this.readRounds.add(round);
    this.readIndexRounds++;
    const done = (): void => {
      if (!this.readRounds.delete(round)) return; // abandoned after its Gets timed out
      if (this.readQueue.length > 0) this.scheduleReadRound();
    };
    this.node.readIndex().then(
      () => {
        for (const waiter of round) if (!waiter.settled) waiter.settle(this.closed ? WRONG_LEADER : this.readApplied(waiter.key));
        done();
      },
      (error: unknown) => {
        let reply: CommandReply | null = null;
        let failure: unknown = null;
        try {
          reply = this.rejection(error);
        } catch (typed) {
          failure = typed;
        }
        for (const waiter of round) {
          if (waiter.settled) continue;
          if (reply !== null) waiter.settle(reply);
          else waiter.fail(failure);
        }
        done();
      },
    );
  }

  /** A Get timed out: a round whose Gets all have no longer holds later Gets back. */
  readExpired(): void {
    for (const round of this.readRounds) if (round.every((waiter) => waiter.settled)) this.readRounds.delete(round);
    if (this.readQueue.length > 0 && !this.readQueue.some((waiter) => !waiter.settled)) this.readQueue = [];
    if (this.readQueue.length > 0) this.scheduleReadRound();
  }

  private readApplied(key: string): CommandReply {
    let value: Uint8Array | null;
    try {
      value = this.machine.read(key);
    } catch (error) {
      // Never served: the client tries another node while this one stops.
      this.failStop("state machine read", error);
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
    for (const waiter of [...this.waiters.values()]) this.finishWrite(waiter, WRONG_LEADER);
    for (const waiter of [...[...this.readRounds].flat(), ...this.readQueue]) if (!waiter.settled) waiter.settle(WRONG_LEADER);
    this.readRounds.clear();
    this.readQueue = [];
    void this.node.stop();
    if (this.onFatal !== null) this.onFatal(fatal);
    else console.error(`kvraft: node ${this.id} stopped: ${fatal.message}`);
  }

  private stoppedError(): KVError {
    return new KVError("unavailable", `node ${this.id} stopped after a fatal error: ${this.fatalError!.message}`, { cause: this.fatalError });
  }

  private async write(args: CommandArgs): Promise<CommandReply> {
    const known = this.answerFromSession(args.clientId, args.commandId);
    if (known !== null) return known;
    const refusal = this.diskWatch?.writeRefusal();
    if (refusal) throw refusal;
    const data = encodeCommand({ op: args.op as "Put" | "Append" | "Delete", clientId: args.clientId, commandId: args.commandId, key: args.key, value: args.value });
    let proposed: { index: number; term: number };
    try {
      proposed = await this.node.propose(data);
    } catch (error) {
      return this.rejection(error);
    }
    return new Promise<CommandReply>((resolve) => {
      const previous = this.waiters.get(proposed.index);
      // An older waiter at this index belongs to a term whose entry was overwritten.
      if (previous !== undefined) this.finishWrite(previous, WRONG_LEADER);
      const waiter = new WriteWaiter(proposed.index, proposed.term, args.clientId, args.commandId, this.clock.now() + this.timeoutMs, this, resolve);
      this.waiters.set(proposed.index, waiter);
      this.deadlines.add(waiter);
      // Applied already (between the append and this continuation)? The session table knows.
      if (this.machine.lastApplied() >= proposed.index) this.finishWrite(waiter, this.settledBySession(waiter));
    });
  }

  private onApplied(commands: AppliedCommand[]): void {
    if (this.waiters.size === 0) return;
    for (const applied of commands) {
      const waiter = this.waiters.get(applied.index);
      if (waiter === undefined) continue;
      // A different term at our index: the leader that took our proposal lost it.
      this.finishWrite(waiter, applied.term !== waiter.term ? WRONG_LEADER : applied.result === RESULT_NO_KEY ? NO_KEY : OK);
    }
  }

  private onRestored(meta: SnapshotMeta): void {
    for (const waiter of [...this.waiters.values()]) {
      if (waiter.index <= meta.index) this.finishWrite(waiter, this.settledBySession(waiter));
    }
  }

  /** The outcome of a proposal whose entry was applied without us seeing it (snapshot, race). */
  private settledBySession(waiter: WriteWaiter): CommandReply {
    return this.answerFromSession(waiter.clientId, waiter.commandId) ?? WRONG_LEADER;
  }

  private answerFromSession(clientId: bigint, commandId: bigint): CommandReply | null {
    const session = this.machine.session(clientId);
    if (session === undefined || commandId > session.commandId) return null;
    return commandId === session.commandId && session.result === RESULT_NO_KEY ? NO_KEY : OK;
  }

  /** Answers a write waiter once (a deadline, an apply, a restore or close may each try). */
  finishWrite(waiter: WriteWaiter, reply: CommandReply): void {
    if (this.waiters.get(waiter.index) !== waiter) return;
    this.waiters.delete(waiter.index);
    waiter.settle(reply);
  }

  /** Maps the driver's refusals to replies (try another node, retry) or typed errors. */
  private rejection(error: unknown): CommandReply {
    if (error instanceof NotLeaderError) {
      return error.leaderId === NONE ? { err: "ErrWrongLeader", value: "" } : { err: "ErrWrongLeader", value: "", leaderId: error.leaderId };
    }
    if (error instanceof KVError) throw error;
    // This node is going away: the client should try another one.
    if (error instanceof NodeStoppedError) return { err: "ErrWrongLeader", value: "" };
    // ReadIndex not confirmed in time (lost quorum?).
    if (error instanceof ReadIndexTimeoutError) return { err: "ErrTimeout", value: "" };
    const message = error instanceof Error ? error.message : String(error);
    if (error instanceof BackpressureError) throw new KVError("resource_exhausted", `node ${this.id}: ${message}`, { cause: error });
    if (error instanceof EntryTooLargeError) throw new KVError("invalid_argument", `node ${this.id}: ${message}`, { cause: error });
    throw new KVError("unavailable", `node ${this.id} could not take the command: ${message}`, { cause: error });
  }
}

const decoder = new TextDecoder();

function definedOnly<T extends object>(options: T): Partial<T> {
  return Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as Partial<T>;
}
