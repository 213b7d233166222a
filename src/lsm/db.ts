// The engine: the write path (batch → WAL → memtable), reads over memtables and versions,
// recovery at open, and the background flush and compaction loops.
import * as fs from "node:fs";
import * as path from "node:path";
import { BATCH_HEADER, encodeBatch, forEachBatchOp, opSize, setBatchSeq, type BatchOp } from "./batch.ts";
import { sharedTableWorkers, type TableWorker } from "./background.ts";
import { bloomHash } from "./bloom.ts";
import { BlockCache, TableCache } from "./cache.ts";
import { compareBytes, KIND_PUT } from "./coding.ts";
import {
  ABORTED, isTrivialMove, pickCompaction, runCompaction, setupCompaction, trivialMoveEdit, writeTable,
  type Compaction, type CompactionContext,
} from "./compaction.ts";
import { LsmIterator, type IteratorOptions } from "./db-iterator.ts";
import { LsmError, ioError } from "./errors.ts";
import { MergingIterator, type InternalIterator } from "./iterator.ts";
import { DirLock } from "./lock.ts";
import { fsyncDir, logFileName, tableFileName, VersionSet } from "./manifest.ts";
import { Memtable } from "./memtable.ts";
import { resolveOptions, type DBOptions, type ResolvedOptions } from "./options.ts";
import { TableReader } from "./table-reader.ts";
import { fromWire, toWire } from "./table-jobs.ts";
import { emptyEdit, NUM_LEVELS, type FileMeta, type Version, type VersionEdit } from "./version.ts";
import { LogWriter, readLog } from "./wal.ts";

export interface WriteOptions {
  /** Resolve only once the write is on stable storage (fsync). Default false. */
  sync?: boolean;
}
export interface ReadOptions {
  snapshot?: Snapshot;
}
export interface DBIteratorOptions extends IteratorOptions {
  snapshot?: Snapshot;
}

export interface DBStats {
  diskBytes: number;
  memtableBytes: number;
  immutableMemtables: number;
  levels: { files: number; bytes: number }[];
  /** (WAL + table bytes written) / user key+value bytes written, since open. */
  writeAmplification: number;
  userBytesWritten: number;
  walBytesWritten: number;
  tableBytesWritten: number;
  lastSequence: number;
  blockCache: { bytes: number; capacity: number; hits: number; misses: number };
  openTables: number;
  /** Bytes of table files the open tables read through a memory map (≤ maxMappedBytes). */
  mappedTableBytes: number;
  liveSnapshots: number;
  compactions: number;
  flushes: number;
  /** Writes that waited for a flush or compaction (memtables full or L0 at its stop trigger). */
  writeStalls: number;
  /** Writes delayed by the L0 slowdown. */
  writeSlowdowns: number;
  backgroundError?: string;
}

/** A consistent point-in-time view: reads and iterators given it see the DB as of its creation. */
export class Snapshot {
  private released = false;
  /** @internal */
  constructor(readonly seq: number, private readonly onRelease: (s: Snapshot) => void) {}
  get isReleased(): boolean {
    return this.released;
  }
  release(): void {
    if (this.released) return;
    this.released = true;
    this.onRelease(this);
  }
}

function checkKey(key: unknown, opts: ResolvedOptions): asserts key is Uint8Array {
  if (!(key instanceof Uint8Array)) throw new LsmError("INVALID_ARGUMENT", `key must be a Uint8Array, got ${typeof key}`);
  if (key.length > opts.maxKeyBytes) {
    throw new LsmError("LIMIT", `key of ${key.length} bytes exceeds maxKeyBytes (${opts.maxKeyBytes})`);
  }
}

/** Write bytes per millisecond of delay for each L0 table at or past l0SlowdownTrigger. */
const SLOWDOWN_BYTES_PER_MS = 64 * 1024;
/** Longest delay of one write by the slowdown (the hard stop at l0StopTrigger is separate). */
const SLOWDOWN_MAX_MS = 50;

