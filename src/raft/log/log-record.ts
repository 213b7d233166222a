// The byte layout of the durable Raft log (FORMAT.md): CRC-framed records and their payloads.
// Pure encoding and decoding; the files and fsyncs live in log-store.ts, recovery policy in log-recovery.ts.

import { crc32c, maskCrc, unmaskCrc } from "../../util/crc32c.ts";
import { decodeMembership, encodeMembership, membershipOfMeta } from "../core/membership.ts";
import type { Entry, EntryType, HardState, NodeId, SnapshotMeta } from "../types.ts";

/** masked CRC (u32) + payload length (u32) + record type (u8). */
export const RECORD_HEADER_BYTES = 9;

export const enum RecordType {
  /** First record of every segment: format magic, version and the segment's sequence number. */
  SegmentHeader = 1,
  Entry = 2,
  HardState = 3,
  /** resetToSnapshot: every earlier entry is discarded; the log continues after the meta's index. */
  Reset = 4,
  /** The compaction point, in the compaction-meta file. */
  CompactionMeta = 5,
}
const MAX_RECORD_TYPE = 5;

export const SEGMENT_MAGIC = 0x4c52564b; // "KVRL" little-endian
export const FORMAT_VERSION = 1;
const ENTRY_FIXED_BYTES = 17;
const HARD_STATE_BYTES = 20;
const SEGMENT_HEADER_BYTES = 14;
/** Guards decoding against absurd member counts in a damaged but checksum-valid record. */
const MAX_MEMBERS = 4096;

const U32 = 0x1_0000_0000;

function putU64(view: DataView, at: number, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`not a u64 safe integer: ${value}`);
  view.setUint32(at, value % U32, true);
  view.setUint32(at + 4, Math.floor(value / U32), true);
}

function getU64(view: DataView, at: number): number {
  return view.getUint32(at, true) + view.getUint32(at + 4, true) * U32;
}

export function entryRecordBytes(entry: Entry): number {
  return RECORD_HEADER_BYTES + ENTRY_FIXED_BYTES + entry.data.length;
}
export const HARD_STATE_RECORD_BYTES = RECORD_HEADER_BYTES + HARD_STATE_BYTES;
export const SEGMENT_HEADER_RECORD_BYTES = RECORD_HEADER_BYTES + SEGMENT_HEADER_BYTES;
export function metaRecordBytes(meta: SnapshotMeta): number {
  return RECORD_HEADER_BYTES + 20 + 4 * meta.members.length + (hasMembershipExtras(meta) ? encodeMembership(membershipOfMeta(meta)).length : 0);
}

/** Learners or addresses: written as a membership record after the voters (absent otherwise). */
function hasMembershipExtras(meta: SnapshotMeta): boolean {
  return (meta.learners !== undefined && meta.learners.length > 0) || (meta.addresses !== undefined && Object.keys(meta.addresses).length > 0);
}

/** Writes the frame around a payload already at buf[at + 9, at + 9 + length). */
function seal(buf: Uint8Array, view: DataView, at: number, type: RecordType, length: number): number {
  view.setUint32(at + 4, length, true);
  buf[at + 8] = type;
  const end = at + RECORD_HEADER_BYTES + length;
  view.setUint32(at, maskCrc(crc32c(buf, at + 4, end)), true);
  return end;
}

export function writeEntryRecord(buf: Uint8Array, view: DataView, at: number, entry: Entry): number {
  const p = at + RECORD_HEADER_BYTES;
  putU64(view, p, entry.index);
  putU64(view, p + 8, entry.term);
  buf[p + 16] = entry.type;
  buf.set(entry.data, p + ENTRY_FIXED_BYTES);
  return seal(buf, view, at, RecordType.Entry, ENTRY_FIXED_BYTES + entry.data.length);
}

export function writeHardStateRecord(buf: Uint8Array, view: DataView, at: number, hs: HardState): number {
  const p = at + RECORD_HEADER_BYTES;
  putU64(view, p, hs.term);
  view.setInt32(p + 8, hs.votedFor, true);
  putU64(view, p + 12, hs.commitIndex);
  return seal(buf, view, at, RecordType.HardState, HARD_STATE_BYTES);
}

export function writeSegmentHeaderRecord(buf: Uint8Array, view: DataView, at: number, seq: number): number {
  const p = at + RECORD_HEADER_BYTES;
  view.setUint32(p, SEGMENT_MAGIC, true);
  view.setUint16(p + 4, FORMAT_VERSION, true);
  putU64(view, p + 6, seq);
  return seal(buf, view, at, RecordType.SegmentHeader, SEGMENT_HEADER_BYTES);
}

