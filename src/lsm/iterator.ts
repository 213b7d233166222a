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
  close(): void;
}

function compareAt(a: InternalIterator, b: InternalIterator): number {
  const c = compareBytes(a.key(), b.key());
  if (c !== 0) return c;
  const sa = a.seq();
  const sb = b.seq();
  return sa === sb ? 0 : sa > sb ? -1 : 1;
}

/**
 * Merges children in internal order. Children are few (memtables, L0 tables, one per level),
 * so a linear scan for the smallest beats a heap's bookkeeping.
 */
export class MergingIterator implements InternalIterator {
  private current: InternalIterator | null = null;
  private forward = true;
  constructor(private readonly children: InternalIterator[]) {}

  valid(): boolean {
    return this.current !== null;
  }
  seekToFirst(): void {
    for (const c of this.children) c.seekToFirst();
    this.forward = true;
    this.findSmallest();
  }
  seekToLast(): void {
    for (const c of this.children) c.seekToLast();
    this.forward = false;
    this.findLargest();
  }
  seek(key: Uint8Array, seq: number): void {
    for (const c of this.children) c.seek(key, seq);
    this.forward = true;
    this.findSmallest();
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
    }
    cur.next();
    this.findSmallest();
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
  private findSmallest(): void {
    let best: InternalIterator | null = null;
    for (const c of this.children) {
      if (c.valid() && (best === null || compareAt(c, best) < 0)) best = c;
    }
    this.current = best;
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
  close(): void {
    for (const c of this.children) c.close();
    this.current = null;
  }
}
