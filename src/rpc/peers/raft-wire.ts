// raftpb.Message and MessageBatch bytes written and read by hand for the messages of the hot path
// (votes, appends, heartbeats and their answers): the same bytes protobuf-es writes, in a tenth of
// its time (an AppendEntries with one 100-byte entry: ~10 µs to encode, 8-16 to decode through
// protobuf-es; both on the critical path of every write). Anything else (InstallSnapshot's
// metadata, numbers past 2^49 or negative, unknown fields, bad bytes) returns null, and the caller
// takes protobuf-es's path, which keeps the errors and the rare shapes in one place.

import type { Entry, EntryType } from "../../raft/types.ts";
import type { FlatMessage } from "./raft-codec.ts";

/** Numbers up to this are written in at most 7 varint bytes and read back exactly. */
const FAST_MAX = 2 ** 49;

function fits(n: number): boolean {
  return n >= 0 && n < FAST_MAX && Number.isInteger(n);
}

function varintSize(n: number): number {
  let size = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 0x80);
    size++;
  }
  return size;
}

/** Bytes of a uint64 field (tag + varint), 0 when it is at its default. */
function numField(n: number): number {
  return n === 0 ? 0 : 1 + varintSize(n);
}

function entrySize(e: Entry): number {
  const data = e.data.length;
  return numField(e.index) + numField(e.term) + numField(e.type) + (data === 0 ? 0 : 1 + varintSize(data) + data);
}

class Writer {
  pos = 0;
  constructor(readonly buf: Uint8Array) {}

  varint(n: number): void {
    const buf = this.buf;
    while (n >= 0x80) {
      buf[this.pos++] = (n % 0x80) | 0x80;
      n = Math.floor(n / 0x80);
    }
    buf[this.pos++] = n;
  }

  /** A varint field (tag < 16) unless it is 0. */
  num(tag: number, n: number): void {
    if (n === 0) return;
    this.buf[this.pos++] = tag;
    this.varint(n);
  }
}

/** The fields of a flat message as raftpb.Message bytes, or null when it needs protobuf-es. */
export function writeFlat(f: FlatMessage): Uint8Array | null {
  if (f.snapshot !== undefined) return null;
  if (!(fits(f.from) && fits(f.to) && fits(f.term) && fits(f.logIndex) && fits(f.logTerm) && fits(f.commit))) return null;
  if (!(fits(f.matchIndex) && fits(f.conflictTerm) && fits(f.conflictIndex) && fits(f.readContext))) return null;
  let size = numField(f.type) + numField(f.from) + numField(f.to) + numField(f.term) + numField(f.logIndex) + numField(f.logTerm);
  const entries = f.entries;
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]!;
    if (!(fits(e.index) && fits(e.term))) return null;
    const n = entrySize(e);
    size += 1 + varintSize(n) + n;
  }
  size += numField(f.commit) + (f.ok ? 2 : 0) + (f.preVote ? 2 : 0) + numField(f.matchIndex) + numField(f.conflictTerm) + numField(f.conflictIndex) + numField(f.readContext);
  if (f.recovering) size += 3;
  const w = new Writer(new Uint8Array(size));
  // Field order as protobuf-es writes them: by field number.
  w.num(0x08, f.type);
  w.num(0x10, f.from);
  w.num(0x18, f.to);
  w.num(0x20, f.term);
  w.num(0x28, f.logIndex);
  w.num(0x30, f.logTerm);
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]!;
    w.buf[w.pos++] = 0x3a; // 7, length-delimited
    w.varint(entrySize(e));
    w.num(0x08, e.index);
    w.num(0x10, e.term);
    w.num(0x18, e.type);
    if (e.data.length > 0) {
      w.buf[w.pos++] = 0x22;
      w.varint(e.data.length);
      w.buf.set(e.data, w.pos);
      w.pos += e.data.length;
    }
  }
  w.num(0x40, f.commit);
  if (f.ok) w.num(0x48, 1);
  if (f.preVote) w.num(0x50, 1);
  w.num(0x58, f.matchIndex);
  w.num(0x60, f.conflictTerm);
  w.num(0x68, f.conflictIndex);
  w.num(0x70, f.readContext);
  if (f.recovering) {
    // Field 20, varint: the tag takes two bytes.
    w.buf[w.pos++] = 0xa0;
    w.buf[w.pos++] = 0x01;
    w.buf[w.pos++] = 1;
  }
  return w.buf;
}

