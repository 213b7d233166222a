// The write path of a KVServer: validating a client command, answering a retried write from the
// session table, proposing the rest to Raft, and turning an apply result into a reply or a refusal.
import type { Clock, NodeId, RaftNode } from "../raft/index.ts";
import { commandFingerprint, decodeCommand, encodeCommand, type WriteCommand } from "./command.ts";
import { InvalidArgumentError, SessionExpiredError, type OverloadedError } from "./errors.ts";
import { isApplied, type PendingWrites, type WriteOutcome } from "./pending-writes.ts";
import { NO_KEY, OK, WRONG_LEADER, refusal, type CommandArgs, type CommandReply } from "./replies.ts";
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
import type { KVStateMachine } from "./state-machine.ts";

/**
 * What the write path uses of its KVServer. The replica's parts are read at each use (getters):
 * a self-repair replaces them while a write may be waiting on Raft.
 */
export interface WriteReplica {
  readonly id: NodeId;
  readonly clock: Clock;
  readonly maxKeyBytes: number;
  readonly maxValueBytes: number;
  readonly node: RaftNode;
  readonly machine: KVStateMachine;
  readonly writes: PendingWrites;
  /** A fresh nonce: the commandId of a write without a session (unique among waiters). */
  nonce(): bigint;
  /** The refusal of every write while the disk is low on space, or null/undefined. */
  writeRefusal(): OverloadedError | null | undefined;
}

const OPS = new Set<string>(["Get", "Put", "Append", "Delete"]);

/** Throws InvalidArgumentError for a malformed command or a key or value above its limit. */
export function validateCommand(args: CommandArgs, limits: { maxKeyBytes: number; maxValueBytes: number }): void {
  if (typeof args.op !== "string" || !OPS.has(args.op)) {
    throw new InvalidArgumentError(`unknown op ${JSON.stringify(args.op)}: expected Get, Put, Append or Delete`);
  }
  if (typeof args.key !== "string") throw new InvalidArgumentError("the key must be a string");
  // A UTF-16 code unit is at most 3 UTF-8 bytes: short strings need no byte count.
  const keyBytes = args.key.length * 3 <= limits.maxKeyBytes ? 0 : Buffer.byteLength(args.key, "utf8");
  if (keyBytes > limits.maxKeyBytes) {
    throw new InvalidArgumentError(`the key is ${keyBytes} bytes; keys are limited to ${limits.maxKeyBytes} bytes`);
  }
  if (typeof args.value !== "string") throw new InvalidArgumentError("the value must be a string");
  const valueBytes = args.value.length * 3 <= limits.maxValueBytes ? 0 : Buffer.byteLength(args.value, "utf8");
  if (valueBytes > limits.maxValueBytes) {
    throw new InvalidArgumentError(
      `the value of key ${JSON.stringify(args.key.slice(0, 64))} is ${valueBytes} bytes; values are limited to ${limits.maxValueBytes} bytes`,
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
export async function writeCommand(r: WriteReplica, args: CommandArgs): Promise<CommandReply> {
  const command: WriteCommand = {
    op: args.op as "Put" | "Append" | "Delete",
    clientId: args.clientId,
    // Without a session the client's commandId means nothing; a nonce lets the apply find the waiter.
    commandId: args.clientId === 0n ? r.nonce() : args.commandId,
    key: args.key,
    value: args.value,
    registered: args.registered === true,
  };
  const known = answerFromSession(r.machine, command);
  if (known !== null) return replyForResult(known, args);
  const lowSpace = r.writeRefusal();
  if (lowSpace) throw lowSpace;
  const outcome = await proposeWrite(r, command);
  return isApplied(outcome) ? replyForResult(outcome.result, args) : outcome;
}

/** Proposes a command stamped with this leader's time and value limit; resolves with how it ended. */
export async function proposeWrite(r: WriteReplica, command: WriteCommand): Promise<WriteOutcome> {
  const data = encodeCommand({ ...command, timestamp: r.clock.now(), maxValueBytes: r.maxValueBytes });
  const { waiter, outcome } = r.writes.open(command.clientId, command.commandId);
  try {
    const { index, term } = await r.node.propose(data);
    r.writes.place(waiter, index, term);
  } catch (error) {
    let refused: CommandReply;
    try {
      refused = refusal(error, r.id);
    } catch (typed) {
      r.writes.answer(waiter, WRONG_LEADER);
      throw typed;
    }
    r.writes.answer(waiter, refused);
  }
  return outcome;
}

/**
 * The result of a write the session table answers without a new entry: a retry of the session's
 * last command, or a stale or reused commandId; null when the write must be proposed.
 */
export function answerFromSession(machine: KVStateMachine, command: WriteCommand): ResultCode | null {
  if (command.clientId === 0n) return null;
  const session = machine.session(command.clientId);
  // Gone or never registered: the apply decides (a registration may be on its way to this state).
  if (session === undefined || (command.registered === true && !session.registered)) return null;
  if (command.commandId > session.commandId) return null;
  if (command.commandId < session.commandId) return RESULT_STALE_COMMAND;
  const fingerprint = commandFingerprint(decodeCommand(encodeCommand(command), 0));
  if (session.fingerprint !== 0 && session.fingerprint !== fingerprint) return RESULT_COMMAND_REUSED;
  return session.result;
}

/** A write's reply for its apply result, or the typed refusal the result stands for. */
export function replyForResult(result: ResultCode, args: CommandArgs): CommandReply {
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
