// Versions: the set of live tables per level, and the edits that move from one version to the
// next. A version is immutable once built; readers pin it with a reference count.
import {
  ByteReader, ByteWriter, compareBytes, compareEncodedInternal, compareEncodedInternalKeys, internalUserKey, KIND_PUT,
} from "./coding.ts";
import { corruption } from "./errors.ts";
import type { InternalIterator } from "./iterator.ts";
import type { TableGetResult, TableReader } from "./sstable.ts";
import type { TableIterator } from "./table-iterator.ts";

export const NUM_LEVELS = 7;

export interface FileMeta {
  number: number;
  size: number;
  /** Encoded internal keys bounding the table, and views of their user keys. */
  smallest: Uint8Array;
  largest: Uint8Array;
  smallestUser: Uint8Array;
  largestUser: Uint8Array;
}

export function fileMeta(number: number, size: number, smallest: Uint8Array, largest: Uint8Array): FileMeta {
  return { number, size, smallest, largest, smallestUser: internalUserKey(smallest), largestUser: internalUserKey(largest) };
}

export interface VersionEdit {
  logNumber?: number;
  nextFileNumber?: number;
  lastSequence?: number;
  compactPointers: [number, Uint8Array][];
  deleted: [number, number][]; // [level, file number]
  added: [number, FileMeta][];
}

export function emptyEdit(): VersionEdit {
  return { compactPointers: [], deleted: [], added: [] };
}

const TAG_LOG_NUMBER = 1;
const TAG_NEXT_FILE = 2;
const TAG_LAST_SEQ = 3;
const TAG_COMPACT_POINTER = 4;
const TAG_DELETED_FILE = 5;
const TAG_NEW_FILE = 6;

export function encodeEdit(e: VersionEdit): Uint8Array {
  const w = new ByteWriter(256);
  if (e.logNumber !== undefined) (w.varint(TAG_LOG_NUMBER), w.varint(e.logNumber));
  if (e.nextFileNumber !== undefined) (w.varint(TAG_NEXT_FILE), w.varint(e.nextFileNumber));
  if (e.lastSequence !== undefined) (w.varint(TAG_LAST_SEQ), w.varint(e.lastSequence));
  for (const [level, key] of e.compactPointers) (w.varint(TAG_COMPACT_POINTER), w.varint(level), w.lengthPrefixed(key));
  for (const [level, num] of e.deleted) (w.varint(TAG_DELETED_FILE), w.varint(level), w.varint(num));
  for (const [level, f] of e.added) {
    w.varint(TAG_NEW_FILE);
    w.varint(level);
    w.varint(f.number);
    w.varint(f.size);
    w.lengthPrefixed(f.smallest);
    w.lengthPrefixed(f.largest);
  }
  return w.finish();
}

export function decodeEdit(b: Uint8Array, file: string, offset: number): VersionEdit {
  const e = emptyEdit();
  const r = new ByteReader(b);
  const level = (): number => {
    const l = r.varint();
    if (l >= NUM_LEVELS) throw new RangeError(`level ${l} out of range`);
    return l;
  };
  try {
    while (!r.done) {
      const tag = r.varint();
      switch (tag) {
        case TAG_LOG_NUMBER: e.logNumber = r.varint(); break;
        case TAG_NEXT_FILE: e.nextFileNumber = r.varint(); break;
        case TAG_LAST_SEQ: e.lastSequence = r.varint(); break;
        case TAG_COMPACT_POINTER: e.compactPointers.push([level(), r.lengthPrefixed().slice()]); break;
        case TAG_DELETED_FILE: e.deleted.push([level(), r.varint()]); break;
        case TAG_NEW_FILE: {
          const l = level();
          const number = r.varint();
          const size = r.varint();
          const smallest = r.lengthPrefixed().slice();
          const largest = r.lengthPrefixed().slice();
          if (smallest.length < 8 || largest.length < 8) throw new RangeError("internal key too short");
          e.added.push([l, fileMeta(number, size, smallest, largest)]);
          break;
        }
        default:
          throw new RangeError(`unknown tag ${tag}`);
      }
    }
  } catch (err) {
    if (err instanceof RangeError) throw corruption(file, offset, `bad version edit: ${err.message}`);
    throw err;
  }
  return e;
}

export type TableOpener = (f: FileMeta) => TableReader;

export class Version {
  refs = 0;
  constructor(readonly levels: FileMeta[][]) {}

  static empty(): Version {
    return new Version(Array.from({ length: NUM_LEVELS }, () => []));
  }

  /** The version after `edit`: deleted files removed, added ones inserted in level order. */
  apply(edit: VersionEdit): Version {
    const levels = this.levels.map((l) => l.slice());
    for (const [level, num] of edit.deleted) {
      levels[level] = levels[level].filter((f) => f.number !== num);
    }
    for (const [level, f] of edit.added) levels[level].push(f);
    levels[0].sort((a, b) => a.number - b.number);
    for (let l = 1; l < NUM_LEVELS; l++) levels[l].sort((a, b) => compareEncodedInternalKeys(a.smallest, b.smallest));
    return new Version(levels);
  }

