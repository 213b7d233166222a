// KVServer: one replica of the KV service. Validates commands, answers retried writes from the
// session table, proposes writes to Raft and waits for them to apply, serves Gets by ReadIndex.
import * as path from "node:path";
import {
  FileLogStore,
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
import { type FatalError, toFatal } from "./fail-stop.ts";
import { InvalidArgumentError, OverloadedError, UnavailableError } from "./errors.ts";
import { PendingWrites, replyFor } from "./pending-writes.ts";
import { ReadBatcher } from "./reads.ts";
import { NO_KEY, OK, WRONG_LEADER, refusal, type CommandArgs, type CommandReply } from "./replies.ts";
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
}

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

  private constructor(
    readonly id: NodeId,
    private readonly node: RaftNode,
    private readonly machine: KVStateMachine,
    private readonly writes: PendingWrites,
    private readonly reads: ReadBatcher,
    private readonly deadlines: DeadlineQueue,
    /** Closed by close() only when this server opened it (not when the caller passed one in). */
    private readonly ownedLogStore: LogStore | null,
    limits: KVLimits,
  ) {
    this.maxKeyBytes = limits.maxKeyBytes ?? 4096;
    this.maxValueBytes = limits.maxValueBytes ?? 1 << 20;
    this.maxPending = limits.maxPendingCommands ?? 10_000;
  }

  static async open(options: KVServerOptions): Promise<KVServer> {
    const clock = options.clock ?? new RealClock();
    const timeoutMs = options.limits?.commandTimeoutMs ?? 500;
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
    const deadlines = new DeadlineQueue(clock);
    const writes = new PendingWrites(clock, deadlines, timeoutMs, machine.lastApplied());
    // The node's fatal errors reach the server once it exists; one before that is raised after.
    let server: KVServer | null = null;
    let early: Error | null = null;
    let node: RaftNode;
    try {
      node = await RaftNode.start({
        id: options.id,
        peers: options.peers,
        logStore,
        transport: options.transport,
        stateMachine: applyLoop(machine, writes),
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
    const reads = new ReadBatcher(
      options.id,
      { readIndex: () => node.readIndex(), readApplied: (key) => server!.readApplied(key) },
      clock,
      deadlines,
      timeoutMs,
    );
    server = new KVServer(options.id, node, machine, writes, reads, deadlines, owned, options.limits ?? {});
    server.onFatal = options.onFatal ?? null;
    if (early !== null) server.failStop("raft", early);
    if (options.diskWatch !== undefined && server.fatalError === null) {
      const watched = server;
      watched.diskWatch = new DiskWatch({ ...options.diskWatch, dir: options.dir }, (error) => watched.failStop("data directory check", error));
      watched.diskWatch.start();
    }
    return server;
  }

  /** Executes one client command. Throws KVError for bad input or overload; all else is a reply. */
  async command(args: CommandArgs): Promise<CommandReply> {
    this.validate(args);
    if (this.fatalError !== null) throw this.stoppedError();
    if (this.closed) return WRONG_LEADER;
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
      storageHealth: this.diskWatch?.health() ?? "",
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
      // The client tries another node while this one stops.
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
    this.writes.close(WRONG_LEADER);
    this.reads.close();
    void this.node.stop();
    if (this.onFatal !== null) this.onFatal(fatal);
    else console.error(`kvraft: node ${this.id} stopped: ${fatal.message}`);
  }

  private stoppedError(): UnavailableError {
    return new UnavailableError(`node ${this.id} stopped after a fatal error: ${this.fatalError!.message}`, { cause: this.fatalError });
  }
}

/**
 * What the Raft driver applies committed entries to: the state machine, whose per-entry results
 * then answer the writes waiting for them (and a snapshot install answers the ones it covers).
 */
function applyLoop(machine: KVStateMachine, writes: PendingWrites): StateMachine {
  return {
    apply: async (entries: Entry[]) => writes.applied(await machine.apply(entries)),
    restore: async (meta: SnapshotMeta, chunks: AsyncIterable<Uint8Array>) => {
      await machine.restore(meta, chunks);
      writes.restored(machine.lastApplied(), (clientId, commandId) => answerFromSession(machine, clientId, commandId));
    },
    lastApplied: () => machine.lastApplied(),
    lastAppliedTerm: () => machine.lastAppliedTerm(),
    durableAppliedIndex: () => machine.durableAppliedIndex(),
    sync: () => machine.sync(),
    snapshot: () => machine.snapshot(),
  };
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
