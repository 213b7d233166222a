// What stats() reports: sizes per level, the work done since open (write amplification per
// level, compression), and every cache and buffer beside its configured budget.
import type { WorkCounters } from "./compaction-scheduler.ts";
import type { Compression } from "./compression.ts";
import type { ResolvedOptions } from "./options.ts";
import type { Version } from "./version.ts";

export interface LevelStats {
  files: number;
  bytes: number;
  /** Table bytes flushes and compactions wrote into this level since open. */
  bytesWritten: number;
  /** Table bytes compactions read from this level since open. */
  bytesRead: number;
  /** bytesWritten / user bytes written: this level's share of the write amplification. */
  writeAmplification: number;
}

/** Memory one holder keeps now, and the most it may keep (from the options). */
export interface MemoryUse {
  bytes: number;
  budget: number;
}

export interface DBStats {
  diskBytes: number;
  memtableBytes: number;
  immutableMemtables: number;
  levels: LevelStats[];
  /** (WAL + table bytes written) / user key+value bytes written, since open. */
  writeAmplification: number;
  userBytesWritten: number;
  walBytesWritten: number;
  tableBytesWritten: number;
  /** Data blocks written since open, before and after compression (stored / raw = ratio). */
  compression: { codec: Compression; rawDataBytes: number; storedDataBytes: number; ratio: number };
  lastSequence: number;
  blockCache: { bytes: number; capacity: number; hits: number; misses: number };
  openTables: number;
  /** Bytes of table files the open tables read through a memory map (≤ maxMappedBytes). */
  mappedTableBytes: number;
  liveSnapshots: number;
  /**
   * Every cache and buffer of this database beside its budget. memtables: live + frozen (each
   * may pass memtableBytes by the batch that fills it); blockCache: decoded blocks and
   * the evicted buffers kept for reuse; tableCache: index and filter blocks of open tables;
   * mappedTables: table files mapped (their touched pages count in RSS); walBuffers: the write
   * stage of the WAL; flushBuffer: the copy of a memtable's batches handed to the flush worker,
   * kept for the next flush.
   */
  memory: {
    memtables: MemoryUse;
    blockCache: MemoryUse;
    tableCache: MemoryUse;
    mappedTables: MemoryUse;
    walBuffers: MemoryUse;
    flushBuffer: MemoryUse;
  };
  compactions: number;
  /** Compactions that moved a table down a level without rewriting it. */
  trivialMoves: number;
  /** Merges run as two halves on two threads at once (large merges, with backgroundThread). */
  splitCompactions: number;
  flushes: number;
  /** Writes that waited for a flush or compaction (memtables full or L0 at its stop trigger). */
  writeStalls: number;
  /** Writes delayed by the L0 slowdown. */
  writeSlowdowns: number;
  backgroundError?: string;
}

/**
 * The buffer a memtable's batches are copied into for the flush worker, kept for the next flush:
 * the memtable's size plus 1/8 to spare. A larger one (a memtable one huge batch overfilled) is
 * not kept.
 */
export function flushBufferBudget(o: ResolvedOptions): number {
  return o.memtableBytes + (o.memtableBytes >>> 3);
}

/**
 * The WAL's two stage buffers: 64 KiB each, and a stage grows to hold the batches of one tick
 * (each at most maxBatchBytes); a grown spare over 4 MiB is dropped after its write.
 */
export function walBufferBudget(o: ResolvedOptions): number {
  return 64 * 1024 + Math.max(64 * 1024, Math.min(o.maxBatchBytes, o.memtableBytes) * 2);
}

export function levelStats(v: Version, c: WorkCounters): LevelStats[] {
  const user = c.userBytes;
  return v.levels.map((files, level) => ({
    files: files.length,
    bytes: files.reduce((a, f) => a + f.size, 0),
    bytesWritten: c.levelWritten[level],
    bytesRead: c.levelRead[level],
    writeAmplification: user === 0 ? 0 : c.levelWritten[level] / user,
  }));
}

export function compressionStats(codec: Compression, c: WorkCounters): DBStats["compression"] {
  const { rawDataBytes, storedDataBytes } = c.writes;
  return { codec, rawDataBytes, storedDataBytes, ratio: rawDataBytes === 0 ? 1 : storedDataBytes / rawDataBytes };
}
