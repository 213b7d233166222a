// The durable Raft log on real files (FileLogStore): the LogStore API over CRC-framed segments,
// group-committed fsyncs, suffix truncation, prefix compaction and reset. Layout: FORMAT.md;
// segment space in log-preallocation.ts, reading back on open in log-recovery.ts.

import * as fs from "node:fs";
import * as path from "node:path";
import {
  entryRecordBytes,
  HARD_STATE_RECORD_BYTES,
  metaRecordBytes,
  RecordType,
  writeEntryRecord,
  writeHardStateRecord,
  writeMetaRecord,
  writeSegmentHeaderRecord,
} from "./log-record.ts";
import { ioError, LogStoreError } from "./log-error.ts";
import {
  EMPTY_META,
  type LogCounters,
  newCounters,
  type Segment,
  SEGMENT_OVERHEAD,
  segmentName,
  SPARE_FILE,
  syncDir,
  writeAll,
  writeCompactionMeta,
} from "./log-files.ts";
import { SegmentPreallocator } from "./log-preallocation.ts";
import { entriesIn, termAt } from "./log-window.ts";
import { recoverLog, type RecoveryReport } from "./log-recovery.ts";
import { type Entry, type HardState, type LogStore, NONE, type SnapshotMeta } from "../types.ts";
import { cloneSnapshotMeta } from "../core/membership.ts";
import { traceSpan, tracing, wallNow } from "../../util/trace.ts";

export { LogStoreError, type LogStoreErrorCode } from "./log-error.ts";
export type { RecoveryReport } from "./log-recovery.ts";

export interface FileLogStoreOptions {
  /** A segment is closed and a new one started once it would grow past this (default 64 MiB). */
  segmentBytes?: number;
  /**
   * Zero-fill segment space ahead of the appends and keep a spare segment ready (default true): an
   * fdatasync after overwriting allocated blocks skips the metadata journal commit that growing a
   * file costs (about half the latency). false grows files as records are appended.
   */
  preallocate?: boolean;
}

export interface LogStoreStats extends LogCounters {
  segments: number;
  /** Whether a spare segment is prepared right now. */
  spareReady: boolean;
  recovery: RecoveryReport | null;
}

const DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024;
const MIN_SEGMENT_BYTES = 4096;

/** Records encoded by one save, waiting for the next flush. */
interface PendingRecord {
  bytes: Uint8Array;
  hardState: HardState | null;
  maxIndex: number;
}

interface Batch {
  records: PendingRecord[];
  done: Promise<void>;
}

export class FileLogStore implements LogStore {
  private readonly segmentBytes: number;
  private readonly preallocate: boolean;
  /** Zero-filled space ahead of the appends and the spare segment (used only when preallocate). */
  private readonly space: SegmentPreallocator;
  private segments: Segment[] = [];
  private active!: fs.promises.FileHandle;
  private hard: HardState = { term: 0, votedFor: NONE, commitIndex: 0 };
  /** The last hard state written to the files (repeated at the top of every new segment). */
  private writtenHard: HardState = { term: 0, votedFor: NONE, commitIndex: 0 };
  private snapshot: SnapshotMeta = EMPTY_META;
  /** entries[i].index === snapshot.index + 1 + i. */
  private log: Entry[] = [];
  /** Serializes all disk work; each flush, compaction and reset runs after the previous one. */
  private queueTail: Promise<void> = Promise.resolve();
  /** The queued flush that has not started yet: saves made now join it (group commit). */
  private openBatch: Batch | null = null;
  /**
   * A hard state whose only change is commitIndex, not yet handed to a batch: it costs no fsync of
   * its own and rides with the next save that must sync (or close). commitIndex is recoverable —
   * the leader re-sends it, and the state machine's applied index bounds it from below at restart.
   */
  private lazyHard: HardState | null = null;
  private failure: LogStoreError | null = null;
  private closed = false;
  private readonly counters = newCounters();
  private recovery: RecoveryReport | null = null;

  private constructor(
    readonly dir: string,
    options: FileLogStoreOptions,
  ) {
    this.segmentBytes = options.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
    if (!Number.isSafeInteger(this.segmentBytes) || this.segmentBytes < MIN_SEGMENT_BYTES) {
      throw new LogStoreError("INVALID_ARGUMENT", `segmentBytes must be an integer >= ${MIN_SEGMENT_BYTES}`);
    }
    this.preallocate = options.preallocate ?? true;
    this.space = new SegmentPreallocator(dir, this.segmentBytes, this.counters);
  }

