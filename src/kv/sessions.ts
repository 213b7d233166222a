// The client session table: clientId → (last commandId, its result, its fingerprint, when it was
// last touched). Duplicate detection for exactly-once writes. Expiry by time carried in the log
// (leader timestamps), so every replica drops the same sessions at the same entry.
import { readInt64, readUint32LE, readUint64LE, writeInt64, writeUint32LE, writeUint64LE } from "./keys.ts";

/** The result of applying one entry; stored in one byte. */
export const RESULT_OK = 0;
export const RESULT_NO_KEY = 1;
/** The write would have made a value larger than the proposer's limit: not applied. */
export const RESULT_VALUE_TOO_LARGE = 2;
/** A registered session's request, but the session is gone (expired, or never registered): not applied. */
export const RESULT_SESSION_EXPIRED = 3;
/** A commandId older than the session's last: not applied. */
export const RESULT_STALE_COMMAND = 4;
/** The session's last commandId again, for a different command: not applied. */
export const RESULT_COMMAND_REUSED = 5;
/** A RegisterSession with every registered slot taken. */
export const RESULT_TABLE_FULL = 6;
export type ResultCode = 0 | 1 | 2 | 3 | 4 | 5 | 6;
/** Results a session records for its last command (the others leave the session as it was). */
export type StoredResult = typeof RESULT_OK | typeof RESULT_NO_KEY | typeof RESULT_VALUE_TOO_LARGE;

/** A registered session's commandId before its first command (clients number from 0 or 1). */
export const NO_COMMAND = -1n;

export interface Session {
  clientId: bigint;
  /** The last command applied (or refused at apply) for this client. */
  commandId: bigint;
  /** Index of the log entry that last touched this session (its order in the table). */
  lastIndex: number;
  /** Log time (ms, from leader timestamps) of that entry: the session expires sessionTtlMs after it. */
  lastTime: number;
  result: StoredResult;
  /** Registered by RegisterSession (server-assigned id), or started by an unregistered client's first write. */
  registered: boolean;
  /** commandFingerprint of the last command; 0 when unknown (a record written by an older build). */
  fingerprint: number;
}

/** Version-1 records (17 bytes) are a prefix of version-2 records. */
export const SESSION_RECORD_V1_BYTES = 17;
export const SESSION_RECORD_BYTES = 30;
const FLAG_REGISTERED = 1;

export function encodeSession(session: Session): Uint8Array {
  const out = new Uint8Array(SESSION_RECORD_BYTES);
  writeInt64(out, 0, session.commandId, true);
  writeUint64LE(out, 8, session.lastIndex);
  out[16] = session.result;
  writeUint64LE(out, 17, session.lastTime);
  out[25] = session.registered ? FLAG_REGISTERED : 0;
  writeUint32LE(out, 26, session.fingerprint);
  return out;
}

export function decodeSession(clientId: bigint, value: Uint8Array): Session {
  if (value.length !== SESSION_RECORD_BYTES && value.length !== SESSION_RECORD_V1_BYTES) {
    throw new RangeError(`session record of client ${clientId} is ${value.length} bytes, expected ${SESSION_RECORD_BYTES}`);
  }
  const result = value[16];
  if (result !== RESULT_OK && result !== RESULT_NO_KEY && result !== RESULT_VALUE_TOO_LARGE) {
    throw new RangeError(`session record of client ${clientId} has unknown result ${result}`);
  }
  const v2 = value.length === SESSION_RECORD_BYTES;
  return {
    clientId,
    commandId: readInt64(value, 0, true),
    lastIndex: readUint64LE(value, 8),
    result,
    lastTime: v2 ? readUint64LE(value, 17) : 0,
    registered: v2 && (value[25]! & FLAG_REGISTERED) !== 0,
    fingerprint: v2 ? readUint32LE(value, 26) : 0,
  };
}

export interface SessionLimits {
  /** A session untouched for longer than this (log time, ms) is dropped. */
  ttlMs: number;
  /** Registered sessions at most: a registration beyond it is refused, no live session is evicted. */
  maxSessions: number;
  /** Unregistered sessions (eRaft-style random ids) at most: beyond it the least recently used is dropped. */
  maxUnregisteredSessions: number;
}

/**
 * In-memory session table, one Map per kind. Each Map's iteration order is ascending lastIndex
 * (a touched session is re-inserted at the end) and so ascending lastTime, since log time never
 * goes back: expiry and eviction only ever look at the front. Every replica applies the same
 * entries, so every replica drops the same sessions at the same index.
 */
export class SessionTable {
  private readonly registered = new Map<bigint, Session>();
  private readonly unregistered = new Map<bigint, Session>();

  constructor(readonly limits: SessionLimits) {
    if (!(limits.ttlMs >= 1) || !(limits.maxSessions >= 1) || !(limits.maxUnregisteredSessions >= 1)) {
      throw new RangeError(
        `session limits must be >= 1 (ttlMs ${limits.ttlMs}, maxSessions ${limits.maxSessions}, maxUnregisteredSessions ${limits.maxUnregisteredSessions})`,
      );
    }
  }

  get size(): number {
    return this.registered.size + this.unregistered.size;
  }

  get(clientId: bigint): Session | undefined {
    return this.registered.get(clientId) ?? this.unregistered.get(clientId);
  }

  /** Replaces the table with `sessions` (any order), keeping the limits. Returns the ones dropped. */
  load(sessions: Session[]): Session[] {
    this.registered.clear();
    this.unregistered.clear();
    sessions.sort((a, b) => a.lastIndex - b.lastIndex);
    for (const s of sessions) this.mapOf(s).set(s.clientId, s);
    return [...overflow(this.registered, this.limits.maxSessions), ...overflow(this.unregistered, this.limits.maxUnregisteredSessions)];
  }

  /** Drops sessions last touched more than ttlMs before `logTime`; returns them. */
  expire(logTime: number): Session[] {
    const cutoff = logTime - this.limits.ttlMs;
    return [...expireFront(this.registered, cutoff), ...expireFront(this.unregistered, cutoff)];
  }

  /** True when a registration would find a free registered slot. */
  canRegister(): boolean {
    return this.registered.size < this.limits.maxSessions;
  }

  /**
   * Records a session's newest state (re-inserted as most recently used). A session of the other
   * kind under the same id is replaced. Returns sessions dropped to stay within the limits.
   */
  record(session: Session): Session[] {
    this.registered.delete(session.clientId);
    this.unregistered.delete(session.clientId);
    const map = this.mapOf(session);
    map.set(session.clientId, session);
    return session.registered ? [] : overflow(map, this.limits.maxUnregisteredSessions);
  }

  values(): IterableIterator<Session> {
    return [...this.registered.values(), ...this.unregistered.values()].values();
  }

  private mapOf(session: Session): Map<bigint, Session> {
    return session.registered ? this.registered : this.unregistered;
  }
}

function expireFront(map: Map<bigint, Session>, cutoff: number): Session[] {
  const dropped: Session[] = [];
  for (const s of map.values()) {
    if (s.lastTime >= cutoff) break;
    dropped.push(s);
  }
  for (const s of dropped) map.delete(s.clientId);
  return dropped;
}

function overflow(map: Map<bigint, Session>, limit: number): Session[] {
  // Checked before iterating: a Map whose entries are deleted and re-added (every record() of a
  // session moves it to the end) starts with deleted slots that a new iterator walks past first.
  if (map.size <= limit) return [];
  const dropped: Session[] = [];
  for (const s of map.values()) {
    if (map.size - dropped.length <= limit) break;
    dropped.push(s);
  }
  for (const s of dropped) map.delete(s.clientId);
  return dropped;
}
