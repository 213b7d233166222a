// The jobs the table worker runs (memtable flushes and compaction merges) and the messages that
// carry them between threads. The worker writes table files only; the manifest stays with the
// main thread, which turns each result into a version edit.
import * as path from "node:path";
import { BATCH_HEADER } from "./batch.ts";
import { BlockCache, TableCache } from "./cache.ts";
import { KIND_DEL, KIND_PUT, readU32, readU64 } from "./coding.ts";
import { corruption } from "./errors.ts";
import { runCompaction, type Compaction, type CompactionContext } from "./compaction.ts";
import { tableFileName } from "./manifest.ts";
import { TableBuilder, TableReader, type BuiltTable, type TableOptions } from "./sstable.ts";
import { fileMeta, Version, type FileMeta } from "./version.ts";

/** A table as it crosses the thread boundary (user key views are rebuilt on arrival). */
export interface WireFile {
  number: number;
  size: number;
  smallest: Uint8Array;
  largest: Uint8Array;
}

export interface FlushJob {
  type: "flush";
  id: number;
  dir: string;
  /** File number of the table to write (reserved by the main thread). */
  number: number;
  /**
   * The memtable's write batches in sequence order, concatenated into one buffer (transferred,
   * not copied, to the worker); batch i ends at batchEnds[i].
   */
  batches: Uint8Array;
  batchEnds: number[];
  /**
   * The memtable's order, when it has one: order[k] is the position in `batches` (counting ops
   * from 0) of the k-th entry in internal key order. Checked, not trusted: a permutation that is
   * not sorted is ignored and the entries are sorted here.
   */
  order?: Int32Array;
  table: TableOptions;
}

export interface CompactJob {
  type: "compact";
  id: number;
  dir: string;
  level: number;
  inputs: [WireFile[], WireFile[]];
  /** Every level of the version being compacted (tombstones may go if no deeper level holds the key). */
  levels: WireFile[][];
  smallestSnapshot: number;
  targetFileSize: number;
  l0CompactionTrigger: number;
  level1MaxBytes: number;
  table: TableOptions;
  /** Int32Array over a SharedArrayBuffer: [0] !== 0 asks the job to stop (database closing). */
  abort: Int32Array;
  /** Merge only user keys in [begin, end) (null or absent: unbounded); see splitCompaction(). */
  begin?: Uint8Array | null;
  end?: Uint8Array | null;
  /**
   * How long the merge runs between yields to the worker's event loop (default 50 ms). A half
   * merge in the flush worker yields often, or a flush's table writes would wait a slice per
   * await behind it and writers would stall on full memtables.
   */
  sliceMs?: number;
}

export interface FileNumberReply {
  type: "fileNumber";
  id: number;
  number: number;
}

export type ToWorker = FlushJob | CompactJob | FileNumberReply;

/** Bytes a job wrote: whole table files, and their data blocks before and after compression. */
export interface TableWrites {
  tableBytes: number;
  rawDataBytes: number;
  storedDataBytes: number;
}

export function noWrites(): TableWrites {
  return { tableBytes: 0, rawDataBytes: 0, storedDataBytes: 0 };
}

/** Adds one finished table to `w`. */
export function countTable(w: TableWrites, t: BuiltTable): void {
  w.tableBytes += t.fileSize;
  w.rawDataBytes += t.rawDataBytes;
  w.storedDataBytes += t.storedDataBytes;
}

export interface FlushResult {
  file: WireFile | null;
  writes: TableWrites;
  /** The job's batches buffer, handed back (transferred) for the next flush to fill. */
  batches?: Uint8Array;
}
export interface CompactResult {
  added: WireFile[];
  compactPointer: Uint8Array;
  writes: TableWrites;
}
export interface WireError {
  message: string;
  code?: string;
  file?: string;
  offset?: number;
}

export type FromWorker =
  | { type: "fileNumber"; id: number }
  | { type: "done"; id: number; result: FlushResult | CompactResult }
  | { type: "error"; id: number; error: WireError };

export function toWire(f: FileMeta): WireFile {
  return { number: f.number, size: f.size, smallest: f.smallest, largest: f.largest };
}
export function fromWire(f: WireFile): FileMeta {
  return fileMeta(f.number, f.size, f.smallest, f.largest);
}

/** Key bytes [start, start + 6) of buf (up to end) as a big-endian integer, zero-padded. */
function word(buf: Uint8Array, start: number, end: number): number {
  let v = 0;
  for (let i = start; i < start + 6; i++) v = v * 256 + (i < end ? buf[i] : 0);
  return v;
}

