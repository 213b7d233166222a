// The state-machine snapshot as a byte stream: CRC-framed records (header, session batches,
// key/value batches, trailer) cut into chunks of bounded size. Layout in FORMAT.md. Both sides
// hold at most one frame and one chunk in memory, whatever the size of the state.
import { crc32c, maskCrc, unmaskCrc } from "../util/crc32c.ts";
import { KVCorruptionError } from "./errors.ts";
import { type Session, SESSION_RECORD_BYTES, decodeSession, encodeSession } from "./sessions.ts";

/**
 * Version 2 added the log time to the header and 30-byte session records (version 1: 17).
 * Version 3: user values carry their revision header; session Txn answers travel in records
 * frames; the trailer counts them. Versions 1 and 2 (values without revisions) are refused.
 */
export const SNAPSHOT_FORMAT_VERSION = 3;

export const FRAME_HEADER = 1;
export const FRAME_SESSIONS = 2;
export const FRAME_PAIRS = 3;
export const FRAME_TRAILER = 4;
export const FRAME_RECORDS = 5;

/** Bytes before each frame's payload: u32 length, u32 masked CRC-32C. */
const FRAME_PREFIX_BYTES = 8;
/** A frame longer than this is corruption, not data (a pair is at most a few MiB by the limits). */
export const MAX_FRAME_BYTES = 64 << 20;

export interface SnapshotHeader {
  version: number;
  index: number;
  term: number;
  /** The log time (ms) at `index`: what session expiry continues from (0 in a version-1 stream). */
  logTime: number;
  members: number[];
}

export type SnapshotRecord =
  | { type: "header"; header: SnapshotHeader }
  | { type: "sessions"; sessions: Session[] }
  | { type: "pairs"; pairs: [Uint8Array, Uint8Array][] }
  | { type: "records"; records: [Uint8Array, Uint8Array][] }
  | { type: "trailer"; sessions: number; pairs: number; records: number };

/**
 * Encodes a snapshot: `pairs` are user keys without the 0x01 prefix. Frames of about
 * `chunkBytes` are cut into chunks of exactly `chunkBytes` (the last one shorter).
 */
export async function* encodeSnapshot(
  header: SnapshotHeader,
  sessions: Source<Session>,
  pairs: Source<[Uint8Array, Uint8Array]> | EntryPump,
  chunkBytes: number,
  /** Further metadata records (full LSM keys): each session's last Txn answer. */
  records: Source<[Uint8Array, Uint8Array]> = [],
  /** Bytes to drop from the front of each pair's key (an LSM key's prefix), sparing a view per pair. */
  pairKeySkip = 0,
): AsyncGenerator<Uint8Array> {
  if (!(chunkBytes >= 64)) throw new RangeError(`snapshot chunk size ${chunkBytes} is below the 64-byte minimum`);
  const chunker = new Chunker(chunkBytes);

  const head = new FrameBuilder(FRAME_HEADER, 29 + 4 * header.members.length);
  head.u8(header.version).u64(header.index).u64(header.term).u64(header.logTime).u32(header.members.length);
  for (const m of header.members) head.u32(m);
  yield* chunker.push(head.finish());

  let sessionCount = 0;
  let frame = new FrameBuilder(FRAME_SESSIONS, chunkBytes);
  let inFrame = 0;
  const addSession = (s: Session): Uint8Array | null => {
    frame.i64(s.clientId).bytes(encodeSession(s));
    sessionCount++;
    if (++inFrame * (8 + SESSION_RECORD_BYTES) < chunkBytes) return null;
    const full = frame.finishCounted(inFrame);
    frame = new FrameBuilder(FRAME_SESSIONS, chunkBytes);
    inFrame = 0;
    return full;
  };
  if (isSync(sessions)) {
    for (const s of sessions) {
      const full = addSession(s);
      if (full !== null) yield* chunker.push(full);
    }
  } else {
    for await (const s of sessions) {
      const full = addSession(s);
      if (full !== null) yield* chunker.push(full);
    }
  }
  if (inFrame > 0) yield* chunker.push(frame.finishCounted(inFrame));

  // Records, then pairs: the same frame layout, each its own frame type and count.
  const counts = { records: 0, pairs: 0 };
  for (const [type, source] of [[FRAME_RECORDS, records], [FRAME_PAIRS, pairs]] as const) {
    frame = new FrameBuilder(type, chunkBytes);
    inFrame = 0;
    let count = 0;
    const skip = type === FRAME_PAIRS ? pairKeySkip : 0;
    const add = (key: Uint8Array, value: Uint8Array): Uint8Array | null => {
      // A frame is cut before an entry that would not fit, so its buffer never grows (but for one huge entry).
      let full: Uint8Array | null = null;
      if (inFrame > 0 && !frame.fits(8 + key.length - skip + value.length)) {
        full = frame.finishCounted(inFrame);
        frame = new FrameBuilder(type, chunkBytes);
        inFrame = 0;
      }
      frame.entry(key, skip, value);
      count++;
      inFrame++;
      return full;
    };
    if (typeof source === "function") {
      // A pump stops at each entry that completes a frame, so at most one frame waits here.
      const ready: Uint8Array[] = [];
      const visit = (key: Uint8Array, value: Uint8Array): boolean => {
        const full = add(key, value);
        if (full === null) return true;
        ready.push(full);
        return false;
      };
      while (source(visit) > 0) {
        for (const full of ready) yield* chunker.push(full);
        ready.length = 0;
      }
    } else if (isSync(source)) {
      // A synchronous source is read without an await per entry: most of the cost of a large state.
      for (const [key, value] of source) {
        const full = add(key, value);
        if (full !== null) yield* chunker.push(full);
      }
    } else {
      for await (const [key, value] of source) {
        const full = add(key, value);
        if (full !== null) yield* chunker.push(full);
      }
    }
    if (inFrame > 0) yield* chunker.push(frame.finishCounted(inFrame));
    if (type === FRAME_PAIRS) counts.pairs = count;
    else counts.records = count;
  }
  const pairCount = counts.pairs;
  const recordCount = counts.records;

  const trailer = new FrameBuilder(FRAME_TRAILER, 24);
  trailer.u64(sessionCount).u64(pairCount).u64(recordCount);
  yield* chunker.push(trailer.finish());
  const last = chunker.flush();
  if (last !== null) yield last;
}

