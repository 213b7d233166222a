// KVServer: one replica of the KV service. Validates commands, answers retried writes from the
// session table, proposes writes to Raft and waits for them to apply, serves Gets by ReadIndex.
import * as path from "node:path";
import {
  FileLogStore,
  NotLeaderError,
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
import { KVError } from "./errors.ts";
import { RESULT_NO_KEY, type ResultCode } from "./sessions.ts";
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
}

interface Waiter {
  index: number;
  term: number;
  clientId: bigint;
  commandId: bigint;
  timer: TimerHandle;
  resolve: (reply: CommandReply) => void;
}

const OPS = new Set<string>(["Get", "Put", "Append", "Delete"]);

export class KVServer {
  private readonly waiters = new Map<number, Waiter>();
  private pending = 0;
  private closed = false;
  private readonly maxKeyBytes: number;
  private readonly maxValueBytes: number;
  private readonly maxPending: number;
  private readonly timeoutMs: number;

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
      });
    } catch (error) {
      await machine.close();
      await owned?.close();
      throw error;
    }
    return new KVServer(options.id, node, machine, owned, clock, options.limits ?? {});
  }

  /** Executes one client command. Throws KVError for bad input or overload; all else is a reply. */
  async command(args: CommandArgs): Promise<CommandReply> {
    this.validate(args);
    if (this.closed) return { err: "ErrWrongLeader", value: "" };
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
    };
  }

  /**
   * This replica's applied value of `key`, without ReadIndex: possibly stale, never
   * linearizable. For diagnostics and tests that inspect one replica; clients use command().
   */
  readLocal(key: string): string | null {
    if (this.closed) throw new KVError("unavailable", `node ${this.id} is closed`);
    const value = this.machine.read(key);
    return value === null ? null : decoder.decode(value);
  }

  /** Stops Raft, answers every waiting command with ErrWrongLeader, closes storage. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const waiter of [...this.waiters.values()]) this.finish(waiter, { err: "ErrWrongLeader", value: "" });
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
    const keyBytes = Buffer.byteLength(args.key, "utf8");
    if (keyBytes > this.maxKeyBytes) {
      throw new KVError("invalid_argument", `the key is ${keyBytes} bytes; keys are limited to ${this.maxKeyBytes} bytes`);
    }
    if (typeof args.value !== "string") throw new KVError("invalid_argument", "the value must be a string");
    const valueBytes = Buffer.byteLength(args.value, "utf8");
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

  /** A linearizable read: confirm leadership for the current commit index, then read applied state. */
  private async get(key: string): Promise<CommandReply> {
    let confirmed: boolean;
    try {
      confirmed = await this.withTimeout(this.node.readIndex().then(() => true));
    } catch (error) {
      return this.rejection(error);
    }
    if (!confirmed) return { err: "ErrTimeout", value: "" };
    if (this.closed) return { err: "ErrWrongLeader", value: "" };
    const value = this.machine.read(key);
    return value === null ? { err: "ErrNoKey", value: "" } : { err: "OK", value: decoder.decode(value) };
  }

  private async write(args: CommandArgs): Promise<CommandReply> {
    const known = this.answerFromSession(args.clientId, args.commandId);
    if (known !== null) return known;
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
      if (previous !== undefined) this.finish(previous, { err: "ErrWrongLeader", value: "" });
      const waiter: Waiter = {
        index: proposed.index,
        term: proposed.term,
        clientId: args.clientId,
        commandId: args.commandId,
        resolve,
        timer: this.clock.setTimeout(() => this.finish(waiter, { err: "ErrTimeout", value: "" }), this.timeoutMs),
      };
      this.waiters.set(proposed.index, waiter);
      // Applied already (between the append and this continuation)? The session table knows.
      if (this.machine.lastApplied() >= proposed.index) this.finish(waiter, this.settledBySession(waiter));
    });
  }

  private onApplied(commands: AppliedCommand[]): void {
    if (this.waiters.size === 0) return;
    for (const applied of commands) {
      const waiter = this.waiters.get(applied.index);
      if (waiter === undefined) continue;
      // A different term at our index: the leader that took our proposal lost it.
      this.finish(waiter, applied.term === waiter.term ? { err: resultErr(applied.result), value: "" } : { err: "ErrWrongLeader", value: "" });
    }
  }

  private onRestored(meta: SnapshotMeta): void {
    for (const waiter of [...this.waiters.values()]) {
      if (waiter.index <= meta.index) this.finish(waiter, this.settledBySession(waiter));
    }
  }

  /** The outcome of a proposal whose entry was applied without us seeing it (snapshot, race). */
  private settledBySession(waiter: Waiter): CommandReply {
    return this.answerFromSession(waiter.clientId, waiter.commandId) ?? { err: "ErrWrongLeader", value: "" };
  }

  private answerFromSession(clientId: bigint, commandId: bigint): CommandReply | null {
    const session = this.machine.session(clientId);
    if (session === undefined || commandId > session.commandId) return null;
    return { err: commandId === session.commandId ? resultErr(session.result) : "OK", value: "" };
  }

  private finish(waiter: Waiter, reply: CommandReply): void {
    if (this.waiters.get(waiter.index) !== waiter) return;
    this.waiters.delete(waiter.index);
    this.clock.clearTimeout(waiter.timer);
    waiter.resolve(reply);
  }

  /** Maps the driver's refusals to replies (try another node, retry) or typed errors. */
  private rejection(error: unknown): CommandReply {
    if (error instanceof NotLeaderError) {
      return error.leaderId === NONE ? { err: "ErrWrongLeader", value: "" } : { err: "ErrWrongLeader", value: "", leaderId: error.leaderId };
    }
    if (error instanceof KVError) throw error;
    const code = (error as { code?: unknown })?.code;
    const message = (error as Error)?.message ?? String(error);
    switch (code) {
      case "STOPPED": // this node is going away: the client should try another one
        return { err: "ErrWrongLeader", value: "" };
      case "TIMEOUT": // ReadIndex not confirmed in time (lost quorum?)
        return { err: "ErrTimeout", value: "" };
      case "BACKPRESSURE":
        throw new KVError("resource_exhausted", `node ${this.id}: ${message}`, { cause: error });
      case "ENTRY_TOO_LARGE":
        throw new KVError("invalid_argument", `node ${this.id}: ${message}`, { cause: error });
      default:
        throw new KVError("unavailable", `node ${this.id} could not take the command: ${message}`, { cause: error });
    }
  }

  /** Resolves with the promise's value, or false when commandTimeoutMs passes first. */
  private withTimeout<T>(promise: Promise<T>): Promise<T | false> {
    return new Promise<T | false>((resolve, reject) => {
      const timer = this.clock.setTimeout(() => resolve(false), this.timeoutMs);
      promise.then(
        (value) => {
          this.clock.clearTimeout(timer);
          resolve(value);
        },
        (error) => {
          this.clock.clearTimeout(timer);
          reject(error);
        },
      );
    });
  }
}

const decoder = new TextDecoder();

function resultErr(result: ResultCode): KVErr {
  return result === RESULT_NO_KEY ? "ErrNoKey" : "OK";
}

function definedOnly<T extends object>(options: T): Partial<T> {
  return Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as Partial<T>;
}
