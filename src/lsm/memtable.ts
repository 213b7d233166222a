// The memtable: entries (user key, seq, kind, value) in internal key order, kept in sorted
// leaves of up to 64 entry ids whose first 18 key bytes sit as numbers in typed arrays (a search
// compares numbers in a few cache lines instead of chasing a pointer per step, as a skiplist
// does); entry bytes and records live in an arena (memtable-arena.ts), not in objects per entry;
// a hash index (memtable-index.ts) from user key to its newest entry for point reads (caught up
// by the first read after inserts, so write-only memtables never build it); byte accounting so
// the DB knows when to freeze and flush it.
import { bloomHash } from "./bloom.ts";
import { KIND_PUT } from "./coding.ts";
import type { InternalIterator } from "./iterator.ts";
import { chunkBytesFor, EntryArena } from "./memtable-arena.ts";
import { KeyIndex } from "./memtable-index.ts";

/** Entries per leaf; a full leaf splits in two halves. */
const LEAF_MAX = 64;
/**
 * Bytes counted per entry beyond key and value bytes (the flush trigger): its record, leaf and
 * index slots and batch framing take less (~100), so the count is conservative.
 */
const ENTRY_OVERHEAD = 128;

/** Key bytes [start, start + 6) as a big-endian integer, zero-padded past the key's end n. */
function word(key: Uint8Array, start: number, n = key.length): number {
  if (start + 6 <= n) {
    return (
      (key[start] * 0x10000 + key[start + 1] * 0x100 + key[start + 2]) * 0x1000000 +
      (key[start + 3] * 0x10000 + key[start + 4] * 0x100 + key[start + 5])
    );
  }
  let v = 0;
  for (let i = start; i < start + 6; i++) v = v * 256 + (i < n ? key[i] : 0);
  return v;
}

/** Key bytes held as three 48-bit numbers per entry (see compareEntry()). */
const WORDS_BYTES = 18;

/** Up to LEAF_MAX consecutive entries (ids into the arena) and their key words. */
class Leaf {
  count = 0;
  readonly w0 = new Float64Array(LEAF_MAX);
  readonly w1 = new Float64Array(LEAF_MAX);
  readonly w2 = new Float64Array(LEAF_MAX);
  readonly ids = new Int32Array(LEAF_MAX);
}

/** Bytes of one leaf's typed arrays. */
const LEAF_BYTES = LEAF_MAX * (3 * 8 + 4);

/**
 * Compares the entry with words (a0, a1, a2) and id `id` against the target (tKey, tSeq) with
 * words t0..t2, in internal order: negative if the entry comes first. Equal words mean equal
 * zero-padded first 18 bytes: the rest of the bytes then decide, and if one key ends within
 * them it is a prefix of the other (its padding matches zeros) and sorts first. Newer seq first.
 */
function compareEntry(
  arena: EntryArena, a0: number, a1: number, a2: number, id: number,
  tBuf: Uint8Array, tStart: number, tLen: number, tSeq: number, t0: number, t1: number, t2: number,
): number {
  if (a0 !== t0) return a0 < t0 ? -1 : 1;
  if (a1 !== t1) return a1 < t1 ? -1 : 1;
  if (a2 !== t2) return a2 < t2 ? -1 : 1;
  const a = arena.bufOf(id);
  const start = arena.keyStartOf(id);
  const aLen = arena.keyEndOf(id) - start;
  const len = aLen < tLen ? aLen : tLen;
  for (let i = WORDS_BYTES; i < len; i++) {
    if (a[start + i] !== tBuf[tStart + i]) return a[start + i] - tBuf[tStart + i];
  }
  if (aLen !== tLen) return aLen - tLen;
  const seq = arena.seqOf(id);
  return seq === tSeq ? 0 : seq > tSeq ? -1 : 1;
}

export interface MemGetResult {
  kind: number;
  value: Uint8Array;
  /** A copy of the value (one allocation, no view). */
  valueCopy(): Uint8Array;
}

/** An empty memtable sized for the options' memtableBytes. */
export function newMemtable(walNumber: number, memtableBytes: number): Memtable {
  return new Memtable(walNumber, chunkBytesFor(memtableBytes));
}