/**
 * Decodes a snapshot stream into records, checking every frame's length and CRC and that the
 * stream ends exactly after a trailer whose counts match what came before.
 */
export async function* decodeSnapshot(chunks: AsyncIterable<Uint8Array>): AsyncGenerator<SnapshotRecord> {
  const reader = new FrameReader();
  let sawHeader = false;
  let sawTrailer = false;
  let sessions = 0;
  let pairs = 0;
  let records = 0;
  for await (const chunk of chunks) {
    reader.push(chunk);
    for (let frame = reader.next(); frame !== null; frame = reader.next()) {
      if (sawTrailer) throw new KVCorruptionError("snapshot stream has data after its trailer");
      const record = parseFrame(frame);
      if (!sawHeader && record.type !== "header") throw new KVCorruptionError(`snapshot stream starts with a ${record.type} frame, not a header`);
      if (sawHeader && record.type === "header") throw new KVCorruptionError("snapshot stream has a second header");
      sawHeader = true;
      if (record.type === "sessions") sessions += record.sessions.length;
      if (record.type === "pairs") pairs += record.pairs.length;
      if (record.type === "records") records += record.records.length;
      if (record.type === "trailer") {
        if (record.sessions !== sessions || record.pairs !== pairs || record.records !== records) {
          throw new KVCorruptionError(
            `snapshot trailer counts ${record.sessions} sessions, ${record.pairs} pairs and ${record.records} records, ` +
              `but the stream held ${sessions}, ${pairs} and ${records}`,
          );
        }
        sawTrailer = true;
      }
      yield record;
    }
  }
  if (!sawTrailer) {
    throw new KVCorruptionError(
      `snapshot stream is truncated: it ended after ${sessions} sessions and ${pairs} pairs without a trailer` +
        (reader.buffered > 0 ? ` (${reader.buffered} bytes of a partial frame)` : ""),
    );
  }
}

/** What the encoder reads from: a synchronous source (an LSM scan) or an asynchronous one. */
export type Source<T> = Iterable<T> | AsyncIterable<T>;

/**
 * Entries pushed as views: hands entries to `visit` (which copies them at once) until it returns
 * false or a batch ends; returns how many it handed over, 0 at the end.
 */
export type EntryPump = (visit: (key: Uint8Array, value: Uint8Array) => boolean) => number;

function isSync<T>(source: Source<T>): source is Iterable<T> {
  return typeof (source as Iterable<T>)[Symbol.iterator] === "function";
}

