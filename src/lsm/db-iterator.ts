// The user-facing iterator: turns the merged stream of internal entries into the live key/value
// pairs visible at one sequence number, within bounds, forward or reverse (LevelDB's DBIter).
import { compareBytes, KIND_DEL, MAX_SEQ } from "./coding.ts";
import { LsmError } from "./errors.ts";
import type { InternalIterator } from "./iterator.ts";

export interface IteratorOptions {
  gt?: Uint8Array;
  gte?: Uint8Array;
  lt?: Uint8Array;
  lte?: Uint8Array;
  reverse?: boolean;
  /** Maximum entries returned; negative or absent means no limit. */
  limit?: number;
}

/**
 * Live entries at `seq`, in user key order, with seek/next/prev in both directions.
 * Moving forward, the internal cursor sits on the current entry; moving backward, it sits just
 * before every version of the current key, and the current key/value are held copied.
 */
class UserEntryCursor {
  private forward = true;
  private ok = false;
  /** A stable copy: the key to step past (forward) or the current key (backward). */
  private savedKey: Uint8Array = new Uint8Array(0);
  private savedValue: Uint8Array = new Uint8Array(0);

  constructor(private readonly iter: InternalIterator, private readonly seq: number) {}

  valid(): boolean {
    return this.ok;
  }
  /** A view, valid until the cursor moves. */
  key(): Uint8Array {
    return this.forward ? this.iter.key() : this.savedKey;
  }
  /** A view, valid until the cursor moves. */
  value(): Uint8Array {
    return this.forward ? this.iter.value() : this.savedValue;
  }
  /** A fresh copy of the current value. */
  valueCopy(): Uint8Array {
    return this.forward ? this.iter.valueCopy() : this.savedValue.slice();
  }

  seekToFirst(): void {
    this.forward = true;
    this.iter.seekToFirst();
    this.findNext(false);
  }
  seekToLast(): void {
    this.forward = false;
    this.iter.seekToLast();
    this.findPrev();
  }
  /** First live key ≥ key. */
  seek(key: Uint8Array): void {
    this.forward = true;
    this.iter.seek(key, this.seq);
    this.findNext(false);
  }
  /** Last live key ≤ key. */
  seekForPrev(key: Uint8Array): void {
    this.forward = false;
    // (key, seq 0) sorts after every real version of key: land on the first entry past key.
    this.iter.seek(key, 0);
    if (this.iter.valid()) this.iter.prev();
    else this.iter.seekToLast();
    this.findPrev();
  }

  /**
   * Moves to the next live key. `currentKey`, if given, is a stable copy of the current key
   * the caller already made (nextv copies every key it returns), so stepping costs no copy.
   */
  next(currentKey?: Uint8Array): void {
    if (!this.forward) {
      this.forward = true;
      if (this.iter.valid()) this.iter.next();
      else this.iter.seekToFirst();
      if (!this.iter.valid()) {
        this.ok = false;
        return;
      }
      // savedKey holds the key to step past.
    } else {
      this.savedKey = currentKey ?? this.iter.key().slice();
      this.iter.next();
    }
    this.findNext(true);
  }

  prev(): void {
    if (this.forward) {
      this.savedKey = this.iter.key().slice();
      for (;;) {
        this.iter.prev();
        if (!this.iter.valid()) {
          this.ok = false;
          this.forward = false;
          return;
        }
        if (compareBytes(this.iter.key(), this.savedKey) < 0) break;
      }
      this.forward = false;
    }
    this.findPrev();
  }

  private findNext(skipping: boolean): void {
    const it = this.iter;
    const seq = this.seq;
    for (; it.valid(); it.next()) {
      if (it.seq() > seq) continue;
      if (skipping && compareBytes(it.key(), this.savedKey) <= 0) continue;
      if (it.kind() === KIND_DEL) {
        this.savedKey = it.key().slice();
        skipping = true;
        continue;
      }
      this.ok = true;
      return;
    }
    this.ok = false;
  }

  private findPrev(): void {
    const it = this.iter;
    let kind = KIND_DEL;
    while (it.valid()) {
      if (it.seq() <= this.seq) {
        if (kind !== KIND_DEL && compareBytes(it.key(), this.savedKey) < 0) break;
        kind = it.kind();
        this.savedKey = it.key().slice();
        if (kind !== KIND_DEL) this.savedValue = it.valueCopy();
      }
      it.prev();
    }
    if (kind === KIND_DEL) {
      this.ok = false;
      this.forward = true;
      return;
    }
    this.ok = true;
  }

  close(): void {
    this.iter.close();
    this.ok = false;
  }
}

