// The watch history: one record per changed key per revision, written in the same LSM batch as the
// change, under 0x00 'e' + revision (u64 big-endian) + key. Node-local (never in snapshots) and
// trimmed to the Raft log's first index, so a revision can be replayed while the log still holds it.
import type { BatchOp, DB } from "../lsm/index.ts";
import { KVCorruptionError } from "./errors.ts";
import { META_PREFIX, readUint64LE, writeUint64LE } from "./keys.ts";
import { REVISION_HEADER_BYTES, decodeStored, type KeyMeta } from "./revisions.ts";

/** 0x00 'e' + revision + key: one event. */
export const EVENT_PREFIX = Uint8Array.of(META_PREFIX, 0x65);
export const EVENT_END = Uint8Array.of(META_PREFIX, 0x66);
/** 0x00 'h': the oldest revision whose events are all present (u64). */
export const HISTORY_START_KEY = Uint8Array.of(META_PREFIX, 0x68);

export const EVENT_PUT = 0;
export const EVENT_DELETE = 1;

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
export function eventKeyAt(revision: number, key: Uint8Array, from: number): Uint8Array {
  const base = EVENT_PREFIX.length + 8;
  const out = new Uint8Array(base + key.length - from);
  out[0] = EVENT_PREFIX[0]!;
  out[1] = EVENT_PREFIX[1]!;
  writeRevisionBE(out, EVENT_PREFIX.length, revision);
  for (let i = from; i < key.length; i++) out[base + i - from] = key[i]!;
  return out;
}

/** The first event key of `revision` (every event of revisions below it sorts before). */
export function eventKeyFloor(revision: number): Uint8Array {
  const out = new Uint8Array(EVENT_PREFIX.length + 8);
  out.set(EVENT_PREFIX, 0);
  writeRevisionBE(out, EVENT_PREFIX.length, revision);
  return out;
}

/**
 * Event record: type (u8), prev present (u8), prev create/mod/version (3 × u64, zero when absent),
 * then for a put the stored value (its revision header and the user's bytes).
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

export function decodeEvent(key: Uint8Array, record: Uint8Array): { revision: number; event: KeyEvent } {
  if (key.length < EVENT_PREFIX.length + 8 || record.length < 2 + REVISION_HEADER_BYTES) {
    throw new KVCorruptionError(`watch history record of ${record.length} bytes under a ${key.length}-byte key is malformed`);
  }
  const revision = readRevisionBE(key, EVENT_PREFIX.length);
  const userKey = key.subarray(EVENT_PREFIX.length + 8);
  const type = record[0];
  if (type !== EVENT_PUT && type !== EVENT_DELETE) throw new KVCorruptionError(`watch history record at revision ${revision} has unknown type ${type}`);
  const prev =
    record[1] === 1
      ? { createRevision: readUint64LE(record, 2), modRevision: readUint64LE(record, 10), version: readUint64LE(record, 18) }
      : null;
  if (type === EVENT_DELETE) {
    return { revision, event: { type, key: userKey, meta: { createRevision: 0, modRevision: revision, version: 0 }, value: new Uint8Array(0), prev } };
  }
  const stored = decodeStored(record.subarray(2 + REVISION_HEADER_BYTES), userKey);
  return { revision, event: { type, key: userKey, meta: stored, value: stored.value, prev } };
}

/** The value `event`'s key had before it, from the event that wrote it; null once trimmed away. */
export function prevValue(db: DB, event: KeyEvent): Uint8Array | null {
  if (event.prev === null) return null;
  const record = db.getSync(eventKey(event.prev.modRevision, event.key));
  if (record === undefined) return null;
  const { event: earlier } = decodeEvent(eventKey(event.prev.modRevision, event.key), record);
  return earlier.type === EVENT_PUT ? earlier.value : null;
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
  let bytes = 0;
  let last = through;
  let lastSeen = 0;
  try {
    for (let entry = iterator.read(); entry !== undefined; entry = iterator.read()) {
      const [key, record] = entry;
      const decoded = decodeEvent(key, record);
      if (bytes >= maxBytes && decoded.revision > lastSeen) {
        // Cut between revisions: everything up to the previous revision was read.
        last = decoded.revision - 1;
        break;
      }
      // Events a watcher filters out count too: they bound the work of one read, not only its answer.
      bytes += key.length + record.length;
      lastSeen = decoded.revision;
      if (accept(decoded.event)) events.push(decoded);
    }
  } finally {
    iterator.close();
  }
  return { events, last };
}

/** Deletions of every event below `revision` (at most `maxOps`), and whether more remain. */
export function trimOps(db: DB, revision: number, maxOps: number): { ops: BatchOp[]; more: boolean } {
  const ops: BatchOp[] = [];
  const iterator = db.iterator({ gte: EVENT_PREFIX, lt: eventKeyFloor(revision) });
  try {
    for (let entry = iterator.read(); entry !== undefined; entry = iterator.read()) {
      if (ops.length >= maxOps) return { ops, more: true };
      ops.push({ type: "del", key: entry[0] });
    }
  } finally {
    iterator.close();
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