function parseFrame(payload: Uint8Array): SnapshotRecord {
  const r = new ByteReader(payload);
  const type = r.u8();
  switch (type) {
    case FRAME_HEADER: {
      const version = r.u8();
      if (version !== SNAPSHOT_FORMAT_VERSION) {
        throw new KVCorruptionError(
          `snapshot format version ${version} is not supported (this build reads ${SNAPSHOT_FORMAT_VERSION})` +
            (version < SNAPSHOT_FORMAT_VERSION ? ": it comes from a node of a build before per-key revisions; run one build across the cluster" : ""),
        );
      }
      const index = r.u64();
      const term = r.u64();
      const logTime = r.u64();
      const count = r.u32();
      const members: number[] = [];
      for (let i = 0; i < count; i++) members.push(r.u32());
      r.end();
      return { type: "header", header: { version, index, term, logTime, members } };
    }
    case FRAME_SESSIONS: {
      const count = r.u32();
      const sessions: Session[] = [];
      for (let i = 0; i < count; i++) {
        const clientId = r.i64();
        sessions.push(decodeSession(clientId, r.bytes(SESSION_RECORD_BYTES)));
      }
      r.end();
      return { type: "sessions", sessions };
    }
    case FRAME_PAIRS: {
      const count = r.u32();
      const pairs: [Uint8Array, Uint8Array][] = [];
      for (let i = 0; i < count; i++) {
        const key = r.bytes(r.u32());
        pairs.push([key, r.bytes(r.u32())]);
      }
      r.end();
      return { type: "pairs", pairs };
    }
    case FRAME_RECORDS: {
      const count = r.u32();
      const records: [Uint8Array, Uint8Array][] = [];
      for (let i = 0; i < count; i++) {
        const key = r.bytes(r.u32());
        records.push([key, r.bytes(r.u32())]);
      }
      r.end();
      return { type: "records", records };
    }
    case FRAME_TRAILER: {
      const sessions = r.u64();
      const pairs = r.u64();
      const records = r.u64();
      r.end();
      return { type: "trailer", sessions, pairs, records };
    }
    default:
      throw new KVCorruptionError(`snapshot stream has a frame of unknown type ${type}`);
  }
}

/** Builds one frame's payload: a type byte, then (for batch frames) a u32 count, then records. */
class FrameBuilder {
  private buf: Uint8Array;
  private view: DataView;
  length: number;

  constructor(type: number, capacity: number) {
    // Batch frames reserve 4 bytes after the type for the record count.
    this.buf = new Uint8Array(FRAME_PREFIX_BYTES + 5 + Math.max(capacity, 64));
    this.view = new DataView(this.buf.buffer);
    this.buf[FRAME_PREFIX_BYTES] = type;
    this.length = FRAME_PREFIX_BYTES + (type === FRAME_SESSIONS || type === FRAME_PAIRS || type === FRAME_RECORDS ? 5 : 1);
  }

  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    const grown = new Uint8Array(Math.max(this.buf.length * 2, this.length + n));
    grown.set(this.buf.subarray(0, this.length));
    this.buf = grown;
    this.view = new DataView(grown.buffer);
  }

  u8(v: number): this {
    this.reserve(1);
    this.buf[this.length++] = v;
    return this;
  }
  u32(v: number): this {
    this.reserve(4);
    this.view.setUint32(this.length, v, true);
    this.length += 4;
    return this;
  }
  u64(v: number): this {
    this.reserve(8);
    this.view.setBigUint64(this.length, BigInt(v), true);
    this.length += 8;
    return this;
  }
  i64(v: bigint): this {
    this.reserve(8);
    this.view.setBigInt64(this.length, v, true);
    this.length += 8;
    return this;
  }
  bytes(b: Uint8Array): this {
    this.reserve(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
    return this;
  }

  /** Whether `n` more bytes fit without growing the buffer. */
  fits(n: number): boolean {
    return this.length + n <= this.buf.length;
  }

  /** One length-prefixed key (from `keyStart`) and length-prefixed value. */
  entry(key: Uint8Array, keyStart: number, value: Uint8Array): void {
    const k = key.length - keyStart;
    this.reserve(8 + k + value.length);
    const buf = this.buf;
    let at = this.length;
    this.view.setUint32(at, k, true);
    at += 4;
    if (k <= 32) for (let i = 0; i < k; i++) buf[at + i] = key[keyStart + i];
    else buf.set(key.subarray(keyStart), at);
    at += k;
    this.view.setUint32(at, value.length, true);
    at += 4;
    buf.set(value, at);
    this.length = at + value.length;
  }

  /** The whole frame (prefix + payload) for a batch frame holding `count` records. */
  finishCounted(count: number): Uint8Array {
    this.view.setUint32(FRAME_PREFIX_BYTES + 1, count, true);
    return this.finish();
  }

  finish(): Uint8Array {
    const payloadLength = this.length - FRAME_PREFIX_BYTES;
    this.view.setUint32(0, payloadLength, true);
    this.view.setUint32(4, maskCrc(crc32c(this.buf, FRAME_PREFIX_BYTES, this.length)), true);
    return this.buf.subarray(0, this.length);
  }
}

