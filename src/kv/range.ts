// Range reads over [key, range_end) of the applied state (etcd v3's Range): limit, keys_only,
// count_only, `more` with the next key to resume from, and a byte bound on every answer. The same
// scan serves Range (after ReadIndex, or locally) and the range operations inside a Txn at apply.
import type { DB } from "../lsm/index.ts";
import { InvalidArgumentError } from "./errors.ts";
import { USER_END, userKeyFromBytes } from "./keys.ts";
import { decodeStored } from "./revisions.ts";

/** One key with its revisions, as Range, Txn and Watch answer it. */
export interface KV {
  key: Uint8Array;
  value: Uint8Array;
  createRevision: number;
  modRevision: number;
  version: number;
}

export interface RangeSpec {
  key: Uint8Array;
  /** Empty: the single key. One zero byte: every key >= key. Otherwise the exclusive end. */
  rangeEnd: Uint8Array;
  /** 0: as many as the byte bound allows. */
  limit: number;
  keysOnly: boolean;
  countOnly: boolean;
}

export interface RangeResult {
  kvs: KV[];
  /** True when keys of the range were left out (limit or byte bound). */
  more: boolean;
  /** Keys in the whole range. */
  count: number;
  /** With `more`: the first key left out (resume the range from it). Empty otherwise. */
  nextKey: Uint8Array;
}

export interface RangeLimits {
  /** Largest `limit` a request may ask for. Default 100,000. */
  maxRangeLimit?: number;
  /** Bytes of keys and values in one answer before it is cut with `more`. Default 4 MiB. */
  maxRangeBytes?: number;
}

export const DEFAULT_RANGE_LIMITS: Required<RangeLimits> = { maxRangeLimit: 100_000, maxRangeBytes: 4 << 20 };

const ZERO = Uint8Array.of(0);

/** The internal-key bounds [start, end) of a range, or an InvalidArgumentError that says what is wrong. */
export function rangeBounds(key: Uint8Array, rangeEnd: Uint8Array, what = "range"): { start: Uint8Array; end: Uint8Array } {
  const all = rangeEnd.length === 1 && rangeEnd[0] === 0;
  if (key.length === 0 && !all) {
    throw new InvalidArgumentError(`the ${what} has an empty key: give a key (or an empty key with range_end "\\0" for every key)`);
  }
  const start = userKeyFromBytes(key);
  if (all) return { start, end: USER_END };
  if (rangeEnd.length === 0) {
    const end = new Uint8Array(start.length + 1);
    end.set(start, 0);
    return { start, end };
  }
  if (compareBytes(rangeEnd, key) <= 0) {
    throw new InvalidArgumentError(
      `the ${what} is inverted or empty: range_end ${show(rangeEnd)} is not after key ${show(key)} ` +
        `(for a prefix, range_end is the prefix with its last byte incremented; "\\0" means every key >= key)`,
    );
  }
  return { start, end: userKeyFromBytes(rangeEnd) };
}

/** The range_end that covers every key starting with `prefix` ("\0", every key, when there is none). */
export function prefixEnd(prefix: Uint8Array): Uint8Array {
  const end = Uint8Array.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i]!++;
      return end.subarray(0, i + 1);
    }
  }
  return ZERO;
}

export function checkRangeSpec(spec: RangeSpec, limits: Required<RangeLimits>, what = "range"): void {
  rangeBounds(spec.key, spec.rangeEnd, what);
  if (!Number.isSafeInteger(spec.limit) || spec.limit < 0) throw new InvalidArgumentError(`the ${what}'s limit ${spec.limit} is negative`);
  if (spec.limit > limits.maxRangeLimit) {
    throw new InvalidArgumentError(`the ${what}'s limit ${spec.limit} is above this cluster's maximum of ${limits.maxRangeLimit}; page with more/next_key`);
  }
}

/** Changes written earlier in the same apply batch, not yet in the LSM: key → stored value or null (deleted). */
export interface RangeOverlay {
  writtenIn(start: Uint8Array, end: Uint8Array): [Uint8Array, Uint8Array | null][];
}

