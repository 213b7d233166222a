// The Raft log payload of a batch entry: many client writes (each with its own session ids) in one
// entry, applied in order as one unit at one revision (layout in FORMAT.md). The proposer puts a
// key in an entry at most once, so each key has at most one change per revision.
import { COMMAND_FORMAT_VERSION, COMMAND_HEADER_BYTES, OP_APPEND, OP_BATCH, OP_DELETE, OP_PUT, writeString, type DecodedCommand, type WriteCommand } from "./command.ts";
import { KVCorruptionError } from "./errors.ts";
import { readInt64, readUint32LE, writeInt64, writeUint32LE, writeUint64LE } from "./keys.ts";

/** Bytes in front of each command of a batch body: op, flags, clientId, commandId, key and value lengths. */
export const BATCH_ITEM_HEADER_BYTES = 26;
/** Bytes of the body before the first command: the count. */
const BATCH_COUNT_BYTES = 4;

const FLAG_REGISTERED = 1;
const OP_CODES = { Put: OP_PUT, Append: OP_APPEND, Delete: OP_DELETE } as const;

/** A client write on its way into a batch entry, with its UTF-8 sizes counted once. */
export interface BatchItem {
  command: WriteCommand & { op: "Put" | "Append" | "Delete" };
  keyBytes: number;
  valueBytes: number;
}

export function batchItem(command: BatchItem["command"]): BatchItem {
  return { command, keyBytes: Buffer.byteLength(command.key, "utf8"), valueBytes: Buffer.byteLength(command.value, "utf8") };
}

/** Bytes `item` adds to a batch entry. */
export function batchItemBytes(item: BatchItem): number {
  return BATCH_ITEM_HEADER_BYTES + item.keyBytes + item.valueBytes;
}

/** Bytes of a batch entry holding items of `itemBytes` bytes in total. */
export function batchEntryBytes(itemBytes: number): number {
  return COMMAND_HEADER_BYTES + BATCH_COUNT_BYTES + itemBytes;
}

/**
 * One batch entry: the command header (op 6; clientId 0, the proposer's nonce as commandId, the
 * leader's time and value limit for every command), then the count and each command.
 */
export function encodeBatchCommand(items: readonly BatchItem[], header: { nonce: bigint; timestamp: number; maxValueBytes: number }): Uint8Array {
  let bytes = 0;
  for (const item of items) bytes += batchItemBytes(item);
  const out = new Uint8Array(batchEntryBytes(bytes));
  out[0] = COMMAND_FORMAT_VERSION;
  out[1] = OP_BATCH;
  writeInt64(out, 11, header.nonce, true);
  writeUint64LE(out, 19, header.timestamp);
  writeUint32LE(out, 27, header.maxValueBytes);
  // Key length (offset 31) stays 0: the body is the value.
  let at = COMMAND_HEADER_BYTES;
  writeUint32LE(out, at, items.length);
  at += BATCH_COUNT_BYTES;
  for (const { command, keyBytes, valueBytes } of items) {
    out[at] = OP_CODES[command.op];
    out[at + 1] = command.registered ? FLAG_REGISTERED : 0;
    writeInt64(out, at + 2, command.clientId, true);
    writeInt64(out, at + 10, command.commandId, true);
    writeUint32LE(out, at + 18, keyBytes);
    writeUint32LE(out, at + 22, valueBytes);
    at += BATCH_ITEM_HEADER_BYTES;
    writeString(out, at, command.key, keyBytes);
    at += keyBytes;
    writeString(out, at, command.value, valueBytes);
    at += valueBytes;
  }
  return out;
}

/**
 * The commands of a batch entry whose header was decoded as `header`: keys and values are views
 * into the entry's bytes; each takes the entry's time and value limit. Throws KVCorruptionError on a bad body.
 */
export function decodeBatchCommands(header: DecodedCommand, index: number): DecodedCommand[] {
  const body = header.value;
  if (header.key.length !== 0 || body.length < BATCH_COUNT_BYTES) {
    throw new KVCorruptionError(`log entry ${index}: batch entry has a ${header.key.length}-byte key and a ${body.length}-byte body`);
  }
  const count = readUint32LE(body, 0);
  // Every command takes at least its header: a count beyond that is corruption, not a huge allocation.
  if (count * BATCH_ITEM_HEADER_BYTES > body.length) {
    throw new KVCorruptionError(`log entry ${index}: batch entry claims ${count} commands in ${body.length} bytes`);
  }
  const commands = new Array<DecodedCommand>(count);
  let at = BATCH_COUNT_BYTES;
  for (let i = 0; i < count; i++) {
    if (at + BATCH_ITEM_HEADER_BYTES > body.length) throw new KVCorruptionError(`log entry ${index}: batch command ${i} runs past the entry`);
    const op = body[at]!;
    if (op !== OP_PUT && op !== OP_APPEND && op !== OP_DELETE) throw new KVCorruptionError(`log entry ${index}: batch command ${i} has op code ${op}`);
    const keyLength = readUint32LE(body, at + 18);
    const valueLength = readUint32LE(body, at + 22);
    const keyStart = at + BATCH_ITEM_HEADER_BYTES;
    const end = keyStart + keyLength + valueLength;
    if (end > body.length) throw new KVCorruptionError(`log entry ${index}: batch command ${i} runs past the entry`);
    commands[i] = {
      op,
      registered: (body[at + 1]! & FLAG_REGISTERED) !== 0,
      clientId: readInt64(body, at + 2, true),
      commandId: readInt64(body, at + 10, true),
      timestamp: header.timestamp,
      maxValueBytes: header.maxValueBytes,
      key: body.subarray(keyStart, keyStart + keyLength),
      value: body.subarray(keyStart + keyLength, end),
    };
    at = end;
  }
  if (at !== body.length) throw new KVCorruptionError(`log entry ${index}: ${body.length - at} bytes after the last batch command`);
  return commands;
}