/** Cuts a byte stream into chunks of exactly `size` bytes. */
class Chunker {
  private chunk: Uint8Array;
  private used = 0;

  constructor(private readonly size: number) {
    this.chunk = new Uint8Array(size);
  }

  *push(bytes: Uint8Array): Generator<Uint8Array> {
    let offset = 0;
    while (offset < bytes.length) {
      const n = Math.min(this.size - this.used, bytes.length - offset);
      this.chunk.set(bytes.subarray(offset, offset + n), this.used);
      this.used += n;
      offset += n;
      if (this.used === this.size) {
        yield this.chunk;
        // A fresh buffer: the consumer may hold on to the chunk it was given.
        this.chunk = new Uint8Array(this.size);
        this.used = 0;
      }
    }
  }

  flush(): Uint8Array | null {
    if (this.used === 0) return null;
    const last = this.chunk.subarray(0, this.used);
    this.used = 0;
    return last;
  }
}

/** Reassembles frames from chunks; holds at most one partial frame plus one chunk. */
class FrameReader {
  private buf = new Uint8Array(0);
  private start = 0;
  private end = 0;

  get buffered(): number {
    return this.end - this.start;
  }

  push(chunk: Uint8Array): void {
    const pending = this.end - this.start;
    if (this.end + chunk.length > this.buf.length) {
      if (pending + chunk.length <= this.buf.length) {
        this.buf.copyWithin(0, this.start, this.end);
      } else {
        const grown = new Uint8Array(Math.max(2 * this.buf.length, pending + chunk.length));
        grown.set(this.buf.subarray(this.start, this.end));
        this.buf = grown;
      }
      this.start = 0;
      this.end = pending;
    }
    this.buf.set(chunk, this.end);
    this.end += chunk.length;
  }

  /** The next complete frame's payload (verified), or null until more bytes arrive. */
  next(): Uint8Array | null {
    if (this.end - this.start < FRAME_PREFIX_BYTES) return null;
    const view = new DataView(this.buf.buffer, this.buf.byteOffset + this.start, FRAME_PREFIX_BYTES);
    const length = view.getUint32(0, true);
    if (length === 0 || length > MAX_FRAME_BYTES) {
      throw new KVCorruptionError(`snapshot stream has a frame of ${length} bytes (limit ${MAX_FRAME_BYTES}): corrupt length`);
    }
    if (this.end - this.start < FRAME_PREFIX_BYTES + length) return null;
    const payloadStart = this.start + FRAME_PREFIX_BYTES;
    const expected = unmaskCrc(view.getUint32(4, true));
    const actual = crc32c(this.buf, payloadStart, payloadStart + length);
    if (expected !== actual) throw new KVCorruptionError(`snapshot stream frame checksum mismatch (expected ${expected}, got ${actual})`);
    // A copy: the frame's records outlive the reader's buffer, which is reused.
    const payload = this.buf.slice(payloadStart, payloadStart + length);
    this.start = payloadStart + length;
    if (this.start === this.end) this.start = this.end = 0;
    return payload;
  }
}

class ByteReader {
  private offset = 0;
  private readonly view: DataView;

  constructor(private readonly data: Uint8Array) {
    this.view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  }

  private need(n: number): void {
    if (this.offset + n > this.data.length) {
      throw new KVCorruptionError(`snapshot frame ends early: needs ${n} bytes at offset ${this.offset} of ${this.data.length}`);
    }
  }
  u8(): number {
    this.need(1);
    return this.data[this.offset++];
  }
  u32(): number {
    this.need(4);
    const v = this.view.getUint32(this.offset, true);
    this.offset += 4;
    return v;
  }
  u64(): number {
    this.need(8);
    const v = this.view.getBigUint64(this.offset, true);
    this.offset += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new KVCorruptionError(`snapshot frame holds an out-of-range number ${v}`);
    return Number(v);
  }
  i64(): bigint {
    this.need(8);
    const v = this.view.getBigInt64(this.offset, true);
    this.offset += 8;
    return v;
  }
  bytes(n: number): Uint8Array {
    this.need(n);
    const b = this.data.subarray(this.offset, this.offset + n);
    this.offset += n;
    return b;
  }
  end(): void {
    if (this.offset !== this.data.length) {
      throw new KVCorruptionError(`snapshot frame has ${this.data.length - this.offset} unexpected trailing bytes`);
    }
  }
}