export class DB {
  private readonly versions: VersionSet;
  private readonly blockCache: BlockCache;
  private readonly tableCache: TableCache<TableReader>;
  /** Bytes of table files currently mapped by open tables (bounded by opts.maxMappedBytes). */
  private mappedBytes = 0;
  private readonly onUnmap = (size: number): void => {
    this.mappedBytes -= size;
  };
  private mem!: Memtable;
  private imms: Memtable[] = []; // oldest first
  private wal!: LogWriter;
  private readonly walClosing = new Map<number, Promise<void>>();
  private lastSeq = 0;
  private readonly snapshots = new Set<Snapshot>();
  private readonly pendingOutputs = new Set<number>();
  private closed = false;
  private closing = false;
  private bgError: Error | null = null;
  private flushing: Promise<void> | null = null;
  private compacting: Promise<void> | null = null;
  private compactionLock: Promise<void> = Promise.resolve();
  private progressWaiters: (() => void)[] = [];
  private writeTail: Promise<void> = Promise.resolve();
  private queuedWriters = 0;
  private openIterators = 0;
  private readonly unlinking = new Set<Promise<void>>();
  private readonly ctx: CompactionContext;
  /** Build tables off the event loop (null when options.backgroundThread is false). */
  private readonly worker: TableWorker | null;
  private readonly compactionWorker: TableWorker | null;
  /** Set to 1 at close: this database's merges in the worker stop early. */
  private readonly abortFlag = new Int32Array(new SharedArrayBuffer(4));
  private stats_ = { userBytes: 0, walBytesBase: 0, tableBytes: 0, compactions: 0, flushes: 0, writeStalls: 0, writeSlowdowns: 0 };

  private constructor(readonly dir: string, private readonly opts: ResolvedOptions, private readonly lock: DirLock) {
    this.versions = new VersionSet(dir, opts.logger);
    this.blockCache = new BlockCache(opts.blockCacheBytes);
    this.tableCache = new TableCache(opts.maxOpenFiles);
    const workers = opts.backgroundThread ? sharedTableWorkers() : null;
    this.worker = workers?.flush ?? null;
    this.compactionWorker = workers?.compaction ?? null;
    this.ctx = {
      dir,
      table: { blockSize: opts.blockSize, restartInterval: opts.blockRestartInterval, bloomBitsPerKey: opts.bloomBitsPerKey },
      targetFileSize: opts.targetFileSize,
      l0CompactionTrigger: opts.l0CompactionTrigger,
      level1MaxBytes: opts.level1MaxBytes,
      newFileNumber: () => this.versions.newFileNumber(),
      pendingOutputs: this.pendingOutputs,
      open: (f) => this.openTable(f),
      aborted: () => this.closing,
      onTableWritten: (n) => (this.stats_.tableBytes += n),
    };
  }

  /** Opens (creating if missing) the database in `dir`, replaying its WAL. */
  static async open(dir: string, options: DBOptions = {}): Promise<DB> {
    if (typeof dir !== "string" || dir.length === 0) throw new LsmError("INVALID_ARGUMENT", "dir must be a non-empty string");
    const opts = resolveOptions(options);
    try {
      fs.mkdirSync(dir, { recursive: true });
    } catch (e) {
      throw ioError(dir, "mkdir", e);
    }
    const lock = DirLock.acquire(dir);
    const db = new DB(lock.dir, opts, lock);
    try {
      await db.recover();
    } catch (e) {
      await db.versions.close().catch(() => {});
      db.tableCache.clear();
      lock.release();
      throw e;
    }
    db.maybeScheduleCompaction();
    return db;
  }

  // ---- recovery ------------------------------------------------------------------------------

