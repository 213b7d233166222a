// Write batches: the atomic unit of the WAL. A batch is encoded once into one buffer that is
// written to the log and whose key/value bytes the memtable then references without copying.
import { ByteReader, KIND_DEL, KIND_PUT, writeU32 } from "./coding.ts";
import { corruption } from "./errors.ts";

export const BATCH_HEADER = 12; // seq u64 + count u32

export type BatchOp =
  | { type: "put"; key: Uint8Array; value: Uint8Array }
  | { type: "del"; key: Uint8Array };

function varintLen(v: number): number {
  let n = 1;
  while (v >= 0x80) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}

/** Encoded size of one op. */
export function opSize(key: Uint8Array, value: Uint8Array | null): number {
  return 1 + varintLen(key.length) + key.length + (value ? varintLen(value.length) + value.length : 0);
}

function putVarint(b: Uint8Array, p: number, v: number): number {
  while (v >= 0x80) {
    b[p++] = (v & 0x7f) | 0x80;
    v >>>= 7;
  }
  b[p++] = v;
  return p;
}

/**
 * Encodes ops (already validated) into one exact-size buffer with the sequence left as zero;
 * `setBatchSeq` fills it in once the batch's place in the order is known.
 */
export function encodeBatch(ops: readonly BatchOp[], totalSize: number): Uint8Array {
  const b = new Uint8Array(totalSize);
  writeU32(b, 8, ops.length);
  let p = BATCH_HEADER;
  for (let i = 0; i < ops.length; i++) {
    const op = ops[i];
    const key = op.key;
    b[p++] = op.type === "put" ? KIND_PUT : KIND_DEL;
    p = putVarint(b, p, key.length);
    p = putBytes(b, p, key);
    if (op.type === "put") {
      p = putVarint(b, p, op.value.length);
      p = putBytes(b, p, op.value);
    }
  }
  return b;
}

/** Copies src into b at p; short arrays by a loop (cheaper than a native set call). */
function putBytes(b: Uint8Array, p: number, src: Uint8Array): number {
  const n = src.length;
  if (n <= 32) for (let i = 0; i < n; i++) b[p + i] = src[i];
  else b.set(src, p);
  return p + n;
}

export function setBatchSeq(b: Uint8Array, seq: number): void {
  writeU32(b, 0, seq >>> 0);
  writeU32(b, 4, Math.floor(seq / 0x100000000));
}

export function batchSeq(b: Uint8Array): number {
  return new ByteReader(b).u64();
}

export function batchCount(b: Uint8Array): number {
  return new ByteReader(b, 8).u32();
}

/**
 * Calls `fn(kind, key, value, seq)` for each op; key and value are views into `b`.
 * Throws CORRUPTION (naming `file` and `offset`) if the batch does not parse exactly.
 */
export function forEachBatchOp(
  b: Uint8Array,
  fn: (kind: number, key: Uint8Array, value: Uint8Array, seq: number) => void,
  file = "batch",
  offset = 0,
): void {
  try {
    const r = new ByteReader(b);
    const seq = r.u64();
    const count = r.u32();
    for (let i = 0; i < count; i++) {
      const kind = r.u8();
      const key = r.lengthPrefixed();
      if (kind === KIND_PUT) fn(kind, key, r.lengthPrefixed(), seq + i);
      else if (kind === KIND_DEL) fn(kind, key, EMPTY, seq + i);
      else throw new RangeError(`unknown op kind ${kind}`);
    }
    if (!r.done) throw new RangeError("trailing bytes after last op");
  } catch (e) {
    if (e instanceof RangeError) throw corruption(file, offset, `bad write batch: ${e.message}`);
    throw e;
  }
}

const EMPTY = new Uint8Array(0);
