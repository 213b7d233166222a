// raftpb.Message in protobuf wire format, written and read by hand for the peer stream: JS numbers
// instead of bigint per uint64, one buffer per frame, no reflection. Byte-identical in meaning to
// the generated code (raft.proto is the schema; codec.test.ts checks both ways against protobuf-es).
//
// Numbers are uint64 on the wire, written as 64-bit two's complement (so NONE = -1 survives), and
// must be safe integers both ways; anything else is a RaftCodecError.

import { EntryType, type Entry, type Message, type SnapshotMeta } from "../../raft/types.ts";
import { type FlatMessage, RaftCodecError, emptyFlat, fromFlat, toFlat } from "./raft-codec.ts";

// Wire types (protobuf encoding spec).
const VARINT = 0;
const FIXED64 = 1;
const LEN = 2;
const FIXED32 = 5;

const TWO_32 = 4294967296;

/** Bytes of a varint for a safe integer (10 for a negative one, as uint64 two's complement). */
function varintSize(n: number): number {
  if (n < 0) return 10;
  if (n < 0x80) return 1;
  if (n < 0x4000) return 2;
  if (n < 0x200000) return 3;
  if (n < 0x10000000) return 4;
  let size = 4;
  n = Math.floor(n / 0x10000000);
  while (n > 0) {
    size++;
    n = Math.floor(n / 0x80);
  }
  return size;
}

function checked(n: number, field: string): number {
  if (!Number.isSafeInteger(n)) throw new RaftCodecError(`raft message field ${field} is ${n}, not a safe integer`);
  return n;
}

/** Size of a uint64 field (tag + varint), 0 when it holds the default and is left out. */
function u64FieldSize(n: number, field: string): number {
  return checked(n, field) === 0 ? 0 : 1 + varintSize(n);
}

function lenFieldSize(tagBytes: number, length: number): number {
  return tagBytes + varintSize(length) + length;
}

interface Sizes {
  total: number;
  entries: number[];
  snapshot: number;
}

function entrySize(e: Entry): number {
  if (e.type !== EntryType.Normal && e.type !== EntryType.Noop) throw new RaftCodecError(`raft entry ${e.index} has unknown type ${e.type as number}`);
  return (
    u64FieldSize(e.index, "entry.index") +
    u64FieldSize(e.term, "entry.term") +
    (e.type === EntryType.Normal ? 0 : 2) +
    (e.data.length === 0 ? 0 : lenFieldSize(1, e.data.length))
  );
}

function snapshotSize(meta: SnapshotMeta): number {
  let members = 0;
  for (const m of meta.members) members += varintSize(checked(m, "snapshot.members"));
  return u64FieldSize(meta.index, "snapshot.index") + u64FieldSize(meta.term, "snapshot.term") + (members === 0 ? 0 : lenFieldSize(1, members));
}

/** Sizes of a flat message and its nested parts; validates every number on the way. */
function messageSizes(f: FlatMessage): Sizes {
  let total =
    (f.type === 0 ? 0 : 2) +
    u64FieldSize(f.from, "from") +
    u64FieldSize(f.to, "to") +
    u64FieldSize(f.term, "term") +
    u64FieldSize(f.logIndex, "logIndex") +
    u64FieldSize(f.logTerm, "logTerm") +
    u64FieldSize(f.commit, "commit") +
    (f.ok ? 2 : 0) +
    (f.preVote ? 2 : 0) +
    u64FieldSize(f.matchIndex, "matchIndex") +
    u64FieldSize(f.conflictTerm, "conflictTerm") +
    u64FieldSize(f.conflictIndex, "conflictIndex") +
    u64FieldSize(f.readContext, "readContext");
  const entries: number[] = [];
  for (const e of f.entries) {
    const size = entrySize(e);
    entries.push(size);
    total += lenFieldSize(1, size);
  }
  let snapshot = 0;
  if (f.snapshot !== undefined) {
    snapshot = snapshotSize(f.snapshot);
    total += lenFieldSize(1, snapshot);
  }
  return { total, entries, snapshot };
}

/** A core message made ready to write: its flat fields and sizes (computing them validates it). */
export interface PreparedMessage {
  flat: FlatMessage;
  sizes: Sizes;
}

/** Validates and measures a message; throws RaftCodecError if a number is not a safe integer. */
export function prepareMessage(message: Message): PreparedMessage {
  const flat = toFlat(message);
  return { flat, sizes: messageSizes(flat) };
}

