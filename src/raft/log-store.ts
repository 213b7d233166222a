// The durable Raft log on real files: CRC-framed records in zero-preallocated segment files,
// group-committed fsyncs, suffix truncation, prefix compaction and torn-tail recovery. Layout: FORMAT.md.

import * as fs from "node:fs";
import * as path from "node:path";
import {
  decodeEntry,
  decodeHardState,
  decodeMeta,
  decodeSegmentHeader,
  entryRecordBytes,
  findValidFrameAfter,
  HARD_STATE_RECORD_BYTES,
  metaRecordBytes,
  type RawRecord,
  readFrame,
  RecordType,
  SEGMENT_HEADER_RECORD_BYTES,
  writeEntryRecord,
  writeHardStateRecord,
  writeMetaRecord,
  writeSegmentHeaderRecord,
} from "./log-record.ts";
import { type Entry, type HardState, type LogStore, NONE, type SnapshotMeta } from "./types.ts";

export type LogStoreErrorCode = "CORRUPTION" | "RECORD_TOO_LARGE" | "OUT_OF_RANGE" | "INVALID_ARGUMENT" | "CLOSED" | "IO";

export class LogStoreError extends Error {
  constructor(
    readonly code: LogStoreErrorCode,
    message: string,
    readonly file?: string,
    readonly offset?: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "LogStoreError";
  }
}

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

/** What open() did to a torn last record (a crash mid-write): the bytes it cut off. */
export interface RecoveryReport {
  file: string;
  offset: number;
  truncatedBytes: number;
  reason: string;
}

export interface LogStoreStats {
  saves: number;
  /** Saves that changed only commitIndex: written with a later batch, never synced on their own. */
  lazyHardStates: number;
  /** write(2) calls carrying log records. */
  writes: number;
  /** fdatasync/fsync calls on segment files (directory fsyncs counted apart). */
  fsyncs: number;
  dirFsyncs: number;
  bytesWritten: number;
  segments: number;
  /** Zero bytes written (and synced) ahead of the appends, in segments and spares. */
  preallocatedBytes: number;
  /** Rollovers that found a spare segment already prepared in the background. */
  sparesUsed: number;
  /** Rollovers that had to wait for a spare to be zero-filled first. */
  spareWaits: number;
  /** Flushes that had to wait for zero-filled space (the background fill fell behind). */
  allocationWaits: number;
  /** Whether a spare segment is prepared right now. */
  spareReady: boolean;
  recovery: RecoveryReport | null;
}

const DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024;
const MIN_SEGMENT_BYTES = 4096;
/** Room at the start of each segment for its header and hard state records. */
const SEGMENT_OVERHEAD = SEGMENT_HEADER_RECORD_BYTES + HARD_STATE_RECORD_BYTES;
const COMPACTION_FILE = "compaction-meta";
/** Batches up to this size are written synchronously (see writeAll). */
const SYNC_WRITE_BYTES = 64 * 1024;
const SEGMENT_PATTERN = /^log-(\d{16})\.seg$/;
/** The next segment, zero-filled ahead of time; renamed into place (header written) on rollover. */
const SPARE_FILE = "segment.spare";
/** Segment space is zero-filled in steps of this much (or the whole segment when smaller). */
const PREALLOCATE_STEP = 4 * 1024 * 1024;
/** Zero buffer shared by every store: allocated on first use, never written to. */
let zeroChunk: Uint8Array | null = null;
function zeros(): Uint8Array {
  zeroChunk ??= new Uint8Array(PREALLOCATE_STEP);
  return zeroChunk;
}
const EMPTY_META: SnapshotMeta = { index: 0, term: 0, members: [] };

const segmentName = (seq: number) => `log-${String(seq).padStart(16, "0")}.seg`;

interface Segment {
  seq: number;
  path: string;
  size: number;
  /** Bytes of the file known zero-filled or written and synced: appends never write past this. */
  allocated: number;
  /** Highest entry index (or Reset index) ever written to it: it may go once compaction passes this. */
  maxIndex: number;
}

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

interface Spare {
  handle: fs.promises.FileHandle;
  allocated: number;
}

