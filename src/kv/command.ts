// The Raft log payload of one client write: a fixed 22-byte header, then the key, then the value
// (layout in FORMAT.md). Decoding hands out byte views, so applying never converts to strings.
import { KVCorruptionError } from "./errors.ts";

export const COMMAND_FORMAT_VERSION = 1;

/** Op codes; the first four are kvraftpb.Op's numbers. Get is never logged (reads use ReadIndex). */
export const OP_PUT = 0;
export const OP_APPEND = 1;
export const OP_GET = 2;
export const OP_DELETE = 3;
/** Ends a client's session: its duplicate-detection record is dropped. */
export const OP_CLOSE = 4;

export type WriteOpName = "Put" | "Append" | "Delete" | "Close";

const OP_CODES: Record<WriteOpName, number> = { Put: OP_PUT, Append: OP_APPEND, Delete: OP_DELETE, Close: OP_CLOSE };

export const COMMAND_HEADER_BYTES = 22;

export interface WriteCommand {
  op: WriteOpName;
  clientId: bigint;
  commandId: bigint;
  key: string;
  value: string;
}

/** A decoded command whose key and value are views into the entry's bytes. */
export interface DecodedCommand {
  op: number;
  clientId: bigint;
  commandId: bigint;
  key: Uint8Array;
  value: Uint8Array;
}

const encoder = new TextEncoder();

export function encodeCommand(command: WriteCommand): Uint8Array {
  const key = encoder.encode(command.key);
  const value = encoder.encode(command.value);
  const out = new Uint8Array(COMMAND_HEADER_BYTES + key.length + value.length);
  const view = new DataView(out.buffer);
  out[0] = COMMAND_FORMAT_VERSION;
  out[1] = OP_CODES[command.op];
  view.setBigInt64(2, command.clientId, true);
  view.setBigInt64(10, command.commandId, true);
  view.setUint32(18, key.length, true);
  out.set(key, COMMAND_HEADER_BYTES);
  out.set(value, COMMAND_HEADER_BYTES + key.length);
  return out;
}

export function decodeCommand(data: Uint8Array, index: number): DecodedCommand {
  if (data.length < COMMAND_HEADER_BYTES) {
    throw new KVCorruptionError(`log entry ${index}: command is ${data.length} bytes, shorter than its ${COMMAND_HEADER_BYTES}-byte header`);
  }
  if (data[0] !== COMMAND_FORMAT_VERSION) {
    throw new KVCorruptionError(`log entry ${index}: unknown command format version ${data[0]} (this build reads ${COMMAND_FORMAT_VERSION})`);
  }
  const op = data[1];
  if (op !== OP_PUT && op !== OP_APPEND && op !== OP_DELETE && op !== OP_CLOSE) {
    throw new KVCorruptionError(`log entry ${index}: unknown op code ${op}`);
  }
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const keyLength = view.getUint32(18, true);
  if (COMMAND_HEADER_BYTES + keyLength > data.length) {
    throw new KVCorruptionError(`log entry ${index}: key length ${keyLength} runs past the ${data.length}-byte command`);
  }
  return {
    op,
    clientId: view.getBigInt64(2, true),
    commandId: view.getBigInt64(10, true),
    key: data.subarray(COMMAND_HEADER_BYTES, COMMAND_HEADER_BYTES + keyLength),
    value: data.subarray(COMMAND_HEADER_BYTES + keyLength),
  };
}
