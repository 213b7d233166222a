// What a Txn is (etcd v3's compare / success / failure), its answer, and its Raft log payload:
// the 22-byte command header with op 4 and an empty key, then the request as msgpack (FORMAT.md).
import { pack, unpack } from "msgpackr";
import { COMMAND_HEADER_BYTES, COMMAND_FORMAT_VERSION, OP_TXN } from "./command.ts";
import { KVCorruptionError } from "./errors.ts";
import { writeInt64, writeUint32LE } from "./keys.ts";
import type { KV, RangeResult, RangeSpec } from "./range.ts";

/** Op code of a Txn (DeleteRange is a Txn of one operation). kvraftpb.Op stops at 3. */
export { OP_TXN };

export type CompareTarget = "version" | "create" | "mod" | "value";
export type CompareResult = "equal" | "not_equal" | "greater" | "less";

export interface Compare {
  key: Uint8Array;
  target: CompareTarget;
  result: CompareResult;
  /** The operand of a value compare. */
  value: Uint8Array;
  /** The operand of a version / create / mod compare. */
  number: number;
}

export type TxnOp =
  | { type: "range"; range: RangeSpec }
  | { type: "put"; key: Uint8Array; value: Uint8Array; prevKv: boolean }
  | { type: "delete"; key: Uint8Array; rangeEnd: Uint8Array; prevKv: boolean };

export interface TxnRequest {
  compare: Compare[];
  success: TxnOp[];
  failure: TxnOp[];
}

export type TxnOpResult =
  | { type: "range"; range: RangeResult }
  | { type: "put"; prevKv: KV | null }
  | { type: "delete"; deleted: number; prevKvs: KV[] };

export interface TxnResult {
  succeeded: boolean;
  /** The revision of the Txn: the index of its entry. */
  revision: number;
  responses: TxnOpResult[];
  /** Set when the Txn was refused at apply (a bound every replica checks alike); nothing changed. */
  error?: string;
}

export function encodeTxnCommand(clientId: bigint, commandId: bigint, request: TxnRequest): Uint8Array {
  const body = pack(request) as Uint8Array;
  const out = new Uint8Array(COMMAND_HEADER_BYTES + body.length);
  out[0] = COMMAND_FORMAT_VERSION;
  out[1] = OP_TXN;
  writeInt64(out, 2, clientId, true);
  writeInt64(out, 10, commandId, true);
  writeUint32LE(out, 18, 0);
  out.set(body, COMMAND_HEADER_BYTES);
  return out;
}

export function decodeTxnBody(body: Uint8Array, index: number): TxnRequest {
  let request: TxnRequest;
  try {
    request = unpack(body) as TxnRequest;
  } catch (error) {
    throw new KVCorruptionError(`log entry ${index}: Txn body does not decode: ${(error as Error).message}`);
  }
  if (request === null || typeof request !== "object" || !Array.isArray(request.compare) || !Array.isArray(request.success) || !Array.isArray(request.failure)) {
    throw new KVCorruptionError(`log entry ${index}: Txn body is not a Txn`);
  }
  return request;
}
