// Data and index blocks: entries with prefix-compressed internal keys, a restart point every
// `restartInterval` entries (full key stored there, for binary search), and a restart array.
import { ByteWriter, compareEncodedInternal, readU32, trailerSeq, writeTrailer } from "./coding.ts";
import { corruption } from "./errors.ts";
import type { InternalIterator } from "./iterator.ts";

export class BlockBuilder {
  private readonly out = new ByteWriter(8192);
  private restarts: number[] = [0];
  private counter = 0;
  private last = new Uint8Array(256);
  private lastLen = 0;
  private scratch = new Uint8Array(256);
  entries = 0;

  constructor(private readonly restartInterval = 16) {}

  get empty(): boolean {
    return this.entries === 0;
  }
  /** Size of the block if finished now. */
  get estimatedSize(): number {
    return this.out.pos + this.restarts.length * 4 + 4;
  }

  /** Adds internal key (userKey, seq, kind); keys must arrive in internal order. */
  add(userKey: Uint8Array, seq: number, kind: number, value: Uint8Array): void {
    this.addFrom(userKey, 0, userKey.length, seq, kind, value, 0, value.length);
  }

  /** add() for a user key at keySrc[kStart, kEnd) and a value at valSrc[vStart, vEnd). */
  addFrom(
    keySrc: Uint8Array, kStart: number, kEnd: number, seq: number, kind: number,
    valSrc: Uint8Array, vStart: number, vEnd: number,
  ): void {
    const ulen = kEnd - kStart;
    const klen = ulen + 8;
    if (this.scratch.length < klen) this.scratch = new Uint8Array(klen * 2);
    const sc = this.scratch;
    if (ulen <= 32) for (let i = 0; i < ulen; i++) sc[i] = keySrc[kStart + i];
    else sc.set(keySrc.subarray(kStart, kEnd), 0);
    writeTrailer(sc, ulen, seq, kind);
    this.addEncodedFrom(sc, klen, valSrc, vStart, vEnd);
  }

  /** Adds an already encoded internal key key[0, klen). */
  addEncoded(key: Uint8Array, klen: number, value: Uint8Array): void {
    this.addEncodedFrom(key, klen, value, 0, value.length);
  }

  private addEncodedFrom(key: Uint8Array, klen: number, valSrc: Uint8Array, vStart: number, vEnd: number): void {
    let shared = 0;
    if (this.counter < this.restartInterval) {
      const n = Math.min(this.lastLen, klen);
      while (shared < n && this.last[shared] === key[shared]) shared++;
    } else {
      this.restarts.push(this.out.pos);
      this.counter = 0;
    }
    const w = this.out;
    w.varint(shared);
    w.varint(klen - shared);
    w.varint(vEnd - vStart);
    w.bytes(key, shared, klen);
    w.bytes(valSrc, vStart, vEnd);
    if (this.last.length < klen) {
      const next = new Uint8Array(klen * 2);
      next.set(this.last.subarray(0, this.lastLen));
      this.last = next;
    }
    const last = this.last;
    if (klen - shared <= 32) for (let i = shared; i < klen; i++) last[i] = key[i];
    else last.set(key.subarray(shared, klen), shared);
    this.lastLen = klen;
    this.counter++;
    this.entries++;
  }

  /** The last key added, encoded (a view valid until the next add). */
  lastKey(): Uint8Array {
    return this.last.subarray(0, this.lastLen);
  }

  /** Appends the finished block (contents only, no trailer) to `dst` and resets. */
  finishInto(dst: ByteWriter): void {
    for (const r of this.restarts) this.out.u32(r);
    this.out.u32(this.restarts.length);
    dst.bytes(this.out.buf, 0, this.out.pos);
    this.out.reset();
    this.restarts = [0];
    this.counter = 0;
    this.lastLen = 0;
    this.entries = 0;
  }
}

const NO_DATA = new Uint8Array(0);

/** Cursor over one block. A malformed block throws CORRUPTION naming the file and block offset. */
export class BlockIterator implements InternalIterator {
  private data: Uint8Array = NO_DATA;
  private restartsOffset = 0;
  private numRestarts = 0;
  private cur = -1; // offset of current entry; -1 when invalid
  private nextOff = 0;
  private keyBuf = new Uint8Array(64);
  private keyLen = 0;
  private valStart = 0;
  private valLen = 0;
  /** Key bytes the current entry shares with the one before it (0 at a restart point). */
  private shared = 0;
  // Decoded lazily: a seek parses many entries but reads the key of one. The user key view
  // stays valid while keyBuf and the key's length stay the same (keyBuf is rewritten in place),
  // so a scan over equal-length keys makes one view per block iterator, not one per entry.
  private userKey: Uint8Array | null = null;
  private entrySeq = -1;

