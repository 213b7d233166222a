// Clerk: the kvraft client for Bun, Node and browsers. Registers sessions, finds the leader, and
// retries through leader changes and network faults with the same (session, commandId) so a write
// is applied once. Concurrent operations each take a session of their own and are coalesced into
// Batch RPCs (clerk-batch.ts). No node-only imports: the caller supplies the Connect transport.

import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { KVService, Op, type CommandResponse, type ResponseHeader, type TxnResponse } from "../gen/kvraftpb/kvraft_pb.ts";
import {
  casAnswer,
  casRequest,
  deleteAnswer,
  deleteRequest,
  rangeAnswer,
  rangeRequest,
  scanPages,
  type CasAnswer,
  type ClerkKV,
  type ClerkTxnRequest,
  type DeleteAnswer,
  type RangeAnswer,
  type RangeOptions,
} from "./clerk-txn.ts";
import { clerkWatch, type WatchBatch, type WatchOptions } from "./clerk-watch.ts";
import { ClerkNodes } from "./clerk-nodes.ts";
import { bulkBatches, runBulk, runEach, type BulkHost } from "./clerk-bulk.ts";
import type { BulkOptions, ClerkOptions, NodeStatus } from "./clerk-options.ts";
import {
  BACK_OFF_ON_SAME_NODE,
  BulkWriteError,
  ClerkError,
  RETRYABLE,
  SESSION_GONE,
  SessionGone,
  commandAttempt,
  describe,
  headerAttempt,
  leaderOf,
  registerAttempt,
  retryHint,
  type Attempt,
} from "./clerk-outcomes.ts";

export type { BulkOptions, ClerkOptions, NodeStatus } from "./clerk-options.ts";
export { BulkWriteError, ClerkError, RETRYABLE } from "./clerk-outcomes.ts";

/** RegisterSession calls one Clerk has in flight at most. */
const MAX_CONCURRENT_REGISTRATIONS = 32;

/** Operations waiting for a free session, at most: a bound on what a runaway caller can queue. */
const MAX_WAITING_OPERATIONS = 1_000_000;

/** Bytes of `text` in UTF-8, counted without encoding it. */
function utf8Length(text: string): number {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit < 0x80) bytes += 1;
    else if (unit < 0x800) bytes += 2;
    else if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length) {
      bytes += 4; // a surrogate pair is one 4-byte code point
      i++;
    } else bytes += 3;
  }
  return bytes;
}

export { toBaseUrl } from "./clerk-nodes.ts";

/** One server session: its id (0n until registered) and the next commandId it will use. */
interface Session {
  id: bigint;
  nextCommandId: bigint;
}

export class Clerk {
  /** The nodes by id (clerk-nodes.ts): seeded from `addrs`, then the configuration's members. */
  private readonly nodes: ClerkNodes;
  /** Writes per Batch RPC of putMany / appendMany. */
  private readonly bulkBatchCommands: number;
  /** Sessions no operation uses now; registered ones on top, to be reused first. */
  private readonly idle: Session[] = [];
  /** Sessions in existence (idle or in use). */
  private sessions = 0;
  /** Operations waiting for a session (FIFO from waitingHead). */
  private readonly waiting: ((session: Session) => void)[] = [];
  private waitingHead = 0;
  private readonly maxConcurrency: number;
  private readonly registered: boolean;
  /** The session of the most recent write (what clientId reports). */
  private last: Session;
  private leader = 0;
  /** RegisterSession calls in flight, and the operations waiting to start one. */
  private registering = 0;
  private readonly registrationQueue: (() => void)[] = [];
  /** A registration succeeded: `leader` has pointed at a leader once, so the rest need not search for it. */
  private leaderFound = false;
  private readonly options: Required<Omit<ClerkOptions, "clientId" | "addrs" | "transport" | "maxConcurrency" | "batch">>;

