// The memtable: entries (user key, seq, kind, value) in internal key order, kept in sorted
// leaves of up to 64 entries whose first 18 key bytes sit as numbers in typed arrays (a search
// compares numbers in a few cache lines instead of chasing a pointer per step, as a skiplist
// does); a hash index (memtable-index.ts) from user key to its newest entry for point reads
// (caught up by the first read after inserts, so write-only memtables never build it); byte
// accounting so the DB knows when to freeze and flush it.
import { bloomHash } from "./bloom.ts";
import { bytesEqual, KIND_PUT } from "./coding.ts";
import type { InternalIterator } from "./iterator.ts";
import { KeyIndex } from "./memtable-index.ts";

/** Entries per leaf; a full leaf splits in two halves. */
const LEAF_MAX = 64;
/** Bookkeeping per entry beyond key and value bytes: node object, views, leaf and index slots. */
const ENTRY_OVERHEAD = 128;

/**
 * One entry. Key and value live in a write batch buffer at [keyStart, keyEnd) and
 * [valStart, valEnd); views of them are made on first use only (most entries are never read
 * before the memtable is flushed, and a view costs an allocation).
 */
class Node {
  private keyView: Uint8Array | null = null;
  private valueView: Uint8Array | null = null;
  constructor(
    readonly buf: Uint8Array,
    readonly keyStart: number,
    readonly keyEnd: number,
    readonly valBuf: Uint8Array,
    readonly valStart: number,
    readonly valEnd: number,
    readonly seq: number,
    readonly kind: number,
  ) {}
  get key(): Uint8Array {
    return (this.keyView ??= this.buf.subarray(this.keyStart, this.keyEnd));
  }
  get value(): Uint8Array {
    return (this.valueView ??= this.valBuf.subarray(this.valStart, this.valEnd));
  }
  valueCopy(): Uint8Array {
    return this.valBuf.slice(this.valStart, this.valEnd);
  }
  /** Is this node's key equal to t[tStart, tEnd)? */
  keyEquals(t: Uint8Array, tStart = 0, tEnd = t.length): boolean {
    const b = this.buf;
    const start = this.keyStart;
    const n = tEnd - tStart;
    if (this.keyEnd - start !== n) return false;
    for (let i = 0; i < n; i++) if (b[start + i] !== t[tStart + i]) return false;
    return true;
  }
}

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

/** Key bytes held as three 48-bit numbers per entry (see compareAt()). */
const WORDS_BYTES = 18;

/** Up to LEAF_MAX consecutive entries and their key words. */
class Leaf {
  count = 0;
  readonly w0 = new Float64Array(LEAF_MAX);
  readonly w1 = new Float64Array(LEAF_MAX);
  readonly w2 = new Float64Array(LEAF_MAX);
  readonly nodes: Node[] = [];
}

/**
 * Compares the entry with words (a0, a1, a2) and node n against the target (tKey, tSeq) with
 * words t0..t2, in internal order: negative if the entry comes first. Equal words mean equal
 * zero-padded first 18 bytes: the rest of the bytes then decide, and if one key ends within
 * them it is a prefix of the other (its padding matches zeros) and sorts first. Newer seq first.
 */
function compareEntry(
  a0: number, a1: number, a2: number, n: Node,
  tBuf: Uint8Array, tStart: number, tLen: number, tSeq: number, t0: number, t1: number, t2: number,
): number {
  if (a0 !== t0) return a0 < t0 ? -1 : 1;
  if (a1 !== t1) return a1 < t1 ? -1 : 1;
  if (a2 !== t2) return a2 < t2 ? -1 : 1;
  const a = n.buf;
  const start = n.keyStart;
  const aLen = n.keyEnd - start;
  const len = aLen < tLen ? aLen : tLen;
  for (let i = WORDS_BYTES; i < len; i++) {
    if (a[start + i] !== tBuf[tStart + i]) return a[start + i] - tBuf[tStart + i];
  }
  if (aLen !== tLen) return aLen - tLen;
  return n.seq === tSeq ? 0 : n.seq > tSeq ? -1 : 1;
}

export interface MemGetResult {
  kind: number;
  value: Uint8Array;
  /** A copy of the value (one allocation, no view). */
  valueCopy(): Uint8Array;
}