export class Memtable {
  /** Entry bytes and records; entry ids are positions in insertion (sequence) order. */
  private readonly arena: EntryArena;
  /** Sorted, non-empty (except a lone first leaf), each leaf's entries before the next leaf's. */
  private leaves: Leaf[] = [new Leaf()];
  /** Key words of each leaf's first entry, for the search that picks a leaf. */
  private f0 = new Float64Array(64);
  private f1 = new Float64Array(64);
  private f2 = new Float64Array(64);
  /** Bumped by every insert: iterators positioned before it find their place again. */
  modifications = 0;
  /**
   * User key → its newest entry. A point read for the newest version needs no search; inserts
   * come in sequence order, so the entry indexed for a key is its newest.
   */
  private readonly index: KeyIndex;
  /**
   * Entries [indexed, count) were inserted since the index last caught up. The index is brought
   * up to date by the first read after them: a memtable filled by writes alone (the usual fate of
   * one that is frozen and flushed) never pays for hashing and probing.
   */
  private indexed = 0;
  private batchCount = 0;
  private batchOps = 0;
  /** Sequence of the first batch's first op, and whether the batches' sequences run gap-free. */
  private firstSeq = 0;
  private nextSeq = 0;
  private seqsContiguous = true;
  /** Approximate bytes held: key + value + per-entry overhead (the flush trigger). */
  bytes = 0;
  /** Sequence number of the last write added by the database (0: none). */
  lastSeq = 0;
  /** Some write here is in no WAL (WriteOptions.wal false): only a flush makes it durable. */
  unlogged = false;
  /**
   * @param walNumber number of the WAL file holding this memtable's writes
   * @param chunkBytes size of the arena's shared chunks (chunkBytesFor(memtableBytes))
   */
  constructor(readonly walNumber: number, chunkBytes = 256 * 1024) {
    this.arena = new EntryArena(chunkBytes);
    this.index = new KeyIndex(this.arena);
  }

  get count(): number {
    return this.arena.count;
  }
  get leafCount(): number {
    return this.leaves.length;
  }
  leaf(i: number): Leaf {
    return this.leaves[i];
  }

  /** Memory the memtable holds now: chunks, records, leaves and index. */
  get allocatedBytes(): number {
    return this.arena.allocated + this.arena.recordBytes + this.leaves.length * LEAF_BYTES + this.index.bytes;
  }