  constructor(options: ClerkOptions) {
    if (options.addrs.length === 0) throw new ClerkError(Code.InvalidArgument, "Clerk needs at least one node address");
    this.registered = options.clientId === undefined;
    // An unregistered id (eRaft's way) is one session: its operations must run one at a time.
    this.maxConcurrency = this.registered ? Math.max(1, Math.floor(options.maxConcurrency ?? 256)) : 1;
    const batch = options.batch ?? {};
    this.nodes = new ClerkNodes(options.addrs, options.transport, batch === false || this.maxConcurrency === 1 ? null : batch);
    this.bulkBatchCommands = batch === false ? 1 : Math.max(1, Math.min(4096, batch.maxCommands ?? 1024));
    this.last = { id: options.clientId ?? 0n, nextCommandId: 1n };
    this.idle.push(this.last);
    this.sessions = 1;
    this.options = {
      callTimeoutMs: options.callTimeoutMs ?? 2_000,
      operationTimeoutMs: options.operationTimeoutMs ?? 15_000,
      maxAttempts: options.maxAttempts ?? 200,
      backoffMs: options.backoffMs ?? 25,
      maxBackoffMs: options.maxBackoffMs ?? 400,
      statusTimeoutMs: options.statusTimeoutMs ?? 1_000,
      maxRequestBytes: options.maxRequestBytes ?? 4 * 1024 * 1024,
    };
  }

  /** The session id the latest write carried (0n before the Clerk's first write registered one). */
  get clientId(): bigint {
    return this.last.id;
  }

  /** The value of `key`, or null when the key does not exist. */
  async get(key: string): Promise<string | null> {
    const response = await this.command(Op.GET, key, "");
    return response.err === "ErrNoKey" ? null : response.value;
  }

  async put(key: string, value: string): Promise<void> {
    await this.command(Op.PUT, key, value);
  }

  async append(key: string, value: string): Promise<void> {
    await this.command(Op.APPEND, key, value);
  }

  /** Removes `key`; true when it existed. */
  async delete(key: string): Promise<boolean> {
    return (await this.command(Op.DELETE, key, "")).err === "OK";
  }

  /**
   * Bulk load: writes every pair, at most `concurrency` at once (default: this Clerk's
   * maxConcurrency), each exactly once through a session of its own. Concurrent writes leave as
   * Batch RPCs (clerk-batch.ts), which the leader puts into its log as a few batch entries.
   * Resolves with the number written. On the first failure it takes no more pairs, waits for the
   * writes in flight, and rejects with that failure (a BulkWriteError: how many were written).
   */
  putMany(pairs: Iterable<readonly [string, string]>, options?: BulkOptions): Promise<number> {
    return this.writeMany(Op.PUT, pairs, options);
  }

  /** appendMany: as putMany, with Append (each suffix appended exactly once). */
  appendMany(pairs: Iterable<readonly [string, string]>, options?: BulkOptions): Promise<number> {
    return this.writeMany(Op.APPEND, pairs, options);
  }

  private async writeMany(op: Op.PUT | Op.APPEND, pairs: Iterable<readonly [string, string]>, options: BulkOptions = {}): Promise<number> {
    const concurrency = Math.max(1, Math.min(Math.floor(options.concurrency ?? this.maxConcurrency), this.maxConcurrency));
    const source = pairs[Symbol.iterator]();
    if (this.registered && this.nodes.batchers !== null) {
      // The lean path: pairs straight into Batch RPCs (clerk-bulk.ts).
      const { written, failure } = await runBulk(this.bulkHost(), { op, concurrency, batchCommands: this.bulkBatchCommands, maxRpcs: bulkBatches(concurrency, this.bulkBatchCommands, options.batches), onWritten: options.onWritten }, source);
      if (failure !== null) throw new BulkWriteError(written, failure);
      return written;
    }
    // Unregistered or unbatched: each write through put()'s path, `concurrency` at a time.
    const { written, failure } = await runEach(source, concurrency, (key, value) => this.command(op, key, value), options.onWritten);
    if (failure !== null) throw new BulkWriteError(written, failure);
    return written;
  }

