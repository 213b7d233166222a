// How one client write (a Command's, or one of a batch entry's) changes the state: the session
// rules of exactly-once (refused, answered as a retry, or applied and recorded), then the change.
// The same on every replica: everything it reads comes from the log and the applied state.
import type { ApplyBatch } from "./apply-batch.ts";
import { OP_APPEND, OP_DELETE, OP_PUT, commandFingerprint, type DecodedCommand } from "./command.ts";
import { KVCorruptionError } from "./errors.ts";
import { userKeyFromBytes } from "./keys.ts";
import {
  RESULT_COMMAND_REUSED,
  RESULT_NO_KEY,
  RESULT_OK,
  RESULT_SESSION_EXPIRED,
  RESULT_STALE_COMMAND,
  RESULT_VALUE_TOO_LARGE,
  type ResultCode,
  type Session,
  type SessionTable,
  type StoredResult,
} from "./sessions.ts";

/**
 * A Put, Append or Delete of a client: without a session (clientId 0) applied, never deduplicated;
 * with one, refused if its registered session is gone or its commandId is stale or reused,
 * answered from the session if it is a retry, else applied and recorded in the session.
 */
export function applyClientWrite(sessions: SessionTable, command: DecodedCommand, batch: ApplyBatch, index: number): ResultCode {
  const { clientId, commandId } = command;
  if (clientId === 0n) return applyWrite(command, batch, index);
  const session = sessions.get(clientId);
  if (command.registered && session?.registered !== true) return RESULT_SESSION_EXPIRED;
  const fingerprint = commandFingerprint(command);
  if (session !== undefined && commandId <= session.commandId) {
    if (commandId < session.commandId) return RESULT_STALE_COMMAND;
    if (session.fingerprint !== 0 && session.fingerprint !== fingerprint) return RESULT_COMMAND_REUSED;
    // A retry of a write already applied: answer it, change nothing but the session's age.
    recordSession(sessions, { ...session, lastIndex: index, lastTime: batch.logTime }, batch);
    return session.result;
  }
  const result = applyWrite(command, batch, index);
  const registered = session?.registered ?? false;
  recordSession(sessions, { clientId, commandId, lastIndex: index, lastTime: batch.logTime, result, registered, fingerprint }, batch);
  return result;
}

/** A session's new state, in memory and in the batch, with the sessions its record evicted. */
export function recordSession(sessions: SessionTable, session: Session, batch: ApplyBatch): void {
  batch.setSession(session.clientId, session);
  for (const evicted of sessions.record(session)) batch.setSession(evicted.clientId, null);
}

/** One client write's change to the batch; its result is the same on every replica. */
export function applyWrite(command: DecodedCommand, batch: ApplyBatch, index: number): StoredResult {
  const key = userKeyFromBytes(command.key);
  const limit = command.maxValueBytes === 0 ? Infinity : command.maxValueBytes;
  switch (command.op) {
    case OP_PUT:
      if (command.value.length > limit) return RESULT_VALUE_TOO_LARGE;
      // put() copies the value into the stored record: no copy of its own.
      batch.put(key, command.value);
      return RESULT_OK;
    case OP_APPEND:
      return batch.append(key, command.value, limit) ? RESULT_OK : RESULT_VALUE_TOO_LARGE;
    case OP_DELETE:
      return batch.delete(key) ? RESULT_OK : RESULT_NO_KEY;
    default:
      throw new KVCorruptionError(`log entry ${index}: op code ${command.op} cannot be applied`);
  }
}