/**
 * Scans a checked range of `db` (with `overlay` merged over it, at apply). Stops collecting at
 * `limit` keys or `budget.bytes` of answer; counts the whole range. `budget` is shared by the
 * range operations of one Txn.
 */
export function scanRange(db: DB, spec: RangeSpec, budget: { bytes: number }, overlay: RangeOverlay | null = null): RangeResult {
  const { start, end } = rangeBounds(spec.key, spec.rangeEnd);
  const pending = overlay?.writtenIn(start, end) ?? [];
  const result: RangeResult = { kvs: [], more: false, count: 0, nextKey: new Uint8Array(0) };
  const take = (key: Uint8Array, stored: Uint8Array): void => {
    result.count++;
    if (spec.countOnly) return;
    if (result.more) return;
    const full = (spec.limit > 0 && result.kvs.length >= spec.limit) || (budget.bytes <= 0 && result.kvs.length > 0);
    if (full) {
      result.more = true;
      result.nextKey = key.slice(1);
      return;
    }
    const meta = decodeStored(stored, key.subarray(1));
    const value = spec.keysOnly ? new Uint8Array(0) : meta.value.slice();
    result.kvs.push({ key: key.slice(1), value, createRevision: meta.createRevision, modRevision: meta.modRevision, version: meta.version });
    budget.bytes -= key.length + value.length + 24;
  };
  const iterator = db.iterator({ gte: start, lt: end });
  let p = 0;
  try {
    for (let entry = iterator.read(); entry !== undefined; entry = iterator.read()) {
      const [key] = entry;
      // Overlay keys before this one are new keys of the batch (or deletions of nothing).
      while (p < pending.length && compareBytes(pending[p]![0], key) < 0) {
        const [k, v] = pending[p++]!;
        if (v !== null) take(k, v);
      }
      if (p < pending.length && compareBytes(pending[p]![0], key) === 0) {
        const [k, v] = pending[p++]!;
        if (v !== null) take(k, v);
        continue;
      }
      take(key, entry[1]);
    }
    while (p < pending.length) {
      const [k, v] = pending[p++]!;
      if (v !== null) take(k, v);
    }
  } finally {
    iterator.close();
  }
  return result;
}

/** Every live internal key in the range (with `overlay`), for DeleteRange at apply. */
export function keysInRange(db: DB, key: Uint8Array, rangeEnd: Uint8Array, overlay: RangeOverlay | null): Uint8Array[] {
  const { start, end } = rangeBounds(key, rangeEnd);
  const pending = overlay?.writtenIn(start, end) ?? [];
  const out: Uint8Array[] = [];
  const iterator = db.iterator({ gte: start, lt: end });
  let p = 0;
  try {
    for (let entry = iterator.read(); entry !== undefined; entry = iterator.read()) {
      const key = entry[0];
      while (p < pending.length && compareBytes(pending[p]![0], key) < 0) {
        const [k, v] = pending[p++]!;
        if (v !== null) out.push(k);
      }
      if (p < pending.length && compareBytes(pending[p]![0], key) === 0) {
        const [k, v] = pending[p++]!;
        if (v !== null) out.push(k);
        continue;
      }
      out.push(key);
    }
    while (p < pending.length) {
      const [k, v] = pending[p++]!;
      if (v !== null) out.push(k);
    }
  } finally {
    iterator.close();
  }
  return out;
}

/** The stored value of one user key as a KV. */
export function toKV(userKey: Uint8Array, stored: Uint8Array): KV {
  const meta = decodeStored(stored, userKey);
  return { key: userKey, value: meta.value.slice(), createRevision: meta.createRevision, modRevision: meta.modRevision, version: meta.version };
}

/** Unsigned lexicographic order of byte strings (the LSM's key order). */
export function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return a.length - b.length;
}

function show(bytes: Uint8Array): string {
  return JSON.stringify(Buffer.from(bytes).toString("utf8").slice(0, 64));
}
