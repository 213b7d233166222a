// The memtable's storage: entry bytes in a few large chunks and per-entry records (where the key
// and value sit, sequence number, kind) in typed arrays, so a memtable of any size is a few dozen
// JS objects instead of one (or three) per entry; views are made only when a caller asks.

const INITIAL_ENTRIES = 256;

/**
 * Bytes of a shared chunk for memtables of `memtableBytes`: a sixteenth of it, between 4 and
 * 256 KiB (so a small memtable does not hold a chunk larger than itself).
 */
export function chunkBytesFor(memtableBytes: number): number {
  return Math.min(256 * 1024, Math.max(4096, 2 ** Math.floor(Math.log2(memtableBytes / 16))));
}

export class EntryArena {
  /** A batch (or single entry) larger than this keeps its own buffer (no copy) as a chunk. */
  private readonly ownChunkBytes: number;
  /** @param chunkBytes size of the shared chunks small batches are copied into, back to back */
  constructor(private readonly chunkBytes: number) {
    this.ownChunkBytes = chunkBytes / 4;
  }
  /** Chunks holding entry bytes; only the last shared chunk still takes bytes. */
  private readonly chunks: Uint8Array[] = [];
  private shared: Uint8Array | null = null;
  private sharedIndex = -1;
  private sharedUsed = 0;
  /** Chunk bytes allocated (the arena's memory besides the records). */
  allocated = 0;

  // Entry records, indexed by entry id (ids are given in insertion order).
  private chunkOf = new Uint32Array(INITIAL_ENTRIES);
  private keyStart = new Uint32Array(INITIAL_ENTRIES);
  private keyEnd = new Uint32Array(INITIAL_ENTRIES);
  private valStart = new Uint32Array(INITIAL_ENTRIES);
  private valEnd = new Uint32Array(INITIAL_ENTRIES);
  private seqs = new Float64Array(INITIAL_ENTRIES);
  private kinds = new Uint8Array(INITIAL_ENTRIES);
  count = 0;

  /**
   * Batches stored with storeBatch, in order, as (chunk, start, end) segments (adjacent batches in
   * one chunk share a segment) and each batch's end in their concatenation: the flush input.
   */
  private readonly segments: number[] = [];
  readonly batchEnds: number[] = [];
  private batchBytes = 0;

  /** Bytes of the entry records (typed arrays). */
  get recordBytes(): number {
    return this.chunkOf.length * 29;
  }

  /** Room for `n` bytes; returns the chunk index they go to, the start in `placedAt`. */
  private place(n: number, own: Uint8Array | null): number {
    if (own !== null && own.length > this.ownChunkBytes) {
      this.chunks.push(own);
      this.allocated += own.length;
      this.placedAt = 0;
      return this.chunks.length - 1;
    }
    if (this.shared === null || this.sharedUsed + n > this.shared.length) {
      this.shared = new Uint8Array(n > this.ownChunkBytes ? n : this.chunkBytes);
      this.allocated += this.shared.length;
      this.chunks.push(this.shared);
      this.sharedIndex = this.chunks.length - 1;
      this.sharedUsed = 0;
    }
    this.placedAt = this.sharedUsed;
    this.sharedUsed += n;
    return this.sharedIndex;
  }
  private placedAt = 0;

  /** Keeps a write batch's bytes (copied into a shared chunk, or held as is if large). */
  storeBatch(b: Uint8Array): { chunk: number; base: number } {
    const chunk = this.place(b.length, b);
    const base = this.placedAt;
    const buf = this.chunks[chunk];
    if (buf !== b) buf.set(b, base);
    const segs = this.segments;
    const n = segs.length;
    if (n > 0 && segs[n - 3] === chunk && segs[n - 1] === base) segs[n - 1] = base + b.length;
    else segs.push(chunk, base, base + b.length);
    this.batchBytes += b.length;
    this.batchEnds.push(this.batchBytes);
    this.stored.chunk = chunk;
    this.stored.base = base;
    return this.stored;
  }
  private readonly stored = { chunk: 0, base: 0 };

