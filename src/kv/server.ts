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
  type Membership,
  type NodeId,
  type LogStoreStats,
  type RaftNodeStatus,
  type RaftObserver,
  type SnapshotMeta,
  type StateMachine,
  type Transport,
} from "../raft/index.ts";
import type { DBStats } from "../lsm/index.ts";
import { commandFingerprint, decodeCommand, encodeCommand, type WriteCommand } from "./command.ts";
import { DeadlineQueue } from "./deadlines.ts";
import { InvalidArgumentError, OverloadedError, SessionExpiredError, UnavailableError } from "./errors.ts";
import { PendingWrites, isApplied, type WriteOutcome } from "./pending-writes.ts";
import { ReadBatcher } from "./reads.ts";
import { NO_KEY, OK, WRONG_LEADER, refusal, type CommandArgs, type CommandReply, type RegisterReply } from "./replies.ts";
import {
  RESULT_COMMAND_REUSED,
  RESULT_NO_KEY,
  RESULT_OK,
  RESULT_SESSION_EXPIRED,
  RESULT_STALE_COMMAND,
  RESULT_TABLE_FULL,
  RESULT_VALUE_TOO_LARGE,
  type ResultCode,
} from "./sessions.ts";
import { KVStateMachine, type KVStateMachineOptions } from "./state-machine.ts";
import { TxnServer } from "./txn-server.ts";
import type { TxnLimits } from "./txn.ts";
import { WatchHub, type WatchLimits } from "./watch-hub.ts";

export type { CommandArgs, CommandReply, KVErr, KVOp, RegisterReply } from "./replies.ts";

export interface KVStatus {
  id: NodeId;
  state: "Leader" | "Follower" | "Candidate";
  term: number;
  lastApplied: number;
  commitIndex: number;
  /** LSM bytes on disk plus Raft log bytes. */
  storageSize: number;
  leaderId: NodeId;
  /** The voters of the configuration this node uses. */
  members: NodeId[];
  /** Its learners (non-voting members). */
  learners: NodeId[];
  /** Address per member id, as stored with the configuration. */
  addresses: Record<NodeId, string>;
  snapshotIndex: number;
  /** User keys in this replica's applied state. */
  keyCount: number;
  /** Live client sessions (duplicate-detection records). */
  sessions: number;
  /** Snapshots this node has installed from a leader since it started. */
  snapshotsInstalled: number;
  /** ReadIndex rounds this node has asked for since it started (Gets share rounds). */
  readIndexRounds: number;
}

export interface KVDiagnostics {
  raft: RaftNodeStatus;
  /** Null once closed. */
  lsm: DBStats | null;
  /** The file log's counters (null when the caller passed its own log store). */
  log: LogStoreStats | null;
  sessions: number;
  readIndexRounds: number;
  pendingCommands: number;
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
  /** Addresses of the bootstrap members (stored with the bootstrap configuration). */
  addresses?: Record<NodeId, string>;
  /** Called when the configuration in the log changes (e.g. to tell the transport who the peers are). */
  onMembershipChange?: (membership: Membership) => void;
  maxLearnerLag?: number;
  /** Metrics hooks (src/obs). */
  observer?: RaftObserver;
}

export interface KVStateOptions {
  memtableBytes?: number;
  blockCacheBytes?: number;
  /** Further LSM options (see DBOptions). */
  lsm?: KVStateMachineOptions["lsm"];
  /** A session idle this long (log time, from leader timestamps) expires. Default 1 hour. */
  sessionTtlMs?: number;
  /** Registered sessions at most (registrations beyond are refused). Default 100,000. */
  maxSessions?: number;
  /** Unregistered (eRaft-style) sessions at most (least recently used dropped beyond). Default 100,000. */
  maxUnregisteredSessions?: number;
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
  /** Bounds of Range, DeleteRange and Txn (txn.ts, range.ts). */
  txnLimits?: TxnLimits;
  /** Bounds of Watch (watch-hub.ts). */
  watchLimits?: WatchLimits;
}

const OPS = new Set<string>(["Get", "Put", "Append", "Delete"]);

export class KVServer {
  private closed = false;
  /** Commands in flight on this node (reads and writes). */
  private pending = 0;
  private readonly maxKeyBytes: number;
  private readonly maxValueBytes: number;
  private readonly maxPending: number;
  /** Range, DeleteRange and Txn (txn-server.ts). */
  api!: TxnServer;
  /** Watches served by this node (watch-hub.ts). */
  watches!: WatchHub;
  /**
   * Writes without a session and registrations carry a nonce as their commandId, so an entry that
   * applies before its propose() returned still finds its waiter. Random start: unique across restarts.
   */
  private nextNonce: bigint;