export class Memtable {
  /** Sorted, non-empty (except a lone first leaf), each leaf's entries before the next leaf's. */
  private leaves: Leaf[] = [new Leaf()];
  /** Key words of each leaf's first entry, for the search that picks a leaf. */
  private f0 = new Float64Array(64);
  private f1 = new Float64Array(64);
  private f2 = new Float64Array(64);
  /** Bumped by every insert: iterators positioned before it find their place again. */
  modifications = 0;
  /**
   * User key → its newest node. A point read for the newest version needs no search; inserts
   * come in sequence order, so the node indexed for a key is its newest.
   */
  private readonly index = new KeyIndex<Node>();
  /**
   * Nodes inserted since the index last caught up, in insertion (sequence) order. The index is
   * brought up to date by the first read after them: a memtable filled by writes alone (the
   * usual fate of one that is frozen and flushed) never pays for hashing and probing.
   */
  private unindexed: Node[] = [];
  /**
   * The write batches inserted with addBatch, in sequence order: the table worker rebuilds the
   * memtable's contents from them. Complete only when every entry came that way.
   */
  readonly batches: Uint8Array[] = [];
  private batchOps = 0;
  /** Sequence of the first batch's first op, and whether the batches' sequences run gap-free. */
  private firstSeq = 0;
  private nextSeq = 0;
  private seqsContiguous = true;
  /** Approximate bytes held: key + value + per-entry overhead. */
  bytes = 0;
  count = 0;
  /** Sequence number of the last write added by the database (0: none). */
  lastSeq = 0;
  /** Some write here is in no WAL (WriteOptions.wal false): only a flush makes it durable. */
  unlogged = false;
  /** Number of the WAL file holding this memtable's writes. */
  constructor(readonly walNumber: number) {}

  get leafCount(): number {
    return this.leaves.length;
  }
  leaf(i: number): Leaf {
    return this.leaves[i];
  }

