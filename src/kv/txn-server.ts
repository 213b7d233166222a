// Range, DeleteRange and Txn on one replica: a Range reads the applied state after a ReadIndex round
// (or locally when serializable); a Txn is validated, answered from its session when it is a
// retry, else proposed as one log entry whose applied result answers it (as Command's writes).
import type { NodeId, RaftNode } from "../raft/index.ts";
import { InvalidArgumentError, OutcomeUnknownError, OverloadedError } from "./errors.ts";
import type { PendingWrites } from "./pending-writes.ts";
import { checkRangeSpec, scanRange, type RangeResult, type RangeSpec } from "./range.ts";
import type { ReadBatcher } from "./reads.ts";
import { OK, WRONG_LEADER, refusal, type CommandReply, type KVErr } from "./replies.ts";
import { decodeResponse, responseKey } from "./session-responses.ts";
import type { KVStateMachine } from "./state-machine.ts";
import { txnLimits, validateTxn, type TxnLimits } from "./txn.ts";
import { encodeTxnCommand, type TxnRequest, type TxnResult } from "./txn-types.ts";

/** What every answer carries (etcd's ResponseHeader, plus eRaft's err and leader hint). */
export interface ReplyHeader {
  revision: number;
  memberId: NodeId;
  raftTerm: number;
  err: KVErr;
  leaderId?: number;
}

export interface RangeReply {
  header: ReplyHeader;
  /** Present when header.err is OK. */
  result?: RangeResult;
}

export interface TxnReply {
  header: ReplyHeader;
  /** Present when header.err is OK. */
  result?: TxnResult;
}

export interface TxnServerParts {
  id: NodeId;
  node: RaftNode;
  machine: KVStateMachine;
  writes: PendingWrites;
  reads: ReadBatcher;
  maxKeyBytes: number;
  maxValueBytes: number;
  /** Range / Txn calls in flight on this node before new ones get resource_exhausted. */
  maxPending: number;
  limits?: TxnLimits;
  closed: () => boolean;
}

export class TxnServer {
  private pending = 0;
  readonly limits: ReturnType<typeof txnLimits>;
  /** Tags untracked Txns (client 0) so their waiters match only their own entry. */
  private untracked = 0n;

  constructor(private readonly parts: TxnServerParts) {
    this.limits = txnLimits(parts.limits);
    this.untracked = BigInt(Math.floor(Math.random() * 2 ** 40)) << 20n;
  }

  async range(spec: RangeSpec, serializable: boolean): Promise<RangeReply> {
    if (spec.key.length > this.parts.maxKeyBytes || spec.rangeEnd.length > this.parts.maxKeyBytes + 1) {
      throw new InvalidArgumentError(`the range's key is longer than the ${this.parts.maxKeyBytes}-byte key limit`);
    }
    checkRangeSpec(spec, this.limits);
    return this.admit(async () => {
      const { machine } = this.parts;
      const read = (): RangeReply => ({
        header: this.header(machine.lastApplied(), "OK"),
        result: scanRange(machine.store, spec, { bytes: this.limits.maxRangeBytes }),
      });
      if (this.parts.closed()) return { header: this.header(0, "ErrWrongLeader") };
      if (serializable) return read();
      let answer: RangeReply | null = null;
      const reply = await this.parts.reads.get("", () => {
        answer = read();
        return OK;
      });
      if (answer !== null && reply.err === "OK") return answer;
      return { header: this.header(machine.lastApplied(), reply.err, reply.leaderId) };
    });
  }

  /** A Txn (a DeleteRange is one). clientId 0: no session, no exactly-once across retries. */
  async txn(request: TxnRequest, clientId: bigint, commandId: bigint): Promise<TxnReply> {
    validateTxn(request, this.limits, this.parts.maxKeyBytes, this.parts.maxValueBytes);
    if (typeof clientId !== "bigint" || typeof commandId !== "bigint") throw new InvalidArgumentError("client_id and command_id must be 64-bit integers");
    if (clientId !== 0n && commandId <= 0n) throw new InvalidArgumentError(`command_id ${commandId} must be positive with a client_id`);
    return this.admit(async () => {
      const { machine, writes, node, id } = this.parts;
      if (this.parts.closed()) return { header: this.header(0, "ErrWrongLeader") };
      if (clientId === 0n) commandId = ++this.untracked;
      else {
        const known = this.answered(clientId, commandId);
        if (known !== null) return { header: this.header(known.revision, "OK"), result: known };
      }
      const data = encodeTxnCommand(clientId, commandId, request);
      const { waiter, reply } = writes.open(clientId, commandId);
      try {
        const { index, term } = await node.propose(data);
        writes.place(waiter, index, term);
      } catch (error) {
        let refused: CommandReply;
        try {
          refused = refusal(error, id);
        } catch (typed) {
          writes.answer(waiter, WRONG_LEADER);
          throw typed;
        }
        writes.answer(waiter, refused);
      }
      const answer = await reply;
      if (answer.err !== "OK") return { header: this.header(machine.lastApplied(), answer.err, answer.leaderId) };
      const result = answer.txn ?? (clientId === 0n ? null : this.answered(clientId, commandId));
      if (result === null || result === undefined) {
        throw new OutcomeUnknownError(`Txn ${commandId} of client ${clientId} was applied earlier, but its answer is no longer kept (a newer command replaced it); read the keys to learn the outcome`);
      }
      if (result.error !== undefined) throw new InvalidArgumentError(result.error);
      return { header: this.header(result.revision, "OK"), result };
    });
  }

  /** The answer of a Txn its session shows as applied, or null when it is new. */
  private answered(clientId: bigint, commandId: bigint): TxnResult | null {
    const session = this.parts.machine.session(clientId);
    if (session === undefined || commandId > session.commandId) return null;
    const record = this.parts.machine.store.getSync(responseKey(clientId));
    const known = record === undefined ? null : decodeResponse(record);
    if (known === null || known.commandId !== commandId) {
      throw new OutcomeUnknownError(`Txn ${commandId} of client ${clientId} was applied earlier, but its answer is no longer kept (the session moved on to command ${session.commandId})`);
    }
    return known.result;
  }

  private header(revision: number, err: KVErr, leaderId?: number): ReplyHeader {
    const header: ReplyHeader = { revision, memberId: this.parts.id, raftTerm: this.parts.node.status().term, err };
    if (leaderId !== undefined) header.leaderId = leaderId;
    return header;
  }

  private async admit<T>(fn: () => Promise<T>): Promise<T> {
    if (this.pending >= this.parts.maxPending) {
      throw new OverloadedError(`node ${this.parts.id} has ${this.pending} Range/Txn calls in flight (limit ${this.parts.maxPending}); retry with backoff`);
    }
    this.pending++;
    try {
      return await fn();
    } finally {
      this.pending--;
    }
  }
}
