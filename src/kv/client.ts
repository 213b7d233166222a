// Clerk: the kvraft client for Bun, Node and browsers. Finds the leader, retries through leader
// changes and network faults with the same (clientId, commandId) so a write is applied once.
// No node-only imports: the caller supplies the Connect transport (connect-node or connect-web).

import { Code, ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
import { KVService, Op, type CommandResponse } from "../gen/kvraftpb/kvraft_pb.ts";

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
  /** Defaults to a random 63-bit id. */
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
      /** Storage conditions ("" when healthy): low disk space, recovering lost state, repair. */
      storageHealth: string;
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

/** A random id in [1, 2^63): fits int64 on the wire and is never the "no client" zero. */
function randomClientId(): bigint {
  const words = new Uint32Array(2);
  crypto.getRandomValues(words);
  const id = (BigInt(words[0]! & 0x7fffffff) << 32n) | BigInt(words[1]!);
  return id === 0n ? 1n : id;
}

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

export class Clerk {
  readonly clientId: bigint;
  private readonly addrs: string[];
  private readonly clients: Client<typeof KVService>[];
  private nextCommandId = 1n;
  private leader = 0;
  /** Operations of one Clerk run one at a time: the server's session keeps one reply per client. */
  private queue: Promise<unknown> = Promise.resolve();
  private readonly options: Required<Omit<ClerkOptions, "clientId" | "addrs" | "transport">>;

  constructor(options: ClerkOptions) {
    if (options.addrs.length === 0) throw new ClerkError(Code.InvalidArgument, "Clerk needs at least one node address");
    this.addrs = [...options.addrs];
    this.clients = this.addrs.map((address) => createClient(KVService, options.transport(toBaseUrl(address))));
    this.clientId = options.clientId ?? randomClientId();
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
            storageHealth: s.storageHealth,
          };
        } catch (error) {
          return { online: false, id, address, state: "Offline", error: ConnectError.from(error).message };
        }
      }),
    );
  }

  private command(op: Op, key: string, value: string): Promise<CommandResponse> {
    const run = this.queue.then(() => this.attempt(op, key, value));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async attempt(op: Op, key: string, value: string): Promise<CommandResponse> {
    // One commandId for every retry of this operation: the session table answers a repeat.
    const commandId = this.nextCommandId++;
    const request = { key, value, op, clientId: this.clientId, commandId };
    const size = utf8Length(key) + utf8Length(value);
    if (size > this.options.maxRequestBytes) {
      throw new ClerkError(Code.InvalidArgument, `key and value are ${size} bytes; requests are limited to ${this.options.maxRequestBytes}`);
    }
    const started = Date.now();
    const deadline = started + this.options.operationTimeoutMs;
    const n = this.clients.length;
    let backoff = this.options.backoffMs;
    /** Unsuccessful RPCs since the last pause: after a full round of them, back off. */
    let failedInRound = 0;
    let lastProblem = "no attempt made";
    for (let attempt = 1; attempt <= this.options.maxAttempts; attempt++) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) break;
      const node = this.leader;
      /**
       * "hinted": go to the node named as leader; "next": try the following node; "stay": the
       * node is the leader but busy, ask it again.
       */
      let retry: "hinted" | "next" | "stay";
      try {
        const response = await this.clients[node]!.command(request, {
          timeoutMs: Math.max(1, Math.min(this.options.callTimeoutMs, remaining)),
        });
        const outcome = REPLY_OUTCOMES.get(response.err);
        if (outcome === undefined) throw new ClerkError(Code.Internal, `node ${node} answered with unknown err "${response.err}"`);
        if (outcome === "done") return response;
        if (outcome === "wrong-leader") {
          const hint = response.leaderId === undefined ? -1 : Number(response.leaderId);
          lastProblem = `node ${node} is not the leader`;
          // Follow a hint at once; a stale hint (to a dead node) costs one RPC of the round.
          if (hint >= 0 && hint < n && hint !== node) {
            this.leader = hint;
            retry = "hinted";
          } else {
            retry = "next";
          }
        } else {
          lastProblem = `node ${node} timed out committing the command`;
          retry = "next";
        }
      } catch (error) {
        if (error instanceof ClerkError) throw error;
        const connectError = ConnectError.from(error);
        lastProblem = `node ${node} (${this.addrs[node]}): ${connectError.message}`;
        if (BACK_OFF_ON_SAME_NODE.has(connectError.code)) {
          // Backpressure (too many commands in flight): the request itself was checked above.
          retry = "stay";
        } else if (RETRYABLE.has(connectError.code)) {
          retry = "next";
        } else {
          throw new ClerkError(connectError.code, `node ${node} (${this.addrs[node]}) refused: ${connectError.rawMessage}`);
        }
      }
      if (retry === "next") this.leader = (node + 1) % n;
      // Back off once per round of n failures, not after each: one dead node costs one RPC, while
      // stale hints and a leaderless cluster cannot spin through the attempts.
      if (retry === "stay" || ++failedInRound >= n) {
        failedInRound = 0;
        const pause = Math.min(backoff * (0.5 + Math.random()), Math.max(0, deadline - Date.now()));
        await new Promise((resolve) => setTimeout(resolve, pause));
        backoff = Math.min(backoff * 2, this.options.maxBackoffMs);
      }
    }
    const name = Op[op] ?? String(op);
    throw new ClerkError(
      Code.DeadlineExceeded,
      `${name}(${JSON.stringify(key)}) gave up after ${Date.now() - started} ms: no node completed it ` +
        `(last: ${lastProblem}). A write may or may not have been applied.`,
      op !== Op.GET,
    );
  }
}