/** Thrown inside the reader for anything it leaves to protobuf-es; never escapes this file. */
const SLOW = new Error("take the protobuf-es path");

class Reader {
  pos: number;
  constructor(
    readonly buf: Uint8Array,
    start: number,
    readonly end: number,
  ) {
    this.pos = start;
  }

  /** A varint of at most 7 bytes (below 2^49); anything longer goes the slow way. */
  varint(): number {
    const buf = this.buf;
    let n = 0;
    let scale = 1;
    for (let i = 0; i < 7; i++) {
      if (this.pos >= this.end) throw SLOW;
      const b = buf[this.pos++]!;
      n += (b & 0x7f) * scale;
      if (b < 0x80) return n;
      scale *= 0x80;
    }
    throw SLOW;
  }

  /** The end of a length-delimited field that starts here. */
  span(): number {
    const length = this.varint();
    const end = this.pos + length;
    if (end > this.end) throw SLOW;
    return end;
  }
}

function readEntry(r: Reader, end: number): Entry {
  let index = 0;
  let term = 0;
  let type = 0;
  let data: Uint8Array = EMPTY;
  while (r.pos < end) {
    const tag = r.buf[r.pos++]!;
    switch (tag) {
      case 0x08:
        index = r.varint();
        break;
      case 0x10:
        term = r.varint();
        break;
      case 0x18:
        type = r.varint();
        break;
      case 0x22: {
        const stop = r.span();
        data = r.buf.subarray(r.pos, stop);
        r.pos = stop;
        break;
      }
      default:
        throw SLOW;
    }
  }
  if (r.pos !== end || type > 2) throw SLOW;
  return { index, term, type: type as EntryType, data };
}

const EMPTY = new Uint8Array(0);

function readMessage(r: Reader, end: number): FlatMessage {
  const f: FlatMessage = {
    type: 0,
    from: 0,
    to: 0,
    term: 0,
    logIndex: 0,
    logTerm: 0,
    entries: [],
    commit: 0,
    ok: false,
    preVote: false,
    recovering: false,
    matchIndex: 0,
    conflictTerm: 0,
    conflictIndex: 0,
    readContext: 0,
    snapshot: undefined,
  };
  while (r.pos < end) {
    const tag = r.buf[r.pos++]!;
    switch (tag) {
      case 0x08:
        f.type = r.varint();
        break;
      case 0x10:
        f.from = r.varint();
        break;
      case 0x18:
        f.to = r.varint();
        break;
      case 0x20:
        f.term = r.varint();
        break;
      case 0x28:
        f.logIndex = r.varint();
        break;
      case 0x30:
        f.logTerm = r.varint();
        break;
      case 0x3a: {
        const stop = r.span();
        f.entries.push(readEntry(r, stop));
        break;
      }
      case 0x40:
        f.commit = r.varint();
        break;
      case 0x48:
        f.ok = r.varint() !== 0;
        break;
      case 0x50:
        f.preVote = r.varint() !== 0;
        break;
      case 0x58:
        f.matchIndex = r.varint();
        break;
      case 0x60:
        f.conflictTerm = r.varint();
        break;
      case 0x68:
        f.conflictIndex = r.varint();
        break;
      case 0x70:
        f.readContext = r.varint();
        break;
      case 0xa0:
        if (r.pos >= end || r.buf[r.pos++] !== 0x01) throw SLOW;
        f.recovering = r.varint() !== 0;
        break;
      default:
        // The snapshot (15), unknown fields, other wire types: protobuf-es.
        throw SLOW;
    }
  }
  if (r.pos !== end) throw SLOW;
  return f;
}

/**
 * raftpb.MessageBatch bytes → flat messages, or null when any part needs protobuf-es. Entry data
 * are views into `bytes`, as protobuf-es's are.
 */
export function readFlatBatch(bytes: Uint8Array): FlatMessage[] | null {
  const r = new Reader(bytes, 0, bytes.length);
  const out: FlatMessage[] = [];
  try {
    while (r.pos < bytes.length) {
      if (bytes[r.pos++] !== 0x0a) return null;
      const end = r.span();
      out.push(readMessage(new Reader(bytes, r.pos, end), end));
      r.pos = end;
    }
  } catch (error) {
    if (error === SLOW) return null;
    throw error;
  }
  return out;
}