  /** Opens (creating if needed) the log in `dir`, recovering from a crash mid-write. */
  static async open(dir: string, options: FileLogStoreOptions = {}): Promise<FileLogStore> {
    const store = new FileLogStore(dir, options);
    await store.recover();
    return store;
  }

  // ---- LogStore: reads -------------------------------------------------------------------------

  hardState(): HardState {
    return { ...this.hard };
  }

  snapshotMeta(): SnapshotMeta {
    return cloneSnapshotMeta(this.snapshot);
  }

  firstIndex(): number {
    return this.snapshot.index + 1;
  }

  lastIndex(): number {
    return this.snapshot.index + this.log.length;
  }

  term(index: number): number | undefined {
    return termAt(this.snapshot, this.log, index);
  }

  entries(lo: number, hi: number, maxBytes = Infinity): Entry[] {
    return entriesIn(this.snapshot, this.log, lo, hi, maxBytes);
  }

  /** Bytes of records in the segments; preallocated zeros (up to one segment and a spare) excluded. */
  sizeBytes(): number {
    return this.segments.reduce((sum, s) => sum + s.size, 0);
  }

  stats(): LogStoreStats {
    return {
      ...this.counters,
      segments: this.segments.length,
      spareReady: this.space.spareReady,
      recovery: this.recovery,
    };
  }

  // ---- LogStore: writes ------------------------------------------------------------------------

  save(hardState: HardState | null, entries: Entry[]): Promise<void> {
    const refused = this.refusal();
    if (refused) return Promise.reject(refused);
    try {
      this.checkAppend(entries);
    } catch (err) {
      return Promise.reject(err);
    }
    // etcd's MustSync: only new entries or a changed term/vote need an fsync before the caller
    // may act; a commitIndex-only change is written with the next batch that syncs anyway.
    const mustSync =
      entries.length > 0 ||
      (hardState !== null && (hardState.term !== this.hard.term || hardState.votedFor !== this.hard.votedFor));
    if (!mustSync) {
      if (hardState !== null) {
        this.hard = { ...hardState };
        this.counters.saves++;
        this.counters.lazyHardStates++;
        if (this.openBatch) this.openBatch.records.push(...this.encode(hardState, []));
        else this.lazyHard = this.hard;
      }
      return Promise.resolve();
    }
    // A pending commit-only hard state goes after these entries, unless a newer hard state does.
    const records = this.encode(hardState ?? this.lazyHard, entries);
    this.lazyHard = null;
    // Memory first: the next save's conflict check must see this one even before it is durable.
    if (entries.length > 0) {
      this.log.length = entries[0].index - this.snapshot.index - 1;
      for (const entry of entries) this.log.push(entry);
    }
    if (hardState) this.hard = { ...hardState };
    this.counters.saves++;

    let batch = this.openBatch;
    if (!batch) {
      const fresh: Batch = { records: [], done: Promise.resolve() };
      fresh.done = this.enqueue(async () => {
        if (this.openBatch === fresh) this.openBatch = null;
        await this.flush(fresh.records);
      });
      this.openBatch = batch = fresh;
    }
    for (const record of records) batch.records.push(record);
    return batch.done;
  }

  compact(meta: SnapshotMeta): Promise<void> {
    const refused = this.refusal();
    if (refused) return Promise.reject(refused);
    if (meta.index <= this.snapshot.index) return this.enqueue(async () => {});
    if (meta.index > this.lastIndex() || this.term(meta.index) !== meta.term) {
      return Promise.reject(
        new LogStoreError(
          "INVALID_ARGUMENT",
          `cannot compact to index ${meta.index} term ${meta.term}: the log holds up to ${this.lastIndex()} ` +
            `and has term ${this.term(meta.index)} there`,
        ),
      );
    }
    this.log.splice(0, meta.index - this.snapshot.index);
    this.snapshot = cloneSnapshotMeta(meta);
    this.openBatch = null;
    return this.enqueue(async () => {
      await writeCompactionMeta(this.dir, meta, this.counters);
      await this.dropSegmentsThrough(meta.index, false);
    });
  }