/** Bytes the message adds to a MessageBatch (field 1, length-delimited). */
export function batchFieldBytes(p: PreparedMessage): number {
  return lenFieldSize(1, p.sizes.total);
}

/**
 * One Connect envelope (flags 0, big-endian length) holding a raftpb.MessageBatch of `messages`:
 * exactly what the generated code would serialize, in one buffer.
 */
export function encodeBatchFrame(messages: PreparedMessage[]): Uint8Array {
  let payload = 0;
  for (const p of messages) payload += batchFieldBytes(p);
  const buf = new Uint8Array(5 + payload);
  new DataView(buf.buffer).setUint32(1, payload);
  let pos = 5;
  for (const p of messages) {
    buf[pos++] = (1 << 3) | LEN;
    pos = writeVarint(buf, pos, p.sizes.total);
    pos = writeMessage(buf, pos, p);
  }
  if (pos !== buf.length) throw new Error(`invariant: raft frame encoded ${pos} bytes, sized ${buf.length}`);
  return buf;
}

/** raftpb.Message bytes of one core message (tests and tools; the stream uses encodeBatchFrame). */
export function encodeMessageBytes(message: Message): Uint8Array {
  const p = prepareMessage(message);
  const buf = new Uint8Array(p.sizes.total);
  writeMessage(buf, 0, p);
  return buf;
}

function writeMessage(buf: Uint8Array, pos: number, p: PreparedMessage): number {
  const f = p.flat;
  if (f.type !== 0) pos = writeVarintField(buf, pos, 1, f.type);
  pos = writeU64(buf, pos, 2, f.from);
  pos = writeU64(buf, pos, 3, f.to);
  pos = writeU64(buf, pos, 4, f.term);
  pos = writeU64(buf, pos, 5, f.logIndex);
  pos = writeU64(buf, pos, 6, f.logTerm);
  for (let i = 0; i < f.entries.length; i++) {
    const e = f.entries[i]!;
    buf[pos++] = (7 << 3) | LEN;
    pos = writeVarint(buf, pos, p.sizes.entries[i]!);
    pos = writeU64(buf, pos, 1, e.index);
    pos = writeU64(buf, pos, 2, e.term);
    if (e.type !== EntryType.Normal) pos = writeVarintField(buf, pos, 3, e.type);
    if (e.data.length > 0) {
      buf[pos++] = (4 << 3) | LEN;
      pos = writeVarint(buf, pos, e.data.length);
      buf.set(e.data, pos);
      pos += e.data.length;
    }
  }
  pos = writeU64(buf, pos, 8, f.commit);
  if (f.ok) pos = writeVarintField(buf, pos, 9, 1);
  if (f.preVote) pos = writeVarintField(buf, pos, 10, 1);
  pos = writeU64(buf, pos, 11, f.matchIndex);
  pos = writeU64(buf, pos, 12, f.conflictTerm);
  pos = writeU64(buf, pos, 13, f.conflictIndex);
  pos = writeU64(buf, pos, 14, f.readContext);
  if (f.snapshot !== undefined) {
    const meta = f.snapshot;
    buf[pos++] = (15 << 3) | LEN;
    pos = writeVarint(buf, pos, p.sizes.snapshot);
    pos = writeU64(buf, pos, 1, meta.index);
    pos = writeU64(buf, pos, 2, meta.term);
    if (meta.members.length > 0) {
      let packed = 0;
      for (const m of meta.members) packed += varintSize(m);
      buf[pos++] = (3 << 3) | LEN;
      pos = writeVarint(buf, pos, packed);
      for (const m of meta.members) pos = writeVarint(buf, pos, m);
    }
  }
  return pos;
}

function writeU64(buf: Uint8Array, pos: number, field: number, n: number): number {
  return n === 0 ? pos : writeVarintField(buf, pos, field, n);
}

function writeVarintField(buf: Uint8Array, pos: number, field: number, n: number): number {
  buf[pos++] = (field << 3) | VARINT; // every field number here is < 16: a one-byte tag
  return writeVarint(buf, pos, n);
}

