// Write batches: the atomic unit of the WAL. A batch is encoded once into one buffer that is
// written to the log and whose key/value bytes the memtable then references without copying.
import { ByteReader, KIND_DEL, KIND_PUT, putVarint, varintLength, writeU32 } from "./coding.ts";
import { corruption, LsmError } from "./errors.ts";

export const BATCH_HEADER = 12; // seq u64 + count u32

export type BatchOp =
  | { type: "put"; key: Uint8Array; value: Uint8Array }
  | { type: "del"; key: Uint8Array };

/** Encoded size of one op. */
export function opSize(key: Uint8Array, value: Uint8Array | null): number {
  return 1 + varintLength(key.length) + key.length + (value ? varintLength(value.length) + value.length : 0);
}

/** The limits a batch is checked against (DB options). */
export interface BatchLimits {
  maxKeyBytes: number;
  maxValueBytes: number;
  maxBatchBytes: number;
}

export function checkKey(key: unknown, limits: BatchLimits): asserts key is Uint8Array {
  if (!(key instanceof Uint8Array)) throw new LsmError("INVALID_ARGUMENT", `key must be a Uint8Array, got ${typeof key}`);
  if (key.length > limits.maxKeyBytes) {
    throw new LsmError("LIMIT", `key of ${key.length} bytes exceeds maxKeyBytes (${limits.maxKeyBytes})`);
  }
}

/** Validates ops (types and limits, with an error naming the bad one) and encodes them. */
export function encodeOps(ops: readonly BatchOp[], limits: BatchLimits): Uint8Array {
  if (!Array.isArray(ops)) throw new LsmError("INVALID_ARGUMENT", "write() takes an array of operations");
  let size = BATCH_HEADER;
  for (let i = 0; i < ops.length; i++) {
    const op = ops[i];
    if (op === null || typeof op !== "object") throw new LsmError("INVALID_ARGUMENT", `operation ${i} is not an object`);
    checkKey(op.key, limits);
    if (op.type === "put") {
      const v = op.value;
      if (!(v instanceof Uint8Array)) throw new LsmError("INVALID_ARGUMENT", `value of operation ${i} must be a Uint8Array`);
      if (v.length > limits.maxValueBytes) {
        throw new LsmError("LIMIT", `value of ${v.length} bytes exceeds maxValueBytes (${limits.maxValueBytes})`);
      }
      size += opSize(op.key, v);
    } else if (op.type === "del") {
      size += opSize(op.key, null);
    } else {
      throw new LsmError("INVALID_ARGUMENT", `operation ${i} has unknown type ${String((op as { type: unknown }).type)}`);
    }
    if (size > limits.maxBatchBytes) {
      throw new LsmError("LIMIT", `batch exceeds maxBatchBytes (${limits.maxBatchBytes}); split it`);
    }
  }
  return encodeBatch(ops, size);
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
