// The memtable: a skiplist of internal entries (user key, seq, kind, value) kept in internal key
// order, with byte accounting so the DB knows when to freeze and flush it.
import { compareBytes, MAX_SEQ } from "./coding.ts";
import type { InternalIterator } from "./iterator.ts";

const MAX_HEIGHT = 12;
/** Bookkeeping per entry beyond key and value bytes: node object, next array, views. */
const ENTRY_OVERHEAD = 96;

class Node {
  readonly next: (Node | null)[];
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

  /** Inserts an entry; (key, seq) must be new. Key and value are kept by reference. */
  add(key: Uint8Array, seq: number, kind: number, value: Uint8Array): void {
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
    this.bytes += key.length + value.length + ENTRY_OVERHEAD;
    this.count++;
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

  /** Newest entry for `key` visible at `seq`, or undefined if the memtable has none. */
  get(key: Uint8Array, seq: number): MemGetResult | undefined {
    const n = this.findGreaterOrEqual(key, seq);
    if (n !== null && compareBytes(n.key, key) === 0) return n;
    return undefined;
  }

  iterator(): MemtableIterator {
    return new MemtableIterator(this);
  }
}

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
