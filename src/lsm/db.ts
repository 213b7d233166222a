// The engine's public face: the write path (batch → WAL → memtable), reads over memtables and
// versions, snapshots, stats and close. Recovery is in recovery.ts, background work and write
// stalls in compaction-scheduler.ts.
import * as fs from "node:fs";
import * as path from "node:path";
import { BATCH_HEADER, checkKey, encodeOps, setBatchSeq, type BatchOp } from "./batch.ts";
import { bloomHash } from "./bloom.ts";
import { BlockCache, TableCache } from "./cache.ts";
import { Checkpoint } from "./checkpoint.ts";
import { compareBytes, KIND_PUT } from "./coding.ts";
import { setupCompaction, type CompactionContext } from "./compaction.ts";
import { CompactionScheduler, newCounters } from "./compaction-scheduler.ts";
import { LsmIterator, type IteratorOptions } from "./db-iterator.ts";
import { LsmError, ioError } from "./errors.ts";
import { MergingIterator, type InternalIterator } from "./iterator.ts";
import { DirLock } from "./lock.ts";
import { logFileName, tableFileName, VersionSet } from "./manifest.ts";
import { type Memtable, newMemtable } from "./memtable.ts";
import { resolveOptions, type DBOptions, type ResolvedOptions } from "./options.ts";
import { Snapshot } from "./snapshot.ts";
import { compressionStats, flushBufferBudget, levelStats, walBufferBudget, type DBStats } from "./stats.ts";
import { recover } from "./recovery.ts";
import { TableReader, type TableGetResult } from "./sstable.ts";
import { countTable } from "./table-jobs.ts";
import { NUM_LEVELS, type FileMeta } from "./version.ts";
import { LogWriter } from "./wal.ts";

const EMPTY = new Uint8Array(0);

