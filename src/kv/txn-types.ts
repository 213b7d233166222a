// What a Txn is (etcd v3's compare / success / failure), its answer, and its Raft log payload:
// the 22-byte command header with op 4 and an empty key, then the request as msgpack (FORMAT.md).
import { pack, unpack } from "msgpackr";
import { COMMAND_HEADER_BYTES, OP_TXN, encodeCommand } from "./command.ts";
import { KVCorruptionError } from "./errors.ts";
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

/** The log payload of a Txn: the command header (format 2, op 4, key length 0), then the request as msgpack. */
export function encodeTxnCommand(ids: { clientId: bigint; commandId: bigint; registered: boolean; timestamp: number }, request: TxnRequest): Uint8Array {
  const body = pack(request) as Uint8Array;
  const header = encodeCommand({ op: "Put", clientId: ids.clientId, commandId: ids.commandId, key: "", value: "", registered: ids.registered, timestamp: ids.timestamp });
  const out = new Uint8Array(COMMAND_HEADER_BYTES + body.length);
  out.set(header, 0);
  out[1] = OP_TXN;
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
