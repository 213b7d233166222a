// Byte-level helpers shared by the on-disk formats: varints, fixed-width little-endian integers,
// unsigned byte comparison, and the internal key (user key + sequence number + kind).

/** Kind of an internal entry. Values match LevelDB: a deletion sorts after a put of the same seq. */
export const KIND_DEL = 0;
export const KIND_PUT = 1;

/** Largest sequence number: 56 bits would fit on disk, but JS numbers are exact to 2^53. */
export const MAX_SEQ = Number.MAX_SAFE_INTEGER;

/** Unsigned lexicographic byte comparison, the key order of the whole engine. */
export function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = a.length < b.length ? a.length : b.length;
  for (let i = 0; i < n; i++) {
    const d = a[i] - b[i];
    if (d !== 0) return d;
  }
  return a.length - b.length;
}

/**
 * Compares a[aStart, aEnd) with b (whole). Four bytes a step, as big-endian words (flipping the
 * sign bit makes the signed comparison unsigned): keys share long prefixes (a table's keys, an
 * index's separators), and a compare is most of a block seek; ~2× faster than a byte loop on
 * 16-byte keys.
 */
function compareRange(a: Uint8Array, aStart: number, aEnd: number, b: Uint8Array): number {
  const aLen = aEnd - aStart;
  const n = aLen < b.length ? aLen : b.length;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const p = aStart + i;
    const x = (a[p] << 24) | (a[p + 1] << 16) | (a[p + 2] << 8) | a[p + 3];
    const y = (b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3];
    if (x !== y) return (x ^ 0x80000000) < (y ^ 0x80000000) ? -1 : 1;
  }
  for (; i < n; i++) {
    const d = a[aStart + i] - b[i];
    if (d !== 0) return d;
  }
  return aLen - b.length;
}

export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Encoded internal key: user key followed by 8 bytes, kind then 56-bit seq, little-endian. */
export function encodeInternalKey(userKey: Uint8Array, seq: number, kind: number): Uint8Array {
  const out = new Uint8Array(userKey.length + 8);
  out.set(userKey, 0);
  writeTrailer(out, userKey.length, seq, kind);
  return out;
}

export function writeTrailer(buf: Uint8Array, pos: number, seq: number, kind: number): void {
  buf[pos] = kind;
  const lo = seq >>> 0; // low 32 bits (seq is a non-negative integer below 2^53)
  const hi = (seq - lo) / 0x100000000;
  buf[pos + 1] = lo & 0xff;
  buf[pos + 2] = (lo >>> 8) & 0xff;
  buf[pos + 3] = (lo >>> 16) & 0xff;
  buf[pos + 4] = lo >>> 24;
  buf[pos + 5] = hi & 0xff;
  buf[pos + 6] = (hi >>> 8) & 0xff;
  buf[pos + 7] = (hi >>> 16) & 0xff;
}

export function trailerSeq(buf: Uint8Array, pos: number): number {
  let s = 0;
  for (let i = 7; i >= 1; i--) s = s * 256 + buf[pos + i];
  return s;
}

export function internalUserKey(ikey: Uint8Array): Uint8Array {
  return ikey.subarray(0, ikey.length - 8);
}

/** Compares encoded internal key buf[start, end) with (userKey, seq, kind). */
export function compareEncodedInternal(
  buf: Uint8Array, start: number, end: number,
  userKey: Uint8Array, seq: number, kind: number,
): number {
  const c = compareRange(buf, start, end - 8, userKey);
  if (c !== 0) return c;
  const s = trailerSeq(buf, end - 8);
  if (s !== seq) return s > seq ? -1 : 1;
  return kind - buf[end - 8];
}

export function compareEncodedInternalKeys(a: Uint8Array, b: Uint8Array): number {
  return compareEncodedInternal(a, 0, a.length, b.subarray(0, b.length - 8), trailerSeq(b, b.length - 8), b[b.length - 8]);
}

/** Bytes of the varint encoding of v (a non-negative integer below 2^53). */
export function varintLength(v: number): number {
  let n = 1;
  while (v >= 0x80) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}

