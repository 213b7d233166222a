// Iterators over internal entries and the merging iterator that combines memtables and tables
// into one stream in internal key order (user key ascending, newest version first).
import { compareBytes } from "./coding.ts";

/**
 * A cursor over internal entries. key() and value() are views valid until the cursor moves;
 * callers that keep them copy.
 */
export interface InternalIterator {
  valid(): boolean;
  seekToFirst(): void;
  seekToLast(): void;
  /** First entry at or after (key, seq) in internal order. */
  seek(key: Uint8Array, seq: number): void;
  next(): void;
  prev(): void;
  key(): Uint8Array;
  seq(): number;
  kind(): number;
  value(): Uint8Array;
  /** A fresh copy of value() (cheaper than value().slice() where value() makes a view). */
  valueCopy(): Uint8Array;
  close(): void;
}

/** Internal order of two positioned children: user key ascending, then sequence descending. */
function compareAt(a: InternalIterator, b: InternalIterator): number {
  const c = compareBytes(a.key(), b.key());
  if (c !== 0) return c;
  const sa = a.seq();
  const sb = b.seq();
  return sa === sb ? 0 : sa > sb ? -1 : 1;
}

/**
 * Merges children in internal order. Moving forward, the valid children sit in a binary min-heap,
 * so a step costs O(log k) comparisons (usually two: the advanced child against the root's
 * children) instead of k. Moving backward (rare: reverse iterators) a linear scan picks the
 * largest, as LevelDB's merger does.
 */
export class MergingIterator implements InternalIterator {
  private current: InternalIterator | null = null;
  private forward = true;
  /** Forward only: the valid children, heap[0] the smallest (the current one). */
  private readonly heap: InternalIterator[];
  private heapSize = 0;
  /** Index (1 or 2) of the smaller child of the root, or -1 when unknown. */
  private runnerUp = -1;

  constructor(private readonly children: InternalIterator[]) {
    this.heap = new Array<InternalIterator>(children.length);
  }

  valid(): boolean {
    return this.current !== null;
  }
  seekToFirst(): void {
    for (const c of this.children) c.seekToFirst();
    this.forward = true;
    this.buildHeap();
  }
  seekToLast(): void {
    for (const c of this.children) c.seekToLast();
    this.forward = false;
    this.findLargest();
  }
  seek(key: Uint8Array, seq: number): void {
    for (const c of this.children) c.seek(key, seq);
    this.forward = true;
    this.buildHeap();
  }
  next(): void {
    const cur = this.current!;
    if (!this.forward) {
      // Other children sit before the current key; move each to the first entry after it.
      const key = cur.key();
      const seq = cur.seq();
      for (const c of this.children) {
        if (c === cur) continue;
        c.seek(key, seq);
        if (c.valid() && compareAt(c, cur) === 0) c.next();
      }
      this.forward = true;
      cur.next();
      this.buildHeap();
      return;
    }
    cur.next();
    const h = this.heap;
    if (cur.valid()) {
      // Scans mostly draw runs from one child: when it stays below the smaller of the root's
      // two children (cached until the heap below the root changes), one comparison suffices.
      const n = this.heapSize;
      if (n === 1) return;
      let s = this.runnerUp;
      if (s < 0) s = this.runnerUp = n > 2 && compareAt(h[2], h[1]) < 0 ? 2 : 1;
      if (compareAt(cur, h[s]) <= 0) return;
    } else {
      const last = --this.heapSize;
      if (last === 0) {
        this.current = null;
        return;
      }
      h[0] = h[last];
    }
    this.runnerUp = -1;
    this.siftDown(0);
    this.current = h[0];
  }
  prev(): void {
    const cur = this.current!;
    if (this.forward) {
      // Other children sit after the current key; move each to the last entry before it.
      const key = cur.key();
      const seq = cur.seq();
      for (const c of this.children) {
        if (c === cur) continue;
        c.seek(key, seq);
        if (c.valid()) c.prev();
        else c.seekToLast();
      }
      this.forward = false;
    }
    cur.prev();
    this.findLargest();
  }

  private buildHeap(): void {
    const h = this.heap;
    let n = 0;
    for (const c of this.children) if (c.valid()) h[n++] = c;
    this.heapSize = n;
    this.runnerUp = -1;
    for (let i = (n >>> 1) - 1; i >= 0; i--) this.siftDown(i);
    this.current = n > 0 ? h[0] : null;
  }

  private siftDown(i: number): void {
    const h = this.heap;
    const n = this.heapSize;
    const x = h[i];
    for (;;) {
      let child = 2 * i + 1;
      if (child >= n) break;
      if (child + 1 < n && compareAt(h[child + 1], h[child]) < 0) child++;
      if (compareAt(h[child], x) >= 0) break;
      h[i] = h[child];
      i = child;
    }
    h[i] = x;
  }

  private findLargest(): void {
    let best: InternalIterator | null = null;
    for (let i = this.children.length - 1; i >= 0; i--) {
      const c = this.children[i];
      if (c.valid() && (best === null || compareAt(c, best) > 0)) best = c;
    }
    this.current = best;
  }
  key(): Uint8Array {
    return this.current!.key();
  }
  seq(): number {
    return this.current!.seq();
  }
  kind(): number {
    return this.current!.kind();
  }
  value(): Uint8Array {
    return this.current!.value();
  }
  valueCopy(): Uint8Array {
    return this.current!.valueCopy();
  }
  close(): void {
    for (const c of this.children) c.close();
    this.current = null;
    this.heapSize = 0;
  }
}