function checkBound(name: string, v: unknown): Uint8Array | undefined {
  if (v === undefined || v === null) return undefined;
  if (!(v instanceof Uint8Array)) throw new LsmError("INVALID_ARGUMENT", `iterator option ${name} must be a Uint8Array`);
  return v;
}

/**
 * A positioned iterator over live entries: seek/next/prev/valid/key/value/close, batch reads via
 * nextv(n), and `for await` support. Keys and values returned are fresh copies. The iterator
 * pins the version and snapshot it was created with until close() (or the loop ends).
 */
export class LsmIterator implements AsyncIterable<[Uint8Array, Uint8Array]> {
  private readonly cursor: UserEntryCursor;
  private readonly lower?: Uint8Array;
  private readonly lowerInclusive: boolean;
  private readonly upper?: Uint8Array;
  private readonly upperInclusive: boolean;
  readonly reverse: boolean;
  private remaining: number;
  private closed = false;

  constructor(internal: InternalIterator, seq: number, opts: IteratorOptions, private readonly onClose: () => void) {
    this.cursor = new UserEntryCursor(internal, seq > MAX_SEQ ? MAX_SEQ : seq);
    const gt = checkBound("gt", opts.gt);
    const gte = checkBound("gte", opts.gte);
    const lt = checkBound("lt", opts.lt);
    const lte = checkBound("lte", opts.lte);
    // gte/lte take precedence over gt/lt when both are given, as abstract-level specifies.
    this.lower = gte ?? gt;
    this.lowerInclusive = gte !== undefined;
    this.upper = lte ?? lt;
    this.upperInclusive = lte !== undefined;
    this.reverse = opts.reverse === true;
    this.remaining = opts.limit === undefined || opts.limit === null || opts.limit < 0 ? Infinity : opts.limit;
  }

  /** Positioning is deferred to first use: an iterator made only to seek reads no start blocks. */
  private positioned = false;

  private check(): void {
    if (this.closed) throw new LsmError("CLOSED", "iterator used after close()");
    if (!this.positioned) {
      this.positioned = true;
      this.seekToStart();
    }
  }

  private aboveLower(k: Uint8Array): boolean {
    if (this.lower === undefined) return true;
    const c = compareBytes(k, this.lower);
    return this.lowerInclusive ? c >= 0 : c > 0;
  }
  private belowUpper(k: Uint8Array): boolean {
    if (this.upper === undefined) return true;
    const c = compareBytes(k, this.upper);
    return this.upperInclusive ? c <= 0 : c < 0;
  }

  /** Moves to the first entry in iteration order. */
  seekToStart(): void {
    if (this.closed) throw new LsmError("CLOSED", "iterator used after close()");
    this.positioned = true;
    if (this.reverse) this.seekBackward(this.upper, this.upperInclusive);
    else this.seekForward(this.lower, this.lowerInclusive);
  }

  private seekForward(key: Uint8Array | undefined, inclusive: boolean): void {
    const c = this.cursor;
    if (key === undefined) c.seekToFirst();
    else {
      c.seek(key);
      if (!inclusive && c.valid() && compareBytes(c.key(), key) === 0) c.next();
    }
  }
  private seekBackward(key: Uint8Array | undefined, inclusive: boolean): void {
    const c = this.cursor;
    if (key === undefined) c.seekToLast();
    else {
      c.seekForPrev(key);
      if (!inclusive && c.valid() && compareBytes(c.key(), key) === 0) c.prev();
    }
  }

  /**
   * Forward: the first entry with key ≥ target; reverse: the last entry with key ≤ target
   * (clamped to the bounds).
   */
  seek(target: Uint8Array): void {
    if (this.closed) throw new LsmError("CLOSED", "iterator used after close()");
    this.positioned = true;
    if (!(target instanceof Uint8Array)) throw new LsmError("INVALID_ARGUMENT", "seek target must be a Uint8Array");
    if (this.reverse) {
      if (this.upper !== undefined && compareBytes(target, this.upper) >= 0) this.seekBackward(this.upper, this.upperInclusive);
      else this.seekBackward(target, true);
    } else {
      if (this.lower !== undefined && compareBytes(target, this.lower) <= 0) this.seekForward(this.lower, this.lowerInclusive);
      else this.seekForward(target, true);
    }
  }

  /** True if positioned on an entry inside the bounds and within the limit. */
  valid(): boolean {
    if (this.closed) return false;
    this.check();
    if (this.remaining <= 0 || !this.cursor.valid()) return false;
    const k = this.cursor.key();
    return this.aboveLower(k) && this.belowUpper(k);
  }

