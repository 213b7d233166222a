// The client session table: clientId → (last commandId, its answer, index of the entry that last
// touched it). Duplicate detection for exactly-once writes; expiry decided by log indexes only.
import { readInt64, readUint64LE, writeInt64, writeUint64LE } from "./keys.ts";

/** Answer codes a write can have; stored in one byte. */
export const RESULT_OK = 0;
export const RESULT_NO_KEY = 1;
export type ResultCode = typeof RESULT_OK | typeof RESULT_NO_KEY;

export interface Session {
  clientId: bigint;
  commandId: bigint;
  /** Index of the log entry that last touched this session (its LRU and TTL clock). */
  lastIndex: number;
  result: ResultCode;
}

export const SESSION_RECORD_BYTES = 17;

export function encodeSession(session: Session): Uint8Array {
  const out = new Uint8Array(SESSION_RECORD_BYTES);
  writeInt64(out, 0, session.commandId, true);
  writeUint64LE(out, 8, session.lastIndex);
  out[16] = session.result;
  return out;
}

export function decodeSession(clientId: bigint, value: Uint8Array): Session {
  if (value.length !== SESSION_RECORD_BYTES) {
    throw new RangeError(`session record of client ${clientId} is ${value.length} bytes, expected ${SESSION_RECORD_BYTES}`);
  }
  const result = value[16];
  if (result !== RESULT_OK && result !== RESULT_NO_KEY) throw new RangeError(`session record of client ${clientId} has unknown result ${result}`);
  return { clientId, commandId: readInt64(value, 0, true), lastIndex: readUint64LE(value, 8), result };
}

export interface SessionLimits {
  /** A session untouched for more than this many log entries is dropped. */
  ttlEntries: number;
  /** At most this many live sessions; the least recently touched is dropped first. */
  maxSessions: number;
}

/**
 * In-memory session table. The Map's iteration order is ascending `lastIndex` (a touched session
 * is re-inserted at the end), so expiry and LRU eviction only ever look at the front. Every
 * replica applies the same entries, so every replica drops the same sessions at the same index.
 */
export class SessionTable {
  private readonly sessions = new Map<bigint, Session>();

  constructor(readonly limits: SessionLimits) {
    if (!(limits.ttlEntries >= 1) || !(limits.maxSessions >= 1)) {
      throw new RangeError(`session limits must be >= 1 (ttlEntries ${limits.ttlEntries}, maxSessions ${limits.maxSessions})`);
    }
  }

  get size(): number {
    return this.sessions.size;
  }

  get(clientId: bigint): Session | undefined {
    return this.sessions.get(clientId);
  }

  /** Replaces the table with `sessions` (any order), keeping the limits. Returns the ones dropped. */
  load(sessions: Session[]): Session[] {
    this.sessions.clear();
    sessions.sort((a, b) => a.lastIndex - b.lastIndex);
    for (const s of sessions) this.sessions.set(s.clientId, s);
    return this.evictOverflow();
  }

  /** Drops sessions whose last touch is more than ttlEntries before `index`; returns them. */
  expire(index: number): Session[] {
    const dropped: Session[] = [];
    for (const s of this.sessions.values()) {
      if (index - s.lastIndex <= this.limits.ttlEntries) break;
      dropped.push(s);
    }
    for (const s of dropped) this.sessions.delete(s.clientId);
    return dropped;
  }

  /** Records a client's newest write; returns sessions evicted to stay within maxSessions. */
  record(session: Session): Session[] {
    this.sessions.delete(session.clientId);
    this.sessions.set(session.clientId, session);
    return this.evictOverflow();
  }

  values(): IterableIterator<Session> {
    return this.sessions.values();
  }

  private evictOverflow(): Session[] {
    const dropped: Session[] = [];
    for (const s of this.sessions.values()) {
      if (this.sessions.size - dropped.length <= this.limits.maxSessions) break;
      dropped.push(s);
    }
    for (const s of dropped) this.sessions.delete(s.clientId);
    return dropped;
  }
}
