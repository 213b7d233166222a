// Clerk: the kvraft client for Bun, Node and browsers. Registers a session, finds the leader, and
// retries through leader changes and network faults with the same (session, commandId) so a write
// is applied once. No node-only imports: the caller supplies the Connect transport.

import { Code, ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
import { KVService, Op, type CommandResponse, type RegisterSessionResponse } from "../gen/kvraftpb/kvraft_pb.ts";

export interface ClerkOptions {
  /** Every node's address, in node-id order: "localhost:5001" or "http://host:port". */
  addrs: readonly string[];
  /** Makes a Connect transport for one base URL (createConnectTransport from connect-node or -web). */
  transport: (baseUrl: string) => Transport;
  /** Deadline of one RPC to one node. */
  callTimeoutMs?: number;
  /** Total time one operation may take across all retries before it fails. */
  operationTimeoutMs?: number;
  /** Upper bound on RPCs per operation. */
  maxAttempts?: number;
  /** First backoff after a failed round; doubles up to maxBackoffMs. */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** Deadline of each node's answer in getStatus(). */
  statusTimeoutMs?: number;
  /**
   * Use this unregistered session id instead of registering one (eRaft's way: exactly-once only
   * within the server's window for unregistered clients). By default the Clerk registers.
   */
  clientId?: bigint;
  /**
   * Largest key + value this Clerk sends (default 4 MiB, the server's request limit): a bigger
   * one fails at once instead of being refused by every node in turn.
   */
  maxRequestBytes?: number;
}

/**
 * An operation failed. `code` is a Connect code: the one a node refused the request with (nothing
 * was applied), InvalidArgument for a request the Clerk refused itself, or DeadlineExceeded when
 * no node completed it in time. `outcomeUnknown` says a write may or may not have been applied.
 */
export class ClerkError extends Error {
  override readonly name = "ClerkError";
  constructor(
    readonly code: Code,
    message: string,
    readonly outcomeUnknown = false,
  ) {
    super(message);
  }
}

export type NodeStatus =
  | {
      online: true;
      id: number;
      address: string;
      /** Leader, Follower or Candidate. */
      state: string;
      term: bigint;
      lastApplied: bigint;
      commitIndex: bigint;
      storageSize: bigint;
      leaderId?: bigint;
      members: bigint[];
      snapshotIndex: bigint;
      keyCount: bigint;
    }
  | { online: false; id: number; address: string; state: "Offline"; error: string };

/** Connect codes that mean "this node could not answer now": try another node. */
const RETRYABLE = new Set<Code>([Code.Unavailable, Code.DeadlineExceeded, Code.Unknown, Code.Aborted, Code.Canceled, Code.Internal]);
/** Connect codes that mean "this node is busy": ask it again after a backoff. */
const BACK_OFF_ON_SAME_NODE = new Set<Code>([Code.ResourceExhausted]);

/** What each eRaft reply `err` means to the Clerk: the operation is done, or where to retry. */
const REPLY_OUTCOMES = new Map<string, "done" | "wrong-leader" | "timeout">([
  ["OK", "done"],
  ["ErrNoKey", "done"],
  ["ErrWrongLeader", "wrong-leader"],
  ["ErrTimeout", "timeout"],
]);

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

export function toBaseUrl(address: string): string {
  return /^https?:\/\//.test(address) ? address.replace(/\/+$/, "") : `http://${address}`;
}

/** What one RPC to one node came to: done, or where to try next. */
type Attempt<T> =
  | { done: T }
  | { retry: "next" | "stay"; problem: string }
  | { wrongLeader: bigint | undefined; problem: string };

function commandAttempt(response: CommandResponse, node: number): Attempt<CommandResponse> {
  return classify(response, node, "committing the command");
}

function registerAttempt(response: RegisterSessionResponse, node: number): Attempt<RegisterSessionResponse> {
  return classify(response, node, "registering the session");
}

/** An answer's `err` (eRaft's vocabulary): done, not the leader (maybe with a hint), or timed out. */
function classify<T extends { err: string; leaderId?: bigint }>(response: T, node: number, what: string): Attempt<T> {
  const outcome = REPLY_OUTCOMES.get(response.err);
  if (outcome === undefined) throw new ClerkError(Code.Internal, `node ${node} answered with unknown err "${response.err}"`);
  if (outcome === "done") return { done: response };
  if (outcome === "wrong-leader") return { wrongLeader: response.leaderId, problem: `node ${node} is not the leader` };
  return { retry: "next", problem: `node ${node} timed out ${what}` };
}

export class Clerk {
  private readonly addrs: string[];
  private readonly clients: Client<typeof KVService>[];
  /** The session id: registered (from RegisterSession) unless options.clientId was given; 0n until then. */
  private session: bigint;
  private readonly registered: boolean;
  private nextCommandId = 1n;
  private leader = 0;
  /** Operations of one Clerk run one at a time: the server's session keeps one reply per client. */
  private queue: Promise<unknown> = Promise.resolve();
  private readonly options: Required<Omit<ClerkOptions, "clientId" | "addrs" | "transport">>;

  constructor(options: ClerkOptions) {
    if (options.addrs.length === 0) throw new ClerkError(Code.InvalidArgument, "Clerk needs at least one node address");
    this.addrs = [...options.addrs];
    this.clients = this.addrs.map((address) => createClient(KVService, options.transport(toBaseUrl(address))));
    this.registered = options.clientId === undefined;
    this.session = options.clientId ?? 0n;
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

  /** The session id writes carry (0n before the Clerk's first write registered one). */
  get clientId(): bigint {
    return this.session;
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

  /** Every node's status, asked concurrently; unreachable nodes are "Offline". Never throws. */
  async getStatus(): Promise<NodeStatus[]> {
    return Promise.all(
      this.clients.map(async (client, id): Promise<NodeStatus> => {
        const address = this.addrs[id]!;
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
            leaderId: s.leaderId,
            members: s.members,
            snapshotIndex: s.snapshotIndex,
            keyCount: s.keyCount,
          };
        } catch (error) {
          return { online: false, id, address, state: "Offline", error: ConnectError.from(error).message };
        }
      }),
    );
  }

  private command(op: Op, key: string, value: string): Promise<CommandResponse> {
    const run = this.queue.then(() => this.operation(op, key, value));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async operation(op: Op, key: string, value: string, deadline = Date.now() + this.options.operationTimeoutMs): Promise<CommandResponse> {
    const size = utf8Length(key) + utf8Length(value);
    if (size > this.options.maxRequestBytes) {
      throw new ClerkError(Code.InvalidArgument, `key and value are ${size} bytes; requests are limited to ${this.options.maxRequestBytes}`);
    }
    const name = `${Op[op] ?? String(op)}(${JSON.stringify(key)})`;
    const write = op !== Op.GET;
    if (write && this.registered && this.session === 0n) await this.register(name, deadline);
    // One commandId for every retry of this operation: the session table answers a repeat.
    const commandId = this.nextCommandId++;
    let sent = 0;
    try {
      return await this.retrying(name, deadline, write, (client, timeoutMs) => {
        sent++;
        const request = { key, value, op, clientId: this.session, commandId, registered: this.registered && this.session !== 0n };
        return client.command(request, { timeoutMs }).then((response) => commandAttempt(response, this.leader));
      });
    } catch (error) {
      if (!(error instanceof SessionGone)) throw error;
      // The session expired (idle longer than the server's TTL). Register again for what follows.
      this.session = 0n;
      if (sent > 1) {
        // An earlier attempt of this write may have been applied before the session went.
        throw new ClerkError(
          Code.FailedPrecondition,
          `${name}: the session expired while the write was being retried; it may or may not have been applied (${error.message})`,
          true,
        );
      }
      // Refused on its first attempt: certainly not applied. Run it again under a new session,
      // within the same deadline.
      return this.operation(op, key, value, deadline);
    }
  }

  /** Asks the leader for a session id (RegisterSession), with the same retries as a command. */
  private async register(name: string, deadline: number): Promise<void> {
    const response = await this.retrying(`${name}: RegisterSession`, deadline, false, (client, timeoutMs) =>
      client.registerSession({}, { timeoutMs }).then((response) => registerAttempt(response, this.leader)),
    );
    this.session = response.clientId;
    this.nextCommandId = 1n;
  }

  /**
   * Runs `rpc` against the node believed to lead, following leader hints, trying the next node
   * after a failure and backing off once per round of failures, until it is done, refused, out
   * of attempts or past `deadline`.
   */
  private async retrying<T>(
    name: string,
    deadline: number,
    write: boolean,
    rpc: (client: Client<typeof KVService>, timeoutMs: number) => Promise<Attempt<T>>,
  ): Promise<T> {
    const started = Date.now();
    const n = this.clients.length;
    let backoff = this.options.backoffMs;
    /** Unsuccessful RPCs since the last pause: after a full round of them, back off. */
    let failedInRound = 0;
    let lastProblem = "no attempt made";
    for (let attempt = 1; attempt <= this.options.maxAttempts; attempt++) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) break;
      const node = this.leader;
      let outcome: Attempt<T>;
      try {
        outcome = await rpc(this.clients[node]!, Math.max(1, Math.min(this.options.callTimeoutMs, remaining)));
      } catch (error) {
        if (error instanceof ClerkError) throw error;
        const connectError = ConnectError.from(error);
        if (SESSION_GONE.has(connectError.code)) throw new SessionGone(connectError.rawMessage);
        const problem = `node ${node} (${this.addrs[node]}): ${connectError.message}`;
        // Backpressure (too many commands in flight, a full session table): ask the same node again.
        if (BACK_OFF_ON_SAME_NODE.has(connectError.code)) outcome = { retry: "stay", problem };
        else if (RETRYABLE.has(connectError.code)) outcome = { retry: "next", problem };
        else throw new ClerkError(connectError.code, `node ${node} (${this.addrs[node]}) refused: ${connectError.rawMessage}`);
      }
      if ("done" in outcome) return outcome.done;
      lastProblem = outcome.problem;
      // Follow a leader hint at once (a stale hint, to a dead node, costs one RPC of the round);
      // without one, try the next node.
      const stay = "retry" in outcome && outcome.retry === "stay";
      if (!stay && !("wrongLeader" in outcome && this.follow(outcome.wrongLeader, node))) this.leader = (node + 1) % n;
      // Back off once per round of n failures, not after each: one dead node costs one RPC, while
      // stale hints and a leaderless cluster cannot spin through the attempts.
      if (stay || ++failedInRound >= n) {
        failedInRound = 0;
        const pause = Math.min(backoff * (0.5 + Math.random()), Math.max(0, deadline - Date.now()));
        await new Promise((resolve) => setTimeout(resolve, pause));
        backoff = Math.min(backoff * 2, this.options.maxBackoffMs);
      }
    }
    throw new ClerkError(
      Code.DeadlineExceeded,
      `${name} gave up after ${Date.now() - started} ms: no node completed it (last: ${lastProblem}).` +
        (write ? " A write may or may not have been applied." : ""),
      write,
    );
  }

  /** Where the leader hint of a refusal points, if anywhere new: moves `leader` there. */
  private follow(hint: bigint | undefined, node: number): boolean {
    const target = hint === undefined ? -1 : Number(hint);
    if (target < 0 || target >= this.clients.length || target === node) return false;
    this.leader = target;
    return true;
  }
}

/** A registered session that the server no longer has (failed_precondition): internal to the Clerk. */
class SessionGone extends Error {}

/** Connect codes that mean "your session is gone": register again. */
const SESSION_GONE = new Set<Code>([Code.FailedPrecondition]);