  /** Index of the last leaf whose first entry is at or before the target (0 if none is). */
  private findLeaf(tBuf: Uint8Array, tStart: number, tLen: number, tSeq: number, t0: number, t1: number, t2: number): number {
    const leaves = this.leaves;
    const arena = this.arena;
    let lo = 0;
    let hi = leaves.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (compareEntry(arena, this.f0[mid], this.f1[mid], this.f2[mid], leaves[mid].ids[0], tBuf, tStart, tLen, tSeq, t0, t1, t2) <= 0) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** Index of the first entry of `leaf` at or after the target (leaf.count if none). */
  private lowerBound(leaf: Leaf, tBuf: Uint8Array, tStart: number, tLen: number, tSeq: number, t0: number, t1: number, t2: number): number {
    let lo = 0;
    let hi = leaf.count;
    const { w0, w1, w2, ids } = leaf;
    const arena = this.arena;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (compareEntry(arena, w0[mid], w1[mid], w2[mid], ids[mid], tBuf, tStart, tLen, tSeq, t0, t1, t2) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /**
   * Inserts an entry; (key, seq) must be new and seq above every seq already held for key.
   * Key and value are copied into the memtable's chunks.
   */
  add(key: Uint8Array, seq: number, kind: number, value: Uint8Array): void {
    const { chunk, base } = this.arena.storeEntry(key, value);
    const keyEnd = base + key.length;
    this.insert(this.arena.push(chunk, base, keyEnd, keyEnd, keyEnd + value.length, seq, kind), key, 0, key.length, seq);
    this.bytes += key.length + value.length + ENTRY_OVERHEAD;
  }

  /** Places entry `id`, whose key is buf[ks, ke) (the arena's bytes or the same bytes elsewhere). */
  private insert(id: number, buf: Uint8Array, ks: number, ke: number, seq: number): void {
    const arena = this.arena;
    const t0 = word(buf, ks, ke);
    const t1 = word(buf, ks + 6, ke);
    const t2 = word(buf, ks + 12, ke);
    // Appends (ascending keys, as in a sequential load) go after the last entry without a search.
    let li = this.leaves.length - 1;
    let leaf = this.leaves[li];
    let at = leaf.count;
    const e = at - 1;
    if (e < 0 || compareEntry(arena, leaf.w0[e], leaf.w1[e], leaf.w2[e], leaf.ids[e], buf, ks, ke - ks, seq, t0, t1, t2) > 0) {
      li = this.findLeaf(buf, ks, ke - ks, seq, t0, t1, t2);
      leaf = this.leaves[li];
      at = this.lowerBound(leaf, buf, ks, ke - ks, seq, t0, t1, t2);
    }
    const n = leaf.count;
    if (at < n) {
      leaf.w0.copyWithin(at + 1, at, n);
      leaf.w1.copyWithin(at + 1, at, n);
      leaf.w2.copyWithin(at + 1, at, n);
      leaf.ids.copyWithin(at + 1, at, n);
    }
    leaf.w0[at] = t0;
    leaf.w1[at] = t1;
    leaf.w2[at] = t2;
    leaf.ids[at] = id;
    leaf.count = n + 1;
    if (at === 0) this.setFirst(li, leaf);
    if (leaf.count === LEAF_MAX) this.split(li, at === LEAF_MAX - 1 && li === this.leaves.length - 1);
    this.modifications++;
  }

  private setFirst(li: number, leaf: Leaf): void {
    this.f0[li] = leaf.w0[0];
    this.f1[li] = leaf.w1[0];
    this.f2[li] = leaf.w2[0];
  }

  /**
   * Moves the upper half of a full leaf into a new leaf right after it. When the last leaf
   * fills by appends (ascending keys), only the last entry moves: leaves stay full.
   */
  private split(li: number, appending: boolean): void {
    const left = this.leaves[li];
    const right = new Leaf();
    const half = appending ? LEAF_MAX - 1 : LEAF_MAX >>> 1;
    right.w0.set(left.w0.subarray(half, LEAF_MAX));
    right.w1.set(left.w1.subarray(half, LEAF_MAX));
    right.w2.set(left.w2.subarray(half, LEAF_MAX));
    right.ids.set(left.ids.subarray(half, LEAF_MAX));
    right.count = LEAF_MAX - half;
    left.count = half;
    const n = this.leaves.length;
    if (n === this.f0.length) {
      const grow = (a: Float64Array<ArrayBuffer>): Float64Array<ArrayBuffer> => {
        const b = new Float64Array(a.length * 2);
        b.set(a);
        return b;
      };
      this.f0 = grow(this.f0);
      this.f1 = grow(this.f1);
      this.f2 = grow(this.f2);
    }
    this.f0.copyWithin(li + 2, li + 1, n);
    this.f1.copyWithin(li + 2, li + 1, n);
    this.f2.copyWithin(li + 2, li + 1, n);
    this.leaves.splice(li + 1, 0, right);
    this.setFirst(li + 1, right);
  }

  /**
   * Keeps a write batch (encoded by this process, so well-formed: see batch.ts) and inserts each
   * op as offsets into the arena's copy of it (no views, no callback or reader per op).
   */
  addBatch(batch: Uint8Array, seq: number, count: number, start: number): void {
    if (this.batchCount === 0) this.firstSeq = seq;
    else if (seq !== this.nextSeq) this.seqsContiguous = false;
    this.nextSeq = seq + count;
    this.batchCount++;
    this.batchOps += count;
    const arena = this.arena;
    const { chunk, base } = arena.storeBatch(batch);
    const b = batch; // decoded from the caller's buffer; offsets are shifted to the arena's copy
    let p = start;
    let bytes = 0;
    for (let i = 0; i < count; i++) {
      const kind = b[p++];
      let len = 0;
      let shift = 1;
      for (;;) {
        const x = b[p++];
        len += (x & 0x7f) * shift;
        if (x < 0x80) break;
        shift *= 128;
      }
      const keyStart = p;
      p += len;
      const keyEnd = p;
      len = 0;
      if (kind === KIND_PUT) {
        shift = 1;
        for (;;) {
          const x = b[p++];
          len += (x & 0x7f) * shift;
          if (x < 0x80) break;
          shift *= 128;
        }
      }
      // The key is compared in the caller's batch: the same bytes, no chunk lookup.
      this.insert(arena.push(chunk, base + keyStart, base + keyEnd, base + p, base + p + len, seq + i, kind), b, keyStart, keyEnd, seq + i);
      bytes += keyEnd - keyStart + len + ENTRY_OVERHEAD;
      p += len;
    }
    this.bytes += bytes;
    if (p !== batch.length) throw new Error(`memtable: write batch decoded to ${p} of ${batch.length} bytes`);
  }

  /**
   * For each entry in internal order, its position among the ops of the batches (0 = the first
   * batch's first op); null unless the batches hold every entry with gap-free sequences.
   */
  sortedBatchPositions(): Int32Array | null {
    if (!this.batchesComplete || !this.seqsContiguous) return null;
    const out = new Int32Array(this.count);
    const arena = this.arena;
    let k = 0;
    for (const leaf of this.leaves) {
      const ids = leaf.ids;
      for (let i = 0; i < leaf.count; i++) out[k++] = arena.seqOf(ids[i]) - this.firstSeq;
    }
    return out;
  }

  /** True when the batches hold every entry (none was added one by one). */
  get batchesComplete(): boolean {
    return this.batchOps === this.count;
  }

  /**
   * The batches concatenated in sequence order (into `reuse`'s buffer when it is large enough)
   * and each batch's end in it.
   */
  batchesForFlush(reuse: Uint8Array | null = null): { batches: Uint8Array; batchEnds: number[] } {
    return { batches: this.arena.concatenatedBatches(reuse), batchEnds: this.arena.batchEnds.slice() };
  }

  /**
   * Position of the first entry at or after (key, seq) in internal order, as leaf index and
   * entry index; leaf index === leafCount when there is none.
   */
  seekPosition(key: Uint8Array, seq: number): [number, number] {
    return this.seekRange(key, 0, key.length, seq);
  }

  private seekRange(buf: Uint8Array, start: number, end: number, seq: number): [number, number] {
    const t0 = word(buf, start, end);
    const t1 = word(buf, start + 6, end);
    const t2 = word(buf, start + 12, end);
    const li = this.findLeaf(buf, start, end - start, seq, t0, t1, t2);
    const leaf = this.leaves[li];
    const at = this.lowerBound(leaf, buf, start, end - start, seq, t0, t1, t2);
    if (at < leaf.count) return [li, at];
    return li + 1 < this.leaves.length ? [li + 1, 0] : [this.leaves.length, 0];
  }

  /** Where the entry `id` sits now (inserts move entries between leaves). */
  positionOf(id: number): [number, number] {
    const a = this.arena;
    return this.seekRange(a.bufOf(id), a.keyStartOf(id), a.keyEndOf(id), a.seqOf(id));
  }

  /**
   * Id of the newest entry for `key` visible at `seq`, or -1 if the memtable has none.
   * `hash` is bloomHash(key), computed once per read for every memtable and table.
   */
  find(key: Uint8Array, seq: number, hash = bloomHash(key)): number {
    if (this.indexed < this.arena.count) this.catchUpIndex();
    const newest = this.index.get(key, hash);
    if (newest < 0) return -1;
    if (this.arena.seqOf(newest) <= seq) return newest;
    // Versions newer than the snapshot: search for the newest at or below seq.
    const [li, at] = this.seekPosition(key, seq);
    if (li === this.leaves.length) return -1;
    const id = this.leaves[li].ids[at];
    return this.arena.keyEquals(id, key, 0, key.length) ? id : -1;
  }

  kindOf(id: number): number {
    return this.arena.kindOf(id);
  }
  seqOf(id: number): number {
    return this.arena.seqOf(id);
  }
  /** A view of entry `id`'s key (made on each call). */
  keyOf(id: number): Uint8Array {
    return this.arena.keyView(id);
  }
  /** A view of entry `id`'s value (made on each call). */
  valueOf(id: number): Uint8Array {
    return this.arena.valueView(id);
  }
  /** A copy of entry `id`'s value. */
  valueCopyOf(id: number): Uint8Array {
    return this.arena.valueCopy(id);
  }

  /** find() as an object (kind, value view, copy): a convenience that allocates; reads use find(). */
  get(key: Uint8Array, seq: number, hash = bloomHash(key)): MemGetResult | undefined {
    const id = this.find(key, seq, hash);
    if (id < 0) return undefined;
    const arena = this.arena;
    return { kind: arena.kindOf(id), value: arena.valueView(id), valueCopy: () => arena.valueCopy(id) };
  }

  iterator(): MemtableIterator {
    return new MemtableIterator(this);
  }

  /** Indexes the entries inserted since the last read, oldest first (so the newest wins). */
  private catchUpIndex(): void {
    const arena = this.arena;
    for (let id = this.indexed; id < arena.count; id++) {
      const buf = arena.bufOf(id);
      const ks = arena.keyStartOf(id);
      const ke = arena.keyEndOf(id);
      this.index.put(id, bloomHash(buf, ks, ke), buf, ks, ke);
    }
    this.indexed = arena.count;
  }
}

/**
 * Cursor over a memtable, which may still take inserts: inserts shift entries within and
 * between leaves, so after one the cursor finds its entry again (entries are never removed).
 * Views of the current key and value are made on first use at each position.
 */
export class MemtableIterator implements InternalIterator {
  private id = -1;
  private leafIndex = 0;
  private entry = 0;
  private seen = 0;
  private keyView: Uint8Array | null = null;
  private valueView: Uint8Array | null = null;
  constructor(private readonly table: Memtable) {}

  private load(leafIndex: number, entry: number): void {
    const t = this.table;
    this.keyView = null;
    this.valueView = null;
    if (leafIndex >= t.leafCount || leafIndex < 0) {
      this.id = -1;
      return;
    }
    const leaf = t.leaf(leafIndex);
    if (entry >= leaf.count || entry < 0) {
      this.id = -1;
      return;
    }
    this.leafIndex = leafIndex;
    this.entry = entry;
    this.id = leaf.ids[entry];
    this.seen = t.modifications;
  }

  /** Re-finds the current entry if the memtable changed since it was found. */
  private settle(): void {
    if (this.seen === this.table.modifications) return;
    const [li, at] = this.table.positionOf(this.id);
    const key = this.keyView;
    const value = this.valueView;
    this.load(li, at);
    this.keyView = key; // same entry: its views stay right
    this.valueView = value;
  }

  valid(): boolean {
    return this.id >= 0;
  }
  seekToFirst(): void {
    this.load(0, 0);
  }
  seekToLast(): void {
    const last = this.table.leafCount - 1;
    this.load(last, this.table.leaf(last).count - 1);
  }
  seek(key: Uint8Array, seq: number): void {
    const [li, at] = this.table.seekPosition(key, seq);
    this.load(li, at);
  }
  next(): void {
    this.settle();
    const leaf = this.table.leaf(this.leafIndex);
    if (this.entry + 1 < leaf.count) this.load(this.leafIndex, this.entry + 1);
    else this.load(this.leafIndex + 1, 0);
  }
  prev(): void {
    this.settle();
    if (this.entry > 0) this.load(this.leafIndex, this.entry - 1);
    else if (this.leafIndex > 0) this.load(this.leafIndex - 1, this.table.leaf(this.leafIndex - 1).count - 1);
    else this.load(-1, 0);
  }
  key(): Uint8Array {
    return (this.keyView ??= this.table.keyOf(this.id));
  }
  seq(): number {
    return this.table.seqOf(this.id);
  }
  kind(): number {
    return this.table.kindOf(this.id);
  }
  value(): Uint8Array {
    return (this.valueView ??= this.table.valueOf(this.id));
  }
  valueCopy(): Uint8Array {
    return this.table.valueCopyOf(this.id);
  }
  close(): void {
    this.id = -1;
    this.keyView = null;
    this.valueView = null;
  }
}