  /** This Clerk as the bulk writer sees it: its nodes, its leader guess, its session pool. */
  private bulkHost(): BulkHost {
    const clerk = this;
    // The nodes known now, in slots (ids[slot] is the node id: they differ once members were learned).
    const ids = this.nodes.ids;
    return {
      ids,
      clients: ids.map((id) => this.nodes.clients[id]!),
      addrs: ids.map((id) => this.nodes.addrs[id]!),
      get leader() {
        return Math.max(0, ids.indexOf(clerk.leader));
      },
      set leader(slot: number) {
        clerk.leader = ids[slot] ?? ids[0]!;
      },
      acquire: async (deadline) => {
        const session = this.idle.pop() ?? (await this.newOrWaitingSession());
        try {
          if (session.id === 0n) await this.register(session, "bulk write", deadline);
        } catch (error) {
          this.release(session);
          throw error;
        }
        this.last = session;
        return session;
      },
      release: (session) => this.release(session),
      reregister: (session, deadline) => this.register(session, "bulk write", deadline),
      registered: this.registered,
      callTimeoutMs: this.options.callTimeoutMs,
      operationTimeoutMs: this.options.operationTimeoutMs,
      backoffMs: this.options.backoffMs,
      maxBackoffMs: this.options.maxBackoffMs,
      maxRequestBytes: this.options.maxRequestBytes,
    };
  }

  /** Keys in [key, end) with their revisions ("\0" as end: every key >= key); see clerk-txn.ts. */
  range(key: string, end: string | Uint8Array, options?: RangeOptions): Promise<RangeAnswer> {
    const request = rangeRequest(key, end, options);
    const deadline = Date.now() + this.options.operationTimeoutMs;
    return this.retrying(`Range(${JSON.stringify(key)})`, deadline, false, (client, timeoutMs) =>
      client.range(request, { timeoutMs }).then((response) => headerAttempt(response, this.leader)),
    ).then(rangeAnswer);
  }

  /** Every key that starts with `prefix`, read page by page. */
  scan(prefix: string, options?: RangeOptions & { maxKeys?: number }): Promise<ClerkKV[]> {
    return scanPages((key, end, pageOptions) => this.range(key, end, pageOptions), prefix, options);
  }

  /** Deletes the keys in [key, end) ("" as end: just key) in one write, once; returns how many existed. */
  deleteRange(key: string, end: string | Uint8Array, prevKv = false): Promise<DeleteAnswer> {
    const request = deleteRequest(key, end, prevKv);
    return this.sessionWrite(`DeleteRange(${JSON.stringify(key)})`, (ids, client, timeoutMs) => client.deleteRange({ ...request, ...ids }, { timeoutMs })).then(deleteAnswer);
  }

  /** An etcd-style Txn (compares, success operations, failure operations), applied once. */
  txn(request: ClerkTxnRequest): Promise<TxnResponse> {
    return this.sessionWrite("Txn", (ids, client, timeoutMs) => client.txn({ ...request, ...ids }, { timeoutMs }));
  }

  /** Compare-and-swap: sets `key` to `value` if its value is `expect` (null: if it is absent). */
  cas(key: string, expect: string | null, value: string): Promise<CasAnswer> {
    return this.txn(casRequest(key, expect, value)).then(casAnswer);
  }

  /**
   * Changes of `key` (or a range / prefix) as batches of whole revisions, from any node, resumed
   * on another node after a failure without gap or repeat, until `options.signal` aborts.
   */
  watch(key: string, options?: WatchOptions): AsyncGenerator<WatchBatch> {
    // Its own node index: a watch moving between nodes does not move the writes' leader.
    const ids = this.nodes.ids;
    return clerkWatch(
      { ids, clients: ids.map((id) => this.nodes.clients[id]!), addrs: ids.map((id) => this.nodes.addrs[id]!), leader: Math.max(0, ids.indexOf(this.leader)), ...this.options },
      key,
      options,
    );
  }