export function writeMetaRecord(
  buf: Uint8Array,
  view: DataView,
  at: number,
  type: RecordType.Reset | RecordType.CompactionMeta,
  meta: SnapshotMeta,
): number {
  const p = at + RECORD_HEADER_BYTES;
  putU64(view, p, meta.index);
  putU64(view, p + 8, meta.term);
  view.setUint32(p + 16, meta.members.length, true);
  meta.members.forEach((member, i) => view.setUint32(p + 20 + 4 * i, member, true));
  let length = 20 + 4 * meta.members.length;
  if (hasMembershipExtras(meta)) {
    const membership = encodeMembership(membershipOfMeta(meta));
    buf.set(membership, p + length);
    length += membership.length;
  }
  return seal(buf, view, at, type, length);
}

/** One record framed at `offset`, its payload at [payloadStart, end). */
export interface RawRecord {
  type: RecordType;
  payloadStart: number;
  end: number;
}

/** Why bytes at an offset are not a record. */
export type FrameProblem = "truncated header" | "truncated payload" | "unknown record type" | "checksum mismatch";

/** Reads the frame at `offset` of buf[0, limit); a problem when it is not a whole, valid record. */
export function readFrame(buf: Uint8Array, view: DataView, offset: number, limit: number): RawRecord | FrameProblem {
  if (limit - offset < RECORD_HEADER_BYTES) return "truncated header";
  const length = view.getUint32(offset + 4, true);
  const type = buf[offset + 8];
  if (type === 0 || type > MAX_RECORD_TYPE) return "unknown record type";
  const end = offset + RECORD_HEADER_BYTES + length;
  if (end > limit) return "truncated payload";
  const expected = unmaskCrc(view.getUint32(offset, true));
  if (crc32c(buf, offset + 4, end) !== expected) return "checksum mismatch";
  return { type: type as RecordType, payloadStart: offset + RECORD_HEADER_BYTES, end };
}

/** Decoders return a message instead of a value when a checksum-valid payload is malformed. */
export function decodeEntry(buf: Uint8Array, view: DataView, rec: RawRecord): Entry | string {
  const p = rec.payloadStart;
  if (rec.end - p < ENTRY_FIXED_BYTES) return "entry record shorter than its fixed fields";
  return {
    index: getU64(view, p),
    term: getU64(view, p + 8),
    type: buf[p + 16] as EntryType,
    // A copy: a subarray would pin the whole segment file's buffer in memory.
    data: buf.slice(p + ENTRY_FIXED_BYTES, rec.end),
  };
}

export function decodeHardState(view: DataView, rec: RawRecord): HardState | string {
  const p = rec.payloadStart;
  if (rec.end - p !== HARD_STATE_BYTES) return "hard state record has the wrong length";
  return { term: getU64(view, p), votedFor: view.getInt32(p + 8, true) as NodeId, commitIndex: getU64(view, p + 12) };
}

export function decodeSegmentHeader(view: DataView, rec: RawRecord): { seq: number } | string {
  const p = rec.payloadStart;
  if (rec.end - p !== SEGMENT_HEADER_BYTES) return "segment header has the wrong length";
  if (view.getUint32(p, true) !== SEGMENT_MAGIC) return "segment header has the wrong magic";
  const version = view.getUint16(p + 4, true);
  if (version !== FORMAT_VERSION) return `segment format version ${version} is not supported (expected ${FORMAT_VERSION})`;
  return { seq: getU64(view, p + 6) };
}

export function decodeMeta(view: DataView, rec: RawRecord): SnapshotMeta | string {
  const p = rec.payloadStart;
  if (rec.end - p < 20) return "snapshot meta record too short";
  const count = view.getUint32(p + 16, true);
  if (count > MAX_MEMBERS || rec.end - p < 20 + 4 * count) return "snapshot meta record has a bad member count";
  const members: NodeId[] = [];
  for (let i = 0; i < count; i++) members.push(view.getUint32(p + 20 + 4 * i, true));
  const meta: SnapshotMeta = { index: getU64(view, p), term: getU64(view, p + 8), members };
  const extrasAt = p + 20 + 4 * count;
  if (extrasAt === rec.end) return meta;
  try {
    const membership = decodeMembership(new Uint8Array(view.buffer, view.byteOffset + extrasAt, rec.end - extrasAt));
    if (membership.voters.join() !== [...members].sort((a, b) => a - b).join()) return "snapshot meta record's membership disagrees with its voters";
    if (membership.learners.length > 0) meta.learners = membership.learners;
    if (Object.keys(membership.addresses).length > 0) meta.addresses = membership.addresses;
    return meta;
  } catch (err) {
    return `snapshot meta record's membership is malformed: ${(err as Error).message}`;
  }
}

/**
 * After a bad frame at `offset`: is there any valid record later in buf[0, limit)? If so the damage
 * is not a torn tail. Scans every offset; a CRC is computed only where type and length fit.
 */
export function findValidFrameAfter(buf: Uint8Array, view: DataView, offset: number, limit: number): number {
  for (let at = offset + 1; at + RECORD_HEADER_BYTES <= limit; at++) {
    const type = buf[at + 8];
    if (type === 0 || type > MAX_RECORD_TYPE) continue;
    if (typeof readFrame(buf, view, at, limit) !== "string") return at;
  }
  return -1;
}
