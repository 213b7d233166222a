// How the Clerk reads the result of one RPC: ClerkError, which Connect codes mean try another node,
// back off or register again, and what each eRaft reply `err` means (done, wrong leader, timeout).
import { Code } from "@connectrpc/connect";
import { Op, type CommandResponse, type RegisterSessionResponse, type ResponseHeader } from "../gen/kvraftpb/kvraft_pb.ts";

/**
 * An operation failed. `code` is a Connect code: the one a node refused the request with (nothing
 * was applied), InvalidArgument for a request the Clerk refused itself, or DeadlineExceeded when
 * no node completed it in time. `outcomeUnknown` says a write may or may not have been applied.
 */
export class ClerkError extends Error {
  override readonly name: string = "ClerkError";
  constructor(
    readonly code: Code,
    message: string,
    readonly outcomeUnknown = false,
  ) {
    super(message);
  }
}

/**
 * A bulk write (putMany, appendMany) stopped at a failure: `written` writes were acknowledged
 * (each applied exactly once); the pairs not taken were not sent. The failed write itself may or
 * may not have been applied when `cause` says its outcome is unknown.
 */
export class BulkWriteError extends ClerkError {
  override readonly name = "BulkWriteError";
  constructor(
    readonly written: number,
    override readonly cause: unknown,
  ) {
    const inner = cause instanceof ClerkError ? cause : null;
    super(inner?.code ?? Code.Unknown, `bulk write stopped after ${written} acknowledged writes: ${cause instanceof Error ? cause.message : String(cause)}`, inner?.outcomeUnknown ?? true);
  }
}

/** Connect codes that mean "this node could not answer now": try another node. */
export const RETRYABLE = new Set<Code>([Code.Unavailable, Code.DeadlineExceeded, Code.Unknown, Code.Aborted, Code.Canceled, Code.Internal]);
/** Connect codes that mean "this node is busy": ask it again after a backoff. */
export const BACK_OFF_ON_SAME_NODE = new Set<Code>([Code.ResourceExhausted]);

/** What each eRaft reply `err` means to the Clerk: the operation is done, or where to retry. */
const REPLY_OUTCOMES = new Map<string, "done" | "wrong-leader" | "timeout">([
  ["OK", "done"],
  ["ErrNoKey", "done"],
  ["ErrWrongLeader", "wrong-leader"],
  ["ErrTimeout", "timeout"],
]);

/** What one RPC to one node came to: done, or where to try next. */
export type Attempt<T> =
  | { done: T }
  | { retry: "next" | "stay"; problem: string }
  | { wrongLeader: bigint | undefined; problem: string };

export function commandAttempt(response: CommandResponse, node: number): Attempt<CommandResponse> {
  return classify(response, node, "committing the command");
}

/** An answer of Range, DeleteRange or Txn: its header's err decides, as Command's err does. */
export function headerAttempt<T extends { header?: ResponseHeader }>(response: T, node: number): Attempt<T> {
  const hint = response.header?.leaderId;
  const leader = hint === undefined ? { case: undefined } : { case: "leaderId" as const, value: hint };
  const outcome = classify({ err: response.header?.err ?? "", leader }, node, "the request");
  return "done" in outcome ? { done: response } : outcome;
}

export function registerAttempt(response: RegisterSessionResponse, node: number): Attempt<RegisterSessionResponse> {
  return classify(response, node, "registering the session");
}

/** An answer's `err` (eRaft's vocabulary): done, not the leader (maybe with a hint), or timed out. */
function classify<T extends { err: string; leader: { case: "leaderId"; value: bigint } | { case: undefined } }>(response: T, node: number, what: string): Attempt<T> {
  const outcome = REPLY_OUTCOMES.get(response.err);
  if (outcome === undefined) throw new ClerkError(Code.Internal, `node ${node} answered with unknown err "${response.err}"`);
  if (outcome === "done") return { done: response };
  if (outcome === "wrong-leader") return { wrongLeader: leaderOf(response), problem: `node ${node} is not the leader` };
  return { retry: "next", problem: `node ${node} timed out ${what}` };
}

/** The leader hint of an answer (a one-field oneof in kvraft.proto, so older protoc can compile it). */
export function leaderOf(response: { leader: { case: "leaderId"; value: bigint } | { case: undefined } }): bigint | undefined {
  return response.leader.case === "leaderId" ? response.leader.value : undefined;
}

/** "PUT(\"key\")": how errors name an operation (made only when one is reported). */
export function describe(op: Op, key: string): string {
  return `${Op[op] ?? String(op)}(${JSON.stringify(key)})`;
}

/** A registered session that the server no longer has (failed_precondition): internal to the Clerk. */
export class SessionGone extends Error {}

/** Connect codes that mean "your session is gone": register again. */
export const SESSION_GONE = new Set<Code>([Code.FailedPrecondition]);