  private constructor(
    readonly id: NodeId,
    private readonly node: RaftNode,
    private readonly machine: KVStateMachine,
    private readonly writes: PendingWrites,
    private readonly reads: ReadBatcher,
    private readonly deadlines: DeadlineQueue,
    /** Closed by close() only when this server opened it (not when the caller passed one in). */
    private readonly ownedLogStore: LogStore | null,
    private readonly clock: Clock,
    limits: KVLimits,
  ) {
    const words = crypto.getRandomValues(new Uint32Array(2));
    this.nextNonce = (BigInt(words[0]! & 0x3fffffff) << 32n) | BigInt(words[1]!);
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
      txnLimits: options.txnLimits,
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
    let node: RaftNode;
    // Bound once the node exists; applies before that have no watcher to wake.
    let hub: WatchHub | null = null;
    try {
      node = await RaftNode.start({
        id: options.id,
        peers: options.peers,
        logStore,
        transport: options.transport,
        stateMachine: applyLoop(machine, writes, () => hub?.applied()),
        clock,
        ...definedOnly(options.raft ?? {}),
      });
    } catch (error) {
      await machine.close();
      await owned?.close();
      throw error;
    }
    const reads = new ReadBatcher(
      options.id,
      { readIndex: () => node.readIndex(), readApplied: (key) => readApplied(machine, key) },
      clock,
      deadlines,
      timeoutMs,
    );
    const server = new KVServer(options.id, node, machine, writes, reads, deadlines, owned, clock, options.limits ?? {});
    hub = new WatchHub({ id: options.id, machine, logFirstIndex: () => node.status().firstIndex }, options.watchLimits);
    server.watches = hub;
    server.api = new TxnServer({
      id: options.id,
      node,
      machine,
      writes,
      reads,
      now: () => clock.now(),
      maxKeyBytes: server.maxKeyBytes,
      maxValueBytes: server.maxValueBytes,
      maxPending: server.maxPending,
      limits: options.txnLimits,
      closed: () => server.closed,
    });
    return server;
  }

  /** Executes one client command. Throws KVError for bad input or overload; all else is a reply. */
  async command(args: CommandArgs): Promise<CommandReply> {
    this.validate(args);
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

  /** The Raft node under this server: membership administration (ClusterService) talks to it directly. */
  get raft(): RaftNode {
    return this.node;
  }

  async getStatus(): Promise<KVStatus> {
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
      learners: [...status.learners],
      addresses: { ...status.addresses },
      snapshotIndex: status.snapshotIndex,
      keyCount: this.machine.userKeyCount,
      sessions: this.machine.sessionCount,
      snapshotsInstalled: status.snapshotsReceived,
      readIndexRounds: this.reads.roundsStarted,
    };
  }

