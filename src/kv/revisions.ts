// Per-key revisions: how a user key's LSM value carries create_revision, mod_revision and version
// in front of the user's bytes (layout in FORMAT.md), and the state-layout marker that says so.
import { KVCorruptionError } from "./errors.ts";
import { META_PREFIX, readUint64LE, writeUint64LE } from "./keys.ts";

/** 0x00 'f': the layout of user values in this state (u32). Absent in states of older builds. */
export const LAYOUT_KEY = Uint8Array.of(META_PREFIX, 0x66);
/** Layout 2: every user value starts with the 24-byte revision header. (Layout 1 had none.) */
export const VALUE_LAYOUT = 2;
export const REVISION_HEADER_BYTES = 24;

/** A key's revisions: the Raft index that created it, the one that last changed it, and its change count. */
export interface KeyMeta {
  createRevision: number;
  modRevision: number;
  version: number;
}

/** A user key's stored value split into its revisions and a view of the user's bytes. */
export interface StoredValue extends KeyMeta {
  value: Uint8Array;
}

export function encodeLayout(): Uint8Array {
  return Uint8Array.of(VALUE_LAYOUT, 0, 0, 0);
}

export function decodeLayout(record: Uint8Array): number {
  if (record.length !== 4) throw new KVCorruptionError(`layout record is ${record.length} bytes, expected 4`);
  return record[0]! | (record[1]! << 8) | (record[2]! << 16) | (record[3]! << 24);
}

/** The stored form of `value` with `meta` in front. */
export function encodeStored(meta: KeyMeta, value: Uint8Array): Uint8Array {
  const out = new Uint8Array(REVISION_HEADER_BYTES + value.length);
  writeUint64LE(out, 0, meta.createRevision);
  writeUint64LE(out, 8, meta.modRevision);
  writeUint64LE(out, 16, meta.version);
  out.set(value, REVISION_HEADER_BYTES);
  return out;
}

/** Splits a stored value; `key` only names the key in the error of a malformed record. */
export function decodeStored(stored: Uint8Array, key?: Uint8Array): StoredValue {
  if (stored.length < REVISION_HEADER_BYTES) {
    const name = key === undefined ? "a user key" : `user key ${JSON.stringify(Buffer.from(key).toString("utf8").slice(0, 64))}`;
    throw new KVCorruptionError(`the stored value of ${name} is ${stored.length} bytes, shorter than its ${REVISION_HEADER_BYTES}-byte revision header`);
  }
  return {
    createRevision: readUint64LE(stored, 0),
    modRevision: readUint64LE(stored, 8),
    version: readUint64LE(stored, 16),
    value: stored.subarray(REVISION_HEADER_BYTES),
  };
}

/** Just the user's bytes of a stored value (no copy). */
export function storedUserValue(stored: Uint8Array): Uint8Array {
  if (stored.length < REVISION_HEADER_BYTES) throw new KVCorruptionError(`a stored user value is ${stored.length} bytes, shorter than its revision header`);
  return stored.subarray(REVISION_HEADER_BYTES);
}

/** The revisions a write at `revision` gives a key whose stored value was `old` (null: absent). */
export function nextMeta(old: Uint8Array | null, revision: number): KeyMeta {
  if (old === null) return { createRevision: revision, modRevision: revision, version: 1 };
  return { createRevision: readUint64LE(old, 0), modRevision: revision, version: readUint64LE(old, 16) + 1 };
}

/** A state directory of an older build whose user values have no revisions: refused, with the way out. */
export class OldLayoutError extends Error {
  override readonly name = "OldLayoutError";
  constructor(dir: string, keys: number) {
    super(
      `the KV state in ${dir} holds ${keys} keys in the value layout of kvraft before revisions (layout 1); ` +
        `this build stores create/mod revision and version with every value (layout ${VALUE_LAYOUT}) and cannot invent ` +
        `them identically on every replica. Move this node's data directory aside and let it rejoin empty (it is ` +
        `rebuilt from the leader), or run the previous build to export the data and load it into a new cluster.`,
    );
  }
}
