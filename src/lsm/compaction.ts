// Background table writing: memtable flush to a table, choosing what to compact (leveled, as
// LevelDB: L0 by file count, deeper levels by size ×10), and the merge that drops shadowed
// versions and bottom-level tombstones. Work is chunked so the event loop is never held long.
import * as path from "node:path";
import { compareBytes, compareEncodedInternalKeys, KIND_DEL, MAX_SEQ } from "./coding.ts";
import { LsmError } from "./errors.ts";
import { MergingIterator, type InternalIterator } from "./iterator.ts";
import { tableFileName } from "./manifest.ts";
import { TableBuilder, type BuiltTable, type TableOptions } from "./sstable.ts";
import { emptyEdit, fileMeta, LevelIterator, NUM_LEVELS, type FileMeta, type TableOpener, type Version, type VersionEdit } from "./version.ts";

/** Yields to the event loop whenever a slice of background work has run for `sliceMs`. */
export class Pacer {
  private last = performance.now();
  private count = 0;
  constructor(private readonly sliceMs = 1) {}
  /** Call per unit of work; resolves immediately most of the time. */
  maybeYield(): Promise<void> | null {
    if ((++this.count & 63) !== 0) return null;
    const now = performance.now();
    if (now - this.last < this.sliceMs) return null;
    return new Promise<void>((resolve) =>
      setImmediate(() => {
        this.last = performance.now();
        resolve();
      }),
    );
  }
}

export interface CompactionContext {
  dir: string;
  table: TableOptions;
  targetFileSize: number;
  l0CompactionTrigger: number;
  level1MaxBytes: number;
  /** A fresh file number (a promise in the table worker, which asks the main thread). */
  newFileNumber(): number | Promise<number>;
  /** Numbers of tables being written: never deleted as obsolete. */
  pendingOutputs: Set<number>;
  open: TableOpener;
  aborted(): boolean;
  /** Called for each table written (write amplification and compression stats). */
  onTableWritten(table: BuiltTable): void;
  /** How long background work may run before yielding to the event loop (default 1 ms). */
  sliceMs?: number;
}

export const ABORTED = "compaction aborted: database closing";

/** Writes the entries of `iter` (from its current position) into one table. */
export async function writeTable(ctx: CompactionContext, iter: InternalIterator): Promise<FileMeta | null> {
  const number = await ctx.newFileNumber();
  ctx.pendingOutputs.add(number);
  const name = tableFileName(number);
  const builder = new TableBuilder(path.join(ctx.dir, name), name, ctx.table);
  const pacer = new Pacer(ctx.sliceMs);
  try {
    for (; iter.valid(); iter.next()) {
      builder.add(iter.key(), iter.seq(), iter.kind(), iter.value());
      const y = pacer.maybeYield();
      if (y) {
        await y;
        if (ctx.aborted()) throw new LsmError("CLOSED", ABORTED);
      }
    }
    if (builder.entries === 0) {
      builder.abandon();
      ctx.pendingOutputs.delete(number);
      return null;
    }
    const built = await builder.finish();
    ctx.onTableWritten(built);
    return fileMeta(number, built.fileSize, builder.smallest!, builder.largest!);
  } catch (e) {
    builder.abandon();
    ctx.pendingOutputs.delete(number);
    throw e;
  }
}

export function maxBytesForLevel(ctx: CompactionContext, level: number): number {
  let bytes = ctx.level1MaxBytes;
  for (let l = 1; l < level; l++) bytes *= 10;
  return bytes;
}

export interface Compaction {
  level: number;
  inputs: [FileMeta[], FileMeta[]];
  /** Overlapping files two levels down, to judge whether a move stays cheap to compact later. */
  grandparentBytes: number;
}

function range(files: FileMeta[]): [Uint8Array, Uint8Array] {
  let lo = files[0].smallestUser;
  let hi = files[0].largestUser;
  for (const f of files) {
    if (compareBytes(f.smallestUser, lo) < 0) lo = f.smallestUser;
    if (compareBytes(f.largestUser, hi) > 0) hi = f.largestUser;
  }
  return [lo, hi];
}

function totalBytes(files: FileMeta[]): number {
  let n = 0;
  for (const f of files) n += f.size;
  return n;
}

