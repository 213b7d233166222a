// Txn: compares, then the success or the failure operations, applied atomically in one log entry
// at its revision, identically on every replica; exactly once through the client's session.
// Validation (before proposing) and evaluation (at apply) both live here.
import { decodeStored } from "./revisions.ts";
import type { ApplyBatch } from "./apply-batch.ts";
import type { DecodedCommand } from "./command.ts";
import { InvalidArgumentError } from "./errors.ts";
import { userKeyFromBytes } from "./keys.ts";
import { DEFAULT_RANGE_LIMITS, checkRangeSpec, compareBytes, keysInRange, rangeBounds, scanRange, toKV, type KV, type RangeLimits } from "./range.ts";
import { decodeResponse, encodeResponse, responseKey } from "./session-responses.ts";
import { OP_TXN, decodeTxnBody, type Compare, type TxnOp, type TxnOpResult, type TxnRequest, type TxnResult } from "./txn-types.ts";

export { OP_TXN };

export interface TxnLimits extends RangeLimits {
  /** Compares, and operations of each branch, at most. Default 128 (etcd's default). */
  maxTxnOps?: number;
  /** Keys one DeleteRange (or a Txn's delete operations together) may remove. Default 100,000. */
  maxDeleteKeys?: number;
  /** Bytes of keys and values in one Txn's compares and operations. Default 1.5 MiB (etcd's request limit). */
  maxTxnBytes?: number;
}

export const DEFAULT_TXN_LIMITS: Required<TxnLimits> = { ...DEFAULT_RANGE_LIMITS, maxTxnOps: 128, maxDeleteKeys: 100_000, maxTxnBytes: 1536 << 10 };

export function txnLimits(limits: TxnLimits | undefined): Required<TxnLimits> {
  return { ...DEFAULT_TXN_LIMITS, ...Object.fromEntries(Object.entries(limits ?? {}).filter(([, v]) => v !== undefined)) };
}

/** Checks a Txn before it is proposed; throws InvalidArgumentError naming the first problem. */
export function validateTxn(request: TxnRequest, limits: Required<TxnLimits>, maxKeyBytes: number, maxValueBytes: number): void {
  const { maxTxnOps } = limits;
  for (const [name, list] of [["compares", request.compare], ["success operations", request.success], ["failure operations", request.failure]] as const) {
    if (list.length > maxTxnOps) throw new InvalidArgumentError(`the Txn has ${list.length} ${name}; at most ${maxTxnOps} are allowed`);
  }
  let bytes = 0;
  for (const c of request.compare) bytes += c.key.length + c.value.length;
  for (const op of [...request.success, ...request.failure]) {
    bytes += op.type === "range" ? op.range.key.length + op.range.rangeEnd.length : op.type === "put" ? op.key.length + op.value.length : op.key.length + op.rangeEnd.length;
  }
  if (bytes > limits.maxTxnBytes) throw new InvalidArgumentError(`the Txn holds ${bytes} bytes of keys and values; at most ${limits.maxTxnBytes} are allowed: split it`);
  const checkKey = (key: Uint8Array, what: string): void => {
    if (key.length > maxKeyBytes) throw new InvalidArgumentError(`the ${what}'s key is ${key.length} bytes; keys are limited to ${maxKeyBytes} bytes`);
  };
  request.compare.forEach((c, i) => {
    if (c.key.length === 0) throw new InvalidArgumentError(`compare ${i} has an empty key`);
    checkKey(c.key, `compare ${i}`);
    if (c.target !== "value" && (!Number.isSafeInteger(c.number) || c.number < 0)) {
      throw new InvalidArgumentError(`compare ${i} has ${c.target} ${c.number}: revisions and versions are non-negative integers`);
    }
  });
  for (const [branch, ops] of [["success", request.success], ["failure", request.failure]] as const) {
    const puts: Uint8Array[] = [];
    const deletes: { start: Uint8Array; end: Uint8Array }[] = [];
    ops.forEach((op, i) => {
      const what = `${branch} operation ${i} (${op.type})`;
      switch (op.type) {
        case "range":
          checkKey(op.range.key, what);
          checkRangeSpec(op.range, limits, what);
          break;
        case "put":
          if (op.key.length === 0) throw new InvalidArgumentError(`the ${what} has an empty key`);
          checkKey(op.key, what);
          if (op.value.length > maxValueBytes) throw new InvalidArgumentError(`the ${what}'s value is ${op.value.length} bytes; values are limited to ${maxValueBytes} bytes`);
          puts.push(userKeyFromBytes(op.key));
          break;
        case "delete":
          checkKey(op.key, what);
          deletes.push(rangeBounds(op.key, op.rangeEnd, what));
          break;
      }
    });
    // As etcd: one key changed at most once per Txn, so each revision has one event per key.
    const sorted = [...puts].sort(compareBytes);
    for (let i = 1; i < sorted.length; i++) {
      if (compareBytes(sorted[i - 1]!, sorted[i]!) === 0) throw new InvalidArgumentError(`the Txn's ${branch} operations put key ${show(sorted[i]!.subarray(1))} twice`);
    }
    for (const key of puts) {
      for (const d of deletes) {
        if (compareBytes(key, d.start) >= 0 && compareBytes(key, d.end) < 0) {
          throw new InvalidArgumentError(`the Txn's ${branch} operations both put and delete key ${show(key.subarray(1))}`);
        }
      }
    }
  }
}

