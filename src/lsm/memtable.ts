// The memtable: a skiplist of internal entries (user key, seq, kind, value) kept in internal key
// order, a hash index from user key to its newest entry for point reads, and byte accounting so
// the DB knows when to freeze and flush it.
import { bloomHash } from "./bloom.ts";
import { bytesEqual, compareBytes, KIND_PUT, MAX_SEQ } from "./coding.ts";
import type { InternalIterator } from "./iterator.ts";

const MAX_HEIGHT = 12;
/** Bookkeeping per entry beyond key and value bytes: node object, next array, views, index slot. */
const ENTRY_OVERHEAD = 128;
/** Older versions a point read walks from the newest before it searches the skiplist instead. */
const MAX_VERSION_WALK = 8;

class Node {
  readonly next: (Node | null)[];
  /** Next node whose key has the same hash (a different key), in the hash index. */
  hashNext: Node | null = null;
  constructor(
    readonly key: Uint8Array,
    readonly seq: number,
    readonly kind: number,
    readonly value: Uint8Array,
    height: number,
  ) {
    this.next = new Array(height).fill(null);
  }
}

/** Is node (key, seq) before target (tKey, tSeq) in internal order? Seqs are unique per key. */
function before(n: Node, tKey: Uint8Array, tSeq: number): boolean {
  const c = compareBytes(n.key, tKey);
  return c < 0 || (c === 0 && n.seq > tSeq);
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
   * bloomHash(user key) → newest node of each key with that hash (chained by hashNext). Point
   * reads skip the skiplist search: inserts come in sequence order, so the node indexed for a key
   * is its newest, and its older versions follow it in the skiplist.
   */
  private readonly index = new Map<number, Node>();
  /** Approximate bytes held: key + value + per-entry overhead. */
  bytes = 0;
  count = 0;
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
    let x = this.head;
    for (let level = this.height - 1; level >= 0; level--) {
      let n = x.next[level];
      while (n !== null && before(n, key, seq)) {
        x = n;
        n = x.next[level];
      }
      prev[level] = x;
    }
    const h = this.randomHeight();
    if (h > this.height) {
      for (let level = this.height; level < h; level++) prev[level] = this.head;
      this.height = h;
    }
    const node = new Node(key, seq, kind, value, h);
    for (let level = 0; level < h; level++) {
      node.next[level] = prev[level].next[level];
      prev[level].next[level] = node;
    }
    this.indexNode(node, hash);
    this.bytes += key.length + value.length + ENTRY_OVERHEAD;
    this.count++;
  }

  private indexNode(node: Node, hash: number): void {
    const head = this.index.get(hash);
    if (head === undefined) {
      this.index.set(hash, node);
      return;
    }
    let before: Node | null = null;
    let n: Node | null = head;
    while (n !== null && !bytesEqual(n.key, node.key)) {
      before = n;
      n = n.hashNext;
    }
    if (n === null) {
      node.hashNext = head;
      this.index.set(hash, node);
    } else if (node.seq > n.seq) {
      // The new node replaces the key's older newest version in the chain.
      node.hashNext = n.hashNext;
      n.hashNext = null;
      if (before === null) this.index.set(hash, node);
      else before.hashNext = node;
    }
  }

  /**
   * Decodes a write batch (encoded by this process, so well-formed: see batch.ts) and inserts
   * each op, keeping views into the batch buffer. Avoids a callback and reader per op.
   */
  addBatch(b: Uint8Array, seq: number, count: number, start: number): void {
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

  /** First node at or after (key, seq) in internal order. */
  findGreaterOrEqual(key: Uint8Array, seq: number): Node | null {
    let x = this.head;
    for (let level = this.height - 1; level >= 0; level--) {
      let n = x.next[level];
      while (n !== null && before(n, key, seq)) {
        x = n;
        n = x.next[level];
      }
      if (level === 0) return n;
    }
    return null;
  }

  /** Last node strictly before (key, seq), or null. */
  findLessThan(key: Uint8Array, seq: number): Node | null {
    let x = this.head;
    for (let level = this.height - 1; level >= 0; level--) {
      let n = x.next[level];
      while (n !== null && before(n, key, seq)) {
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
    let n: Node | null = this.index.get(hash) ?? null;
    while (n !== null && !bytesEqual(n.key, key)) n = n.hashNext;
    if (n === null) return undefined;
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