  /** Live views for metrics and health (src/obs), read when scraped: no copies kept, no hooks. */
  diagnostics(): KVDiagnostics {
    return {
      raft: this.node.status(),
      lsm: this.closed ? null : this.machine.lsmStats(),
      log: this.ownedLogStore instanceof FileLogStore ? this.ownedLogStore.stats() : null,
      sessions: this.machine.sessionCount,
      readIndexRounds: this.reads.roundsStarted,
      pendingCommands: this.pending,
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
    this.writes.close(WRONG_LEADER);
    this.reads.close();
    this.watches?.close();
    this.deadlines.clear();
    await this.node.stop();
    await this.machine.close();
    await this.ownedLogStore?.close();
  }

  /**
   * Registers a new client session (Raft dissertation §6.3): its id is the index of the
   * registration's log entry. Refused with OverloadedError when every session slot is taken.
   */
  async registerSession(): Promise<RegisterReply> {
    if (this.closed) return { err: "ErrWrongLeader", value: "" };
    const outcome = await this.propose({ op: "Register", clientId: 0n, commandId: this.nonce(), key: "", value: "" });
    if (!isApplied(outcome)) return outcome as RegisterReply;
    if (outcome.result === RESULT_TABLE_FULL) {
      throw new OverloadedError(`node ${this.id}: the session table is full (every registered session is live); retry later`);
    }
    return { err: "OK", clientId: BigInt(outcome.index) };
  }

  private validate(args: CommandArgs): void {
    if (typeof args.op !== "string" || !OPS.has(args.op)) {
      throw new InvalidArgumentError(`unknown op ${JSON.stringify(args.op)}: expected Get, Put, Append or Delete`);
    }
    if (typeof args.key !== "string") throw new InvalidArgumentError("the key must be a string");
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
    if (args.clientId !== 0n && args.commandId < 0n) {
      throw new InvalidArgumentError(`commandId ${args.commandId} is negative: a session's command ids start at 0 or 1 and increase`);
    }
    if (args.registered === true && args.clientId === 0n) {
      throw new InvalidArgumentError("a registered session needs its clientId (from RegisterSession); 0 means no session");
    }
  }

  /**
   * A write: answered from the session table when it already applied; otherwise registered as
   * waiting, then proposed; the apply loop answers it (see PendingWrites).
   */
  private async write(args: CommandArgs): Promise<CommandReply> {
    const command: WriteCommand = {
      op: args.op as "Put" | "Append" | "Delete",
      clientId: args.clientId,
      // Without a session the client's commandId means nothing; a nonce lets the apply find the waiter.
      commandId: args.clientId === 0n ? this.nonce() : args.commandId,
      key: args.key,
      value: args.value,
      registered: args.registered === true,
    };
    const known = this.answerFromSession(command);
    if (known !== null) return replyForResult(known, args);
    const outcome = await this.propose(command);
    return isApplied(outcome) ? replyForResult(outcome.result, args) : outcome;
  }

  /** Proposes a command stamped with this leader's time and value limit; resolves with how it ended. */
  private async propose(command: WriteCommand): Promise<WriteOutcome> {
    const data = encodeCommand({ ...command, timestamp: this.clock.now(), maxValueBytes: this.maxValueBytes });
    const { waiter, outcome } = this.writes.open(command.clientId, command.commandId);
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
    return outcome;
  }

  /**
   * The result of a write the session table answers without a new entry: a retry of the session's
   * last command, or a stale or reused commandId; null when the write must be proposed.
   */
  private answerFromSession(command: WriteCommand): ResultCode | null {
    if (command.clientId === 0n) return null;
    const session = this.machine.session(command.clientId);
    // Gone or never registered: the apply decides (a registration may be on its way to this state).
    if (session === undefined || (command.registered === true && !session.registered)) return null;
    if (command.commandId > session.commandId) return null;
    if (command.commandId < session.commandId) return RESULT_STALE_COMMAND;
    const fingerprint = commandFingerprint(decodeCommand(encodeCommand(command), 0));
    if (session.fingerprint !== 0 && session.fingerprint !== fingerprint) return RESULT_COMMAND_REUSED;
    return session.result;
  }

  private nonce(): bigint {
    this.nextNonce = this.nextNonce === (1n << 63n) - 1n ? 1n : this.nextNonce + 1n;
    return this.nextNonce;
  }
}

/** A write's reply for its apply result, or the typed refusal the result stands for. */
function replyForResult(result: ResultCode, args: CommandArgs): CommandReply {
  const key = JSON.stringify(args.key.slice(0, 64));
  switch (result) {
    case RESULT_OK:
      return OK;
    case RESULT_NO_KEY:
      return NO_KEY;
    case RESULT_VALUE_TOO_LARGE:
      return refuse(new InvalidArgumentError(`${args.op} of key ${key} would make its value larger than the value limit; it was not applied`));
    case RESULT_SESSION_EXPIRED:
      return refuse(
        new SessionExpiredError(
          `session ${args.clientId} has expired (or was never registered): register a new session; this write was not applied`,
        ),
      );
    case RESULT_STALE_COMMAND:
      return refuse(
        new InvalidArgumentError(
          `commandId ${args.commandId} is older than session ${args.clientId}'s last command: command ids must increase; this write was not applied`,
        ),
      );
    case RESULT_COMMAND_REUSED:
      return refuse(
        new InvalidArgumentError(
          `commandId ${args.commandId} of session ${args.clientId} was already used for a different command: use a new commandId; this write was not applied`,
        ),
      );
    case RESULT_TABLE_FULL:
      throw new Error(`invariant: a write was answered with a registration's result`);
  }
}

function refuse(error: Error): never {
  throw error;
}

/**
 * What the Raft driver applies committed entries to: the state machine, whose per-entry results
 * then answer the writes waiting for them (and a snapshot install answers the ones it covers).
 */
function applyLoop(machine: KVStateMachine, writes: PendingWrites, applied: () => void): StateMachine {
  return {
    apply: async (entries: Entry[]) => {
      writes.applied(await machine.apply(entries));
      applied();
    },
    restore: async (meta: SnapshotMeta, chunks: AsyncIterable<Uint8Array>) => {
      await machine.restore(meta, chunks);
      writes.restored(machine.lastApplied(), (clientId, commandId) => {
        const session = clientId === 0n ? undefined : machine.session(clientId);
        if (session === undefined || commandId > session.commandId) return null;
        return commandId === session.commandId ? session.result : RESULT_STALE_COMMAND;
      });
      applied();
    },
    lastApplied: () => machine.lastApplied(),
    lastAppliedTerm: () => machine.lastAppliedTerm(),
    durableAppliedIndex: () => machine.durableAppliedIndex(),
    sync: () => machine.sync(),
    snapshot: () => machine.snapshot(),
  };
}

function readApplied(machine: KVStateMachine, key: string): CommandReply {
  const value = machine.read(key);
  return value === null ? NO_KEY : { err: "OK", value: decoder.decode(value) };
}

const decoder = new TextDecoder();

function definedOnly<T extends object>(options: T): Partial<T> {
  return Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as Partial<T>;
}
