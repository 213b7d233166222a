// Options of DB.open with their defaults and bounds; every limit the engine enforces is here.
import type { Compression } from "./compression.ts";
import { LsmError } from "./errors.ts";
import type { Logger } from "./manifest.ts";

export interface DBOptions {
  /** Memtable size that triggers a flush to an L0 table. Default 4 MiB. */
  memtableBytes?: number;
  /** Frozen memtables waiting for flush before writers wait. Default 2. */
  maxImmutableMemtables?: number;
  /**
   * Bytes of checksum-verified, decoded blocks kept for reuse (a miss reads and CRC-checks the
   * block), counted by block length (their pooled buffers are up to 1/8 larger); evicted buffers
   * are reused. Default 8 MiB, as LevelDB's: the cache's buffers are memory the JS collector
   * counts as live, so each cached MiB also lets about a MiB more garbage wait for a collection
   * (measured: 32 MiB made the read phases of the bench peak ~150 MiB higher; FORMAT.md).
   */
  blockCacheBytes?: number;
  /** Open table files kept in the table cache. Default 500. */
  maxOpenFiles?: number;
  /**
   * Bytes of index and filter blocks the open tables keep (about 2 % of the data for 16-byte keys
   * and 100-byte values); past it the least recently used tables are closed. Default 32 MiB.
   */
  tableCacheBytes?: number;
  /** Uncompressed data block size. Default 4 KiB. */
  blockSize?: number;
  /** Keys between restart points in a data block. Default 16. */
  blockRestartInterval?: number;
  /**
   * Codec of table data blocks: "lz4" (fast to read back, LevelDB's Snappy ratio), "zstd"
   * (smaller, ~3× slower to decode) or "none". A block that would not shrink by 1/8 is stored raw.
   * Tables keep the codec they were written with. Default "lz4".
   */
  compression?: Compression;
  /** Bloom filter bits per key. Default 10 (~1% false positives). */
  bloomBitsPerKey?: number;
  /** Target size of compaction output tables. Default 2 MiB. */
  targetFileSize?: number;
  /** Maximum bytes of L1; each deeper level ×10. Default 10 MiB. */
  level1MaxBytes?: number;
  /** L0 table count that starts a compaction. Default 4. */
  l0CompactionTrigger?: number;
  /**
   * L0 table count at which writes are delayed: 1 ms per 64 KiB of the batch per L0 table at or
   * past this count (at most 50 ms; small writes' delays add up and are slept in 1 ms steps).
   * Default 8.
   */
  l0SlowdownTrigger?: number;
  /** L0 table count at which writes wait for compaction. Default 12. */
  l0StopTrigger?: number;
  /**
   * Read tables through a read-only memory map (Bun.mmap) instead of pread. Default false: a
   * block is copied out of the mapping to be verified anyway, Bun reports the whole mapping to
   * the collector as external memory (which lets garbage grow by as much before a collection),
   * and touched pages add to RSS; pread measured as fast (FORMAT.md, "Memory budget").
   */
  mmapTables?: boolean;
  /**
   * Most bytes of table files mapped at once (mapped pages that reads touch count in RSS);
   * tables opened beyond it are read with pread into the block cache. Default 64 MiB.
   */
  maxMappedBytes?: number;
  /**
   * Build tables (memtable flushes, compaction merges) in a Worker thread, off the event loop.
   * Default true; false runs them on the main thread in ~1 ms slices.
   */
  backgroundThread?: boolean;
  maxKeyBytes?: number; // default 64 KiB
  maxValueBytes?: number; // default 64 MiB
  maxBatchBytes?: number; // default 256 MiB
  /** Receives recovery warnings (e.g. a truncated torn WAL tail). Default console.warn. */
  logger?: Logger;
}

export type ResolvedOptions = Required<DBOptions>;

const KiB = 1024;
const MiB = 1024 * KiB;

