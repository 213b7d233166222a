// KVServer: one replica of the KV service. Validates commands, answers retried writes from the
// session table, proposes writes to Raft and waits for them to apply, serves Gets by ReadIndex.
import {
  FileLogStore,
  NONE,
  RaftNode,
  RealClock,
  type Clock,
  type LogStore,
  type Membership,
  type NodeId,
  type LogStoreStats,
  type RaftNodeStatus,
  type RaftObserver,
  type Transport,
} from "../raft/index.ts";
import type { DBStats } from "../lsm/index.ts";
import { commandFingerprint, decodeCommand, encodeCommand, type WriteCommand } from "./command.ts";
import { DeadlineQueue } from "./deadlines.ts";
import { DiskWatch, type DiskWatchOptions } from "./disk-watch.ts";
import { type FatalError, isStateMachineCorruption, toFatal } from "./fail-stop.ts";
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
import { applyLoop } from "./apply-loop.ts";
import { RelayTransport, discardReplica, handOverLeadership, openStorageRepaired, readMarker, removeMarker, writeMarker, type OpenedStorage } from "./repair.ts";
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
  /** Storage conditions an operator should see ("" when healthy): repair, recovery, low disk space, an unwritable directory. */
  storageHealth: string;
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
  private readonly relay: RelayTransport;
  private readonly log: (line: string) => void;
  // The replica, replaced as a whole by a self-repair (see repair()).
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
    const words = crypto.getRandomValues(new Uint32Array(2));
    this.nextNonce = (BigInt(words[0]! & 0x3fffffff) << 32n) | BigInt(words[1]!);
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
    const writes = new PendingWrites(this.clock, this.deadlines, timeoutMs, machine.lastApplied());
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

  /** The Raft node under this server: membership administration (ClusterService) talks to it directly. */
  get raft(): RaftNode {
    return this.node;
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
      learners: [...status.learners],
      addresses: { ...status.addresses },
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
    this.diskWatch?.stop();
    await this.repairRun;
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
    if (this.fatalError !== null) throw this.stoppedError();
    if (this.closed || this.repairing !== null) return { err: "ErrWrongLeader", value: "" };
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
    const lowSpace = this.diskWatch?.writeRefusal();
    if (lowSpace) throw lowSpace;
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

const decoder = new TextDecoder();

function definedOnly<T extends object>(options: T): Partial<T> {
  return Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as Partial<T>;
}