/** A safe integer as a uint64 varint (negative ones as 64-bit two's complement). */
function writeVarint(buf: Uint8Array, pos: number, n: number): number {
  if (n >= 0 && n < TWO_32) {
    while (n > 0x7f) {
      buf[pos++] = (n & 0x7f) | 0x80;
      n >>>= 7;
    }
    buf[pos++] = n;
    return pos;
  }
  // Split into 32-bit halves; floor division keeps two's complement for negatives.
  let hi = Math.floor(n / TWO_32);
  let lo = n - hi * TWO_32;
  hi >>>= 0;
  for (let i = 0; i < 10; i++) {
    const byte = lo & 0x7f;
    lo = (lo >>> 7) | ((hi & 0x7f) << 25);
    hi >>>= 7;
    if (lo === 0 && hi === 0) {
      buf[pos++] = byte;
      return pos;
    }
    buf[pos++] = byte | 0x80;
  }
  throw new Error("invariant: varint longer than 10 bytes");
}

// ---- decoding ----------------------------------------------------------------------------------

class Reader {
  pos: number;
  constructor(
    readonly buf: Uint8Array,
    start: number,
    readonly end: number,
  ) {
    this.pos = start;
  }

  /** A uint64 varint as a safe integer (two's complement negatives allowed), else RaftCodecError. */
  varint(field: string): number {
    const buf = this.buf;
    let lo = 0;
    let hi = 0;
    let shift = 0;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new RaftCodecError(`raft message truncated inside field ${field}`);
      const byte = buf[this.pos++]!;
      if (shift < 28) lo |= (byte & 0x7f) << shift;
      else if (shift === 28) {
        lo |= (byte & 0x0f) << 28;
        hi = (byte & 0x7f) >>> 4;
      } else hi |= (byte & 0x7f) << (shift - 32);
      if ((byte & 0x80) === 0) return combine(lo >>> 0, hi >>> 0, field);
      shift += 7;
    }
    throw new RaftCodecError(`raft message field ${field} holds a varint longer than 10 bytes`);
  }

  /** Start and end of a length-delimited field's payload. */
  span(field: string): [number, number] {
    const length = this.varint(field);
    if (length < 0 || this.pos + length > this.end) throw new RaftCodecError(`raft message truncated inside field ${field}`);
    const start = this.pos;
    this.pos += length;
    return [start, this.pos];
  }

  skip(wireType: number, field: number): void {
    switch (wireType) {
      case VARINT:
        this.varintSkip(field);
        return;
      case FIXED64:
        this.advance(8, field);
        return;
      case LEN:
        this.span(`#${field}`);
        return;
      case FIXED32:
        this.advance(4, field);
        return;
      default:
        throw new RaftCodecError(`raft message field ${field} has unsupported wire type ${wireType}`);
    }
  }

  private varintSkip(field: number): void {
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new RaftCodecError(`raft message truncated inside field ${field}`);
      if ((this.buf[this.pos++]! & 0x80) === 0) return;
    }
    throw new RaftCodecError(`raft message field ${field} holds a varint longer than 10 bytes`);
  }

  private advance(n: number, field: number): void {
    if (this.pos + n > this.end) throw new RaftCodecError(`raft message truncated inside field ${field}`);
    this.pos += n;
  }
}

function combine(lo: number, hi: number, field: string): number {
  if (hi < 0x200000) return hi * TWO_32 + lo; // < 2^53
  if (hi >= 0x80000000) {
    // A negative int64: negate the 64-bit value to get its magnitude.
    const negLo = (~lo + 1) >>> 0;
    const negHi = (~hi + (negLo === 0 ? 1 : 0)) >>> 0;
    if (negHi < 0x200000) return -(negHi * TWO_32 + negLo);
  }
  throw new RaftCodecError(`raft message field ${field} is beyond the safe-integer range`);
}

/** Reads one raftpb.Message (bytes [start, end) of `buf`). Entry payloads are copied out. */
export function decodeMessageBytes(buf: Uint8Array, start = 0, end = buf.length): Message {
  const r = new Reader(buf, start, end);
  const f = emptyFlat([]);

  while (r.pos < r.end) {
    const tag = r.varint("tag");
    const field = tag >>> 3;
    const wireType = tag & 7;
    if (!expected(field, wireType, MESSAGE_FIELDS)) {
      r.skip(wireType, field);
      continue;
    }
    switch (field) {
      case 1:
        f.type = r.varint("type");
        break;
      case 2:
        f.from = r.varint("from");
        break;
      case 3:
        f.to = r.varint("to");
        break;
      case 4:
        f.term = r.varint("term");
        break;
      case 5:
        f.logIndex = r.varint("logIndex");
        break;
      case 6:
        f.logTerm = r.varint("logTerm");
        break;
      case 7: {
        const [s, e] = r.span("entries");
        f.entries.push(decodeEntry(buf, s, e));
        break;
      }
      case 8:
        f.commit = r.varint("commit");
        break;
      case 9:
        f.ok = r.varint("ok") !== 0;
        break;
      case 10:
        f.preVote = r.varint("preVote") !== 0;
        break;
      case 11:
        f.matchIndex = r.varint("matchIndex");
        break;
      case 12:
        f.conflictTerm = r.varint("conflictTerm");
        break;
      case 13:
        f.conflictIndex = r.varint("conflictIndex");
        break;
      case 14:
        f.readContext = r.varint("readContext");
        break;
      case 15: {
        const [s, e] = r.span("snapshot");
        // Proto3: a message field that appears twice is merged; the last values win.
        f.snapshot = decodeSnapshotMeta(buf, s, e, f.snapshot);
        break;
      }
    }
  }
  return fromFlat(f);
}

