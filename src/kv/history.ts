// The watch history: one record per changed key per revision, written in the same LSM batch as the
// change, under 0x00 'e' + revision (u64 big-endian) + key. A put's event names its value by
// reference (the key's own record holds it until the key changes again; then the value moves to
// 0x00 'd' + revision + key in that change's batch). Node-local (never in snapshots) and trimmed
// to the Raft log's first index, so a revision can be replayed while the log still holds it.
import type { BatchOp, DB } from "../lsm/index.ts";
import { KVCorruptionError } from "./errors.ts";
import { META_PREFIX, USER_PREFIX, readUint64LE, writeUint64LE } from "./keys.ts";
import { REVISION_HEADER_BYTES, decodeStored, type KeyMeta } from "./revisions.ts";

/** 0x00 'd' + revision + key: the value a put event's key held at that revision, once it changed again. */
export const EVENT_VALUE_PREFIX = Uint8Array.of(META_PREFIX, 0x64);
/** 0x00 'e' + revision + key: one event. */
export const EVENT_PREFIX = Uint8Array.of(META_PREFIX, 0x65);
export const EVENT_END = Uint8Array.of(META_PREFIX, 0x66);
/** The whole history's key range ([0x00 'd', 0x00 'f')): event values and events. */
export const HISTORY_RANGE_START = EVENT_VALUE_PREFIX;
/** 0x00 'h': the oldest revision whose events are all present (u64). */
export const HISTORY_START_KEY = Uint8Array.of(META_PREFIX, 0x68);

export const EVENT_PUT = 0;
export const EVENT_DELETE = 1;
/** A put whose value is the key's stored value at the event's revision (see the file header). */
const RECORD_PUT_BY_REFERENCE = 2;

/** Reads a record at the point of the state the history is read from (a DB or one apply's view). */
export type RecordLookup = (key: Uint8Array) => Uint8Array | undefined;

/** One change of one key at one revision, as a watcher sees it. */
export interface KeyEvent {
  type: typeof EVENT_PUT | typeof EVENT_DELETE;
  /** The user key (no 0x01 prefix). */
  key: Uint8Array;
  /** The key's revisions after the change (a delete: modRevision = the revision, the rest 0). */
  meta: KeyMeta;
  /** The value after a put; empty for a delete. */
  value: Uint8Array;
  /** The key's revisions before the change, or null when it did not exist. */
  prev: KeyMeta | null;
  /** The value before the change, when looked up (prevValue()). */
  prevValue?: Uint8Array;
}

export function eventKey(revision: number, userKey: Uint8Array): Uint8Array {
  return eventKeyAt(revision, userKey, 0);
}

/** eventKey of the user key at `key[from..]` (an internal key: from 1, past its 0x01 prefix); no view made. */
export function eventKeyAt(revision: number, key: Uint8Array, from: number, prefix: Uint8Array = EVENT_PREFIX): Uint8Array {
  const base = prefix.length + 8;
  const out = new Uint8Array(base + key.length - from);
  out[0] = prefix[0]!;
  out[1] = prefix[1]!;
  writeRevisionBE(out, prefix.length, revision);
  for (let i = from; i < key.length; i++) out[base + i - from] = key[i]!;
  return out;
}

/** The first event key of `revision` (every event of revisions below it sorts before). */
export function eventKeyFloor(revision: number, prefix: Uint8Array = EVENT_PREFIX): Uint8Array {
  const out = new Uint8Array(prefix.length + 8);
  out.set(prefix, 0);
  writeRevisionBE(out, prefix.length, revision);
  return out;
}

/**
 * Event record of a delete (type 1), or of a put with its value inline (type 0, written by older
 * builds): type (u8), prev present (u8), prev create/mod/version (3 × u64, zero when absent), then
 * for a put the stored value (its revision header and the user's bytes).
 */
export function encodeEvent(type: number, prev: Uint8Array | null, next: Uint8Array | null): Uint8Array {
  const body = next ?? new Uint8Array(0);
  const out = new Uint8Array(2 + REVISION_HEADER_BYTES + body.length);
  out[0] = type;
  if (prev !== null) {
    out[1] = 1;
    for (let i = 0; i < REVISION_HEADER_BYTES; i++) out[2 + i] = prev[i]!;
  }
  out.set(body, 2 + REVISION_HEADER_BYTES);
  return out;
}