  private async recover(): Promise<void> {
    const names = fs.readdirSync(this.dir);
    let maxNumber = 0;
    for (const n of names) {
      const m = /^(\d+)\.(log|sst)$/.exec(n) ?? /^MANIFEST-(\d+)$/.exec(n);
      if (m) maxNumber = Math.max(maxNumber, Number(m[1]));
    }
    this.versions.nextFileNumber = maxNumber + 1;
    await this.versions.recover();
    this.lastSeq = this.versions.lastSequence;
    const logs = names
      .map((n) => /^(\d+)\.log$/.exec(n))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => Number(m[1]))
      .sort((a, b) => a - b);
    const edit = emptyEdit();
    for (const number of logs) {
      if (number < this.versions.logNumber) continue;
      await this.replayLog(number, edit);
    }
    const walNumber = this.versions.newFileNumber();
    this.wal = new LogWriter(path.join(this.dir, logFileName(walNumber)), logFileName(walNumber));
    this.mem = new Memtable(walNumber);
    fsyncDir(this.dir);
    edit.logNumber = walNumber;
    await this.versions.logAndApply(edit, this.lastSeq);
    for (const [, f] of edit.added) this.pendingOutputs.delete(f.number);
    this.stats_.walBytesBase = 0;
    for (const number of logs) if (number < walNumber) this.unlinkQuietly(logFileName(number));
    this.deleteObsoleteFiles();
  }

  /** Replays one WAL file into memtables, writing each full memtable (and the rest) to L0. */
  private async replayLog(number: number, edit: ReturnType<typeof emptyEdit>): Promise<void> {
    const name = logFileName(number);
    const file = path.join(this.dir, name);
    let data: Uint8Array;
    try {
      data = fs.readFileSync(file);
    } catch (e) {
      throw ioError(name, "read", e);
    }
    let mem = new Memtable(number);
    const flush = async (): Promise<void> => {
      if (mem.count === 0) return;
      const iter = mem.iterator();
      iter.seekToFirst();
      const f = await writeTable(this.ctx, iter);
      if (f) edit.added.push([0, f]);
      mem = new Memtable(number);
    };
    const batches: { payload: Uint8Array; offset: number }[] = [];
    const result = readLog(data, name, (payload, offset) => batches.push({ payload, offset }));
    for (const { payload, offset } of batches) {
      forEachBatchOp(payload, (kind, key, value, seq) => {
        mem.add(key, seq, kind, value);
        if (seq > this.lastSeq) this.lastSeq = seq;
      }, name, offset);
      if (mem.bytes >= this.opts.memtableBytes) await flush();
    }
    await flush();
    if (result.tornTail) {
      this.opts.logger(`lsm: ${name}: truncated torn tail at offset ${result.validEnd} (${result.tornTail}); unsynced writes after it are lost`);
      try {
        fs.truncateSync(file, result.validEnd);
      } catch (e) {
        throw ioError(name, "truncate", e);
      }
    }
  }

  // ---- writes --------------------------------------------------------------------------------

  put(key: Uint8Array, value: Uint8Array, opts?: WriteOptions): Promise<void> {
    return this.write([{ type: "put", key, value }], opts);
  }

  del(key: Uint8Array, opts?: WriteOptions): Promise<void> {
    return this.write([{ type: "del", key }], opts);
  }

  /** Applies all ops atomically, in order; resolves when written to the OS (or synced). */
  write(ops: readonly BatchOp[], opts?: WriteOptions): Promise<void> {
    let encoded: Uint8Array;
    const sync = opts?.sync === true;
    try {
      this.checkOpen();
      encoded = this.encode(ops);
    } catch (e) {
      return Promise.reject(e);
    }
    if (ops.length === 0) return sync ? this.sync() : Promise.resolve();
    if (this.queuedWriters === 0 && !this.mustWait() && !this.shouldSlowDown()) {
      try {
        return this.commit(encoded, ops.length, sync);
      } catch (e) {
        return Promise.reject(e);
      }
    }
    // Writers that must wait for room queue in order, so a later write never overtakes one.
    this.queuedWriters++;
    const step = this.writeTail.then(async () => {
      await this.waitForRoom(encoded.length);
      return { done: this.commit(encoded, ops.length, sync) };
    });
    this.writeTail = step.then(
      () => {},
      () => {},
    );
    return step.then(
      (r) => {
        this.queuedWriters--;
        return r.done;
      },
      (e) => {
        this.queuedWriters--;
        throw e;
      },
    );
  }

  private encode(ops: readonly BatchOp[]): Uint8Array {
    if (!Array.isArray(ops)) throw new LsmError("INVALID_ARGUMENT", "write() takes an array of operations");
    let size = BATCH_HEADER;
    for (let i = 0; i < ops.length; i++) {
      const op = ops[i];
      if (op === null || typeof op !== "object") throw new LsmError("INVALID_ARGUMENT", `operation ${i} is not an object`);
      checkKey(op.key, this.opts);
      if (op.type === "put") {
        const v = op.value;
        if (!(v instanceof Uint8Array)) throw new LsmError("INVALID_ARGUMENT", `value of operation ${i} must be a Uint8Array`);
        if (v.length > this.opts.maxValueBytes) {
          throw new LsmError("LIMIT", `value of ${v.length} bytes exceeds maxValueBytes (${this.opts.maxValueBytes})`);
        }
        size += opSize(op.key, v);
      } else if (op.type === "del") {
        size += opSize(op.key, null);
      } else {
        throw new LsmError("INVALID_ARGUMENT", `operation ${i} has unknown type ${String((op as { type: unknown }).type)}`);
      }
      if (size > this.opts.maxBatchBytes) {
        throw new LsmError("LIMIT", `batch exceeds maxBatchBytes (${this.opts.maxBatchBytes}); split it`);
      }
    }
    return encodeBatch(ops, size);
  }

  /** Assigns sequence numbers, appends to the WAL and inserts into the memtable. */
  private commit(encoded: Uint8Array, count: number, sync: boolean): Promise<void> {
    this.checkOpen();
    if (this.bgError) throw this.backgroundFailure();
    if (this.mem.bytes >= this.opts.memtableBytes) this.rotateMemtable();
    const seq = this.lastSeq + 1;
    setBatchSeq(encoded, seq);
    try {
      this.wal.add(encoded);
    } catch (e) {
      this.setBackgroundError(e);
      throw e;
    }
    this.mem.addBatch(encoded, seq, count, BATCH_HEADER);
    this.lastSeq = seq + count - 1;
    this.stats_.userBytes += encoded.length - BATCH_HEADER;
    if (!sync) return this.wal.flushed();
    // Durable only with every earlier write: older logs still closing are fsynced by close().
    const synced = this.wal.sync();
    return this.walClosing.size === 0 ? synced : Promise.all([...this.walClosing.values(), synced]).then(() => {});
  }

  private mustWait(): boolean {
    if (this.mem.bytes >= this.opts.memtableBytes && this.imms.length >= this.opts.maxImmutableMemtables) return true;
    return this.versions.current.levels[0].length >= this.opts.l0StopTrigger;
  }

  private shouldSlowDown(): boolean {
    return this.versions.current.levels[0].length >= this.opts.l0SlowdownTrigger;
  }

  /**
   * Delay of one write while L0 is at or past the slowdown trigger: proportional to the batch's
   * bytes (a fixed 1 ms per write, LevelDB's rule, barely slows writers of 1000-key batches) and
   * to how far L0 is past the trigger, so writers yield more of the machine to compaction the
   * further it falls behind instead of running into the hard stop. At least 1 ms.
   */
  private slowdownMs(bytes: number): number {
    const over = this.versions.current.levels[0].length - this.opts.l0SlowdownTrigger + 1;
    return Math.max(1, Math.min(SLOWDOWN_MAX_MS, (over * bytes) / SLOWDOWN_BYTES_PER_MS));
  }

  private async waitForRoom(bytes: number): Promise<void> {
    let slowed = false;
    let stalled = false;
    for (;;) {
      this.checkOpen();
      if (this.bgError) throw this.backgroundFailure();
      if (this.mustWait()) {
        if (!stalled) this.stats_.writeStalls++;
        stalled = true;
        this.maybeScheduleFlush();
        this.maybeScheduleCompaction();
        await this.waitForProgress();
        continue;
      }
      if (!slowed && this.shouldSlowDown()) {
        // Spread the cost of a growing L0 over many writes instead of one long stop later.
        slowed = true;
        this.stats_.writeSlowdowns++;
        await new Promise((r) => setTimeout(r, this.slowdownMs(bytes)));
        continue;
      }
      return;
    }
  }

  private waitForProgress(): Promise<void> {
    return new Promise((resolve) => this.progressWaiters.push(resolve));
  }

  private notifyProgress(): void {
    const w = this.progressWaiters;
    this.progressWaiters = [];
    for (const f of w) f();
  }

  /** Freezes the memtable, switches to a new WAL file and schedules the flush. */
  private rotateMemtable(): void {
    const number = this.versions.newFileNumber();
    const name = logFileName(number);
    const next = new LogWriter(path.join(this.dir, name), name);
    const old = this.wal;
    this.stats_.walBytesBase += old.size;
    const oldNumber = this.mem.walNumber;
    // Writes to the new log start once the old log's last bytes are written: writes reach the OS
    // in commit order, so a crash leaves a prefix of them (no holes).
    next.startAfter(old.flushed());
    // The old log is fsynced before close, so db.sync() and pending sync writers stay covered.
    const closing = old.close(true);
    this.walClosing.set(oldNumber, closing);
    closing.catch((e) => this.setBackgroundError(e));
    this.wal = next;
    this.imms.push(this.mem);
    this.mem = new Memtable(number);
    this.maybeScheduleFlush();
  }

  /** Makes every write so far durable (fsync of the WALs that hold them). */
  async sync(): Promise<void> {
    this.checkOpen();
    await Promise.all([...this.walClosing.values(), this.wal.sync()]);
  }

  // ---- reads ---------------------------------------------------------------------------------

  private snapshotSeq(opts?: ReadOptions): number {
    const s = opts?.snapshot;
    if (s === undefined) return this.lastSeq;
    if (!(s instanceof Snapshot)) throw new LsmError("INVALID_ARGUMENT", "snapshot option must be a Snapshot from this DB");
    if (s.isReleased) throw new LsmError("INVALID_ARGUMENT", "snapshot was released");
    return s.seq;
  }

  /** Synchronous point read: memtables, then tables through the caches (pread). */
  getSync(key: Uint8Array, opts?: ReadOptions): Uint8Array | undefined {
    this.checkOpen();
    checkKey(key, this.opts);
    const seq = this.snapshotSeq(opts);
    const hash = bloomHash(key);
    let r = this.mem.get(key, seq, hash);
    for (let i = this.imms.length - 1; r === undefined && i >= 0; i--) r = this.imms[i].get(key, seq, hash);
    if (r === undefined) r = this.versions.current.get(key, seq, this.ctx.open, hash);
    if (r === undefined || r.kind !== KIND_PUT) return undefined;
    return r.value.slice();
  }

  /** getSync as a promise (the read itself is synchronous: no extra tick, no async frame). */
  get(key: Uint8Array, opts?: ReadOptions): Promise<Uint8Array | undefined> {
    try {
      return Promise.resolve(this.getSync(key, opts));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  private openTable(f: FileMeta): TableReader {
    let t = this.tableCache.get(f.number);
    if (t === undefined) {
      const name = tableFileName(f.number);
      // Map while the mapped bytes stay within budget (mapped pages count in RSS); pread beyond.
      const mmap = this.opts.mmapTables && this.mappedBytes + f.size <= this.opts.maxMappedBytes;
      t = TableReader.open(path.join(this.dir, name), name, f.number, f.size, this.blockCache, { mmap, onUnmap: this.onUnmap });
      if (t.mapped) this.mappedBytes += f.size;
      this.tableCache.insert(f.number, t);
    }
    return t;
  }

  /** A consistent iterator; it pins its version (tables stay on disk) until closed. */
  iterator(opts: DBIteratorOptions = {}): LsmIterator {
    this.checkOpen();
    const seq = this.snapshotSeq(opts);
    const version = this.versions.current;
    this.versions.ref(version);
    const children: InternalIterator[] = [this.mem.iterator()];
    for (let i = this.imms.length - 1; i >= 0; i--) children.push(this.imms[i].iterator());
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      this.openIterators--;
      if (this.versions.unref(version) && !this.closed) this.deleteObsoleteFiles();
    };
    this.openIterators++;
    try {
      children.push(...version.iterators(this.ctx.open));
      return new LsmIterator(new MergingIterator(children), seq, opts, release);
    } catch (e) {
      for (const c of children) c.close();
      release();
      throw e;
    }
  }

  snapshot(): Snapshot {
    this.checkOpen();
    const s = new Snapshot(this.lastSeq, (x) => this.snapshots.delete(x));
    this.snapshots.add(s);
    return s;
  }

  // ---- background work -----------------------------------------------------------------------

  private setBackgroundError(e: unknown): void {
    if (this.bgError || this.closing) return;
    this.bgError = e instanceof Error ? e : new Error(String(e));
    this.opts.logger(`lsm: background error, database is now read-only: ${this.bgError.message}`);
    this.notifyProgress();
  }

  private backgroundFailure(): LsmError {
    return new LsmError("BACKGROUND", `writes refused after an earlier failure: ${this.bgError!.message}`, undefined, undefined, {
      cause: this.bgError,
    });
  }

  private maybeScheduleFlush(): void {
    if (this.flushing || this.imms.length === 0 || this.closing || this.bgError) return;
    this.flushing = this.flushLoop().finally(() => {
      this.flushing = null;
      this.notifyProgress();
      this.maybeScheduleFlush();
    });
  }

  private async flushLoop(): Promise<void> {
    while (this.imms.length > 0 && !this.closing && !this.bgError) {
      const imm = this.imms[0];
      try {
        const f = await this.writeMemtable(imm);
        await this.walClosing.get(imm.walNumber);
        const edit = emptyEdit();
        edit.logNumber = this.imms.length > 1 ? this.imms[1].walNumber : this.mem.walNumber;
        if (f) edit.added.push([this.levelForFlush(f), f]);
        await this.versions.logAndApply(edit, this.lastSeq);
        if (f) this.pendingOutputs.delete(f.number);
        this.imms.shift();
        this.stats_.flushes++;
        this.walClosing.delete(imm.walNumber);
        this.unlinkQuietly(logFileName(imm.walNumber));
      } catch (e) {
        if (this.closing) return;
        this.setBackgroundError(e);
        return;
      }
      this.notifyProgress();
      this.maybeScheduleCompaction();
    }
  }

  /** Writes a frozen memtable as a table, in the table worker when it can. */
  private async writeMemtable(imm: Memtable): Promise<FileMeta | null> {
    if (this.worker === null || !imm.batchesComplete) {
      const iter = imm.iterator();
      iter.seekToFirst();
      return writeTable(this.ctx, iter);
    }
    const number = this.versions.newFileNumber();
    this.pendingOutputs.add(number);
    try {
      let total = 0;
      for (const b of imm.batches) total += b.length;
      const batches = new Uint8Array(total);
      const batchEnds: number[] = [];
      let end = 0;
      for (const b of imm.batches) {
        batches.set(b, end);
        end += b.length;
        batchEnds.push(end);
      }
      // The memtable's order spares the worker a sort (it checks the order in one pass).
      const order = imm.sortedBatchPositions() ?? undefined;
      const r = await this.worker.flush({ type: "flush", dir: this.dir, number, batches, batchEnds, order, table: this.ctx.table });
      this.stats_.tableBytes += r.tableBytes;
      if (r.file === null) this.pendingOutputs.delete(number);
      return r.file === null ? null : fromWire(r.file);
    } catch (e) {
      this.pendingOutputs.delete(number);
      throw e;
    }
  }

  /** A flushed table may go below L0 when nothing there overlaps it (saves a compaction). */
  private levelForFlush(f: FileMeta): number {
    if (this.compacting) return 0; // a running compaction may be writing into L1/L2
    const v = this.versions.current;
    let level = 0;
    if (v.overlapping(0, f.smallestUser, f.largestUser).length > 0) return 0;
    while (level < 2) {
      if (v.overlapping(level + 1, f.smallestUser, f.largestUser).length > 0) break;
      if (level + 2 < NUM_LEVELS) {
        let bytes = 0;
        for (const g of v.overlapping(level + 2, f.smallestUser, f.largestUser)) bytes += g.size;
        if (bytes > 10 * this.opts.targetFileSize) break;
      }
      level++;
    }
    return level;
  }

  private maybeScheduleCompaction(): void {
    if (this.compacting || this.closing || this.bgError) return;
    if (pickCompaction(this.ctx, this.versions.current, this.versions.compactPointers) === null) return;
    this.compacting = this.withCompactionLock(async () => {
      while (!this.closing && !this.bgError) {
        const c = pickCompaction(this.ctx, this.versions.current, this.versions.compactPointers);
        if (c === null) return;
        await this.runOneCompaction(c);
        this.notifyProgress();
      }
    })
      .catch((e) => {
        if (!this.closing) this.setBackgroundError(e);
      })
      .finally(() => {
        this.compacting = null;
        this.notifyProgress();
      });
  }

  private withCompactionLock<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.compactionLock.then(fn);
    this.compactionLock = run.then(
      () => {},
      () => {},
    );
    return run;
  }

  private smallestSnapshot(): number {
    let s = this.lastSeq;
    for (const snap of this.snapshots) if (snap.seq < s) s = snap.seq;
    return s;
  }

  private async runOneCompaction(c: Compaction): Promise<void> {
    const version = this.versions.current;
    this.versions.ref(version);
    try {
      const edit = isTrivialMove(this.ctx, c) ? trivialMoveEdit(c) : await this.merge(version, c);
      await this.versions.logAndApply(edit, this.lastSeq);
      for (const [, f] of edit.added) this.pendingOutputs.delete(f.number);
      this.stats_.compactions++;
    } catch (e) {
      if (e instanceof LsmError && e.message === ABORTED) return;
      throw e;
    } finally {
      this.versions.unref(version);
      this.deleteObsoleteFiles();
    }
  }

  /** Runs a compaction's merge, in the table worker when there is one. */
  private async merge(version: Version, c: Compaction): Promise<VersionEdit> {
    const smallestSnapshot = this.smallestSnapshot();
    if (this.compactionWorker === null) return runCompaction(this.ctx, version, c, smallestSnapshot);
    const numbers: number[] = [];
    try {
      const r = await this.compactionWorker.compact(
        {
          type: "compact",
          dir: this.dir,
          level: c.level,
          inputs: [c.inputs[0].map(toWire), c.inputs[1].map(toWire)],
          levels: version.levels.map((files) => files.map(toWire)),
          smallestSnapshot,
          targetFileSize: this.ctx.targetFileSize,
          l0CompactionTrigger: this.ctx.l0CompactionTrigger,
          level1MaxBytes: this.ctx.level1MaxBytes,
          table: this.ctx.table,
          abort: this.abortFlag,
        },
        () => {
          const n = this.versions.newFileNumber();
          this.pendingOutputs.add(n);
          numbers.push(n);
          return n;
        },
      );
      this.stats_.tableBytes += r.tableBytes;
      const edit = emptyEdit();
      for (const [which, files] of c.inputs.entries()) for (const f of files) edit.deleted.push([c.level + which, f.number]);
      for (const f of r.added) edit.added.push([c.level + 1, fromWire(f)]);
      edit.compactPointers.push([c.level, r.compactPointer]);
      // Outputs the edit does not name (none, normally) are no longer pending.
      const added = new Set(r.added.map((f) => f.number));
      for (const n of numbers) if (!added.has(n)) this.pendingOutputs.delete(n);
      return edit;
    } catch (e) {
      for (const n of numbers) this.pendingOutputs.delete(n);
      throw e;
    }
  }

  /** Deletes table files that no live version references and no job is writing. */
  private deleteObsoleteFiles(): void {
    const live = this.versions.liveFiles();
    let names: string[];
    try {
      names = fs.readdirSync(this.dir);
    } catch {
      return;
    }
    for (const n of names) {
      const m = /^(\d+)\.sst$/.exec(n);
      if (!m) continue;
      const number = Number(m[1]);
      if (live.has(number) || this.pendingOutputs.has(number)) continue;
      this.tableCache.evict(number);
      this.unlinkQuietly(n);
    }
  }

  /**
   * Deletes a file without blocking the event loop (freeing a large file's blocks takes the
   * kernel a while); compactRange and close wait for deletions still running.
   */
  private unlinkQuietly(name: string): void {
    const done = new Promise<void>((resolve) => fs.unlink(path.join(this.dir, name), () => resolve()));
    this.unlinking.add(done);
    void done.then(() => this.unlinking.delete(done));
  }

  /**
   * Flushes the memtable and compacts every level's tables overlapping [start, end] down to the
   * deepest level that holds data (null/undefined = unbounded). Drops shadowed versions and,
   * at the bottom, tombstones.
   */
  async compactRange(start?: Uint8Array | null, end?: Uint8Array | null): Promise<void> {
    this.checkOpen();
    const lo = start ?? null;
    const hi = end ?? null;
    if (lo !== null) checkKey(lo, this.opts);
    if (hi !== null) checkKey(hi, this.opts);
    if (this.mem.count > 0) this.rotateMemtable();
    while (this.imms.length > 0) {
      if (this.bgError) throw this.backgroundFailure();
      this.checkOpen();
      this.maybeScheduleFlush();
      await this.waitForProgress();
    }
    await this.withCompactionLock(async () => {
      const v0 = this.versions.current;
      let maxLevel = 1;
      for (let l = 1; l < NUM_LEVELS; l++) if (v0.overlapping(l, lo, hi).length > 0) maxLevel = l;
      for (let level = 0; level < maxLevel; level++) {
        if (this.closing) return;
        const v = this.versions.current;
        const files = v.overlapping(level, lo, hi);
        if (files.length === 0) continue;
        const c = setupCompaction(v, level, files);
        c.grandparentBytes = Infinity; // never a trivial move: rewriting is the point
        await this.runOneCompaction(c);
      }
    });
    this.notifyProgress();
    this.maybeScheduleCompaction();
    await Promise.all(this.unlinking);
  }

  // ---- introspection -------------------------------------------------------------------------

  stats(): DBStats {
    const v = this.versions.current;
    const levels = v.levels.map((files) => ({ files: files.length, bytes: files.reduce((a, f) => a + f.size, 0) }));
    const walNow = this.stats_.walBytesBase + this.wal.size;
    let memBytes = this.mem.bytes;
    for (const m of this.imms) memBytes += m.bytes;
    const user = this.stats_.userBytes;
    return {
      diskBytes: levels.reduce((a, l) => a + l.bytes, 0) + this.wal.size,
      memtableBytes: memBytes,
      immutableMemtables: this.imms.length,
      levels,
      writeAmplification: user === 0 ? 0 : (walNow + this.stats_.tableBytes) / user,
      userBytesWritten: user,
      walBytesWritten: walNow,
      tableBytesWritten: this.stats_.tableBytes,
      lastSequence: this.lastSeq,
      blockCache: { bytes: this.blockCache.bytes, capacity: this.blockCache.capacity, hits: this.blockCache.hits, misses: this.blockCache.misses },
      openTables: this.tableCache.size,
      mappedTableBytes: this.mappedBytes,
      liveSnapshots: this.snapshots.size,
      compactions: this.stats_.compactions,
      flushes: this.stats_.flushes,
      writeStalls: this.stats_.writeStalls,
      writeSlowdowns: this.stats_.writeSlowdowns,
      backgroundError: this.bgError?.message,
    };
  }

  /** Approximate bytes of table data for keys in [start, end) (memtables not counted). */
  approximateSize(start: Uint8Array, end: Uint8Array): number {
    this.checkOpen();
    checkKey(start, this.opts);
    checkKey(end, this.opts);
    if (compareBytes(start, end) >= 0) return 0;
    let total = 0;
    for (const files of this.versions.current.levels) {
      for (const f of files) {
        if (compareBytes(f.largestUser, start) < 0 || compareBytes(f.smallestUser, end) >= 0) continue;
        const t = this.openTable(f);
        const a = compareBytes(start, f.smallestUser) <= 0 ? 0 : t.approximateOffsetOf(start);
        const b = compareBytes(end, f.largestUser) > 0 ? f.size : t.approximateOffsetOf(end);
        total += Math.max(0, b - a);
      }
    }
    return total;
  }

  private checkOpen(): void {
    if (this.closed) throw new LsmError("CLOSED", `database ${this.dir} is closed`);
  }

  get isOpen(): boolean {
    return !this.closed;
  }

  /** Stops background work, makes the WAL durable and releases the directory. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.closing = true;
    Atomics.store(this.abortFlag, 0, 1);
    this.notifyProgress();
    await this.writeTail;
    await Promise.allSettled([this.flushing, this.compacting, this.compactionLock]);
    let failure: unknown = null;
    try {
      await this.wal.close(true);
    } catch (e) {
      failure = e;
    }
    await Promise.allSettled([...this.walClosing.values()]);
    await this.versions.close().catch((e) => (failure ??= e));
    this.tableCache.clear();
    await Promise.all(this.unlinking);
    this.lock.release();
    if (failure) throw failure;
  }
}