  key(): Uint8Array {
    if (!this.valid()) throw new LsmError("INVALID_ARGUMENT", "iterator is not positioned on an entry");
    return this.cursor.key().slice();
  }
  value(): Uint8Array {
    if (!this.valid()) throw new LsmError("INVALID_ARGUMENT", "iterator is not positioned on an entry");
    return this.cursor.value().slice();
  }

  /** Advances in iteration order (counts one entry against the limit). */
  next(): void {
    this.check();
    if (!this.cursor.valid()) return;
    this.remaining--;
    if (this.reverse) this.cursor.prev();
    else this.cursor.next();
  }

  /** Steps against iteration order. */
  prev(): void {
    this.check();
    if (!this.cursor.valid()) {
      this.seekToEnd();
      return;
    }
    if (this.reverse) this.cursor.next();
    else this.cursor.prev();
  }

  private seekToEnd(): void {
    if (this.reverse) this.seekForward(this.lower, this.lowerInclusive);
    else this.seekBackward(this.upper, this.upperInclusive);
  }

  /** Up to n entries from the current position onward; the cursor moves past them. */
  nextv(n: number): [Uint8Array, Uint8Array][] {
    this.check();
    const out: [Uint8Array, Uint8Array][] = [];
    const c = this.cursor;
    const reverse = this.reverse;
    // One bounds check, one copy of key and value per entry; the cursor hands out views.
    while (out.length < n && this.remaining > 0 && c.valid()) {
      const k = c.key();
      if (!this.aboveLower(k) || !this.belowUpper(k)) break;
      const key = k.slice();
      out.push([key, c.valueCopy()]);
      this.remaining--;
      if (reverse) c.prev();
      else c.next(key);
    }
    return out;
  }

  /**
   * Hands entries from the current position onward to `visit` as views (valid only during the
   * call, no copy of the value), moving past each, until `visit` returns false, `n` entries were
   * visited, or the range ends. Returns how many were visited. For streaming a range out.
   */
  nextViews(n: number, visit: (key: Uint8Array, value: Uint8Array) => boolean): number {
    this.check();
    const c = this.cursor;
    const reverse = this.reverse;
    let count = 0;
    while (count < n && this.remaining > 0 && c.valid()) {
      const k = c.key();
      if (!this.aboveLower(k) || !this.belowUpper(k)) break;
      const more = visit(k, c.value());
      count++;
      this.remaining--;
      if (reverse) c.prev();
      else c.next();
      if (!more) break;
    }
    return count;
  }

  /** The current entry (copied) and a move to the next, or undefined at the end. */
  read(): [Uint8Array, Uint8Array] | undefined {
    this.check();
    const c = this.cursor;
    // nextv(1) without its outer array (one entry, one pair allocated).
    if (this.remaining <= 0 || !c.valid()) return undefined;
    const k = c.key();
    if (!this.aboveLower(k) || !this.belowUpper(k)) return undefined;
    const key = k.slice();
    const entry: [Uint8Array, Uint8Array] = [key, c.valueCopy()];
    this.remaining--;
    if (this.reverse) c.prev();
    else c.next(key);
    return entry;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.cursor.close();
    this.onClose();
  }

  /**
   * `for await` support. Entries are read ahead synchronously in batches (growing from a few to
   * ASYNC_BATCH_MAX) and served from that buffer, so a step costs a resolved promise, not a
   * generator resumption and a cursor move. Ending the loop (or break/throw) closes the iterator.
   */
  [Symbol.asyncIterator](): AsyncIterator<[Uint8Array, Uint8Array]> {
    let buffer: [Uint8Array, Uint8Array][] = [];
    let pos = 0;
    let batch = 4;
    const done: IteratorResult<[Uint8Array, Uint8Array]> = { value: undefined, done: true };
    const finish = (): Promise<IteratorResult<[Uint8Array, Uint8Array]>> => {
      buffer = [];
      pos = 0;
      this.close();
      return Promise.resolve(done);
    };
    return {
      next: (): Promise<IteratorResult<[Uint8Array, Uint8Array]>> => {
        if (pos === buffer.length) {
          if (this.closed) return Promise.resolve(done);
          try {
            buffer = this.nextv(batch);
          } catch (e) {
            this.close();
            return Promise.reject(e);
          }
          pos = 0;
          if (batch < ASYNC_BATCH_MAX) batch *= 2;
          if (buffer.length === 0) return finish();
        }
        return Promise.resolve({ value: buffer[pos++], done: false });
      },
      return: finish,
    };
  }
}

/** Largest read-ahead of the async iterator (entries). */
const ASYNC_BATCH_MAX = 256;