/** The level most in need of compaction, as a score ≥ 1, or null if none. */
export function compactionScore(ctx: CompactionContext, v: Version): { level: number; score: number } | null {
  let best: { level: number; score: number } | null = null;
  for (let level = 0; level < NUM_LEVELS - 1; level++) {
    const score = level === 0 ? v.levels[0].length / ctx.l0CompactionTrigger : v.levelBytes(level) / maxBytesForLevel(ctx, level);
    if (score >= 1 && (best === null || score > best.score)) best = { level, score };
  }
  return best;
}

export function pickCompaction(ctx: CompactionContext, v: Version, pointers: (Uint8Array | null)[]): Compaction | null {
  const s = compactionScore(ctx, v);
  if (s === null) return null;
  const level = s.level;
  let first: FileMeta[];
  if (level === 0) {
    first = v.levels[0].slice(); // L0 tables overlap each other: take them all
  } else {
    const files = v.levels[level];
    const ptr = pointers[level];
    const f = (ptr && files.find((x) => compareEncodedInternalKeys(x.largest, ptr) > 0)) || files[0];
    first = [f];
  }
  return setupCompaction(v, level, first);
}

export function setupCompaction(v: Version, level: number, first: FileMeta[]): Compaction {
  const [lo, hi] = range(first);
  const second = v.overlapping(level + 1, lo, hi);
  const [glo, ghi] = second.length > 0 ? range([...first, ...second]) : [lo, hi];
  const grandparentBytes = level + 2 < NUM_LEVELS ? totalBytes(v.overlapping(level + 2, glo, ghi)) : 0;
  return { level, inputs: [first, second], grandparentBytes };
}

/** A move of one table one level down is enough: nothing below to merge with. */
export function isTrivialMove(ctx: CompactionContext, c: Compaction): boolean {
  return c.inputs[0].length === 1 && c.inputs[1].length === 0 && c.grandparentBytes <= 10 * ctx.targetFileSize;
}

export function trivialMoveEdit(c: Compaction): VersionEdit {
  const e = emptyEdit();
  const f = c.inputs[0][0];
  e.deleted.push([c.level, f.number]);
  e.added.push([c.level + 1, f]);
  return e;
}

/** User keys [begin, end) a merge covers (null: unbounded); see splitCompaction(). */
export interface KeyRange {
  begin: Uint8Array | null;
  end: Uint8Array | null;
}
const FULL_RANGE: KeyRange = { begin: null, end: null };

/** Merges with less input than this many output tables run as one job (halves have a fixed cost). */
const SPLIT_MIN_TABLES = 4;

/**
 * Two key ranges that split a large merge into halves which can run on two threads at once (the
 * merges of random writes are the writers' bottleneck: one merge thread of JS keeps up with
 * about half of what a writer can insert). The split falls on a boundary between two files of
 * the lower level, so each of those files is read by one half; the upper level's files (L0's
 * overlap everything with random keys) are read by both halves from the split key on. Tables of
 * one level never share a user key, so the halves' outputs are disjoint. Null when the merge is
 * small or the lower level has fewer than two files.
 */
export function splitCompaction(c: Compaction, targetFileSize: number): [KeyRange, KeyRange] | null {
  const lower = c.inputs[1];
  if (lower.length < 2 || totalBytes(c.inputs[0]) + totalBytes(lower) < SPLIT_MIN_TABLES * targetFileSize) return null;
  const half = totalBytes(lower) / 2;
  let k = 1;
  let before = lower[0].size;
  while (k < lower.length - 1 && before + lower[k].size / 2 < half) before += lower[k++].size;
  const at = lower[k].smallestUser;
  return [{ begin: null, end: at }, { begin: at, end: null }];
}

/** Is `key` equal to b[0, n)? */
function sameBytes(key: Uint8Array, b: Uint8Array, n: number): boolean {
  if (key.length !== n) return false;
  for (let i = n - 1; i >= 0; i--) if (key[i] !== b[i]) return false;
  return true;
}

/**
 * Merges the inputs into tables at level+1. A version is dropped when a newer version of the same
 * key is visible to every live snapshot; a tombstone is dropped when, in addition, no deeper
 * level can hold the key.
 */