/** Writes v as a varint at b[p] (room must be there); returns the position after it. */
export function putVarint(b: Uint8Array, p: number, v: number): number {
  while (v >= 0x80) {
    b[p++] = (v & 0x7f) | 0x80;
    v = v >= 0x100000000 ? Math.floor(v / 128) : v >>> 7;
  }
  b[p++] = v;
  return p;
}

/** Growable byte buffer for building blocks, batches and records without per-field allocation. */
export class ByteWriter {
  buf: Uint8Array;
  pos = 0;
  constructor(initial = 4096) {
    this.buf = new Uint8Array(initial);
  }
  ensure(extra: number): void {
    const need = this.pos + extra;
    if (need <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < need) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
  }
  reset(): void {
    this.pos = 0;
  }
  u8(v: number): void {
    this.ensure(1);
    this.buf[this.pos++] = v;
  }
  u32(v: number): void {
    this.ensure(4);
    const b = this.buf;
    let p = this.pos;
    b[p++] = v & 0xff;
    b[p++] = (v >>> 8) & 0xff;
    b[p++] = (v >>> 16) & 0xff;
    b[p++] = (v >>> 24) & 0xff;
    this.pos = p;
  }
  /** Unsigned integer up to 2^53 as 8 bytes little-endian. */
  u64(v: number): void {
    this.u32(v >>> 0);
    this.u32(Math.floor(v / 0x100000000));
  }
  varint(v: number): void {
    this.ensure(8);
    this.pos = putVarint(this.buf, this.pos, v);
  }
  bytes(src: Uint8Array, start = 0, end = src.length): void {
    const n = end - start;
    this.ensure(n);
    if (n <= 32) {
      // Short copies: a loop beats creating a subarray view for TypedArray.set.
      const b = this.buf;
      const p = this.pos;
      for (let i = 0; i < n; i++) b[p + i] = src[start + i];
    } else {
      this.buf.set(n === src.length ? src : src.subarray(start, end), this.pos);
    }
    this.pos += n;
  }
  lengthPrefixed(src: Uint8Array): void {
    this.varint(src.length);
    this.bytes(src);
  }
  /** A copy of the bytes written so far. */
  finish(): Uint8Array {
    return this.buf.slice(0, this.pos);
  }
}

export function readU32(b: Uint8Array, p: number): number {
  return (b[p] | (b[p + 1] << 8) | (b[p + 2] << 16) | (b[p + 3] << 24)) >>> 0;
}

export function writeU32(b: Uint8Array, p: number, v: number): void {
  b[p] = v & 0xff;
  b[p + 1] = (v >>> 8) & 0xff;
  b[p + 2] = (v >>> 16) & 0xff;
  b[p + 3] = (v >>> 24) & 0xff;
}

export function readU64(b: Uint8Array, p: number): number {
  return readU32(b, p) + readU32(b, p + 4) * 0x100000000;
}

/** Cursor over encoded bytes; `pos` advances past each field read. Throws RangeError on overrun. */
export class ByteReader {
  pos: number;
  constructor(readonly buf: Uint8Array, start = 0, readonly end = buf.length) {
    this.pos = start;
  }
  get done(): boolean {
    return this.pos >= this.end;
  }
  u8(): number {
    if (this.pos >= this.end) throw new RangeError("truncated");
    return this.buf[this.pos++];
  }
  u32(): number {
    if (this.pos + 4 > this.end) throw new RangeError("truncated");
    const v = readU32(this.buf, this.pos);
    this.pos += 4;
    return v;
  }
  u64(): number {
    if (this.pos + 8 > this.end) throw new RangeError("truncated");
    const v = readU64(this.buf, this.pos);
    this.pos += 8;
    return v;
  }
  varint(): number {
    let result = 0;
    let mul = 1;
    for (let i = 0; i < 8; i++) {
      if (this.pos >= this.end) throw new RangeError("truncated varint");
      const b = this.buf[this.pos++];
      result += (b & 0x7f) * mul;
      if (b < 0x80) return result;
      mul *= 128;
    }
    throw new RangeError("varint too long");
  }
  bytes(n: number): Uint8Array {
    if (n < 0 || this.pos + n > this.end) throw new RangeError("truncated bytes");
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
  lengthPrefixed(): Uint8Array {
    return this.bytes(this.varint());
  }
}