/** Applies a Txn entry's request at `index` (its revision). */
export function applyTxn(command: DecodedCommand, batch: ApplyBatch, index: number, limits: TxnLimits): TxnResult {
  return evaluate(decodeTxnBody(command.value, index), batch, index, txnLimits(limits));
}

/** Keeps a session's Txn answer beside it, for a retry of the same command. */
export function rememberTxn(batch: ApplyBatch, clientId: bigint, commandId: bigint, result: TxnResult): void {
  batch.setMeta(responseKey(clientId), encodeResponse(commandId, result));
}

/** The answer kept for a retried Txn, or undefined when the session moved on since. */
export function retriedTxn(batch: ApplyBatch, clientId: bigint, commandId: bigint): TxnResult | undefined {
  const record = batch.meta(responseKey(clientId));
  const known = record === null ? null : decodeResponse(record);
  return known !== null && known.commandId === commandId ? known.result : undefined;
}

function evaluate(request: TxnRequest, batch: ApplyBatch, revision: number, limits: Required<TxnLimits>): TxnResult {
  const succeeded = request.compare.every((c) => compare(c, batch));
  const ops = succeeded ? request.success : request.failure;
  // A bound checked before anything changes, so a refused Txn changes nothing on any replica.
  let deleting = 0;
  const deleteKeys: Uint8Array[][] = [];
  for (const op of ops) {
    if (op.type !== "delete") continue;
    const keys = keysInRange(batch.store, op.key, op.rangeEnd, batch);
    deleting += keys.length;
    if (deleting > limits.maxDeleteKeys) {
      return { succeeded, revision, responses: [], error: `the delete operations cover more than ${limits.maxDeleteKeys} keys; delete in smaller ranges` };
    }
    deleteKeys.push(keys);
  }
  const budget = { bytes: limits.maxRangeBytes };
  const responses: TxnOpResult[] = [];
  let d = 0;
  for (const op of ops) responses.push(applyOp(op, batch, budget, op.type === "delete" ? deleteKeys[d++]! : []));
  return { succeeded, revision, responses };
}

function applyOp(op: TxnOp, batch: ApplyBatch, budget: { bytes: number }, deleteKeys: Uint8Array[]): TxnOpResult {
  switch (op.type) {
    case "range":
      return { type: "range", range: scanRange(batch.store, op.range, budget, batch) };
    case "put": {
      const prev = batch.put(userKeyFromBytes(op.key), op.value);
      return { type: "put", prevKv: op.prevKv && prev !== null ? toKV(op.key, prev) : null };
    }
    case "delete": {
      const prevKvs: KV[] = [];
      let deleted = 0;
      for (const key of deleteKeys) {
        const prev = batch.remove(key);
        if (prev === null) continue;
        deleted++;
        if (op.prevKv) prevKvs.push(toKV(key.slice(1), prev));
      }
      return { type: "delete", deleted, prevKvs };
    }
  }
}

/** One compare against the key's state at this point of the batch (etcd's rules for a missing key). */
function compare(c: Compare, batch: ApplyBatch): boolean {
  const stored = batch.current(userKeyFromBytes(c.key));
  let order: number;
  if (c.target === "value") {
    // A missing key has no value to compare: the compare fails (as etcd).
    if (stored === null) return false;
    order = compareBytes(decodeStored(stored).value, c.value);
  } else {
    const meta = stored === null ? { createRevision: 0, modRevision: 0, version: 0 } : decodeStored(stored);
    const actual = c.target === "version" ? meta.version : c.target === "create" ? meta.createRevision : meta.modRevision;
    order = actual - c.number;
  }
  switch (c.result) {
    case "equal":
      return order === 0;
    case "not_equal":
      return order !== 0;
    case "greater":
      return order > 0;
    case "less":
      return order < 0;
  }
}

function show(bytes: Uint8Array): string {
  return JSON.stringify(Buffer.from(bytes).toString("utf8").slice(0, 64));
}