export class FileLogStore implements LogStore {
  private readonly segmentBytes: number;
  private readonly preallocate: boolean;
  /** Zero-fill step: PREALLOCATE_STEP, or the whole segment when that is smaller. */
  private readonly step: number;
  /** A background zero fill of the active segment; never rejects (errors go to backgroundError). */
  private extending: Promise<void> | null = null;
  private spare: Spare | null = null;
  /** A background spare preparation; never rejects (errors go to backgroundError). */
  private sparePrep: Promise<void> | null = null;
  private backgroundError: unknown = null;
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
  private counters = {
    saves: 0,
    lazyHardStates: 0,
    writes: 0,
    fsyncs: 0,
    dirFsyncs: 0,
    bytesWritten: 0,
    preallocatedBytes: 0,
    sparesUsed: 0,
    spareWaits: 0,
    allocationWaits: 0,
  };
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
    this.step = Math.min(PREALLOCATE_STEP, this.segmentBytes);
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
    return { ...this.snapshot, members: [...this.snapshot.members] };
  }

  firstIndex(): number {
    return this.snapshot.index + 1;
  }

  lastIndex(): number {
    return this.snapshot.index + this.log.length;
  }

  term(index: number): number | undefined {
    if (index === this.snapshot.index) return this.snapshot.term;
    return this.log[index - this.snapshot.index - 1]?.term;
  }

  entries(lo: number, hi: number, maxBytes = Infinity): Entry[] {
    if (lo < this.firstIndex() || hi > this.lastIndex() + 1 || lo > hi) {
      throw new LogStoreError(
        "OUT_OF_RANGE",
        `entries [${lo}, ${hi}) requested; the log holds [${this.firstIndex()}, ${this.lastIndex() + 1})`,
      );
    }
    const out: Entry[] = [];
    let bytes = 0;
    for (let i = lo; i < hi; i++) {
      const entry = this.log[i - this.snapshot.index - 1];
      bytes += entry.data.length;
      if (out.length > 0 && bytes > maxBytes) break;
      out.push(entry);
    }
    return out;
  }

  /** Bytes of records in the segments; preallocated zeros (up to one segment and a spare) excluded. */
  sizeBytes(): number {
    return this.segments.reduce((sum, s) => sum + s.size, 0);
  }

  stats(): LogStoreStats {
    return {
      ...this.counters,
      segments: this.segments.length,
      spareReady: this.spare !== null,
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
    this.snapshot = { ...meta, members: [...meta.members] };
    this.openBatch = null;
    return this.enqueue(async () => {
      await this.writeCompactionMeta(meta);
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
    this.snapshot = { ...meta, members: [...meta.members] };
    this.openBatch = null;
    return this.enqueue(async () => {
      // A fresh segment that starts with the Reset: until it is durable, the old log stays valid.
      await this.startSegment(meta);
      await this.writeCompactionMeta(meta);
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
    await this.settleBackground();
    await this.active.close();
    // The spare stays on disk zero-filled; open removes it (it holds nothing of the log).
    await this.spare?.handle.close();
    this.spare = null;
  }

  // ---- the write path --------------------------------------------------------------------------

  private refusal(): LogStoreError | null {
    if (this.failure) return this.failure;
    if (this.backgroundError !== null) {
      this.failure = this.ioError(this.backgroundError);
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
        this.failure = this.ioError(err);
        throw this.failure;
      }
    });
    this.queueTail = run.catch(() => {});
    return run;
  }

  private ioError(err: unknown): LogStoreError {
    if (err instanceof LogStoreError) return err;
    return new LogStoreError("IO", `log store ${this.dir}: ${(err as Error).message}`, undefined, undefined, {
      cause: err,
    });
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
      await this.writeAll(this.active, buf, segment.size);
      segment.size += bytes;
      i = j;
    }
    if (records.length > 0) await this.syncActive();
    this.prepareAhead();
  }

  private activeSegment(): Segment {
    return this.segments[this.segments.length - 1];
  }

  private async writeAll(handle: fs.promises.FileHandle, buf: Uint8Array, position: number): Promise<void> {
    let done = 0;
    if (buf.length <= SYNC_WRITE_BYTES) {
      // Copying a small batch into the page cache takes microseconds: cheaper on the event loop
      // than a trip through the thread pool. The fsync that follows stays asynchronous.
      while (done < buf.length) {
        const written = fs.writeSync(handle.fd, buf, done, buf.length - done, position + done);
        if (written <= 0) throw new Error(`short write to ${this.activeSegment().path}`);
        done += written;
      }
      this.counters.writes++;
      this.counters.bytesWritten += buf.length;
      return;
    }
    while (done < buf.length) {
      const { bytesWritten } = await handle.write(buf, done, buf.length - done, position + done);
      if (bytesWritten <= 0) throw new Error(`short write to ${this.activeSegment().path}`);
      done += bytesWritten;
    }
    this.counters.writes++;
    this.counters.bytesWritten += buf.length;
  }

  private async syncActive(): Promise<void> {
    await this.active.datasync();
    this.counters.fsyncs++;
  }

  /**
   * Seals the active segment and starts the next, which opens with a header, the current hard state
   * and, for resetToSnapshot, the Reset record. Durable (file and directory) before it returns.
   */
  private async startSegment(reset: SnapshotMeta | null): Promise<void> {
    const previous = this.segments.length > 0 ? this.activeSegment() : null;
    if (previous) {
      await this.settleExtension();
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
      await this.writeAll(this.active, buf, 0);
      segment.size = at;
      await this.syncActive();
      await this.syncDir();
      return;
    }
    // The spare gets its header and becomes durable before the rename: a file under a segment name
    // always starts with a valid header, and everything after the written records is zeros.
    const spare = await this.takeSpare(previous !== null);
    try {
      await this.writeAll(spare.handle, buf, 0);
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

  // ---- preallocation ---------------------------------------------------------------------------

  /** Waits until the active segment has zero-filled space through `end` (normally already true). */
  private async ensureAllocated(segment: Segment, end: number): Promise<void> {
    if (!this.preallocate) return;
    while (segment.allocated < end) {
      this.counters.allocationWaits++;
      if (this.extending === null) this.extending = this.extend(segment, this.active, end);
      await this.extending;
      this.throwBackgroundError();
    }
  }

  /**
   * Zero-fills the active segment from its allocated end to at least `end` (rounded up to a step)
   * and syncs it. Disjoint from the appends, which stay below `allocated`, so both may run at once.
   */
  private extend(segment: Segment, handle: fs.promises.FileHandle, end: number): Promise<void> {
    const target = Math.min(this.segmentBytes, Math.ceil(end / this.step) * this.step);
    const run = async () => {
      await this.fillZeros(handle, segment.allocated, target);
      await handle.sync();
      this.counters.fsyncs++;
      segment.allocated = target;
    };
    return run()
      .catch((err) => {
        this.backgroundError ??= err;
      })
      .finally(() => {
        this.extending = null;
      });
  }

  private async fillZeros(handle: fs.promises.FileHandle, from: number, to: number): Promise<void> {
    const chunk = zeros();
    for (let at = from; at < to; ) {
      const { bytesWritten } = await handle.write(chunk, 0, Math.min(chunk.length, to - at), at);
      if (bytesWritten <= 0) throw new Error(`short write while zero-filling ${this.dir}`);
      at += bytesWritten;
      this.counters.preallocatedBytes += bytesWritten;
    }
  }

  /**
   * After a flush: start zero-filling the next step of the active segment once less than half a step
   * is left, and prepare a spare segment once the active one is half full. Both run in the
   * background; a flush waits for them only when it outruns them.
   */
  private prepareAhead(): void {
    if (!this.preallocate || this.closed || this.backgroundError !== null) return;
    const segment = this.activeSegment();
    if (
      this.extending === null &&
      segment.allocated < this.segmentBytes &&
      segment.allocated - segment.size < this.step / 2
    ) {
      this.extending = this.extend(segment, this.active, segment.allocated + this.step);
    }
    if (this.spare === null && this.sparePrep === null && segment.size >= this.segmentBytes / 2) {
      this.sparePrep = this.prepareSpare();
    }
  }

  private prepareSpare(): Promise<void> {
    const run = async () => {
      const handle = await fs.promises.open(path.join(this.dir, SPARE_FILE), "w+");
      try {
        await this.fillZeros(handle, 0, this.step);
        await handle.sync();
        this.counters.fsyncs++;
      } catch (err) {
        await handle.close().catch(() => {});
        throw err;
      }
      this.spare = { handle, allocated: this.step };
    };
    return run()
      .catch((err) => {
        this.backgroundError ??= err;
      })
      .finally(() => {
        this.sparePrep = null;
      });
  }

  /** The prepared spare, waiting for (or starting) its preparation when there is none yet. */
  private async takeSpare(rollover: boolean): Promise<Spare> {
    if (this.spare) {
      this.counters.sparesUsed++;
    } else {
      // The first segment of a new (or reset-to-empty) log has nothing to roll over from.
      if (rollover) this.counters.spareWaits++;
      this.sparePrep ??= this.prepareSpare();
      await this.sparePrep;
      this.throwBackgroundError();
    }
    const spare = this.spare;
    if (!spare) throw new Error(`spare segment in ${this.dir} was not prepared`);
    this.spare = null;
    return spare;
  }

  private async settleExtension(): Promise<void> {
    if (this.extending) await this.extending;
    this.throwBackgroundError();
  }

  private async settleBackground(): Promise<void> {
    if (this.extending) await this.extending;
    if (this.sparePrep) await this.sparePrep;
  }

  private throwBackgroundError(): void {
    if (this.backgroundError !== null) throw this.ioError(this.backgroundError);
  }

  private async syncDir(): Promise<void> {
    const handle = await fs.promises.open(this.dir, "r");
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
    this.counters.dirFsyncs++;
  }

  /** The compaction point, atomically replaced: write a temp file, sync, rename, sync the directory. */
  private async writeCompactionMeta(meta: SnapshotMeta): Promise<void> {
    const buf = new Uint8Array(metaRecordBytes(meta));
    writeMetaRecord(buf, new DataView(buf.buffer), 0, RecordType.CompactionMeta, meta);
    const target = path.join(this.dir, COMPACTION_FILE);
    const temp = `${target}.tmp`;
    const handle = await fs.promises.open(temp, "w");
    try {
      await handle.write(buf, 0, buf.length, 0);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.promises.rename(temp, target);
    await this.syncDir();
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
    await fs.promises.mkdir(this.dir, { recursive: true });
    await fs.promises.rm(path.join(this.dir, `${COMPACTION_FILE}.tmp`), { force: true });
    // A spare holds no records (it gets its header only just before its rename): prepare it afresh.
    await fs.promises.rm(path.join(this.dir, SPARE_FILE), { force: true });
    this.snapshot = await this.readCompactionMeta();

    const names = (await fs.promises.readdir(this.dir)).filter((n) => SEGMENT_PATTERN.test(n)).sort();
    for (let i = 0; i < names.length; i++) {
      const seq = Number(SEGMENT_PATTERN.exec(names[i])![1]);
      if (i > 0 && seq !== this.segments[i - 1].seq + 1) {
        throw new LogStoreError(
          "CORRUPTION",
          `segment ${segmentName(this.segments[i - 1].seq + 1)} is missing (found ${names[i]} next)`,
          path.join(this.dir, names[i]),
          0,
        );
      }
      const segment: Segment = { seq, path: path.join(this.dir, names[i]), size: 0, allocated: 0, maxIndex: 0 };
      this.segments.push(segment);
      await this.replaySegment(segment, i === names.length - 1);
    }
    const last = this.segments.length > 0 ? this.activeSegment() : null;
    if (last && last.size === 0) {
      // Torn while being created: nothing in it was ever acknowledged.
      this.segments.pop();
      await fs.promises.unlink(last.path);
      await this.syncDir();
    }
    this.writtenHard = { ...this.hard };
    if (this.segments.length === 0) {
      await this.startSegment(null);
    } else {
      this.active = await fs.promises.open(this.activeSegment().path, "r+");
    }
    this.prepareAhead();
  }

  private async readCompactionMeta(): Promise<SnapshotMeta> {
    const file = path.join(this.dir, COMPACTION_FILE);
    let buf: Uint8Array;
    try {
      buf = new Uint8Array(await fs.promises.readFile(file));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return EMPTY_META;
      throw err;
    }
    const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    const frame = readFrame(buf, view, 0, buf.length);
    const meta = typeof frame === "string" ? frame : decodeMeta(view, frame);
    if (typeof meta === "string" || (typeof frame !== "string" && frame.type !== RecordType.CompactionMeta)) {
      throw new LogStoreError("CORRUPTION", `corrupt compaction meta in ${file} at offset 0: ${meta}`, file, 0);
    }
    return meta;
  }

  /**
   * Replays one segment's records into memory. The first bad frame ends the segment: followed only
   * by zeros it is its clean end (preallocated space); otherwise, in the last segment and with no
   * valid record anywhere after it, a torn tail, which is zeroed; anything else is corruption.
   */
  private async replaySegment(segment: Segment, isLast: boolean): Promise<void> {
    const buf = new Uint8Array(await fs.promises.readFile(segment.path));
    const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    const corrupt = (offset: number, what: string) =>
      new LogStoreError(
        "CORRUPTION",
        `corrupt Raft log segment ${segment.path} at offset ${offset}: ${what}; ` +
          `the log cannot be trusted past this point (restore this node from a peer)`,
        segment.path,
        offset,
      );
    let offset = 0;
    while (offset < buf.length) {
      const frame = readFrame(buf, view, offset, buf.length);
      if (typeof frame === "string") {
        const dirtyEnd = endOfNonZero(buf, offset);
        if (dirtyEnd === offset) break;
        if (!isLast || findValidFrameAfter(buf, view, offset, buf.length) >= 0) throw corrupt(offset, frame);
        await this.zeroTornTail(segment, offset, dirtyEnd, frame);
        break;
      }
      const problem = this.replayRecord(segment, frame.type, offset, buf, view, frame);
      if (problem) throw corrupt(offset, problem);
      offset = frame.end;
    }
    segment.size = offset;
    segment.allocated = buf.length;
  }

  /** Applies one record to the in-memory log; returns a problem description when it is invalid. */
  private replayRecord(
    segment: Segment,
    type: RecordType,
    offset: number,
    buf: Uint8Array,
    view: DataView,
    frame: RawRecord,
  ): string | null {
    if ((offset === 0) !== (type === RecordType.SegmentHeader)) {
      return offset === 0 ? "segment does not start with a header" : "segment header in the middle of a segment";
    }
    switch (type) {
      case RecordType.SegmentHeader: {
        const header = decodeSegmentHeader(view, frame);
        if (typeof header === "string") return header;
        return header.seq === segment.seq ? null : `header names segment ${header.seq}`;
      }
      case RecordType.HardState: {
        const hs = decodeHardState(view, frame);
        if (typeof hs === "string") return hs;
        this.hard = hs;
        return null;
      }
      case RecordType.Entry: {
        const entry = decodeEntry(buf, view, frame);
        if (typeof entry === "string") return entry;
        segment.maxIndex = Math.max(segment.maxIndex, entry.index);
        // Each entry record means "truncate after index - 1, then append". At or below the
        // compaction point the entry itself is gone, but its truncation of what follows still holds.
        if (entry.index <= this.snapshot.index) {
          this.log.length = 0;
          return null;
        }
        if (entry.index > this.lastIndex() + 1) {
          return `entry ${entry.index} leaves a gap after index ${this.lastIndex()}`;
        }
        this.log.length = entry.index - this.snapshot.index - 1;
        this.log.push(entry);
        return null;
      }
      case RecordType.Reset: {
        const meta = decodeMeta(view, frame);
        if (typeof meta === "string") return meta;
        segment.maxIndex = Math.max(segment.maxIndex, meta.index);
        this.log.length = 0;
        if (meta.index >= this.snapshot.index) this.snapshot = meta;
        return null;
      }
      case RecordType.CompactionMeta:
        return "compaction meta record inside a segment";
    }
  }

  /**
   * Overwrites a torn tail [offset, end) with zeros and syncs: the space stays allocated, and no
   * remnant of an unacknowledged write can line up behind a later, shorter record and replay.
   */
  private async zeroTornTail(segment: Segment, offset: number, end: number, reason: string): Promise<void> {
    const handle = await fs.promises.open(segment.path, "r+");
    try {
      await this.fillZeros(handle, offset, end);
      this.counters.preallocatedBytes -= end - offset; // repair, not preallocation
      await handle.sync();
    } finally {
      await handle.close();
    }
    this.recovery = { file: segment.path, offset, truncatedBytes: end - offset, reason };
  }
}

/** One past the last non-zero byte of buf[from, length), or `from` when that range is all zeros. */
function endOfNonZero(buf: Uint8Array, from: number): number {
  let end = buf.length;
  // Backwards, eight bytes at a time where aligned: a 64 MiB preallocated tail is scanned on open.
  while (end > from && (buf.byteOffset + end) % 8 !== 0) {
    if (buf[end - 1] !== 0) return end;
    end--;
  }
  if (end === from) return from;
  const wordsFrom = Math.ceil((buf.byteOffset + from) / 8);
  const words = new BigUint64Array(buf.buffer, 0, (buf.byteOffset + end) / 8);
  let w = words.length;
  while (w > wordsFrom && words[w - 1] === 0n) w--;
  end = Math.min(end, w * 8 - buf.byteOffset);
  while (end > from) {
    if (buf[end - 1] !== 0) return end;
    end--;
  }
  return from;
}
