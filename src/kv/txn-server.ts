// Range, DeleteRange and Txn on one replica: a Range reads the applied state after a ReadIndex round
// (or locally when serializable); a Txn is validated, answered from its session when it is a
// retry, else proposed as one log entry whose applied result answers it (as Command's writes).
import type { NodeId, RaftNode } from "../raft/index.ts";
import { InvalidArgumentError, OutcomeUnknownError, OverloadedError, SessionExpiredError, type KVError } from "./errors.ts";
import { isApplied, type PendingWrites } from "./pending-writes.ts";
import { commandFingerprint, decodeCommand } from "./command.ts";
import { RESULT_COMMAND_REUSED, RESULT_OK, RESULT_SESSION_EXPIRED, RESULT_STALE_COMMAND, type ResultCode } from "./sessions.ts";
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
  /** The leader's clock (ms): stamped on proposals, the log's time for session expiry. */
  now: () => number;
  /** A fresh commandId for a write without a session, so its waiter matches only its own entry. */
  nonce: () => bigint;
  limits?: TxnLimits;
  closed: () => boolean;
}

export class TxnServer {
  private pending = 0;
  readonly limits: ReturnType<typeof txnLimits>;

  constructor(private readonly parts: TxnServerParts) {
    this.limits = txnLimits(parts.limits);
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

  /**
   * A Txn (a DeleteRange is one), with Command's session rules: clientId 0 has no session (applied
   * every time it arrives); `registered` marks a RegisterSession id (refused once it expired).
   */
  async txn(request: TxnRequest, clientId: bigint, commandId: bigint, registered = false): Promise<TxnReply> {
    validateTxn(request, this.limits, this.parts.maxKeyBytes, this.parts.maxValueBytes);
    if (typeof clientId !== "bigint" || typeof commandId !== "bigint") throw new InvalidArgumentError("client_id and command_id must be 64-bit integers");
    return this.admit(async () => {
      const { machine, writes, node, id } = this.parts;
      if (this.parts.closed()) return { header: this.header(0, "ErrWrongLeader") };
      // Without a session the client's commandId means nothing; a nonce lets the apply find the waiter.
      if (clientId === 0n) commandId = this.parts.nonce();
      const data = encodeTxnCommand({ clientId, commandId, registered, timestamp: this.parts.now() }, request);
      const known = this.fromSession(clientId, commandId, registered, data);
      if (known !== null) return known;
      const { waiter, outcome } = writes.open(clientId, commandId);
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
      const ended = await outcome;
      if (!isApplied(ended)) return { header: this.header(machine.lastApplied(), ended.err, ended.leaderId) };
      if (ended.result !== RESULT_OK) throw refusalFor(ended.result, clientId, commandId);
      const result = ended.txn ?? this.fromSession(clientId, commandId, registered, data)?.result;
      if (result === undefined) {
        throw new OutcomeUnknownError(`Txn ${commandId} of session ${clientId} was applied, but its answer is no longer kept; read the keys to learn the outcome`);
      }
      if (result.error !== undefined) throw new InvalidArgumentError(result.error);
      return { header: this.header(result.revision, "OK"), result };
    });
  }

  /** The answer the session table gives without a new entry (a retry, or a stale command), or null. */
  private fromSession(clientId: bigint, commandId: bigint, registered: boolean, data: Uint8Array): TxnReply | null {
    if (clientId === 0n) return null;
    const session = this.parts.machine.session(clientId);
    // Gone or never registered: the apply decides (a registration may be on its way to this state).
    if (session === undefined || (registered && !session.registered)) return null;
    if (commandId > session.commandId) return null;
    if (commandId < session.commandId) throw refusalFor(RESULT_STALE_COMMAND, clientId, commandId);
    if (session.fingerprint !== 0 && session.fingerprint !== commandFingerprint(decodeCommand(data, 0))) {
      throw refusalFor(RESULT_COMMAND_REUSED, clientId, commandId);
    }
    const record = this.parts.machine.store.getSync(responseKey(clientId));
    const known = record === undefined ? null : decodeResponse(record);
    if (known === null || known.commandId !== commandId) {
      throw new OutcomeUnknownError(`Txn ${commandId} of session ${clientId} was applied earlier, but its answer is no longer kept (the session moved on); read the keys to learn the outcome`);
    }
    if (known.result.error !== undefined) throw new InvalidArgumentError(known.result.error);
    return { header: this.header(known.result.revision, "OK"), result: known.result };
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

/** The typed refusal a Txn's session result stands for (nothing was applied). */
function refusalFor(result: ResultCode, clientId: bigint, commandId: bigint): KVError {
  switch (result) {
    case RESULT_SESSION_EXPIRED:
      return new SessionExpiredError(`session ${clientId} has expired (or was never registered): register a new session; this Txn was not applied`);
    case RESULT_STALE_COMMAND:
      return new InvalidArgumentError(`commandId ${commandId} is older than session ${clientId}'s last command: command ids must increase; this Txn was not applied`);
    case RESULT_COMMAND_REUSED:
      return new InvalidArgumentError(`commandId ${commandId} of session ${clientId} was already used for a different command: use a new commandId; this Txn was not applied`);
    default:
      return new InvalidArgumentError(`the Txn was refused at apply (result ${result}); it was not applied`);
  }
}