  /** A write carried by a session like Command's writes: once, on a session no other operation uses now. */
  private async sessionWrite<T extends { header?: ResponseHeader }>(
    name: string,
    send: (ids: { clientId: bigint; commandId: bigint; registered: boolean }, client: Client<typeof KVService>, timeoutMs: number) => Promise<T>,
  ): Promise<T> {
    const session = this.idle.pop() ?? (await this.newOrWaitingSession());
    try {
      return await this.sessionOperation(session, name, send);
    } finally {
      this.release(session);
    }
  }

  private async sessionOperation<T extends { header?: ResponseHeader }>(
    session: Session,
    name: string,
    send: (ids: { clientId: bigint; commandId: bigint; registered: boolean }, client: Client<typeof KVService>, timeoutMs: number) => Promise<T>,
  ): Promise<T> {
    const deadline = Date.now() + this.options.operationTimeoutMs;
    if (this.registered && session.id === 0n) await this.register(session, name, deadline);
    this.last = session;
    const commandId = session.nextCommandId++;
    let sent = 0;
    const ids = { clientId: session.id, commandId, registered: this.registered && session.id !== 0n };
    try {
      return await this.retrying(
        name,
        deadline,
        true,
        (client, timeoutMs, node) => {
          sent++;
          return send(ids, client, timeoutMs).then((response) => headerAttempt(response, node));
        },
        ids.registered,
      );
    } catch (error) {
      if (!(error instanceof SessionGone)) throw error;
      session.id = 0n;
      if (sent > 1) {
        throw new ClerkError(Code.FailedPrecondition, `${name}: the session expired while the write was being retried; it may or may not have been applied (${error.message})`, true);
      }
      return this.sessionOperation(session, name, send);
    }
  }

  /** Every node's status, asked concurrently; unreachable nodes are "Offline". Never throws. */
  async getStatus(): Promise<NodeStatus[]> {
    return Promise.all(
      this.nodes.ids.map(async (id): Promise<NodeStatus> => {
        const client = this.nodes.clients[id]!;
        const address = this.nodes.addrs[id]!;
        try {
          const s = await client.getStatus({}, { timeoutMs: this.options.statusTimeoutMs });
          return {
            online: true,
            id,
            address,
            state: s.state,
            term: s.term,
            lastApplied: s.lastApplied,
            commitIndex: s.commitIndex,
            storageSize: s.storageSize,
            leaderId: leaderOf(s),
            members: s.members,
            snapshotIndex: s.snapshotIndex,
            keyCount: s.keyCount,
            storageHealth: s.storageHealth,
          };
        } catch (error) {
          return { online: false, id, address, state: "Offline", error: ConnectError.from(error).message };
        }
      }),
    );
  }

  private async command(op: Op, key: string, value: string): Promise<CommandResponse> {
    // Measured without encoding only when it could matter: a short string cannot pass the limit.
    if ((key.length + value.length) * 3 > this.options.maxRequestBytes) {
      const size = utf8Length(key) + utf8Length(value);
      if (size > this.options.maxRequestBytes) {
        throw new ClerkError(Code.InvalidArgument, `key and value are ${size} bytes; requests are limited to ${this.options.maxRequestBytes}`);
      }
    }
    const session = this.idle.pop() ?? (await this.newOrWaitingSession());
    try {
      return await this.operation(session, op, key, value);
    } finally {
      this.release(session);
    }
  }

  private newOrWaitingSession(): Promise<Session> | Session {
    if (this.sessions < this.maxConcurrency) {
      this.sessions++;
      return { id: 0n, nextCommandId: 1n };
    }
    if (this.waiting.length - this.waitingHead >= MAX_WAITING_OPERATIONS) {
      throw new ClerkError(Code.ResourceExhausted, `${MAX_WAITING_OPERATIONS} operations are already waiting on this Clerk; await some first`);
    }
    return new Promise<Session>((resolve) => this.waiting.push(resolve));
  }

