// One apply's LSM batch in the making: the data changes, session changes and key-count change of
// consecutive entries, written with their applied index as one atomic batch. Reads see the
// batch's own earlier writes. Every user value is stored with its revisions (revisions.ts), and
// every change is also recorded in the watch history (history.ts).
import type { BatchOp, DB } from "../lsm/index.ts";
import { EVENT_DELETE, EVENT_VALUE_PREFIX, encodeEvent, encodePutByReference, eventKeyAt } from "./history.ts";
import { ByteKeyMap } from "./byte-map.ts";
import { APPLIED_KEY, KEY_COUNT_KEY, encodeApplied, encodeKeyCount, sessionKey } from "./keys.ts";
import { encodeStored, nextMeta, REVISION_HEADER_BYTES } from "./revisions.ts";
import { readUint64LE } from "./keys.ts";
import { responseKey } from "./session-responses.ts";
import { encodeSession, type Session } from "./sessions.ts";

const EMPTY = new Uint8Array(0);

export class ApplyBatch {
  private readonly ops: BatchOp[] = [];
  /** Bytes of data changes so far (a large apply is split into batches of about maxBatchBytes). */
  bytes = 0;
  /** Keys created minus keys deleted by this batch. */
  keyCountDelta = 0;
  /** Stored values written earlier in this batch, by internal key; null = deleted. */
  private readonly written = new ByteKeyMap<Uint8Array | null>();
  /** Session changes: the new record, or null for a deletion. */
  private readonly sessionChanges = new Map<bigint, Session | null>();
  /** Extra metadata records (e.g. a session's last Txn response), written with the batch. */
  private readonly metaOps: BatchOp[] = [];
  private readonly metaWritten = new ByteKeyMap<Uint8Array | null>();

  constructor(
    private readonly db: DB,
    /** The index and term of the last entry in this batch (the state's applied index once written). */
    public index: number,
    public term: number,
    /** The log time reached by this batch's entries (the largest leader timestamp so far). */
    public logTime: number,
    /** Record every change in the watch history. */
    private readonly history = true,
    /** The oldest revision the watch history holds: older events need no value kept for them. */
    private readonly historyFloor = 1,
  ) {}

  /** The stored value (revision header + user bytes) of an internal user key as of this point of the batch. */
  current(key: Uint8Array): Uint8Array | null {
    const pending = this.written.get(key);
    if (pending !== undefined) return pending;
    return this.db.getSync(key) ?? null;
  }

  /** The LSM under this batch (range scans merge writtenIn() over it). */
  get store(): DB {
    return this.db;
  }

  /** A metadata record as of this point of the batch. */
  meta(key: Uint8Array): Uint8Array | null {
    const pending = this.metaWritten.get(key);
    if (pending !== undefined) return pending;
    return this.db.getSync(key) ?? null;
  }

  /** Keys this batch wrote or deleted in [start, end) (internal keys), in byte order. */
  writtenIn(start: Uint8Array, end: Uint8Array | null): [Uint8Array, Uint8Array | null][] {
    if (this.written.size === 0) return [];
    const out: [Uint8Array, Uint8Array | null][] = [];
    for (const [key, value] of this.written.entries()) {
      if (Buffer.compare(key, start) >= 0 && (end === null || Buffer.compare(key, end) < 0)) out.push([key, value]);
    }
    return out.sort((a, b) => Buffer.compare(a[0], b[0]));
  }

  /** Sets `key` to `value` at this batch's revision; returns the previous stored value. */
  put(key: Uint8Array, value: Uint8Array): Uint8Array | null {
    const old = this.current(key);
    if (old === null) this.keyCountDelta++;
    this.set(key, encodeStored(nextMeta(old, this.index), value), old);
    return old;
  }