  resetToSnapshot(meta: SnapshotMeta): Promise<void> {
    const refused = this.refusal();
    if (refused) return Promise.reject(refused);
    if (meta.index < this.snapshot.index) {
      return Promise.reject(
        new LogStoreError(
          "INVALID_ARGUMENT",
          `cannot reset to snapshot index ${meta.index}: the log is already compacted through ${this.snapshot.index}`,
        ),
      );
    }
    this.log = [];
    this.snapshot = cloneSnapshotMeta(meta);
    this.openBatch = null;
    return this.enqueue(async () => {
      // A fresh segment that starts with the Reset: until it is durable, the old log stays valid.
      await this.startSegment(meta);
      await writeCompactionMeta(this.dir, meta, this.counters);
      await this.dropSegmentsThrough(Infinity, true);
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    const lazy = this.lazyHard;
    this.lazyHard = null;
    // A clean shutdown leaves the newest commitIndex on disk: a restart replays less.
    if (lazy !== null && this.failure === null) await this.enqueue(() => this.flush(this.encode(lazy, []))).catch(() => {});
    this.closed = true;
    this.openBatch = null;
    await this.queueTail;
    await this.space.settleBackground();
    await this.active.close();
    await this.space.closeSpare();
  }

  // ---- the write path --------------------------------------------------------------------------

  private refusal(): LogStoreError | null {
    if (this.failure) return this.failure;
    if (this.space.backgroundError !== null) {
      this.failure = ioError(this.dir, this.space.backgroundError);
      return this.failure;
    }
    if (this.closed) return new LogStoreError("CLOSED", `log store ${this.dir} is closed`);
    return null;
  }

  private checkAppend(entries: Entry[]): void {
    if (entries.length === 0) return;
    const first = entries[0].index;
    if (first <= this.snapshot.index || first > this.lastIndex() + 1) {
      throw new LogStoreError(
        "INVALID_ARGUMENT",
        `cannot append at index ${first}: the log holds [${this.firstIndex()}, ${this.lastIndex()}]`,
      );
    }
    const limit = this.segmentBytes - SEGMENT_OVERHEAD;
    entries.forEach((entry, i) => {
      if (entry.index !== first + i) {
        throw new LogStoreError("INVALID_ARGUMENT", `entries are not contiguous at index ${entry.index}`);
      }
      if (entryRecordBytes(entry) > limit) {
        throw new LogStoreError(
          "RECORD_TOO_LARGE",
          `entry ${entry.index} needs ${entryRecordBytes(entry)} bytes; a log record is limited to ${limit} ` +
            `bytes by segmentBytes=${this.segmentBytes}: split the command or raise segmentBytes`,
        );
      }
    });
  }

  /** One buffer per save; each record a view into it so a flush can split them across segments. */
  private encode(hardState: HardState | null, entries: Entry[]): PendingRecord[] {
    let size = hardState ? HARD_STATE_RECORD_BYTES : 0;
    for (const entry of entries) size += entryRecordBytes(entry);
    const buf = new Uint8Array(size);
    const view = new DataView(buf.buffer);
    const records: PendingRecord[] = [];
    let at = 0;
    // Entries before the hard state: a commitIndex must never be durable ahead of the entries it covers.
    for (const entry of entries) {
      const end = writeEntryRecord(buf, view, at, entry);
      records.push({ bytes: buf.subarray(at, end), hardState: null, maxIndex: entry.index });
      at = end;
    }
    if (hardState) {
      const end = writeHardStateRecord(buf, view, at, hardState);
      records.push({ bytes: buf.subarray(at, end), hardState: { ...hardState }, maxIndex: 0 });
    }
    return records;
  }

  private enqueue(op: () => Promise<void>): Promise<void> {
    const run = this.queueTail.then(async () => {
      if (this.failure) throw this.failure;
      try {
        await op();
      } catch (err) {
        // After a failed write or fsync the file's state is unknown (fsyncgate): never ack again.
        this.failure = ioError(this.dir, err);
        throw this.failure;
      }
    });
    this.queueTail = run.catch(() => {});
    return run;
  }

  /** Writes the records (one write per segment touched) and syncs them. */
  private async flush(records: PendingRecord[]): Promise<void> {
    let i = 0;
    while (i < records.length) {
      const segment = this.activeSegment();
      let bytes = 0;
      let j = i;
      while (j < records.length && segment.size + bytes + records[j].bytes.length <= this.segmentBytes) {
        bytes += records[j].bytes.length;
        j++;
      }
      if (j === i) {
        await this.startSegment(null);
        continue;
      }
      const buf = new Uint8Array(bytes);
      let at = 0;
      for (let k = i; k < j; k++) {
        buf.set(records[k].bytes, at);
        at += records[k].bytes.length;
        segment.maxIndex = Math.max(segment.maxIndex, records[k].maxIndex);
        const hs = records[k].hardState;
        if (hs) this.writtenHard = hs;
      }
      await this.ensureAllocated(segment, segment.size + bytes);
      await writeAll(this.active, buf, segment.size, segment.path, this.counters);
      segment.size += bytes;
      i = j;
    }
    if (records.length > 0) await this.syncActive();
    this.prepareAhead();
  }

  private activeSegment(): Segment {
    return this.segments[this.segments.length - 1];
  }

  private async syncActive(): Promise<void> {
    const started = performance.now();
    const traced = tracing ? wallNow() : 0;
    await this.active.datasync();
    if (tracing) traceSpan("fsync", traced);
    this.counters.fsyncs++;
    this.counters.appendSyncs++;
    this.counters.appendSyncSeconds += (performance.now() - started) / 1000;
  }

  /**
   * Seals the active segment and starts the next, which opens with a header, the current hard state
   * and, for resetToSnapshot, the Reset record. Durable (file and directory) before it returns.
   */
  private async startSegment(reset: SnapshotMeta | null): Promise<void> {
    const traced = tracing ? wallNow() : 0;
    await this.startSegmentNow(reset);
    if (tracing) traceSpan("rollover", traced);
  }

  private async startSegmentNow(reset: SnapshotMeta | null): Promise<void> {
    const previous = this.segments.length > 0 ? this.activeSegment() : null;
    if (previous) {
      await this.space.settleExtension();
      await this.syncActive();
      await this.active.close();
    }
    const seq = previous ? previous.seq + 1 : 1;
    const segment: Segment = { seq, path: path.join(this.dir, segmentName(seq)), size: 0, allocated: 0, maxIndex: 0 };
    const size = SEGMENT_OVERHEAD + (reset ? metaRecordBytes(reset) : 0);
    const buf = new Uint8Array(size);
    const view = new DataView(buf.buffer);
    let at = writeSegmentHeaderRecord(buf, view, 0, seq);
    // The hard state in memory may be ahead of what is written (saves pending behind this reset):
    // only what the file stream has seen belongs here.
    at = writeHardStateRecord(buf, view, at, this.writtenHard);
    if (reset) {
      at = writeMetaRecord(buf, view, at, RecordType.Reset, reset);
      segment.maxIndex = reset.index;
    }
    if (!this.preallocate) {
      this.active = await fs.promises.open(segment.path, "wx+");
      this.segments.push(segment);
      await writeAll(this.active, buf, 0, segment.path, this.counters);
      segment.size = at;
      await this.syncActive();
      await this.syncDir();
      return;
    }
    // The spare gets its header and becomes durable before the rename: a file under a segment name
    // always starts with a valid header, and everything after the written records is zeros.
    const spare = await this.space.takeSpare(previous !== null);
    try {
      await writeAll(spare.handle, buf, 0, path.join(this.dir, SPARE_FILE), this.counters);
      await spare.handle.datasync();
      this.counters.fsyncs++;
      if (fs.existsSync(segment.path)) throw new Error(`segment ${segment.path} already exists`);
      await fs.promises.rename(path.join(this.dir, SPARE_FILE), segment.path);
    } catch (err) {
      await spare.handle.close().catch(() => {});
      throw err;
    }
    this.active = spare.handle;
    segment.allocated = Math.max(spare.allocated, at);
    segment.size = at;
    this.segments.push(segment);
    await this.syncDir();
  }

  // ---- segment files ---------------------------------------------------------------------------

  /** Waits for zero-filled space through `end` in the active segment (preallocation only). */
  private async ensureAllocated(segment: Segment, end: number): Promise<void> {
    if (!this.preallocate) return;
    await this.space.ensureAllocated(segment, this.active, end);
  }

  /** After a flush: let the background preallocation get ahead of the next appends. */
  private prepareAhead(): void {
    if (!this.preallocate || this.closed) return;
    this.space.prepareAhead(this.activeSegment(), this.active);
  }

  private syncDir(): Promise<void> {
    return syncDir(this.dir, this.counters);
  }

  /** Deletes the oldest segments (never the active one) whose records all lie at or below `index`. */
  private async dropSegmentsThrough(index: number, all: boolean): Promise<void> {
    let dropped = 0;
    while (this.segments.length - dropped > 1) {
      const segment = this.segments[dropped];
      if (!all && segment.maxIndex > index) break;
      await fs.promises.unlink(segment.path);
      dropped++;
    }
    if (dropped > 0) {
      this.segments.splice(0, dropped);
      await this.syncDir();
    }
  }

  // ---- recovery --------------------------------------------------------------------------------

  private async recover(): Promise<void> {
    const recovered = await recoverLog(this.dir, this.counters);
    this.hard = recovered.hard;
    this.snapshot = recovered.snapshot;
    this.log = recovered.log;
    this.segments = recovered.segments;
    this.recovery = recovered.recovery;
    this.writtenHard = { ...this.hard };
    if (this.segments.length === 0) {
      await this.startSegment(null);
    } else {
      this.active = await fs.promises.open(this.activeSegment().path, "r+");
    }
    this.prepareAhead();
  }
}
