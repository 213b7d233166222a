// The framing of snapshot streams (FORMAT.md): frames of a u32 length and a masked CRC-32C before
// each payload, built, cut into chunks, reassembled and verified here; what frames mean is the
// business of snapshot-stream.ts (pairs, version 3) and snapshot-files.ts (table files, version 4).
import { crc32c, maskCrc, unmaskCrc } from "../util/crc32c.ts";
import { KVCorruptionError } from "./errors.ts";

/** Bytes before each frame's payload: u32 length, u32 masked CRC-32C. */
export const FRAME_PREFIX_BYTES = 8;
/** A frame longer than this is corruption, not data (a pair is at most a few MiB by the limits). */
export const MAX_FRAME_BYTES = 64 << 20;
/** A frame at least this long that spans chunks is gathered into a buffer of its own. */
const BIG_FRAME_BYTES = 64 << 10;

/**
 * Version 2 added the log time to the header and 30-byte session records (version 1: 17).
 * Version 3: user values carry their revision header; session Txn answers travel in records
 * frames; the trailer counts them. Versions 1 and 2 (values without revisions) are refused.
 */
export const SNAPSHOT_PAIRS_VERSION = 3;
/**
 * Version 4: the LSM's table files and memtable entries (snapshot-files.ts). Version 5: the same
 * frames, but the tables' blocks may carry CRC-32 trailers (src/lsm/FORMAT.md), which builds that
 * read only version 4 cannot check: they refuse a version-5 stream at its header instead of
 * installing tables they would then find corrupt. Versions 3 and 4 are still read.
 */
export const SNAPSHOT_FILES_VERSION = 5;
/** The first table-files version, still installed (its tables carry CRC-32C trailers). */
export const SNAPSHOT_FILES_VERSION_4 = 4;

/** True for a stream of table files (versions 4 and 5). */
export function isFilesVersion(version: number): boolean {
  return version === SNAPSHOT_FILES_VERSION || version === SNAPSHOT_FILES_VERSION_4;
}

/** Frame type 1 in every version: the header. */
export const FRAME_HEADER = 1;

export interface SnapshotHeader {
  version: number;
  index: number;
  term: number;
  /** The log time (ms) at `index`: what session expiry continues from (0 in a version-1 stream). */
  logTime: number;
  members: number[];
}

/** The header frame, the same layout in every version since 2. */
export function headerFrame(header: SnapshotHeader): Uint8Array {
  const head = new FrameBuilder(FRAME_HEADER, 29 + 4 * header.members.length);
  head.u8(header.version).u64(header.index).u64(header.term).u64(header.logTime).u32(header.members.length);
  for (const m of header.members) head.u32(m);
  return head.finish();
}

/** The checksum a frame carries over its payload, stored masked. */
export type FrameChecksum = (data: Uint8Array, start: number, end: number) => number;
/** CRC-32C: every frame of versions 1-3 and the header of every version. */
export const CRC32C: FrameChecksum = crc32c;
/**
 * CRC-32 (IEEE 802.3, zlib's): the frames after a version-4 header. Bun computes it natively at
 * ~40 GB/s against ~1.4 GB/s for our CRC-32C in JS, which was a tenth of a catch-up's CPU.
 */
export const CRC32: FrameChecksum = (data, start, end) => Bun.hash.crc32(data.subarray(start, end));

/** Writes the prefix of a frame whose payload is buf[FRAME_PREFIX_BYTES, FRAME_PREFIX_BYTES + length). */
export function sealFrame(buf: Uint8Array, length: number, checksum: FrameChecksum = CRC32C): Uint8Array {
  const view = new DataView(buf.buffer, buf.byteOffset, FRAME_PREFIX_BYTES);
  view.setUint32(0, length, true);
  view.setUint32(4, maskCrc(checksum(buf, FRAME_PREFIX_BYTES, FRAME_PREFIX_BYTES + length)), true);
  return buf.subarray(0, FRAME_PREFIX_BYTES + length);
}

/** Builds one frame's payload: a type byte, then (for batch frames) a u32 count, then records. */
export class FrameBuilder {
  private buf: Uint8Array;
  private view: DataView;
  length: number;

  /** A `counted` (batch) frame reserves 4 bytes after the type for its record count. */
  constructor(type: number, capacity: number, counted = false) {
    this.buf = new Uint8Array(FRAME_PREFIX_BYTES + 5 + Math.max(capacity, 64));
    this.view = new DataView(this.buf.buffer);
    this.buf[FRAME_PREFIX_BYTES] = type;
    this.length = FRAME_PREFIX_BYTES + (counted ? 5 : 1);
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
  finishCounted(count: number, checksum: FrameChecksum = CRC32C): Uint8Array {
    this.view.setUint32(FRAME_PREFIX_BYTES + 1, count, true);
    return this.finish(checksum);
  }

  finish(checksum: FrameChecksum = CRC32C): Uint8Array {
    const payloadLength = this.length - FRAME_PREFIX_BYTES;
    this.view.setUint32(0, payloadLength, true);
    this.view.setUint32(4, maskCrc(checksum(this.buf, FRAME_PREFIX_BYTES, this.length)), true);
    return this.buf.subarray(0, this.length);
  }
}

/** Cuts a byte stream into chunks of `size` bytes (shorter only before a pushWhole and at the end). */
export class Chunker {
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