  /** Appends `suffix` unless the value would exceed `maxValueBytes`; false (and no change) if it would. */
  append(key: Uint8Array, suffix: Uint8Array, maxValueBytes: number): boolean {
    const old = this.current(key);
    const base = old === null ? EMPTY : old.subarray(REVISION_HEADER_BYTES);
    if (base.length + suffix.length > maxValueBytes) return false;
    if (old === null) this.keyCountDelta++;
    const value = new Uint8Array(base.length + suffix.length);
    value.set(base, 0);
    value.set(suffix, base.length);
    this.set(key, encodeStored(nextMeta(old, this.index), value), old);
    return true;
  }

  /** Deletes `key`; true when it existed. */
  delete(key: Uint8Array): boolean {
    return this.remove(key) !== null;
  }

  /** Deletes `key`; returns its previous stored value (null: it did not exist, nothing changed). */
  remove(key: Uint8Array): Uint8Array | null {
    const old = this.current(key);
    if (old === null) return null;
    this.keyCountDelta--;
    this.ops.push({ type: "del", key });
    this.written.set(key, null);
    this.bytes += key.length;
    this.record(EVENT_DELETE, key, old, null);
    return old;
  }

  setSession(clientId: bigint, session: Session | null): void {
    this.sessionChanges.set(clientId, session);
  }

  /** Writes (or with null deletes) a metadata record with this batch. */
  setMeta(key: Uint8Array, value: Uint8Array | null): void {
    this.metaOps.push(value === null ? { type: "del", key } : { type: "put", key, value });
    this.metaWritten.set(key, value);
    if (value !== null) this.bytes += key.length + value.length;
  }

  /** True when no entry was added since `appliedIndex`: nothing to write. */
  isEmptySince(appliedIndex: number): boolean {
    return this.index === appliedIndex;
  }

  /** The batch's LSM operations: data, sessions, then the key count and applied index. */
  finish(keyCount: number): BatchOp[] {
    for (const [clientId, session] of this.sessionChanges) {
      this.ops.push(session === null ? { type: "del", key: sessionKey(clientId) } : { type: "put", key: sessionKey(clientId), value: encodeSession(session) });
    }
    for (const op of this.metaOps) this.ops.push(op);
    // A dropped session takes its last Txn answer with it (after any write of it above).
    for (const [clientId, session] of this.sessionChanges) if (session === null) this.ops.push({ type: "del", key: responseKey(clientId) });
    if (this.keyCountDelta !== 0) this.ops.push({ type: "put", key: KEY_COUNT_KEY, value: encodeKeyCount(keyCount) });
    this.ops.push({ type: "put", key: APPLIED_KEY, value: encodeApplied(this.index, this.term, this.logTime) });
    return this.ops;
  }

  private set(key: Uint8Array, stored: Uint8Array, old: Uint8Array | null): void {
    this.ops.push({ type: "put", key, value: stored });
    this.written.set(key, stored);
    this.bytes += key.length + stored.length;
    this.record(EVENT_PUT_BY_REFERENCE, key, old, stored);
  }

  /**
   * The change's event. A put's event refers to the value its key now holds (history.ts); the
   * value the key held until now, if its own event is still in the history, moves to an event-value
   * record in this same batch, so every event keeps its value whatever the key does next.
   */
  private record(type: number, key: Uint8Array, old: Uint8Array | null, stored: Uint8Array | null): void {
    if (!this.history) return;
    const event = type === EVENT_PUT_BY_REFERENCE ? encodePutByReference(old) : encodeEvent(type, old, stored);
    // key[0] is the 0x01 user prefix; the history names the user key.
    this.ops.push({ type: "put", key: eventKeyAt(this.index, key, 1), value: event });
    this.bytes += key.length + event.length + 10;
    if (old === null) return;
    const oldRevision = readUint64LE(old, 8);
    if (oldRevision < this.historyFloor || oldRevision === this.index) return;
    this.ops.push({ type: "put", key: eventKeyAt(oldRevision, key, 1, EVENT_VALUE_PREFIX), value: old });
    this.bytes += key.length + old.length + 10;
  }
}

/** record()'s marker for a put (its event is written by reference). */
const EVENT_PUT_BY_REFERENCE = -1;