  /**
   * The stored batches concatenated, in `reuse`'s buffer if it is large enough (the previous
   * flush's, handed back by the worker), else in a fresh one with 1/8 to spare for the next.
   */
  concatenatedBatches(reuse: Uint8Array | null): Uint8Array {
    const n = this.batchBytes;
    const out =
      reuse !== null && reuse.buffer.byteLength >= n
        ? new Uint8Array(reuse.buffer as ArrayBuffer, 0, n)
        : new Uint8Array(new ArrayBuffer(n + (n >>> 3)), 0, n);
    const segs = this.segments;
    let at = 0;
    for (let i = 0; i < segs.length; i += 3) {
      out.set(this.chunks[segs[i]].subarray(segs[i + 1], segs[i + 2]), at);
      at += segs[i + 2] - segs[i + 1];
    }
    return out;
  }

  /** Copies key and value into a chunk as one entry's bytes (not part of any batch). */
  storeEntry(key: Uint8Array, value: Uint8Array): { chunk: number; base: number } {
    const n = key.length + value.length;
    const chunk = this.place(n, null);
    const base = this.placedAt;
    const buf = this.chunks[chunk];
    buf.set(key, base);
    buf.set(value, base + key.length);
    this.stored.chunk = chunk;
    this.stored.base = base;
    return this.stored;
  }

  /** Adds an entry record; returns its id. */
  push(chunk: number, keyStart: number, keyEnd: number, valStart: number, valEnd: number, seq: number, kind: number): number {
    const id = this.count;
    if (id === this.seqs.length) this.grow();
    this.chunkOf[id] = chunk;
    this.keyStart[id] = keyStart;
    this.keyEnd[id] = keyEnd;
    this.valStart[id] = valStart;
    this.valEnd[id] = valEnd;
    this.seqs[id] = seq;
    this.kinds[id] = kind;
    this.count = id + 1;
    return id;
  }

  private grow(): void {
    const cap = this.seqs.length * 2;
    const u32 = (a: Uint32Array<ArrayBuffer>): Uint32Array<ArrayBuffer> => {
      const b = new Uint32Array(cap);
      b.set(a);
      return b;
    };
    this.chunkOf = u32(this.chunkOf);
    this.keyStart = u32(this.keyStart);
    this.keyEnd = u32(this.keyEnd);
    this.valStart = u32(this.valStart);
    this.valEnd = u32(this.valEnd);
    const seqs = new Float64Array(cap);
    seqs.set(this.seqs);
    this.seqs = seqs;
    const kinds = new Uint8Array(cap);
    kinds.set(this.kinds);
    this.kinds = kinds;
  }

  /** The chunk holding entry `id`'s bytes. */
  bufOf(id: number): Uint8Array {
    return this.chunks[this.chunkOf[id]];
  }
  keyStartOf(id: number): number {
    return this.keyStart[id];
  }
  keyEndOf(id: number): number {
    return this.keyEnd[id];
  }
  seqOf(id: number): number {
    return this.seqs[id];
  }
  kindOf(id: number): number {
    return this.kinds[id];
  }
  keyView(id: number): Uint8Array {
    return this.chunks[this.chunkOf[id]].subarray(this.keyStart[id], this.keyEnd[id]);
  }
  valueView(id: number): Uint8Array {
    return this.chunks[this.chunkOf[id]].subarray(this.valStart[id], this.valEnd[id]);
  }
  valueCopy(id: number): Uint8Array {
    return this.chunks[this.chunkOf[id]].slice(this.valStart[id], this.valEnd[id]);
  }

  /** Is entry `id`'s key equal to t[tStart, tEnd)? */
  keyEquals(id: number, t: Uint8Array, tStart: number, tEnd: number): boolean {
    const b = this.chunks[this.chunkOf[id]];
    const start = this.keyStart[id];
    const n = tEnd - tStart;
    if (this.keyEnd[id] - start !== n) return false;
    for (let i = 0; i < n; i++) if (b[start + i] !== t[tStart + i]) return false;
    return true;
  }
}
