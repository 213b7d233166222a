// What a KV command is and how it is answered: eRaft's reply vocabulary (OK, ErrNoKey,
// ErrWrongLeader, ErrTimeout) and the one place where the Raft driver's refusals become replies.
import {
  BackpressureError,
  EntryTooLargeError,
  NodeStoppedError,
  NotLeaderError,
  ReadIndexTimeoutError,
  NONE,
  type NodeId,
} from "../raft/index.ts";
import { InvalidArgumentError, KVError, OVERLOADED_RETRY_AFTER_MS, OverloadedError, UnavailableError } from "./errors.ts";

export type KVOp = "Get" | "Put" | "Append" | "Delete";
export type KVErr = "OK" | "ErrNoKey" | "ErrWrongLeader" | "ErrTimeout";

export interface CommandArgs {
  /** Any string up to the key limit; the empty key included (as in eRaft). */
  key: string;
  value: string;
  op: KVOp;
  /** 0: no session (the write is applied, not deduplicated). Otherwise a session id. */
  clientId: bigint;
  /** Increases with each of the client's operations; retries of one operation repeat it. */
  commandId: bigint;
  /** clientId came from RegisterSession: if that session is gone the write is refused, not applied. */
  registered?: boolean;
}

export type RegisterReply = { err: "OK"; clientId: bigint } | (CommandReply & { err: "ErrWrongLeader" | "ErrTimeout" });

export interface CommandReply {
  err: KVErr;
  value: string;
  /** With ErrWrongLeader: the node this one believes leads, when it knows one. */
  leaderId?: number;
}

const frozen = (err: KVErr): CommandReply => Object.freeze({ err, value: "" }) as CommandReply;
export const OK = frozen("OK");
export const NO_KEY = frozen("ErrNoKey");
export const WRONG_LEADER = frozen("ErrWrongLeader");
export const TIMEOUT = frozen("ErrTimeout");

/**
 * The reply to a refusal from the Raft driver (the client tries another node or retries), or a
 * typed KVError to throw (the request cannot be taken as it is, or this node is overloaded).
 */
export function refusal(error: unknown, nodeId: NodeId): CommandReply {
  if (error instanceof NotLeaderError) {
    return error.leaderId === NONE ? WRONG_LEADER : { err: "ErrWrongLeader", value: "", leaderId: error.leaderId };
  }
  if (error instanceof KVError) throw error;
  // This node is going away: the client should try another one.
  if (error instanceof NodeStoppedError) return WRONG_LEADER;
  // ReadIndex not confirmed in time (lost quorum?).
  if (error instanceof ReadIndexTimeoutError) return TIMEOUT;
  const message = error instanceof Error ? error.message : String(error);
  if (error instanceof BackpressureError) throw new OverloadedError(`node ${nodeId}: ${message}`, { cause: error, retryAfterMs: OVERLOADED_RETRY_AFTER_MS });
  if (error instanceof EntryTooLargeError) throw new InvalidArgumentError(`node ${nodeId}: ${message}`, { cause: error });
  throw new UnavailableError(`node ${nodeId} could not take the command: ${message}`, { cause: error });
}