  levelBytes(level: number): number {
    let n = 0;
    for (const f of this.levels[level]) n += f.size;
    return n;
  }

  /** Files of `level` whose user key range intersects [begin, end] (null = unbounded). */
  overlapping(level: number, begin: Uint8Array | null, end: Uint8Array | null): FileMeta[] {
    const out: FileMeta[] = [];
    for (const f of this.levels[level]) {
      if (begin !== null && compareBytes(f.largestUser, begin) < 0) continue;
      if (end !== null && compareBytes(f.smallestUser, end) > 0) continue;
      out.push(f);
    }
    return out;
  }

  /** Newest entry for `key` at or before `seq` in the tables of this version, into `out` (see TableReader.get). */
  get(key: Uint8Array, seq: number, open: TableOpener, hash: number, out: TableGetResult): boolean {
    const l0 = this.levels[0];
    for (let i = l0.length - 1; i >= 0; i--) {
      const f = l0[i];
      if (compareBytes(key, f.smallestUser) < 0 || compareBytes(key, f.largestUser) > 0) continue;
      if (open(f).get(key, seq, hash, out)) return true;
    }
    for (let level = 1; level < NUM_LEVELS; level++) {
      const files = this.levels[level];
      if (files.length === 0) continue;
      const i = findFile(files, key, seq);
      if (i >= files.length) continue;
      const f = files[i];
      if (compareBytes(key, f.smallestUser) < 0) continue;
      if (open(f).get(key, seq, hash, out)) return true;
    }
    return false;
  }

  /** One iterator per L0 table and one concatenating iterator per deeper level. */
  iterators(open: TableOpener, fillCache = true): InternalIterator[] {
    const out: InternalIterator[] = [];
    for (let i = this.levels[0].length - 1; i >= 0; i--) out.push(open(this.levels[0][i]).iterator(fillCache));
    for (let level = 1; level < NUM_LEVELS; level++) {
      if (this.levels[level].length > 0) out.push(new LevelIterator(this.levels[level], open, fillCache));
    }
    return out;
  }

  fileNumbers(into: Set<number>): void {
    for (const l of this.levels) for (const f of l) into.add(f.number);
  }
}

/** Index of the first file whose largest key is at or after (key, seq); files sorted, disjoint. */
export function findFile(files: FileMeta[], key: Uint8Array, seq: number): number {
  let lo = 0;
  let hi = files.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const f = files[mid].largest;
    if (compareEncodedInternal(f, 0, f.length, key, seq, KIND_PUT) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Walks the sorted, disjoint tables of one level as one sequence, opening tables lazily. */
export class LevelIterator implements InternalIterator {
  private index = -1;
  private table: TableIterator | null = null;
  /** The closed iterator of the previous file, rebound to the next one. */
  private spare: TableIterator | null = null;

  constructor(private readonly files: FileMeta[], private readonly open: TableOpener, private readonly fillCache: boolean) {}

  private setFile(i: number): boolean {
    if (this.table !== null && i === this.index) return true;
    // The closed table iterator is rebound to the next file (no allocation per file change).
    if (this.table !== null) {
      this.table.close();
      this.spare = this.table;
      this.table = null;
    }
    this.index = i;
    if (i < 0 || i >= this.files.length) return false;
    this.table = this.open(this.files[i]).iterator(this.fillCache, this.spare);
    this.spare = null;
    return true;
  }
  private skipForward(): void {
    while (this.table !== null && !this.table.valid()) {
      if (!this.setFile(this.index + 1)) return;
      this.table!.seekToFirst();
    }
  }
  private skipBackward(): void {
    while (this.table !== null && !this.table.valid()) {
      if (!this.setFile(this.index - 1)) return;
      this.table!.seekToLast();
    }
  }
  valid(): boolean {
    return this.table !== null && this.table.valid();
  }
  seekToFirst(): void {
    if (this.setFile(0)) this.table!.seekToFirst();
    this.skipForward();
  }
  seekToLast(): void {
    if (this.setFile(this.files.length - 1)) this.table!.seekToLast();
    this.skipBackward();
  }
  seek(key: Uint8Array, seq: number): void {
    if (this.setFile(findFile(this.files, key, seq))) this.table!.seek(key, seq);
    this.skipForward();
  }
  next(): void {
    this.table!.next();
    this.skipForward();
  }
  prev(): void {
    this.table!.prev();
    this.skipBackward();
  }
  key(): Uint8Array {
    return this.table!.key();
  }
  seq(): number {
    return this.table!.seq();
  }
  kind(): number {
    return this.table!.kind();
  }
  value(): Uint8Array {
    return this.table!.value();
  }
  valueCopy(): Uint8Array {
    return this.table!.valueCopy();
  }
  close(): void {
    this.table?.close();
    this.table = null;
    this.spare = null;
  }
}