  private file = "block";
  private blockOffset = 0;

  constructor(data?: Uint8Array, file?: string, blockOffset?: number) {
    if (data) this.reset(data, file, blockOffset);
  }

  /** Positions nowhere in the block data[0, length) (`data` may be a longer, pooled buffer). */
  reset(data: Uint8Array, file = "block", blockOffset = 0, length = data.length): void {
    this.file = file;
    this.blockOffset = blockOffset;
    if (length < 4 || length > data.length) throw this.fail("block too short");
    this.data = data;
    this.numRestarts = readU32(data, length - 4);
    this.restartsOffset = length - 4 - this.numRestarts * 4;
    if (this.numRestarts === 0 || this.restartsOffset < 0) throw this.fail("bad restart array");
    this.cur = -1;
  }

  private fail(what: string): Error {
    return corruption(this.file, this.blockOffset, what);
  }

  valid(): boolean {
    return this.cur >= 0;
  }

  private restartPoint(i: number): number {
    return readU32(this.data, this.restartsOffset + i * 4);
  }

  /** Decodes the entry at `off` (whose shared prefix is already in keyBuf). */
  private parse(off: number): void {
    const d = this.data;
    let p = off;
    let shared = d[p++];
    if (shared >= 0x80) ({ v: shared, p } = varintSlow(d, p - 1));
    let nonShared = d[p++];
    if (nonShared >= 0x80) ({ v: nonShared, p } = varintSlow(d, p - 1));
    let valLen = d[p++];
    if (valLen >= 0x80) ({ v: valLen, p } = varintSlow(d, p - 1));
    const klen = shared + nonShared;
    if (shared > this.keyLen || klen < 8 || p + nonShared + valLen > this.restartsOffset) {
      throw this.fail(`bad entry at offset ${off} within the block`);
    }
    if (this.keyBuf.length < klen) {
      const next = new Uint8Array(klen * 2);
      next.set(this.keyBuf.subarray(0, shared));
      this.keyBuf = next;
      this.userKey = null;
    }
    const kb = this.keyBuf;
    if (nonShared <= 32) for (let i = 0; i < nonShared; i++) kb[shared + i] = d[p + i];
    else kb.set(d.subarray(p, p + nonShared), shared);
    if (this.userKey !== null && this.userKey.length !== klen - 8) this.userKey = null;
    this.keyLen = klen;
    this.shared = shared;
    this.valStart = p + nonShared;
    this.valLen = valLen;
    this.cur = off;
    this.nextOff = this.valStart + valLen;
    this.entrySeq = -1;
  }

  seekToFirst(): void {
    this.keyLen = 0;
    if (this.restartsOffset === 0) this.cur = -1;
    else this.parse(0);
  }

  seekToLast(): void {
    this.keyLen = 0;
    if (this.restartsOffset === 0) {
      this.cur = -1;
      return;
    }
    this.parse(this.restartPoint(this.numRestarts - 1));
    while (this.nextOff < this.restartsOffset) this.parse(this.nextOff);
  }