  /**
   * Passes a large buffer on without copying it: the chunk filled so far goes first (short), then
   * `bytes` in views of at most `size`. The caller hands `bytes` over for good.
   */
  *pushWhole(bytes: Uint8Array): Generator<Uint8Array> {
    if (this.used > 0) {
      yield this.chunk.subarray(0, this.used);
      this.chunk = new Uint8Array(this.size);
      this.used = 0;
    }
    for (let offset = 0; offset < bytes.length; offset += this.size) yield bytes.subarray(offset, offset + this.size);
  }

  flush(): Uint8Array | null {
    if (this.used === 0) return null;
    const last = this.chunk.subarray(0, this.used);
    this.used = 0;
    return last;
  }
}

/** Reassembles frames from chunks; holds at most one partial frame plus one chunk. */
export class FrameReader {
  /** What frames are checked with from here on (a version-4 header switches it to CRC-32). */
  checksum: FrameChecksum = CRC32C;
  private buf = new Uint8Array(0);
  private start = 0;
  private end = 0;
  /** A large frame still arriving, gathered into a buffer of its own (handed out without a copy). */
  private big: Uint8Array | null = null;
  private bigFill = 0;

  get buffered(): number {
    return this.end - this.start + this.bigFill;
  }

  push(chunk: Uint8Array): void {
    if (this.big !== null) {
      const n = Math.min(chunk.length, this.big.length - this.bigFill);
      this.big.set(chunk.subarray(0, n), this.bigFill);
      this.bigFill += n;
      if (n === chunk.length) return;
      chunk = chunk.subarray(n);
    }
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
    if (this.big !== null) {
      if (this.bigFill < this.big.length) return null;
      const frame = this.big;
      this.big = null;
      this.bigFill = 0;
      this.verify(frame, 0, frame.length - FRAME_PREFIX_BYTES);
      return frame.subarray(FRAME_PREFIX_BYTES);
    }
    if (this.end - this.start < FRAME_PREFIX_BYTES) return null;
    const view = new DataView(this.buf.buffer, this.buf.byteOffset + this.start, FRAME_PREFIX_BYTES);
    const length = view.getUint32(0, true);
    if (length === 0 || length > MAX_FRAME_BYTES) {
      throw new KVCorruptionError(`snapshot stream has a frame of ${length} bytes (limit ${MAX_FRAME_BYTES}): corrupt length`);
    }
    if (this.end - this.start < FRAME_PREFIX_BYTES + length) {
      if (length >= BIG_FRAME_BYTES) {
        // Gathered apart from here on: one copy of its bytes, not one into the buffer and one out.
        this.big = new Uint8Array(FRAME_PREFIX_BYTES + length);
        this.big.set(this.buf.subarray(this.start, this.end));
        this.bigFill = this.end - this.start;
        this.start = this.end = 0;
      }
      return null;
    }
    this.verify(this.buf, this.start, length);
    const payloadStart = this.start + FRAME_PREFIX_BYTES;
    // A copy: the frame's records outlive the reader's buffer, which is reused.
    const payload = this.buf.slice(payloadStart, payloadStart + length);
    this.start = payloadStart + length;
    if (this.start === this.end) this.start = this.end = 0;
    return payload;
  }

  /** Checks the frame at buf[at] (prefix, then `length` bytes of payload) against its checksum. */
  private verify(buf: Uint8Array, at: number, length: number): void {
    const stored = new DataView(buf.buffer, buf.byteOffset + at, FRAME_PREFIX_BYTES).getUint32(4, true);
    const expected = unmaskCrc(stored);
    const actual = this.checksum(buf, at + FRAME_PREFIX_BYTES, at + FRAME_PREFIX_BYTES + length);
    if (expected !== actual) throw new KVCorruptionError(`snapshot stream frame checksum mismatch (expected ${expected}, got ${actual})`);
  }
}

export class ByteReader {
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
  /** Everything left, as a view. */
  rest(): Uint8Array {
    const b = this.data.subarray(this.offset);
    this.offset = this.data.length;
    return b;
  }
  end(): void {
    if (this.offset !== this.data.length) {
      throw new KVCorruptionError(`snapshot frame has ${this.data.length - this.offset} unexpected trailing bytes`);
    }
  }
}