export async function runCompaction(
  ctx: CompactionContext, v: Version, c: Compaction, smallestSnapshot: number, range: KeyRange = FULL_RANGE,
): Promise<VersionEdit> {
  const children: InternalIterator[] = [];
  if (c.level === 0) for (const f of c.inputs[0]) children.push(ctx.open(f).iterator(false));
  else children.push(new LevelIterator(c.inputs[0], ctx.open, false));
  if (c.inputs[1].length > 0) children.push(new LevelIterator(c.inputs[1], ctx.open, false));
  const iter = new MergingIterator(children);
  const outputLevel = c.level + 1;
  const levelPtr = new Array<number>(NUM_LEVELS).fill(0);
  const isBaseLevelForKey = (key: Uint8Array): boolean => {
    for (let l = outputLevel + 1; l < NUM_LEVELS; l++) {
      const files = v.levels[l];
      while (levelPtr[l] < files.length && compareBytes(key, files[levelPtr[l]].largestUser) > 0) levelPtr[l]++;
      if (levelPtr[l] < files.length && compareBytes(key, files[levelPtr[l]].smallestUser) >= 0) return false;
    }
    return true;
  };

  const outputs: FileMeta[] = [];
  let builder: TableBuilder | null = null;
  let builderNumber = 0;
  const finishOutput = async (): Promise<void> => {
    const b = builder!;
    builder = null;
    const built = await b.finish();
    ctx.onTableWritten(built);
    outputs.push(fileMeta(builderNumber, built.fileSize, b.smallest!, b.largest!));
  };
  // The current user key, copied into a reused buffer (a copy per entry was ~4% of a merge).
  let currentKey = new Uint8Array(64);
  let currentLen = 0;
  let hasCurrent = false;
  let lastSeqForKey = MAX_SEQ;
  const pacer = new Pacer(ctx.sliceMs);
  try {
    if (range.begin === null) iter.seekToFirst();
    else iter.seek(range.begin, MAX_SEQ);
    for (; iter.valid(); iter.next()) {
      const key = iter.key();
      if (range.end !== null && compareBytes(key, range.end) >= 0) break;
      const seq = iter.seq();
      const kind = iter.kind();
      if (!hasCurrent || !sameBytes(key, currentKey, currentLen)) {
        // Outputs split only between user keys, so tables of one level never share a user key.
        if (builder !== null && (builder as TableBuilder).estimatedSize >= ctx.targetFileSize) await finishOutput();
        if (currentKey.length < key.length) currentKey = new Uint8Array(key.length * 2);
        if (key.length <= 32) for (let i = 0; i < key.length; i++) currentKey[i] = key[i];
        else currentKey.set(key);
        currentLen = key.length;
        hasCurrent = true;
        lastSeqForKey = MAX_SEQ;
      }
      let drop = false;
      if (lastSeqForKey <= smallestSnapshot) drop = true;
      else if (kind === KIND_DEL && seq <= smallestSnapshot && isBaseLevelForKey(key)) drop = true;
      lastSeqForKey = seq;
      if (!drop) {
        if (builder === null) {
          builderNumber = await ctx.newFileNumber();
          ctx.pendingOutputs.add(builderNumber);
          const name = tableFileName(builderNumber);
          builder = new TableBuilder(path.join(ctx.dir, name), name, ctx.table);
        }
        (builder as TableBuilder).add(key, seq, kind, iter.value());
      }
      const y = pacer.maybeYield();
      if (y) {
        await y;
        if (ctx.aborted()) throw new LsmError("CLOSED", ABORTED);
      }
    }
    if (builder !== null) await finishOutput();
  } catch (e) {
    (builder as TableBuilder | null)?.abandon();
    for (const f of outputs) ctx.pendingOutputs.delete(f.number);
    ctx.pendingOutputs.delete(builderNumber);
    throw e;
  } finally {
    iter.close();
  }
  const edit = emptyEdit();
  for (const [which, files] of c.inputs.entries()) for (const f of files) edit.deleted.push([c.level + which, f.number]);
  for (const f of outputs) edit.added.push([outputLevel, f]);
  const last = c.inputs[0].reduce((a, f) => (compareEncodedInternalKeys(f.largest, a.largest) > 0 ? f : a));
  edit.compactPointers.push([c.level, last.largest]);
  return edit;
}