  seek(key: Uint8Array, seq: number): void {
    if (this.restartsOffset === 0) {
      this.cur = -1;
      return;
    }
    // Binary search the restart points for the last one whose key is before the target.
    let lo = 0;
    let hi = this.numRestarts - 1;
    const d = this.data;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      let p = this.restartPoint(mid);
      let nonShared: number;
      p++; // shared is 0 at a restart point
      nonShared = d[p++];
      if (nonShared >= 0x80) ({ v: nonShared, p } = varintSlow(d, p - 1));
      const vl = d[p++];
      if (vl >= 0x80) p = varintSlow(d, p - 1).p;
      if (compareEncodedInternal(d, p, p + nonShared, key, seq, 1) < 0) lo = mid;
      else hi = mid - 1;
    }
    this.keyLen = 0;
    this.parse(this.restartPoint(lo));
    // Scanning from the restart point: once an entry is known to sort before the target at user
    // key byte m (equal before it), the next entry's `shared` decides without a compare: more
    // than m shared means the same byte at m (still before), fewer means it rose at an earlier
    // byte where the target equals the previous key (after the target; checked on that byte, so
    // a writer that shared less than it could is still read right). -1: compare.
    let m = -1;
    for (;;) {
      if (m < 0) {
        if (compareEncodedInternal(this.keyBuf, 0, this.keyLen, key, seq, 1) >= 0) return;
        m = firstDifference(this.keyBuf, this.keyLen - 8, key);
      }
      if (this.nextOff >= this.restartsOffset) {
        this.cur = -1;
        return;
      }
      this.parse(this.nextOff);
      if (m >= 0) {
        const sh = this.shared;
        if (sh > m) continue;
        if (sh < m && sh < this.keyLen - 8 && this.keyBuf[sh] > key[sh]) return;
        m = -1;
      }
    }
  }

  /** Restart points of the block (entries, in an index block: its restart interval is 1). */
  get restarts(): number {
    return this.restartsOffset === 0 ? 0 : this.numRestarts;
  }

  /** Positions at the entry of restart point i (invalid past the last). */
  seekToRestart(i: number): void {
    if (i >= this.restarts) {
      this.cur = -1;
      return;
    }
    this.keyLen = 0;
    this.parse(this.restartPoint(i));
  }

  /** The key of restart point i compared with (key, seq), the iterator not moved. */
  compareRestart(i: number, key: Uint8Array, seq: number): number {
    const d = this.data;
    let p = this.restartPoint(i) + 1; // shared is 0 at a restart point
    let nonShared = d[p++];
    if (nonShared >= 0x80) ({ v: nonShared, p } = varintSlow(d, p - 1));
    const vl = d[p++];
    if (vl >= 0x80) p = varintSlow(d, p - 1).p;
    if (p + nonShared > this.restartsOffset || nonShared < 8) throw this.fail(`bad entry at restart ${i}`);
    return compareEncodedInternal(d, p, p + nonShared, key, seq, 1);
  }

  next(): void {
    if (this.nextOff >= this.restartsOffset) this.cur = -1;
    else this.parse(this.nextOff);
  }

  prev(): void {
    const target = this.cur;
    if (target <= 0) {
      this.cur = -1;
      return;
    }
    let r = this.numRestarts - 1;
    while (r > 0 && this.restartPoint(r) >= target) r--;
    this.keyLen = 0;
    this.parse(this.restartPoint(r));
    while (this.nextOff < target) this.parse(this.nextOff);
  }

  key(): Uint8Array {
    return (this.userKey ??= this.keyBuf.subarray(0, this.keyLen - 8));
  }
  seq(): number {
    if (this.entrySeq < 0) this.entrySeq = trailerSeq(this.keyBuf, this.keyLen - 8);
    return this.entrySeq;
  }
  kind(): number {
    return this.keyBuf[this.keyLen - 8];
  }
  value(): Uint8Array {
    return this.data.subarray(this.valStart, this.valStart + this.valLen);
  }
  valueCopy(): Uint8Array {
    return this.data.slice(this.valStart, this.valStart + this.valLen);
  }

  /** Set by decodeHandle(): the block handle stored as the current value (index blocks). */
  handleOffset = 0;
  handleSize = 0;
  /** Decodes the current value as `varint offset | varint size` without allocating. */
  decodeHandle(): void {
    const d = this.data;
    const end = this.valStart + this.valLen;
    let p = this.valStart;
    let v = 0;
    let mul = 1;
    let b = 0x80;
    for (let i = 0; i < 8 && p < end && b >= 0x80; i++, mul *= 128) v += ((b = d[p++]) & 0x7f) * mul;
    if (b >= 0x80) throw this.fail("bad block handle in index");
    this.handleOffset = v;
    v = 0;
    mul = 1;
    b = 0x80;
    for (let i = 0; i < 8 && p < end && b >= 0x80; i++, mul *= 128) v += ((b = d[p++]) & 0x7f) * mul;
    if (b >= 0x80 || p !== end) throw this.fail("bad block handle in index");
    this.handleSize = v;
  }
  /** The encoded internal key (view valid until the cursor moves). */
  internalKey(): Uint8Array {
    return this.keyBuf.subarray(0, this.keyLen);
  }
  close(): void {
    this.cur = -1;
  }
}

/** The first index below both lengths where a[0, aLen) and b differ, or -1 (one is a prefix of the other). */
function firstDifference(a: Uint8Array, aLen: number, b: Uint8Array): number {
  const n = aLen < b.length ? aLen : b.length;
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return -1;
}

function varintSlow(d: Uint8Array, p: number): { v: number; p: number } {
  let v = 0;
  let mul = 1;
  for (let i = 0; i < 5 && p < d.length; i++) {
    const b = d[p++];
    v += (b & 0x7f) * mul;
    if (b < 0x80) return { v, p };
    mul *= 128;
  }
  // An impossible length: the bounds check in parse() reports the entry as corrupt.
  return { v: Number.MAX_SAFE_INTEGER, p };
}
