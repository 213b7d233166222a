// The Raft log payload of one client write or session registration: a fixed header (the client's
// ids, the leader's timestamp and value limit), then the key, then the value (layout in
// FORMAT.md). Decoding hands out byte views, so applying never converts to strings.
import { crc32cUpdate } from "../util/crc32c.ts";
import { KVCorruptionError } from "./errors.ts";
import { readInt64, readUint32LE, readUint64LE, writeInt64, writeUint32LE, writeUint64LE } from "./keys.ts";

export const COMMAND_FORMAT_VERSION = 2;

/** Op codes: 0, 1 and 3 are kvraftpb.Op's numbers (Get, 2, is never logged: reads use ReadIndex). */
export const OP_PUT = 0;
export const OP_APPEND = 1;
export const OP_DELETE = 3;
/** A Txn (and DeleteRange): key empty, value = the request as msgpack (txn-types.ts). */
export const OP_TXN = 4;
/** RegisterSession: the new session's id is this entry's index. */
export const OP_REGISTER = 5;
/** Many client writes in one entry: key empty, value = the commands (batch-command.ts). */
export const OP_BATCH = 6;

export type WriteOpName = "Put" | "Append" | "Delete" | "Register";

const OP_CODES: Record<WriteOpName, number> = { Put: OP_PUT, Append: OP_APPEND, Delete: OP_DELETE, Register: OP_REGISTER };

/** Flag bit: clientId is a registered session; if the session is gone, the command is refused. */
const FLAG_REGISTERED = 1;

export const COMMAND_HEADER_BYTES = 35;
const V1_HEADER_BYTES = 22;

export interface WriteCommand {
  op: WriteOpName;
  clientId: bigint;
  commandId: bigint;
  key: string;
  value: string;
  /** clientId came from RegisterSession. */
  registered?: boolean;
  /** The proposing leader's clock (ms since the epoch): the log's time, for session expiry. */
  timestamp?: number;
  /** The proposer's value limit: a write whose resulting value is larger is refused at apply (0: none). */
  maxValueBytes?: number;
}

/** A decoded command whose key and value are views into the entry's bytes. */
export interface DecodedCommand {
  op: number;
  registered: boolean;
  clientId: bigint;
  commandId: bigint;
  /** 0 in a version-1 entry (no time). */
  timestamp: number;
  /** 0: no limit (a version-1 entry). */
  maxValueBytes: number;
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
  out[2] = command.registered ? FLAG_REGISTERED : 0;
  writeInt64(out, 3, command.clientId, true);
  writeInt64(out, 11, command.commandId, true);
  writeUint64LE(out, 19, command.timestamp ?? 0);
  writeUint32LE(out, 27, command.maxValueBytes ?? 0);
  writeUint32LE(out, 31, keyBytes);
  writeString(out, COMMAND_HEADER_BYTES, command.key, keyBytes);
  writeString(out, COMMAND_HEADER_BYTES + keyBytes, command.value, valueBytes);
  return out;
}

/** Writes `text` (`bytes` long in UTF-8) at `offset`: ASCII by a plain loop, anything else by encodeInto. */
export function writeString(out: Uint8Array, offset: number, text: string, bytes: number): void {
  if (bytes === text.length) {
    // As many bytes as code units: every character is ASCII.
    for (let i = 0; i < bytes; i++) out[offset + i] = text.charCodeAt(i);
    return;
  }
  encoder.encodeInto(text, out.subarray(offset, offset + bytes));
}

export function decodeCommand(data: Uint8Array, index: number): DecodedCommand {
  const version = data[0];
  if (version !== COMMAND_FORMAT_VERSION && version !== 1) {
    throw new KVCorruptionError(`log entry ${index}: unknown command format version ${data[0]} (this build reads 1 and ${COMMAND_FORMAT_VERSION})`);
  }
  const headerBytes = version === 1 ? V1_HEADER_BYTES : COMMAND_HEADER_BYTES;
  if (data.length < headerBytes) {
    throw new KVCorruptionError(`log entry ${index}: command is ${data.length} bytes, shorter than its ${headerBytes}-byte header`);
  }
  const op = data[1];
  if (op !== OP_PUT && op !== OP_APPEND && op !== OP_DELETE && ((op !== OP_REGISTER && op !== OP_TXN && op !== OP_BATCH) || version === 1)) {
    throw new KVCorruptionError(`log entry ${index}: unknown op code ${op}`);
  }
  const keyLength = readUint32LE(data, headerBytes - 4);
  if (headerBytes + keyLength > data.length) {
    throw new KVCorruptionError(`log entry ${index}: key length ${keyLength} runs past the ${data.length}-byte command`);
  }
  const v1 = version === 1;
  return {
    op,
    registered: !v1 && (data[2]! & FLAG_REGISTERED) !== 0,
    clientId: readInt64(data, v1 ? 2 : 3, true),
    commandId: readInt64(data, v1 ? 10 : 11, true),
    timestamp: v1 ? 0 : readUint64LE(data, 19),
    maxValueBytes: v1 ? 0 : readUint32LE(data, 27),
    key: data.subarray(headerBytes, headerBytes + keyLength),
    value: data.subarray(headerBytes + keyLength),
  };
}

const FINGERPRINT_EDGE_BYTES = 32;

/**
 * A 32-bit fingerprint of what a command does (op, key, value length, the value's first and last
 * 32 bytes): tells a retry of a command from a different command sent under the same commandId,
 * at a cost that does not grow with the value.
 */
export function commandFingerprint(command: Pick<DecodedCommand, "op" | "key" | "value">): number {
  const head = FINGERPRINT_HEAD;
  head[0] = command.op;
  writeUint32LE(head, 1, command.key.length);
  writeUint32LE(head, 5, command.value.length);
  let crc = crc32cUpdate(0, head);
  crc = crc32cUpdate(crc, command.key);
  const value = command.value;
  if (value.length <= 2 * FINGERPRINT_EDGE_BYTES) return crc32cUpdate(crc, value) >>> 0;
  // Ranges, not subarrays: no view objects per command on the apply path.
  crc = crc32cUpdate(crc, value, 0, FINGERPRINT_EDGE_BYTES);
  return crc32cUpdate(crc, value, value.length - FINGERPRINT_EDGE_BYTES, value.length) >>> 0;
}

/** Scratch for the fingerprint's fixed head (op, key length, value length): filled and read at once. */
const FINGERPRINT_HEAD = new Uint8Array(9);