/**
 * Event record of a put by reference (type 2): type, then the previous revisions only when the key
 * existed (2 bytes for a create, 26 otherwise). The value is the key's stored value while its
 * mod revision is the event's, else the event-value record of the same revision and key.
 */
export function encodePutByReference(prev: Uint8Array | null): Uint8Array {
  if (prev === null) return Uint8Array.of(RECORD_PUT_BY_REFERENCE, 0);
  const out = new Uint8Array(2 + REVISION_HEADER_BYTES);
  out[0] = RECORD_PUT_BY_REFERENCE;
  out[1] = 1;
  for (let i = 0; i < REVISION_HEADER_BYTES; i++) out[2 + i] = prev[i]!;
  return out;
}

/**
 * One event from its record. A put by reference reads its value through `lookup`, which must see
 * the same state as the read that found the record (within one synchronous read of the LSM, or the
 * apply's own view): the key's record and its event-value record change in one atomic batch.
 */
export function decodeEvent(key: Uint8Array, record: Uint8Array, lookup: RecordLookup, missingValueIsEmpty = false): { revision: number; event: KeyEvent } {
  const type = record[0];
  const minimum = type === RECORD_PUT_BY_REFERENCE && record[1] === 0 ? 2 : 2 + REVISION_HEADER_BYTES;
  if (key.length < EVENT_PREFIX.length + 8 || record.length < minimum) {
    throw new KVCorruptionError(`watch history record of ${record.length} bytes under a ${key.length}-byte key is malformed`);
  }
  const revision = readRevisionBE(key, EVENT_PREFIX.length);
  const userKey = key.subarray(EVENT_PREFIX.length + 8);
  if (type !== EVENT_PUT && type !== EVENT_DELETE && type !== RECORD_PUT_BY_REFERENCE) {
    throw new KVCorruptionError(`watch history record at revision ${revision} has unknown type ${type}`);
  }
  const prev =
    record[1] === 1
      ? { createRevision: readUint64LE(record, 2), modRevision: readUint64LE(record, 10), version: readUint64LE(record, 18) }
      : null;
  if (type === EVENT_DELETE) {
    return { revision, event: { type, key: userKey, meta: { createRevision: 0, modRevision: revision, version: 0 }, value: new Uint8Array(0), prev } };
  }
  let value = type === EVENT_PUT ? record.subarray(2 + REVISION_HEADER_BYTES) : referencedValue(revision, userKey, lookup);
  if (value === undefined) {
    // Only an event below the history's start (left by a restart, not yet trimmed) may lack it.
    if (!missingValueIsEmpty) {
      const name = JSON.stringify(Buffer.from(userKey).toString("utf8").slice(0, 64));
      throw new KVCorruptionError(`watch history: the put of ${name} at revision ${revision} has neither the key's record nor its event value`);
    }
    value = new Uint8Array(REVISION_HEADER_BYTES);
  }
  const stored = decodeStored(value, userKey);
  return { revision, event: { type: EVENT_PUT, key: userKey, meta: stored, value: stored.value, prev } };
}

/** The stored value a put by reference at `revision` names: the key's own record, or its event value. */
function referencedValue(revision: number, userKey: Uint8Array, lookup: RecordLookup): Uint8Array | undefined {
  const internal = new Uint8Array(userKey.length + 1);
  internal[0] = USER_PREFIX;
  internal.set(userKey, 1);
  const current = lookup(internal);
  if (current !== undefined && current.length >= REVISION_HEADER_BYTES && readUint64LE(current, 8) === revision) return current;
  return lookup(eventKeyAt(revision, userKey, 0, EVENT_VALUE_PREFIX));
}

/**
 * The value `event`'s key had before it, from the event that wrote it; null once trimmed away (or
 * when that event lies below the history's start, where a moved value may never have been kept).
 */