/**
 * Writes one table from a memtable's batches: decodes every op as offsets into the batch
 * buffer, sorts them in internal key order (user key ascending, newest first) and builds the
 * table. Returns null for an empty memtable.
 */
export async function flushBatches(job: FlushJob): Promise<FlushResult> {
  const buf = job.batches;
  let total = 0;
  let start = 0;
  for (const end of job.batchEnds) {
    if (end - start < BATCH_HEADER || end > buf.length) throw corruption("memtable batch", start, "batch shorter than its header");
    total += readU32(buf, start + 8);
    start = end;
  }
  if (total === 0) return { file: null, writes: noWrites(), batches: job.batches };
  const scratch = takeScratch(total);
  try {
    return await flushWith(job, total, scratch);
  } finally {
    if (scratchPool.length < 2) scratchPool.push(scratch);
  }
}

/** One flush's decoded entries: offsets, sequences, kinds, key words and the order. */
interface FlushScratch {
  keyStart: Int32Array;
  keyEnd: Int32Array;
  valStart: Int32Array;
  valEnd: Int32Array;
  seqs: Float64Array;
  kinds: Uint8Array;
  w0: Float64Array;
  w1: Float64Array;
  w2: Float64Array;
  order: number[];
}

/**
 * Scratch arrays kept between flushes (a thread flushes memtables of about one size over and
 * over: fresh arrays each time were ~1 MiB of garbage per 4 MiB memtable). A pool, not one set:
 * flushes of two databases may interleave in the worker.
 */
const scratchPool: FlushScratch[] = [];

function takeScratch(total: number): FlushScratch {
  let s = scratchPool.pop();
  if (s === undefined || s.seqs.length < total) {
    const cap = Math.max(total + (total >>> 3), 1024);
    s = {
      keyStart: new Int32Array(cap), keyEnd: new Int32Array(cap), valStart: new Int32Array(cap), valEnd: new Int32Array(cap),
      seqs: new Float64Array(cap), kinds: new Uint8Array(cap), w0: new Float64Array(cap), w1: new Float64Array(cap), w2: new Float64Array(cap),
      order: [],
    };
  }
  return s;
}

async function flushWith(job: FlushJob, total: number, scratch: FlushScratch): Promise<FlushResult> {
  const buf = job.batches;
  const { keyStart, keyEnd, valStart, valEnd, seqs, kinds, w0, w1, w2 } = scratch;
  let start = 0;
  let n = 0;
  start = 0;
  // One pass decodes every op as offsets, checking each stays inside its batch.
  for (const end of job.batchEnds) {
    const seq = readU64(buf, start);
    const count = readU32(buf, start + 8);
    let p = start + BATCH_HEADER;
    for (let i = 0; i < count; i++, n++) {
      const kind = buf[p++];
      let len = 0;
      for (let mul = 1; p < end; mul *= 128) {
        const x = buf[p++];
        len += (x & 0x7f) * mul;
        if (x < 0x80) break;
      }
      keyStart[n] = p;
      keyEnd[n] = p + len;
      w0[n] = word(buf, p, p + len);
      w1[n] = word(buf, p + 6, p + len);
      w2[n] = word(buf, p + 12, p + len);
      p += len;
      len = 0;
      if (kind === KIND_PUT) {
        for (let mul = 1; p < end; mul *= 128) {
          const x = buf[p++];
          len += (x & 0x7f) * mul;
          if (x < 0x80) break;
        }
      } else if (kind !== KIND_DEL) {
        throw corruption("memtable batch", start, `unknown op kind ${kind}`);
      }
      valStart[n] = p;
      valEnd[n] = p + len;
      p += len;
      if (p > end) throw corruption("memtable batch", start, "op runs past the end of its batch");
      seqs[n] = seq + i;
      kinds[n] = kind;
    }
    if (p !== end) throw corruption("memtable batch", start, "bytes left after the last op");
    start = end;
  }
  const order = scratch.order;
  order.length = total;
  const given = job.order !== undefined && job.order.length === total ? givenOrder(job.order) : null;
  for (let i = 0; i < total; i++) order[i] = given === null ? i : given[i];
  // Most comparisons end on the first 18 key bytes held as numbers.
  const compare = (a: number, b: number): number => {
    if (w0[a] !== w0[b]) return w0[a] - w0[b];
    if (w1[a] !== w1[b]) return w1[a] - w1[b];
    if (w2[a] !== w2[b]) return w2[a] - w2[b];
    // Equal words: equal zero-padded first 18 bytes. The bytes after them decide, then length
    // (a key ending early is a prefix of the other, whose extra bytes were zeros).
    const c = compareRangeBytes(buf, keyStart[a] + 18, keyEnd[a], keyStart[b] + 18, keyEnd[b]);
    if (c !== 0) return c;
    const lengths = keyEnd[a] - keyStart[a] - (keyEnd[b] - keyStart[b]);
    return lengths !== 0 ? lengths : seqs[b] - seqs[a];
  };
  // The memtable's order (or, without one, ascending writes as they arrived) is usually sorted
  // already: one linear check instead of a sort.
  let sorted = true;
  for (let i = 1; i < total && sorted; i++) if (compare(order[i - 1], order[i]) > 0) sorted = false;
  if (!sorted) order.sort(compare);
  const name = tableFileName(job.number);
  const builder = new TableBuilder(path.join(job.dir, name), name, job.table);
  try {
    for (let i = 0; i < total; i++) {
      const j = order[i];
      builder.addFrom(buf, keyStart[j], keyEnd[j], seqs[j], kinds[j], buf, valStart[j], valEnd[j]);
    }
    const built = await builder.finish();
    return {
      file: { number: job.number, size: built.fileSize, smallest: builder.smallest!, largest: builder.largest! },
      writes: { tableBytes: built.fileSize, rawDataBytes: built.rawDataBytes, storedDataBytes: built.storedDataBytes },
      batches: buf,
    };
  } catch (e) {
    builder.abandon();
    throw e;
  }
}