  /** Hands the session to the next waiting operation, or back to the idle pool. */
  private release(session: Session): void {
    if (this.waitingHead < this.waiting.length) {
      const next = this.waiting[this.waitingHead++]!;
      if (this.waitingHead > 1024 && this.waitingHead * 2 > this.waiting.length) {
        this.waiting.splice(0, this.waitingHead);
        this.waitingHead = 0;
      }
      next(session);
      return;
    }
    // Registered sessions go on top: the next operation reuses one instead of registering.
    if (session.id !== 0n || this.idle.length === 0) this.idle.push(session);
    else this.idle.unshift(session);
  }

  private async operation(session: Session, op: Op, key: string, value: string, deadline = Date.now() + this.options.operationTimeoutMs): Promise<CommandResponse> {
    const write = op !== Op.GET;
    if (write && this.registered && session.id === 0n) await this.register(session, () => describe(op, key), deadline);
    if (write) this.last = session;
    // One commandId for every retry of this operation: the session table answers a repeat.
    const commandId = session.nextCommandId++;
    const request = { key, value, op, clientId: session.id, commandId, registered: this.registered && session.id !== 0n };
    let sent = 0;
    try {
      return await this.retrying(() => describe(op, key), deadline, write, (client, timeoutMs, node) => {
        sent++;
        const answer = this.nodes.batchers === null ? client.command(request, { timeoutMs }) : this.nodes.batchers[node]!.command(request, timeoutMs);
        return answer.then((response) => commandAttempt(response, node));
      }, request.registered);
    } catch (error) {
      if (!(error instanceof SessionGone)) throw error;
      // The session expired (idle longer than the server's TTL). Register again for what follows.
      session.id = 0n;
      if (sent > 1) {
        // An earlier attempt of this write may have been applied before the session went.
        throw new ClerkError(
          Code.FailedPrecondition,
          `${describe(op, key)}: the session expired while the write was being retried; it may or may not have been applied (${error.message})`,
          true,
        );
      }
      // Refused on its first attempt: certainly not applied. Run it again under a new session,
      // within the same deadline.
      return this.operation(session, op, key, value, deadline);
    }
  }

  /** Asks the leader for a session id (RegisterSession), with the same retries as a command. */
  /**
   * Registrations at once: one until the first finds the leader (a burst of first writes would
   * otherwise each ask a follower first), then MAX_CONCURRENT_REGISTRATIONS.
   */
  private registrationLimit(): number {
    return this.leaderFound ? MAX_CONCURRENT_REGISTRATIONS : 1;
  }

  private async register(session: Session, name: string | (() => string), deadline: number): Promise<void> {
    // A burst of new sessions (thousands of concurrent first writes) registers a few at a time:
    // each is a Raft entry, and a flood of them would only time out in the streams' queue.
    while (this.registering >= this.registrationLimit()) await new Promise<void>((resolve) => this.registrationQueue.push(resolve));
    this.registering++;
    try {
      const what = () => `${typeof name === "string" ? name : name()}: RegisterSession`;
      const response = await this.retrying(what, deadline, false, (client, timeoutMs, node) =>
        client.registerSession({}, { timeoutMs }).then((response) => registerAttempt(response, node)),
      );
      session.id = response.clientId;
      session.nextCommandId = 1n;
      this.leaderFound = true;
    } finally {
      this.registering--;
      for (let free = this.registrationLimit() - this.registering; free > 0 && this.registrationQueue.length > 0; free--) this.registrationQueue.shift()!();
    }
  }