export function prevValue(db: DB, event: KeyEvent): Uint8Array | null {
  if (event.prev === null) return null;
  const key = eventKey(event.prev.modRevision, event.key);
  const record = db.getSync(key);
  if (record === undefined) return null;
  const { event: earlier } = decodeEvent(key, record, (k) => db.getSync(k), true);
  return earlier.type === EVENT_PUT && earlier.meta.modRevision !== 0 ? earlier.value : null;
}

export function encodeHistoryStart(revision: number): Uint8Array {
  const out = new Uint8Array(8);
  writeUint64LE(out, 0, revision);
  return out;
}

export function decodeHistoryStart(record: Uint8Array): number {
  if (record.length !== 8) throw new KVCorruptionError(`history-start record is ${record.length} bytes, expected 8`);
  return readUint64LE(record, 0);
}

/**
 * Events with revision in [from, through], in revision order (keys in byte order within a
 * revision), never splitting a revision: stops after the revision during which `maxBytes` of
 * events was reached. Returns the events and the last revision fully read.
 */
export function readEvents(
  db: DB,
  from: number,
  through: number,
  maxBytes: number,
  accept: (event: KeyEvent) => boolean,
): { events: { revision: number; event: KeyEvent }[]; last: number } {
  const events: { revision: number; event: KeyEvent }[] = [];
  if (from > through) return { events, last: through };
  const iterator = db.iterator({ gte: eventKeyFloor(from), lt: eventKeyFloor(through + 1) });
  // Nothing runs between this synchronous read's steps, so plain reads see the iterator's state.
  const lookup: RecordLookup = (k) => db.getSync(k);
  let bytes = 0;
  let last = through;
  let lastSeen = 0;
  try {
    for (let entry = iterator.read(); entry !== undefined; entry = iterator.read()) {
      const [key, record] = entry;
      const decoded = decodeEvent(key, record, lookup);
      if (bytes >= maxBytes && decoded.revision > lastSeen) {
        // Cut between revisions: everything up to the previous revision was read.
        last = decoded.revision - 1;
        break;
      }
      // Events a watcher filters out count too: they bound the work of one read, not only its answer.
      bytes += key.length + record.length + (record[0] === RECORD_PUT_BY_REFERENCE ? decoded.event.value.length : 0);
      lastSeen = decoded.revision;
      if (accept(decoded.event)) events.push(decoded);
    }
  } finally {
    iterator.close();
  }
  return { events, last };
}

/** Deletions of every event and event value below `revision` (at most `maxOps`), and whether more remain. */
export function trimOps(db: DB, revision: number, maxOps: number): { ops: BatchOp[]; more: boolean } {
  const ops: BatchOp[] = [];
  for (const prefix of [EVENT_VALUE_PREFIX, EVENT_PREFIX]) {
    const iterator = db.iterator({ gte: prefix, lt: eventKeyFloor(revision, prefix) });
    try {
      for (let entry = iterator.read(); entry !== undefined; entry = iterator.read()) {
        if (ops.length >= maxOps) return { ops, more: true };
        ops.push({ type: "del", key: entry[0] });
      }
    } finally {
      iterator.close();
    }
  }
  return { ops, more: false };
}

function writeRevisionBE(out: Uint8Array, offset: number, revision: number): void {
  const high = Math.floor(revision / 0x1_0000_0000);
  const low = revision >>> 0;
  out[offset] = high >>> 24;
  out[offset + 1] = (high >>> 16) & 0xff;
  out[offset + 2] = (high >>> 8) & 0xff;
  out[offset + 3] = high & 0xff;
  out[offset + 4] = low >>> 24;
  out[offset + 5] = (low >>> 16) & 0xff;
  out[offset + 6] = (low >>> 8) & 0xff;
  out[offset + 7] = low & 0xff;
}

function readRevisionBE(bytes: Uint8Array, offset: number): number {
  const high = ((bytes[offset]! << 24) >>> 0) + (bytes[offset + 1]! << 16) + (bytes[offset + 2]! << 8) + bytes[offset + 3]!;
  const low = ((bytes[offset + 4]! << 24) >>> 0) + (bytes[offset + 5]! << 16) + (bytes[offset + 6]! << 8) + bytes[offset + 7]!;
  return high * 0x1_0000_0000 + low;
}