/** `order` if it is a permutation of 0..length-1, else null. */
function givenOrder(order: Int32Array): Int32Array | null {
  const seen = new Uint8Array(order.length);
  for (let i = 0; i < order.length; i++) {
    const j = order[i];
    if (!(j >= 0 && j < order.length) || seen[j] !== 0) return null;
    seen[j] = 1;
  }
  return order;
}

/** Order of the first differing byte of buf[a, aEnd) and buf[b, bEnd), 0 if none differs. */
function compareRangeBytes(buf: Uint8Array, a: number, aEnd: number, b: number, bEnd: number): number {
  const n = Math.min(aEnd - a, bEnd - b);
  for (let i = 0; i < n; i++) {
    const d = buf[a + i] - buf[b + i];
    if (d !== 0) return d;
  }
  return 0;
}

/**
 * Merges a compaction's inputs into new tables. `newFileNumber` asks the main thread (which
 * marks each number as a pending output); `aborted` is read from the shared flag.
 */
const COMPACTION_READAHEAD = 256 * 1024;

export async function compactTables(job: CompactJob, newFileNumber: () => Promise<number>): Promise<CompactResult> {
  // Input tables are opened for this job only, without caching blocks: each is read once.
  const cache = new BlockCache(0);
  const tables = new TableCache<TableReader>(1 << 20);
  const writes = noWrites();
  const ctx: CompactionContext = {
    dir: job.dir,
    table: job.table,
    targetFileSize: job.targetFileSize,
    l0CompactionTrigger: job.l0CompactionTrigger,
    level1MaxBytes: job.level1MaxBytes,
    newFileNumber,
    pendingOutputs: new Set(),
    open: (f) => {
      let t = tables.get(f.number);
      if (t === undefined) {
        const name = tableFileName(f.number);
        // pread in 256 KiB chunks, not a map: each input is read once, front to back, and mapped
        // pages would count in the process's RSS until the mapping is collected.
        t = TableReader.open(path.join(job.dir, name), name, f.number, f.size, cache, { mmap: false, readaheadBytes: COMPACTION_READAHEAD });
        tables.insert(f.number, t);
      }
      return t;
    },
    aborted: () => Atomics.load(job.abort, 0) !== 0,
    onTableWritten: (t) => countTable(writes, t),
    // A thread of its own: yield only now and then, to receive file numbers and aborts.
    sliceMs: job.sliceMs ?? 50,
  };
  try {
    const version = new Version(job.levels.map((l) => l.map(fromWire)));
    const c: Compaction = { level: job.level, inputs: [job.inputs[0].map(fromWire), job.inputs[1].map(fromWire)], grandparentBytes: 0 };
    const edit = await runCompaction(ctx, version, c, job.smallestSnapshot, { begin: job.begin ?? null, end: job.end ?? null });
    return { added: edit.added.map(([, f]) => toWire(f)), compactPointer: edit.compactPointers[0][1], writes };
  } finally {
    tables.clear();
  }
}