export interface WriteOptions {
  /** Resolve only once the write is on stable storage (fsync). Default false. */
  sync?: boolean;
  /**
   * Log the write in the WAL first. Default true. false: the write goes to the memtable only, for
   * a caller that keeps its own log (a replicated state machine whose Raft log replays it): a crash
   * loses it until a flush has written its memtable to a table (`flushedSequence` says how far
   * that is; `flush()` forces it). Not with `sync`.
   */
  wal?: boolean;
}
export interface ReadOptions {
  snapshot?: Snapshot;
}
export interface DBIteratorOptions extends IteratorOptions {
  snapshot?: Snapshot;
}

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
  /** Every write with a sequence number at or below this is in a table the manifest names. */
  private flushedSeq = 0;
  private readonly snapshots = new Set<Snapshot>();
  private readonly pendingOutputs = new Set<number>();
  private closed = false;
  /** close() has begun (it may be flushing): no more writes. */
  private closeStarted = false;
  private closing = false;
  private writeTail: Promise<void> = Promise.resolve();
  private queuedWriters = 0;
  private openIterators = 0;
  private readonly unlinking = new Set<Promise<void>>();
  private readonly ctx: CompactionContext;
  private readonly background: CompactionScheduler;
  private readonly counters = newCounters();
  /** Filled by each table read of getSync (one object for every read, not one per read). */
  private readonly readResult: TableGetResult = { kind: 0, value: EMPTY };

  private constructor(readonly dir: string, private readonly opts: ResolvedOptions, private readonly lock: DirLock) {
    this.versions = new VersionSet(dir, opts.logger);
    this.blockCache = new BlockCache(opts.blockCacheBytes, opts.blockSize);
    this.tableCache = new TableCache(opts.maxOpenFiles, opts.tableCacheBytes);
    this.ctx = {
      dir,
      table: {
        blockSize: opts.blockSize,
        restartInterval: opts.blockRestartInterval,
        bloomBitsPerKey: opts.bloomBitsPerKey,
        compression: opts.compression,
      },
      targetFileSize: opts.targetFileSize,
      l0CompactionTrigger: opts.l0CompactionTrigger,
      level1MaxBytes: opts.level1MaxBytes,
      newFileNumber: () => this.versions.newFileNumber(),
      pendingOutputs: this.pendingOutputs,
      open: (f) => this.openTable(f),
      aborted: () => this.closing,
      onTableWritten: (t) => countTable(this.counters.writes, t),
    };
    this.background = new CompactionScheduler({
      dir,
      opts,
      versions: this.versions,
      ctx: this.ctx,
      pendingOutputs: this.pendingOutputs,
      imms: this.imms,
      walClosing: this.walClosing,
      counters: this.counters,
      mem: () => this.mem,
      lastSeq: () => this.lastSeq,
      flushedThrough: (seq) => this.flushedThrough(seq),
      smallestSnapshot: () => this.smallestSnapshot(),
      closing: () => this.closing,
      deleteObsoleteFiles: () => this.deleteObsoleteFiles(),
      unlinkQuietly: (name) => this.unlinkQuietly(name),
    });
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
    db.background.scheduleCompaction();
    return db;
  }

  private async recover(): Promise<void> {
    const r = await recover(this.dir, this.opts, this.versions, this.ctx);
    this.lastSeq = r.lastSeq;
    // Recovery wrote every replayed log to tables: all that survived is in a table.
    this.flushedSeq = r.lastSeq;
    this.wal = r.wal;
    this.mem = r.mem;
    this.counters.levelWritten[0] += r.tableBytes;
    for (const number of r.obsoleteLogs) this.unlinkQuietly(logFileName(number));
    this.deleteObsoleteFiles();
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
    const logged = opts?.wal !== false;
    try {
      this.checkWritable();
      if (sync && !logged) throw new LsmError("INVALID_ARGUMENT", "a write without the WAL cannot be synced; call flush() to make it durable");
      encoded = encodeOps(ops, this.opts);
    } catch (e) {
      return Promise.reject(e);
    }
    if (ops.length === 0) return sync ? this.sync() : Promise.resolve();
    if (this.queuedWriters === 0 && !this.background.mustWait() && !this.background.shouldSlowDown()) {
      try {
        return this.commit(encoded, ops.length, sync, logged);
      } catch (e) {
        return Promise.reject(e);
      }
    }
    // Writers that must wait for room queue in order, so a later write never overtakes one.
    this.queuedWriters++;
    const step = this.writeTail.then(async () => {
      await this.background.waitForRoom(encoded.length, () => this.checkWritable());
      return { done: this.commit(encoded, ops.length, sync, logged) };
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

  /** Assigns sequence numbers, appends to the WAL (unless `logged` is false) and inserts into the memtable. */
  private commit(encoded: Uint8Array, count: number, sync: boolean, logged: boolean): Promise<void> {
    this.checkWritable();
    if (this.background.error) throw this.background.failure();
    if (this.mem.bytes >= this.opts.memtableBytes) this.rotateMemtable();
    const seq = this.lastSeq + 1;
    setBatchSeq(encoded, seq);
    if (logged) {
      try {
        this.wal.add(encoded);
      } catch (e) {
        this.background.setError(e);
        throw e;
      }
    } else {
      this.mem.unlogged = true;
    }
    this.mem.addBatch(encoded, seq, count, BATCH_HEADER);
    this.lastSeq = seq + count - 1;
    this.mem.lastSeq = this.lastSeq;
    this.counters.userBytes += encoded.length - BATCH_HEADER;
    if (!logged) return Promise.resolve();
    if (!sync) return this.wal.flushed();
    // Durable only with every earlier write: older logs still closing are fsynced by close().
    const synced = this.wal.sync();
    return this.walClosing.size === 0 ? synced : Promise.all([...this.walClosing.values(), synced]).then(() => {});
  }

  /** Freezes the memtable, switches to a new WAL file and schedules the flush. */
  private rotateMemtable(): void {
    const number = this.versions.newFileNumber();
    const name = logFileName(number);
    const next = new LogWriter(path.join(this.dir, name), name);
    const old = this.wal;
    this.counters.walBytesBase += old.size;
    const oldNumber = this.mem.walNumber;
    // Writes to the new log start once the old log's last bytes are written: writes reach the OS
    // in commit order, so a crash leaves a prefix of them (no holes).
    next.startAfter(old.flushed());
    // The old log is fsynced before close, so db.sync() and pending sync writers stay covered.
    const closing = old.close(true);
    this.walClosing.set(oldNumber, closing);
    closing.catch((e) => this.background.setError(e));
    this.wal = next;
    this.imms.push(this.mem);
    this.mem = newMemtable(number, this.opts.memtableBytes);
    this.background.scheduleFlush();
  }

  /**
   * Makes every write so far durable: fsync of the WALs that hold them, or a flush when writes
   * without the WAL are still only in memtables.
   */
  async sync(): Promise<void> {
    this.checkOpen();
    if (this.holdsUnlogged()) return this.flush();
    await Promise.all([...this.walClosing.values(), this.wal.sync()]);
  }

  /** The sequence number of the last write (every write so far is at or below it). */
  get lastSequence(): number {
    return this.lastSeq;
  }

  /** Every write at or below this sequence number is in a table: it survives a crash without its WAL. */
  get flushedSequence(): number {
    return this.flushedSeq;
  }

  /** Writes every memtable to a table (the current one frozen first); resolves once they are in the manifest. */
  async flush(): Promise<void> {
    this.checkOpen();
    const target = this.lastSeq;
    if (this.mem.count > 0) this.rotateMemtable();
    while (this.flushedSeq < target) {
      if (this.background.error) throw this.background.failure();
      this.checkOpen();
      const progress = this.background.waitForProgress();
      this.background.scheduleFlush();
      await progress;
    }
  }

  /** A flush put a frozen memtable's writes in a table (called in flush order). */
  private flushedThrough(seq: number): void {
    if (seq > this.flushedSeq) this.flushedSeq = seq;
  }

  private holdsUnlogged(): boolean {
    return this.mem.unlogged || this.imms.some((m) => m.unlogged);
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
    let mem = this.mem;
    let id = mem.find(key, seq, hash);
    for (let i = this.imms.length - 1; id < 0 && i >= 0; i--) id = (mem = this.imms[i]).find(key, seq, hash);
    if (id >= 0) return mem.kindOf(id) === KIND_PUT ? mem.valueCopyOf(id) : undefined;
    const out = this.readResult;
    if (!this.versions.current.get(key, seq, this.ctx.open, hash, out)) return undefined;
    const value = out.value;
    out.value = EMPTY; // holds no reference between reads
    return out.kind === KIND_PUT ? value : undefined;
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

  /**
   * The database now as files plus memtable entries (checkpoint.ts): the files stay on disk and
   * the snapshot live until the checkpoint is released.
   */
  checkpoint(): Checkpoint {
    const snapshot = this.snapshot();
    const version = this.versions.current;
    this.versions.ref(version);
    return new Checkpoint(this.dir, snapshot, version.levels, [this.mem, ...this.imms], () => {
      snapshot.release();
      if (this.versions.unref(version) && !this.closed) this.deleteObsoleteFiles();
    });
  }

  // ---- background work -----------------------------------------------------------------------

  private smallestSnapshot(): number {
    let s = this.lastSeq;
    for (const snap of this.snapshots) if (snap.seq < s) s = snap.seq;
    return s;
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
      if (this.background.error) throw this.background.failure();
      this.checkOpen();
      this.background.scheduleFlush();
      await this.background.waitForProgress();
    }
    await this.background.withCompactionLock(async () => {
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
        await this.background.runOneCompaction(c);
      }
    });
    this.background.notifyProgress();
    this.background.scheduleCompaction();
    await Promise.all(this.unlinking);
  }

  // ---- introspection -------------------------------------------------------------------------

  stats(): DBStats {
    const v = this.versions.current;
    const levels = levelStats(v, this.counters);
    const walNow = this.counters.walBytesBase + this.wal.size;
    let memBytes = this.mem.bytes;
    let memAllocated = this.mem.allocatedBytes;
    for (const m of this.imms) {
      memBytes += m.bytes;
      memAllocated += m.allocatedBytes;
    }
    const user = this.counters.userBytes;
    return {
      diskBytes: levels.reduce((a, l) => a + l.bytes, 0) + this.wal.size,
      memtableBytes: memBytes,
      immutableMemtables: this.imms.length,
      levels,
      writeAmplification: user === 0 ? 0 : (walNow + this.counters.writes.tableBytes) / user,
      userBytesWritten: user,
      walBytesWritten: walNow,
      tableBytesWritten: this.counters.writes.tableBytes,
      compression: compressionStats(this.opts.compression, this.counters),
      lastSequence: this.lastSeq,
      blockCache: { bytes: this.blockCache.bytes, capacity: this.blockCache.capacity, hits: this.blockCache.hits, misses: this.blockCache.misses },
      openTables: this.tableCache.size,
      mappedTableBytes: this.mappedBytes,
      liveSnapshots: this.snapshots.size,
      memory: {
        memtables: { bytes: memAllocated, budget: this.opts.memtableBytes * (1 + this.opts.maxImmutableMemtables) },
        blockCache: { bytes: this.blockCache.bytes + this.blockCache.poolBytes, budget: this.blockCache.capacity + this.blockCache.poolCapacity },
        tableCache: { bytes: this.tableCache.bytes, budget: this.opts.tableCacheBytes },
        mappedTables: { bytes: this.mappedBytes, budget: this.opts.maxMappedBytes },
        walBuffers: { bytes: this.wal.bufferBytes, budget: walBufferBudget(this.opts) },
        flushBuffer: { bytes: this.background.flushBufferBytes, budget: flushBufferBudget(this.opts) },
      },
      compactions: this.counters.compactions,
      trivialMoves: this.counters.trivialMoves,
      splitCompactions: this.counters.splitCompactions,
      flushes: this.counters.flushes,
      writeStalls: this.counters.writeStalls,
      writeSlowdowns: this.counters.writeSlowdowns,
      backgroundError: this.background.error?.message,
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

  /** Writes end when close() starts (its flush must see every write made without the WAL). */
  private checkWritable(): void {
    if (this.closed || this.closeStarted) throw new LsmError("CLOSED", `database ${this.dir} is closed`);
  }

  get isOpen(): boolean {
    return !this.closed;
  }

  /**
   * Stops background work, makes the WAL durable (and flushes writes made without it) and releases
   * the directory. Idempotent. `discardUnlogged` leaves what a crash would: writes without the WAL
   * that no flush has put in a table are lost (for tests and simulators of a crash).
   */
  async close(options?: { discardUnlogged?: boolean }): Promise<void> {
    if (this.closed || this.closeStarted) return;
    // From here writes are refused (as after close), so the flush below leaves nothing behind.
    this.closeStarted = true;
    let failure: unknown = null;
    if (options?.discardUnlogged !== true && this.holdsUnlogged() && !this.background.error) await this.flush().catch((e) => (failure = e));
    this.closed = true;
    this.closing = true;
    this.background.stop();
    await this.writeTail;
    await this.background.idle();
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