/** Field number → wire type, for the fields this decoder knows (others are skipped). */
const MESSAGE_FIELDS = [-1, VARINT, VARINT, VARINT, VARINT, VARINT, VARINT, LEN, VARINT, VARINT, VARINT, VARINT, VARINT, VARINT, VARINT, LEN];
const ENTRY_FIELDS = [-1, VARINT, VARINT, VARINT, LEN];

function expected(field: number, wireType: number, table: number[]): boolean {
  const want = table[field];
  if (want === undefined || want < 0) return false;
  if (want !== wireType) throw new RaftCodecError(`raft message field ${field} has wire type ${wireType}, expected ${want}`);
  return true;
}

function decodeEntry(buf: Uint8Array, start: number, end: number): Entry {
  const r = new Reader(buf, start, end);
  let index = 0;
  let term = 0;
  let type = 0;
  let data: Uint8Array | null = null;
  while (r.pos < r.end) {
    const tag = r.varint("entry tag");
    const field = tag >>> 3;
    const wireType = tag & 7;
    if (!expected(field, wireType, ENTRY_FIELDS)) {
      r.skip(wireType, field);
      continue;
    }
    if (field === 1) index = r.varint("entry.index");
    else if (field === 2) term = r.varint("entry.term");
    else if (field === 3) type = r.varint("entry.type");
    else {
      const [s, e] = r.span("entry.data");
      // A copy: the log keeps entries for long, and must not pin the whole received frame.
      data = buf.slice(s, e);
    }
  }
  if (type !== EntryType.Normal && type !== EntryType.Noop) throw new RaftCodecError(`raft entry has unknown type ${type}`);
  return { index, term, type, data: data ?? new Uint8Array(0) };
}

function decodeSnapshotMeta(buf: Uint8Array, start: number, end: number, into: SnapshotMeta | undefined): SnapshotMeta {
  const meta: SnapshotMeta = into ?? { index: 0, term: 0, members: [] };
  const r = new Reader(buf, start, end);
  while (r.pos < r.end) {
    const tag = r.varint("snapshot tag");
    const field = tag >>> 3;
    const wireType = tag & 7;
    if (field === 1 && wireType === VARINT) meta.index = r.varint("snapshot.index");
    else if (field === 2 && wireType === VARINT) meta.term = r.varint("snapshot.term");
    else if (field === 3 && wireType === VARINT) meta.members.push(r.varint("snapshot.members"));
    else if (field === 3 && wireType === LEN) {
      // Packed (proto3's default for repeated scalars).
      const [s, e] = r.span("snapshot.members");
      const packed = new Reader(buf, s, e);
      while (packed.pos < packed.end) meta.members.push(packed.varint("snapshot.members"));
    } else r.skip(wireType, field);
  }
  return meta;
}

/**
 * Reads a raftpb.MessageBatch / MessageFrames payload (bytes [start, end) of `buf`): every
 * field-1 message, in order; unknown fields are skipped. The peer stream's receiving side uses this
 * on the envelope payload directly, without the generated code's per-message byte copies.
 */
export function decodeBatchBytes(buf: Uint8Array, start = 0, end = buf.length): Message[] {
  const r = new Reader(buf, start, end);
  const out: Message[] = [];
  while (r.pos < r.end) {
    const tag = r.varint("batch tag");
    const field = tag >>> 3;
    const wireType = tag & 7;
    if (field === 1 && wireType === LEN) {
      const [s, e] = r.span("messages");
      out.push(decodeMessageBytes(buf, s, e));
    } else if (field === 1) {
      throw new RaftCodecError(`raft batch field 1 has wire type ${wireType}, expected ${LEN}`);
    } else r.skip(wireType, field);
  }
  return out;
}