export function resolveOptions(o: DBOptions = {}): ResolvedOptions {
  if (o === null || typeof o !== "object") throw new LsmError("INVALID_ARGUMENT", "options must be an object");
  const r: ResolvedOptions = {
    memtableBytes: o.memtableBytes ?? 4 * MiB,
    maxImmutableMemtables: o.maxImmutableMemtables ?? 2,
    blockCacheBytes: o.blockCacheBytes ?? 8 * MiB,
    maxOpenFiles: o.maxOpenFiles ?? 500,
    tableCacheBytes: o.tableCacheBytes ?? 32 * MiB,
    blockSize: o.blockSize ?? 4 * KiB,
    blockRestartInterval: o.blockRestartInterval ?? 16,
    compression: o.compression ?? "lz4",
    bloomBitsPerKey: o.bloomBitsPerKey ?? 10,
    targetFileSize: o.targetFileSize ?? 2 * MiB,
    level1MaxBytes: o.level1MaxBytes ?? 10 * MiB,
    l0CompactionTrigger: o.l0CompactionTrigger ?? 4,
    l0SlowdownTrigger: o.l0SlowdownTrigger ?? 8,
    l0StopTrigger: o.l0StopTrigger ?? 12,
    mmapTables: o.mmapTables ?? false,
    maxMappedBytes: o.maxMappedBytes ?? 64 * MiB,
    backgroundThread: o.backgroundThread ?? true,
    maxKeyBytes: o.maxKeyBytes ?? 64 * KiB,
    maxValueBytes: o.maxValueBytes ?? 64 * MiB,
    maxBatchBytes: o.maxBatchBytes ?? 256 * MiB,
    logger: o.logger ?? ((m: string) => console.warn(m)),
  };
  const range = (name: keyof ResolvedOptions, lo: number, hi: number): void => {
    const v = r[name] as unknown as number;
    if (typeof v !== "number" || !Number.isInteger(v) || v < lo || v > hi) {
      throw new LsmError("INVALID_ARGUMENT", `option ${name} must be an integer in [${lo}, ${hi}], got ${v}`);
    }
  };
  range("memtableBytes", 4 * KiB, 1024 * MiB);
  range("maxImmutableMemtables", 1, 16);
  range("blockCacheBytes", 0, 64 * 1024 * MiB);
  range("maxOpenFiles", 8, 1_000_000);
  range("tableCacheBytes", 64 * KiB, 64 * 1024 * MiB);
  range("blockSize", 256, 1 * MiB);
  range("blockRestartInterval", 1, 1024);
  range("bloomBitsPerKey", 1, 64);
  range("targetFileSize", 16 * KiB, 1024 * MiB);
  range("level1MaxBytes", 64 * KiB, 1024 * 1024 * MiB);
  range("l0CompactionTrigger", 1, 1000);
  range("l0SlowdownTrigger", r.l0CompactionTrigger, 1000);
  range("l0StopTrigger", r.l0SlowdownTrigger, 1000);
  range("maxMappedBytes", 0, 1024 * 1024 * MiB);
  range("maxKeyBytes", 1, 16 * MiB);
  range("maxValueBytes", 0, 1024 * MiB);
  range("maxBatchBytes", 1024, 2048 * MiB);
  if (r.compression !== "lz4" && r.compression !== "zstd" && r.compression !== "none") {
    throw new LsmError("INVALID_ARGUMENT", `option compression must be "lz4", "zstd" or "none", got ${String(r.compression)}`);
  }
  if (typeof r.mmapTables !== "boolean") throw new LsmError("INVALID_ARGUMENT", "option mmapTables must be a boolean");
  if (typeof r.backgroundThread !== "boolean") throw new LsmError("INVALID_ARGUMENT", "option backgroundThread must be a boolean");
  if (typeof r.logger !== "function") throw new LsmError("INVALID_ARGUMENT", "option logger must be a function");
  return r;
}
