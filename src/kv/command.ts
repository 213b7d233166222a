// The Raft log payload of one client write: a fixed 22-byte header, then the key, then the value
// (layout in FORMAT.md). Decoding hands out byte views, so applying never converts to strings.
import { KVCorruptionError } from "./errors.ts";
import { readInt64, readUint32LE, writeInt64, writeUint32LE } from "./keys.ts";

export const COMMAND_FORMAT_VERSION = 1;

/** Op codes: kvraftpb.Op's numbers. Get (2) is never logged: reads use ReadIndex. */
export const OP_PUT = 0;
export const OP_APPEND = 1;
export const OP_DELETE = 3;

export type WriteOpName = "Put" | "Append" | "Delete";

const OP_CODES: Record<WriteOpName, number> = { Put: OP_PUT, Append: OP_APPEND, Delete: OP_DELETE };

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
  // One allocation: the byte lengths first, then the strings written in place.
  const keyBytes = Buffer.byteLength(command.key, "utf8");
  const valueBytes = Buffer.byteLength(command.value, "utf8");
  const out = new Uint8Array(COMMAND_HEADER_BYTES + keyBytes + valueBytes);
  out[0] = COMMAND_FORMAT_VERSION;
  out[1] = OP_CODES[command.op];
  writeInt64(out, 2, command.clientId, true);
  writeInt64(out, 10, command.commandId, true);
  writeUint32LE(out, 18, keyBytes);
  writeString(out, COMMAND_HEADER_BYTES, command.key, keyBytes);
  writeString(out, COMMAND_HEADER_BYTES + keyBytes, command.value, valueBytes);
  return out;
}

/** Writes `text` (`bytes` long in UTF-8) at `offset`: ASCII by a plain loop, anything else by encodeInto. */
function writeString(out: Uint8Array, offset: number, text: string, bytes: number): void {
  if (bytes === text.length) {
    // As many bytes as code units: every character is ASCII.
    for (let i = 0; i < bytes; i++) out[offset + i] = text.charCodeAt(i);
    return;
  }
  encoder.encodeInto(text, out.subarray(offset, offset + bytes));
}

export function decodeCommand(data: Uint8Array, index: number): DecodedCommand {
  if (data.length < COMMAND_HEADER_BYTES) {
    throw new KVCorruptionError(`log entry ${index}: command is ${data.length} bytes, shorter than its ${COMMAND_HEADER_BYTES}-byte header`);
  }
  if (data[0] !== COMMAND_FORMAT_VERSION) {
    throw new KVCorruptionError(`log entry ${index}: unknown command format version ${data[0]} (this build reads ${COMMAND_FORMAT_VERSION})`);
  }
  const op = data[1];
  if (op !== OP_PUT && op !== OP_APPEND && op !== OP_DELETE) {
    throw new KVCorruptionError(`log entry ${index}: unknown op code ${op}`);
  }
  const keyLength = readUint32LE(data, 18);
  if (COMMAND_HEADER_BYTES + keyLength > data.length) {
    throw new KVCorruptionError(`log entry ${index}: key length ${keyLength} runs past the ${data.length}-byte command`);
  }
  return {
    op,
    clientId: readInt64(data, 2, true),
    commandId: readInt64(data, 10, true),
    key: data.subarray(COMMAND_HEADER_BYTES, COMMAND_HEADER_BYTES + keyLength),
    value: data.subarray(COMMAND_HEADER_BYTES + keyLength),
  };
}
