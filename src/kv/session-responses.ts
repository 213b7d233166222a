// The last Txn answer of each client session, kept beside the session (0x00 'r' + clientId) so a
// retried Txn is answered with the original result, never applied twice. Dropped with the session.
import { pack, unpack } from "msgpackr";
import { KVCorruptionError } from "./errors.ts";
import { META_PREFIX, writeInt64 } from "./keys.ts";
import type { TxnResult } from "./txn-types.ts";

export const RESPONSE_PREFIX = Uint8Array.of(META_PREFIX, 0x72);
export const RESPONSE_END = Uint8Array.of(META_PREFIX, 0x73);

/** Response keys sort by the clientId's two's-complement bits, big-endian (as session keys). */
export function responseKey(clientId: bigint): Uint8Array {
  const out = new Uint8Array(RESPONSE_PREFIX.length + 8);
  out.set(RESPONSE_PREFIX, 0);
  writeInt64(out, RESPONSE_PREFIX.length, clientId, false);
  return out;
}

/** The record: the session's commandId (i64 LE), then the result as msgpack. */
export function encodeResponse(commandId: bigint, result: TxnResult): Uint8Array {
  const body = pack(result) as Uint8Array;
  const out = new Uint8Array(8 + body.length);
  writeInt64(out, 0, commandId, true);
  out.set(body, 8);
  return out;
}

export function decodeResponse(record: Uint8Array): { commandId: bigint; result: TxnResult } {
  if (record.length < 9) throw new KVCorruptionError(`a session's Txn response record is ${record.length} bytes, too short`);
  const view = new DataView(record.buffer, record.byteOffset, record.byteLength);
  try {
    return { commandId: view.getBigInt64(0, true), result: unpack(record.subarray(8)) as TxnResult };
  } catch (error) {
    throw new KVCorruptionError(`a session's Txn response record does not decode: ${(error as Error).message}`);
  }
}