  /** Index of the last leaf whose first entry is at or before the target (0 if none is). */
  private findLeaf(tBuf: Uint8Array, tStart: number, tLen: number, tSeq: number, t0: number, t1: number, t2: number): number {
    const leaves = this.leaves;
    let lo = 0;
    let hi = leaves.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (compareEntry(this.f0[mid], this.f1[mid], this.f2[mid], leaves[mid].nodes[0], tBuf, tStart, tLen, tSeq, t0, t1, t2) <= 0) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** Index of the first entry of `leaf` at or after the target (leaf.count if none). */
  private lowerBound(leaf: Leaf, tBuf: Uint8Array, tStart: number, tLen: number, tSeq: number, t0: number, t1: number, t2: number): number {
    let lo = 0;
    let hi = leaf.count;
    const { w0, w1, w2, nodes } = leaf;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (compareEntry(w0[mid], w1[mid], w2[mid], nodes[mid], tBuf, tStart, tLen, tSeq, t0, t1, t2) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /**
   * Inserts an entry; (key, seq) must be new and seq above every seq already held for key.
   * Key and value are kept by reference.
   */
  add(key: Uint8Array, seq: number, kind: number, value: Uint8Array): void {
    this.insert(new Node(key, 0, key.length, value, 0, value.length, seq, kind));
  }

  private insert(node: Node): void {
    const buf = node.buf;
    const ks = node.keyStart;
    const ke = node.keyEnd;
    const seq = node.seq;
    const t0 = word(buf, ks, ke);
    const t1 = word(buf, ks + 6, ke);
    const t2 = word(buf, ks + 12, ke);
    // Appends (ascending keys, as in a sequential load) go after the last entry without a search.
    let li = this.leaves.length - 1;
    let leaf = this.leaves[li];
    let at = leaf.count;
    const e = at - 1;
    if (e < 0 || compareEntry(leaf.w0[e], leaf.w1[e], leaf.w2[e], leaf.nodes[e], buf, ks, ke - ks, seq, t0, t1, t2) > 0) {
      li = this.findLeaf(buf, ks, ke - ks, seq, t0, t1, t2);
      leaf = this.leaves[li];
      at = this.lowerBound(leaf, buf, ks, ke - ks, seq, t0, t1, t2);
    }
    const n = leaf.count;
    if (at < n) {
      leaf.w0.copyWithin(at + 1, at, n);
      leaf.w1.copyWithin(at + 1, at, n);
      leaf.w2.copyWithin(at + 1, at, n);
      leaf.nodes.splice(at, 0, node);
    } else {
      leaf.nodes.push(node);
    }
    leaf.w0[at] = t0;
    leaf.w1[at] = t1;
    leaf.w2[at] = t2;
    leaf.count = n + 1;
    if (at === 0) this.setFirst(li, leaf);
    if (leaf.count === LEAF_MAX) this.split(li, at === LEAF_MAX - 1 && li === this.leaves.length - 1);
    this.unindexed.push(node);
    this.modifications++;
    this.bytes += ke - ks + node.valEnd - node.valStart + ENTRY_OVERHEAD;
    this.count++;
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
    for (let i = half; i < LEAF_MAX; i++) right.nodes.push(left.nodes[i]);
    right.count = LEAF_MAX - half;
    left.nodes.length = half;
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
   * Decodes a write batch (encoded by this process, so well-formed: see batch.ts) and inserts
   * each op as offsets into the batch buffer (no views, no callback or reader per op).
   */
  addBatch(b: Uint8Array, seq: number, count: number, start: number): void {
    if (this.batches.length === 0) this.firstSeq = seq;
    else if (seq !== this.nextSeq) this.seqsContiguous = false;
    this.nextSeq = seq + count;
    this.batches.push(b);
    this.batchOps += count;
    let p = start;
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
      this.insert(new Node(b, keyStart, keyEnd, b, p, p + len, seq + i, kind));
      p += len;
    }
    if (p !== b.length) throw new Error(`memtable: write batch decoded to ${p} of ${b.length} bytes`);
  }

  /**
   * For each entry in internal order, its position among the ops of `batches` (0 = the first
   * batch's first op); null unless the batches hold every entry with gap-free sequences.
   */
  sortedBatchPositions(): Int32Array | null {
    if (!this.batchesComplete || !this.seqsContiguous) return null;
    const out = new Int32Array(this.count);
    let k = 0;
    for (const leaf of this.leaves) {
      const nodes = leaf.nodes;
      for (let i = 0; i < leaf.count; i++) out[k++] = nodes[i].seq - this.firstSeq;
    }
    return out;
  }

  /** True when `batches` holds every entry (none was added one by one). */
  get batchesComplete(): boolean {
    return this.batchOps === this.count;
  }

  /**
   * Position of the first entry at or after (key, seq) in internal order, as leaf index and
   * entry index; leaf index === leafCount when there is none.
   */
  seekPosition(key: Uint8Array, seq: number): [number, number] {
    const t0 = word(key, 0);
    const t1 = word(key, 6);
    const t2 = word(key, 12);
    const li = this.findLeaf(key, 0, key.length, seq, t0, t1, t2);
    const leaf = this.leaves[li];
    const at = this.lowerBound(leaf, key, 0, key.length, seq, t0, t1, t2);
    if (at < leaf.count) return [li, at];
    return li + 1 < this.leaves.length ? [li + 1, 0] : [this.leaves.length, 0];
  }

  /**
   * Newest entry for `key` visible at `seq`, or undefined if the memtable has none.
   * `hash` is bloomHash(key), computed once per read for every memtable and table.
   */
  get(key: Uint8Array, seq: number, hash = bloomHash(key)): MemGetResult | undefined {
    if (this.unindexed.length > 0) this.catchUpIndex();
    const newest = this.index.get(key, hash);
    if (newest === undefined) return undefined;
    if (newest.seq <= seq) return newest;
    // Versions newer than the snapshot: search for the newest at or below seq.
    const [li, at] = this.seekPosition(key, seq);
    if (li === this.leaves.length) return undefined;
    const n = this.leaves[li].nodes[at];
    return n.keyEquals(key) ? n : undefined;
  }

  iterator(): MemtableIterator {
    return new MemtableIterator(this);
  }

  /** Indexes the nodes inserted since the last read, oldest first (so the newest wins). */
  private catchUpIndex(): void {
    const nodes = this.unindexed;
    this.unindexed = [];
    for (const n of nodes) this.index.put(n, bloomHash(n.buf, n.keyStart, n.keyEnd));
  }
}

const EMPTY = new Uint8Array(0);

/**
 * Cursor over a memtable, which may still take inserts: inserts shift entries within and
 * between leaves, so after one the cursor finds its entry again (entries are never removed).
 */
export class MemtableIterator implements InternalIterator {
  private node: Node | null = null;
  private leafIndex = 0;
  private entry = 0;
  private seen = 0;
  constructor(private readonly table: Memtable) {}

  private load(leafIndex: number, entry: number): void {
    const t = this.table;
    if (leafIndex >= t.leafCount || leafIndex < 0) {
      this.node = null;
      return;
    }
    const leaf = t.leaf(leafIndex);
    if (entry >= leaf.count || entry < 0) {
      this.node = null;
      return;
    }
    this.leafIndex = leafIndex;
    this.entry = entry;
    this.node = leaf.nodes[entry];
    this.seen = t.modifications;
  }

  /** Re-finds the current entry if the memtable changed since it was found. */
  private settle(): void {
    if (this.seen === this.table.modifications) return;
    const n = this.node!;
    const [li, at] = this.table.seekPosition(n.key, n.seq); // the key view is made once per node
    this.load(li, at);
  }

  valid(): boolean {
    return this.node !== null;
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
    else this.node = null;
  }
  key(): Uint8Array {
    return this.node!.key;
  }
  seq(): number {
    return this.node!.seq;
  }
  kind(): number {
    return this.node!.kind;
  }
  value(): Uint8Array {
    return this.node!.value;
  }
  valueCopy(): Uint8Array {
    return this.node!.valueCopy();
  }
  close(): void {
    this.node = null;
  }
}
