// What stats() reports: sizes per level, the work done since open (write amplification per
// level, compression), and every cache and buffer beside its configured budget.
import type { WorkCounters } from "./compaction-scheduler.ts";
import type { Compression } from "./compression.ts";
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
  compactions: number;
  /** Compactions that moved a table down a level without rewriting it. */
  trivialMoves: number;
  flushes: number;
  backgroundError?: string;
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
