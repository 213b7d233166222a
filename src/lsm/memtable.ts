// The memtable: a skiplist of internal entries (user key, seq, kind, value) kept in internal key
// order, a hash index from user key to its newest entry for point reads, and byte accounting so
// the DB knows when to freeze and flush it.
import { bloomHash } from "./bloom.ts";
import { bytesEqual, KIND_PUT, MAX_SEQ } from "./coding.ts";
import type { InternalIterator } from "./iterator.ts";

const MAX_HEIGHT = 12;
/** Bookkeeping per entry beyond key and value bytes: node object, next array, views, index slot. */
const ENTRY_OVERHEAD = 128;
/** Older versions a point read walks from the newest before it searches the skiplist instead. */
const MAX_VERSION_WALK = 8;

/** Key bytes [start, start + 6) as a big-endian integer, zero-padded past the key's end. */
function word(key: Uint8Array, start: number): number {
  const n = key.length;
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

/** Bytes of the key held as three 48-bit numbers in each node (see before()). */
const WORDS_BYTES = 18;

class Node {
  readonly next: (Node | null)[];
  /** The first 18 key bytes, zero-padded, as three exact integers: most comparisons end here. */
  readonly w0: number;
  readonly w1: number;
  readonly w2: number;
  constructor(
    readonly key: Uint8Array,
    readonly seq: number,
    readonly kind: number,
    readonly value: Uint8Array,
    height: number,
  ) {
    this.w0 = word(key, 0);
    this.w1 = word(key, 6);
    this.w2 = word(key, 12);
    // Literals for the common heights (3 of 4 nodes have height 1): cheaper than Array(n).fill.
    this.next = height === 1 ? [null] : height === 2 ? [null, null] : new Array<Node | null>(height).fill(null);
  }
}

/**
 * Open-addressing hash table from user key to its newest node (linear probing, load ≤ 1/2).
 * Entries are never removed: a memtable only grows until it is frozen and dropped.
 */
class KeyIndex {
  private slots: (Node | undefined)[] = new Array<Node | undefined>(1024);
  private hashes = new Int32Array(1024);
  private mask = 1023;
  private size = 0;

  /** The newest node of `key`, or undefined. */
  get(key: Uint8Array, hash: number): Node | undefined {
    const h = hash | 0;
    const slots = this.slots;
    for (let i = h & this.mask; ; i = (i + 1) & this.mask) {
      const n = slots[i];
      if (n === undefined) return undefined;
      if (this.hashes[i] === h && bytesEqual(n.key, key)) return n;
    }
  }

  /** Makes `node` the indexed node of its key if it is newer than the one there. */
  put(node: Node, hash: number): void {
    const h = hash | 0;
    const slots = this.slots;
    let i = h & this.mask;
    for (; ; i = (i + 1) & this.mask) {
      const n = slots[i];
      if (n === undefined) break;
      if (this.hashes[i] === h && bytesEqual(n.key, node.key)) {
        if (node.seq > n.seq) slots[i] = node;
        return;
      }
    }
    slots[i] = node;
    this.hashes[i] = h;
    if (++this.size * 2 > slots.length) this.grow();
  }

  private grow(): void {
    const oldSlots = this.slots;
    const oldHashes = this.hashes;
    const cap = oldSlots.length * 2;
    this.slots = new Array<Node | undefined>(cap);
    this.hashes = new Int32Array(cap);
    this.mask = cap - 1;
    for (let j = 0; j < oldSlots.length; j++) {
      const n = oldSlots[j];
      if (n === undefined) continue;
      let i = oldHashes[j] & this.mask;
      while (this.slots[i] !== undefined) i = (i + 1) & this.mask;
      this.slots[i] = n;
      this.hashes[i] = oldHashes[j];
    }
  }
}

/**
 * Is node (key, seq) before the target in internal order? The target is (tKey, tSeq) with
 * t0..t2 its words. Equal words mean equal zero-padded first 18 bytes: the rest of the bytes
 * then decide, and if one key ends within them it is a prefix of the other (padding is zeros,
 * so the longer key's extra bytes there are zeros) and sorts first. Seqs are unique per key.
 */
function before(n: Node, tKey: Uint8Array, tSeq: number, t0: number, t1: number, t2: number): boolean {
  if (n.w0 !== t0) return n.w0 < t0;
  if (n.w1 !== t1) return n.w1 < t1;
  if (n.w2 !== t2) return n.w2 < t2;
  const a = n.key;
  const len = a.length < tKey.length ? a.length : tKey.length;
  for (let i = WORDS_BYTES; i < len; i++) {
    if (a[i] !== tKey[i]) return a[i] < tKey[i];
  }
  if (a.length !== tKey.length) return a.length < tKey.length;
  return n.seq > tSeq;
}

export interface MemGetResult {
  kind: number;
  value: Uint8Array;
}

export class Memtable {
  private readonly head = new Node(new Uint8Array(0), MAX_SEQ, 0, new Uint8Array(0), MAX_HEIGHT);
  private height = 1;
  private readonly prevScratch: Node[] = new Array(MAX_HEIGHT);
  private rnd = 0x2545f491;
  /**
   * User key → its newest node. Point reads skip the skiplist search: the indexed node is the
   * key's newest, and its older versions follow it in the skiplist.
   */
  private readonly index = new KeyIndex();
  /** Approximate bytes held: key + value + per-entry overhead. */
  bytes = 0;
  count = 0;
  /**
   * The write batches inserted with addBatch, in sequence order: the table worker rebuilds the
   * memtable's contents from them. Complete only when every entry came that way.
   */
  readonly batches: Uint8Array[] = [];
  private batchOps = 0;
  /** Number of the WAL file holding this memtable's writes. */
  constructor(readonly walNumber: number) {}

  private randomHeight(): number {
    let h = 1;
    // xorshift32; branching factor 4 as in LevelDB.
    let x = this.rnd;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.rnd = x >>> 0;
    while (h < MAX_HEIGHT && (x & 3) === 0) {
      h++;
      x >>>= 2;
    }
    return h;
  }

  /**
   * Inserts an entry; (key, seq) must be new and seq above every seq already held for key.
   * Key and value are kept by reference.
   */
  add(key: Uint8Array, seq: number, kind: number, value: Uint8Array, hash = bloomHash(key)): void {
    const prev = this.prevScratch;
    const node = new Node(key, seq, kind, value, this.randomHeight());
    const t0 = node.w0;
    const t1 = node.w1;
    const t2 = node.w2;
    let x = this.head;
    for (let level = this.height - 1; level >= 0; level--) {
      let n = x.next[level];
      while (n !== null && before(n, key, seq, t0, t1, t2)) {
        x = n;
        n = x.next[level];
      }
      prev[level] = x;
    }
    const h = node.next.length;
    if (h > this.height) {
      for (let level = this.height; level < h; level++) prev[level] = this.head;
      this.height = h;
    }
    for (let level = 0; level < h; level++) {
      node.next[level] = prev[level].next[level];
      prev[level].next[level] = node;
    }
    this.index.put(node, hash);
    this.bytes += key.length + value.length + ENTRY_OVERHEAD;
    this.count++;
  }

  /**
   * Decodes a write batch (encoded by this process, so well-formed: see batch.ts) and inserts
   * each op, keeping views into the batch buffer. Avoids a callback and reader per op.
   */
  addBatch(b: Uint8Array, seq: number, count: number, start: number): void {
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
      const key = b.subarray(p, p + len);
      p += len;
      let value: Uint8Array = EMPTY;
      if (kind === KIND_PUT) {
        len = 0;
        shift = 1;
        for (;;) {
          const x = b[p++];
          len += (x & 0x7f) * shift;
          if (x < 0x80) break;
          shift *= 128;
        }
        value = b.subarray(p, p + len);
        p += len;
      }
      this.add(key, seq + i, kind, value);
    }
    if (p !== b.length) throw new Error(`memtable: write batch decoded to ${p} of ${b.length} bytes`);
  }

  /** True when `batches` holds every entry (none was added one by one). */
  get batchesComplete(): boolean {
    return this.batchOps === this.count;
  }

  /** First node at or after (key, seq) in internal order. */
  findGreaterOrEqual(key: Uint8Array, seq: number): Node | null {
    const t0 = word(key, 0);
    const t1 = word(key, 6);
    const t2 = word(key, 12);
    let x = this.head;
    for (let level = this.height - 1; level >= 0; level--) {
      let n = x.next[level];
      while (n !== null && before(n, key, seq, t0, t1, t2)) {
        x = n;
        n = x.next[level];
      }
      if (level === 0) return n;
    }
    return null;
  }

  /** Last node strictly before (key, seq), or null. */
  findLessThan(key: Uint8Array, seq: number): Node | null {
    const t0 = word(key, 0);
    const t1 = word(key, 6);
    const t2 = word(key, 12);
    let x = this.head;
    for (let level = this.height - 1; level >= 0; level--) {
      let n = x.next[level];
      while (n !== null && before(n, key, seq, t0, t1, t2)) {
        x = n;
        n = x.next[level];
      }
    }
    return x === this.head ? null : x;
  }

  findLast(): Node | null {
    let x = this.head;
    for (let level = this.height - 1; level >= 0; level--) {
      let n = x.next[level];
      while (n !== null) {
        x = n;
        n = x.next[level];
      }
    }
    return x === this.head ? null : x;
  }

  first(): Node | null {
    return this.head.next[0];
  }

  /**
   * Newest entry for `key` visible at `seq`, or undefined if the memtable has none.
   * `hash` is bloomHash(key), computed once per read for every memtable and table.
   */
  get(key: Uint8Array, seq: number, hash = bloomHash(key)): MemGetResult | undefined {
    let n = this.index.get(key, hash);
    if (n === undefined) return undefined;
    for (let walked = 0; n.seq > seq; walked++) {
      if (walked === MAX_VERSION_WALK) {
        // Many versions newer than the snapshot: search instead of walking them.
        const found = this.findGreaterOrEqual(key, seq);
        return found !== null && bytesEqual(found.key, key) ? found : undefined;
      }
      const older: Node | null = n.next[0];
      if (older === null || !bytesEqual(older.key, key)) return undefined;
      n = older;
    }
    return n;
  }

  iterator(): MemtableIterator {
    return new MemtableIterator(this);
  }
}

const EMPTY = new Uint8Array(0);

export class MemtableIterator implements InternalIterator {
  private node: Node | null = null;
  constructor(private readonly table: Memtable) {}
  valid(): boolean {
    return this.node !== null;
  }
  seekToFirst(): void {
    this.node = this.table.first();
  }
  seekToLast(): void {
    this.node = this.table.findLast();
  }
  seek(key: Uint8Array, seq: number): void {
    this.node = this.table.findGreaterOrEqual(key, seq);
  }
  next(): void {
    this.node = this.node!.next[0];
  }
  prev(): void {
    const n = this.node!;
    this.node = this.table.findLessThan(n.key, n.seq);
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
    return this.node!.value.slice();
  }
  close(): void {
    this.node = null;
  }
}
