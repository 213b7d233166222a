// The jobs the table worker runs (memtable flushes and compaction merges) and the messages that
// carry them between threads. The worker writes table files only; the manifest stays with the
// main thread, which turns each result into a version edit.
import * as path from "node:path";
import { forEachBatchOp } from "./batch.ts";
import { BlockCache, TableCache } from "./cache.ts";
import { compareBytes } from "./coding.ts";
import { runCompaction, type Compaction, type CompactionContext } from "./compaction.ts";
import { tableFileName } from "./manifest.ts";
import { TableBuilder, type TableOptions } from "./table-builder.ts";
import { TableReader } from "./table-reader.ts";
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
  mmapTables: boolean;
  /** Int32Array over a SharedArrayBuffer: [0] !== 0 asks the job to stop (database closing). */
  abort: Int32Array;
}

export interface FileNumberReply {
  type: "fileNumber";
  id: number;
  number: number;
}

export type ToWorker = FlushJob | CompactJob | FileNumberReply;

export interface FlushResult {
  file: WireFile | null;
  tableBytes: number;
}
export interface CompactResult {
  added: WireFile[];
  compactPointer: Uint8Array;
  tableBytes: number;
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

/**
 * Writes one table from a memtable's batches: decodes every op, sorts them in internal key order
 * (user key ascending, newest first) and builds the table. Returns null for an empty memtable.
 */
export async function flushBatches(job: FlushJob): Promise<FlushResult> {
  const keys: Uint8Array[] = [];
  const values: Uint8Array[] = [];
  const seqs: number[] = [];
  const kinds: number[] = [];
  let start = 0;
  for (const end of job.batchEnds) {
    const b = job.batches.subarray(start, end);
    start = end;
    forEachBatchOp(b, (kind, key, value, seq) => {
      keys.push(key);
      values.push(value);
      seqs.push(seq);
      kinds.push(kind);
    });
  }
  if (keys.length === 0) return { file: null, tableBytes: 0 };
  const order = new Uint32Array(keys.length);
  for (let i = 0; i < order.length; i++) order[i] = i;
  order.sort((a, b) => compareBytes(keys[a], keys[b]) || seqs[b] - seqs[a]);
  const name = tableFileName(job.number);
  const builder = new TableBuilder(path.join(job.dir, name), name, job.table);
  try {
    for (let i = 0; i < order.length; i++) {
      const j = order[i];
      builder.add(keys[j], seqs[j], kinds[j], values[j]);
    }
    const built = await builder.finish();
    return {
      file: { number: job.number, size: built.fileSize, smallest: builder.smallest!, largest: builder.largest! },
      tableBytes: built.fileSize,
    };
  } catch (e) {
    builder.abandon();
    throw e;
  }
}

/**
 * Merges a compaction's inputs into new tables. `newFileNumber` asks the main thread (which
 * marks each number as a pending output); `aborted` is read from the shared flag.
 */
export async function compactTables(job: CompactJob, newFileNumber: () => Promise<number>): Promise<CompactResult> {
  // Input tables are opened for this job only, without caching blocks: each is read once.
  const cache = new BlockCache(0);
  const tables = new TableCache<TableReader>(1 << 20);
  let tableBytes = 0;
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
        t = TableReader.open(path.join(job.dir, name), name, f.number, f.size, cache, job.mmapTables);
        tables.insert(f.number, t);
      }
      return t;
    },
    aborted: () => Atomics.load(job.abort, 0) !== 0,
    onTableWritten: (n) => (tableBytes += n),
    // A thread of its own: yield only now and then, to receive file numbers and aborts.
    sliceMs: 50,
  };
  try {
    const version = new Version(job.levels.map((l) => l.map(fromWire)));
    const c: Compaction = { level: job.level, inputs: [job.inputs[0].map(fromWire), job.inputs[1].map(fromWire)], grandparentBytes: 0 };
    const edit = await runCompaction(ctx, version, c, job.smallestSnapshot);
    return { added: edit.added.map(([, f]) => toWire(f)), compactPointer: edit.compactPointers[0][1], tableBytes };
  } finally {
    tables.clear();
  }
}