  /**
   * Runs `rpc` against the node believed to lead, following leader hints, trying the next node
   * after a failure and backing off once per round of failures, until it is done, refused, out
   * of attempts or past `deadline`.
   */
  private async retrying<T>(
    name: string | (() => string),
    deadline: number,
    write: boolean,
    rpc: (client: Client<typeof KVService>, timeoutMs: number, node: number) => Promise<Attempt<T>>,
    /** The request names a registered session: failed_precondition then means it expired. */
    sessionBound = false,
  ): Promise<T> {
    const started = Date.now();
    let backoff = this.options.backoffMs;
    /** Unsuccessful RPCs since the last pause: after a full round of them, back off. */
    let failedInRound = 0;
    let lastProblem = "no attempt made";
    for (let attempt = 1; attempt <= this.options.maxAttempts; attempt++) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) break;
      if (!this.nodes.has(this.leader)) this.leader = this.nodes.ids[0]!;
      const node = this.leader;
      let outcome: Attempt<T>;
      try {
        outcome = await rpc(this.nodes.clients[node]!, remaining < this.options.callTimeoutMs ? Math.max(1, remaining) : this.options.callTimeoutMs, node);
      } catch (error) {
        if (error instanceof ClerkError) throw error;
        const connectError = ConnectError.from(error);
        // Without a registered session failed_precondition is a plain refusal (e.g. "this port
        // speaks TLS only"): registering again would only loop until the deadline.
        if (sessionBound && SESSION_GONE.has(connectError.code)) throw new SessionGone(connectError.rawMessage);
        const problem = `node ${node} (${this.nodes.addrs[node]}): ${connectError.message}`;
        // Backpressure (too many commands in flight, a full session table): ask the same node again.
        if (BACK_OFF_ON_SAME_NODE.has(connectError.code)) outcome = { retry: "stay", problem, retryAfterMs: retryHint(connectError) };
        else if (RETRYABLE.has(connectError.code)) outcome = { retry: "next", problem };
        else throw new ClerkError(connectError.code, `node ${node} (${this.nodes.addrs[node]}) refused: ${connectError.rawMessage}`);
      }
      if ("done" in outcome) return outcome.done;
      lastProblem = outcome.problem;
      // Follow a leader hint at once (a stale hint, to a dead node, costs one RPC of the round);
      // without one, try the next node.
      const stay = "retry" in outcome && outcome.retry === "stay";
      if (!stay && "wrongLeader" in outcome && this.nodes.unknown(outcome.wrongLeader)) await this.nodes.learn([node], this.options.statusTimeoutMs);
      if (!stay && !("wrongLeader" in outcome && this.follow(outcome.wrongLeader, node))) this.leader = this.nodes.after(node);
      // Back off once per round of n failures, not after each: one dead node costs one RPC, while
      // stale hints and a leaderless cluster cannot spin through the attempts.
      if (stay || ++failedInRound >= this.nodes.ids.length) {
        failedInRound = 0;
        // A whole round failed: the members may have moved (new ids, new ports); ask who they are.
        if (!stay && Date.now() - this.nodes.learnedAt >= this.options.backoffMs * 8) await this.nodes.learn(this.nodes.ids, this.options.statusTimeoutMs);
        // An overloaded node's hint first (jittered upward, so refused callers do not return in
        // step); without one, the Clerk's own exponential backoff.
        const hint = "retryAfterMs" in outcome ? outcome.retryAfterMs : undefined;
        const wait = hint !== undefined ? hint * (1 + Math.random()) : backoff * (0.5 + Math.random());
        const pause = Math.min(wait, Math.max(0, deadline - Date.now()));
        await new Promise((resolve) => setTimeout(resolve, pause));
        backoff = Math.min(backoff * 2, this.options.maxBackoffMs);
      }
    }
    throw new ClerkError(
      Code.DeadlineExceeded,
      `${typeof name === "string" ? name : name()} gave up after ${Date.now() - started} ms: no node completed it (last: ${lastProblem}).` +
        (write ? " A write may or may not have been applied." : ""),
      write,
    );
  }

  /** Where the leader hint of a refusal points, if anywhere new: moves `leader` there. */
  private follow(hint: bigint | undefined, node: number): boolean {
    const target = hint === undefined ? -1 : Number(hint);
    if (target < 0 || !this.nodes.has(target) || target === node) return false;
    this.leader = target;
    return true;
  }
}
