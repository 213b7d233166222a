// Schedules the background work of one database (memtable flushes and compactions, in the table
// workers when there are any) and the write stalls that keep writers from outrunning it.
import { sharedTableWorkers, type TableWorker } from "./background.ts";
import {
  ABORTED, isTrivialMove, pickCompaction, runCompaction, splitCompaction, trivialMoveEdit, writeTable, type Compaction, type CompactionContext,
} from "./compaction.ts";
import { LsmError } from "./errors.ts";
import { logFileName, type VersionSet } from "./manifest.ts";
import type { Memtable } from "./memtable.ts";
import type { ResolvedOptions } from "./options.ts";
import { flushBufferBudget } from "./stats.ts";
import { fromWire, noWrites, toWire, type TableWrites, type WireFile } from "./table-jobs.ts";
import { emptyEdit, NUM_LEVELS, type FileMeta, type Version, type VersionEdit } from "./version.ts";

/** Write bytes per millisecond of delay for each L0 table at or past l0SlowdownTrigger. */
const SLOWDOWN_BYTES_PER_MS = 64 * 1024;
/** Longest delay of one write by the slowdown (the hard stop at l0StopTrigger is separate). */
const SLOWDOWN_MAX_MS = 50;

/** Counters of the work done since open (write amplification and stats()). */
export interface WorkCounters {
  userBytes: number;
  walBytesBase: number;
  /** Every table written, whether or not it made it into a version. */
  writes: TableWrites;
  /** Per level: table bytes that flushes and merges placed there, and bytes merges read from it. */
  levelWritten: number[];
  levelRead: number[];
  compactions: number;
  /** Compactions that moved a table down a level without rewriting it. */
  trivialMoves: number;
  /** Merges run as two halves on two threads at once (splitCompaction). */
  splitCompactions: number;
  flushes: number;
  /** Writes that waited for a flush or compaction (memtables full or L0 at its stop trigger). */
  writeStalls: number;
  /** Writes delayed by the L0 slowdown. */
  writeSlowdowns: number;
}

export function newCounters(): WorkCounters {
  return {
    userBytes: 0,
    walBytesBase: 0,
    writes: noWrites(),
    levelWritten: new Array<number>(NUM_LEVELS).fill(0),
    levelRead: new Array<number>(NUM_LEVELS).fill(0),
    compactions: 0,
    trivialMoves: 0,
    splitCompactions: 0,
    flushes: 0,
    writeStalls: 0,
    writeSlowdowns: 0,
  };
}

/** Both halves' results; on a failure, the first error once neither half still runs (writes files). */
async function bothHalves<T>(a: Promise<T>, b: Promise<T>): Promise<T[]> {
  const [ra, rb] = await Promise.allSettled([a, b]);
  if (ra.status === "rejected") throw ra.reason;
  if (rb.status === "rejected") throw rb.reason;
  return [ra.value, rb.value];
}

function addWrites(to: TableWrites, w: TableWrites): void {
  to.tableBytes += w.tableBytes;
  to.rawDataBytes += w.rawDataBytes;
  to.storedDataBytes += w.storedDataBytes;
}

function totalSize(files: FileMeta[]): number {
  let n = 0;
  for (const f of files) n += f.size;
  return n;
}

/** What the scheduler needs of its database: shared state, read or changed in place. */
export interface SchedulerHost {
  readonly dir: string;
  readonly opts: ResolvedOptions;
  readonly versions: VersionSet;
  readonly ctx: CompactionContext;
  readonly pendingOutputs: Set<number>;
  /** Frozen memtables, oldest first: the flush loop removes each once its table is in a version. */
  readonly imms: Memtable[];
  /** Closes (with fsync) of the WALs of frozen memtables, by WAL number. */
  readonly walClosing: Map<number, Promise<void>>;
  readonly counters: WorkCounters;
  /** The live memtable (its bytes and WAL number). */
  mem(): Memtable;
  lastSeq(): number;
  /** A flush's table is in the manifest: every write through `seq` is in a table. */
  flushedThrough(seq: number): void;
  smallestSnapshot(): number;
  closing(): boolean;
  deleteObsoleteFiles(): void;
  unlinkQuietly(name: string): void;
}

export class CompactionScheduler {
  private bgError: Error | null = null;
  /** The last flush's batches buffer, handed back by the worker: the next flush fills it instead of a fresh buffer the memtable's size. */
  private spareFlushBuffer: Uint8Array | null = null;
  private flushing: Promise<void> | null = null;

  private compacting: Promise<void> | null = null;
  private compactionLock: Promise<void> = Promise.resolve();
  private progressWaiters: (() => void)[] = [];
  /** Write stalls counted when the last merge began (see merge()). */
  private waitedAtLastMerge = 0;
  /** Slowdown delay owed by writes that did not sleep yet (see waitForRoom). */
  private slowdownDebtMs = 0;
  /** Build tables off the event loop (null when options.backgroundThread is false). */
  private readonly flushWorker: TableWorker | null;
  private readonly compactionWorker: TableWorker | null;
  /** Set to 1 at close: this database's merges in the worker stop early. */
  private readonly abortFlag = new Int32Array(new SharedArrayBuffer(4));

  constructor(private readonly host: SchedulerHost) {
    const workers = host.opts.backgroundThread ? sharedTableWorkers() : null;
    this.flushWorker = workers?.flush ?? null;
    this.compactionWorker = workers?.compaction ?? null;
  }

  // ---- errors and progress -------------------------------------------------------------------

  /** Bytes of the kept flush buffer (0 while a flush has it). */
  get flushBufferBytes(): number {
    return this.spareFlushBuffer?.buffer.byteLength ?? 0;
  }

  /** The failure that turned the database read-only, if any. */
  get error(): Error | null {
    return this.bgError;
  }

  setError(e: unknown): void {
    if (this.bgError || this.host.closing()) return;
    this.bgError = e instanceof Error ? e : new Error(String(e));
    this.host.opts.logger(`lsm: background error, database is now read-only: ${this.bgError.message}`);
    this.notifyProgress();
  }

  /** The error writes get after a background failure. */
  failure(): LsmError {
    return new LsmError("BACKGROUND", `writes refused after an earlier failure: ${this.bgError!.message}`, undefined, undefined, {
      cause: this.bgError,
    });
  }

  /** Resolves at the next flush or compaction step (or error, or close). */
  waitForProgress(): Promise<void> {
    return new Promise((resolve) => this.progressWaiters.push(resolve));
  }

  notifyProgress(): void {
    const w = this.progressWaiters;
    this.progressWaiters = [];
    for (const f of w) f();
  }

  /** Stops merges in the worker and wakes every waiter (the database is closing). */
  stop(): void {
    Atomics.store(this.abortFlag, 0, 1);
    this.notifyProgress();
  }

  /** Resolves when running flushes and compactions have finished (after stop(), soon). */
  async idle(): Promise<void> {
    await Promise.allSettled([this.flushing, this.compacting, this.compactionLock]);
  }

  // ---- write stalls --------------------------------------------------------------------------

  /** Writers must wait: no room for another frozen memtable, or L0 at the stop trigger. */
  mustWait(): boolean {
    const h = this.host;
    if (h.mem().bytes >= h.opts.memtableBytes && h.imms.length >= h.opts.maxImmutableMemtables) return true;
    return h.versions.current.levels[0].length >= h.opts.l0StopTrigger;
  }

  shouldSlowDown(): boolean {
    return this.host.versions.current.levels[0].length >= this.host.opts.l0SlowdownTrigger;
  }

  /**
   * Delay owed by one write while L0 is at or past the slowdown trigger: proportional to the
   * batch's bytes (a fixed 1 ms per write, LevelDB's rule, barely slows writers of 1000-key
   * batches) and to how far L0 is past the trigger, so writers yield more of the machine to
   * compaction the further it falls behind instead of running into the hard stop.
   */
  private slowdownMs(bytes: number): number {
    const over = this.host.versions.current.levels[0].length - this.host.opts.l0SlowdownTrigger + 1;
    return Math.min(SLOWDOWN_MAX_MS, (over * bytes) / SLOWDOWN_BYTES_PER_MS);
  }

  /** Waits until a write of `bytes` may go ahead; `checkOpen` throws once the database closes. */
  async waitForRoom(bytes: number, checkOpen: () => void): Promise<void> {
    let slowed = false;
    let stalled = false;
    for (;;) {
      checkOpen();
      if (this.bgError) throw this.failure();
      if (this.mustWait()) {
        if (!stalled) this.host.counters.writeStalls++;
        stalled = true;
        this.scheduleFlush();
        this.scheduleCompaction();
        await this.waitForProgress();
        continue;
      }
      if (!slowed && this.shouldSlowDown()) {
        // Spread the cost of a growing L0 over many writes instead of one long stop later. Small
        // writes add to a debt paid in sleeps of at least 1 ms (a timer's grain): a sleep per
        // write capped single-key writers at ~1,000 per second (LevelDB sleeps once per group
        // of writers its queue merges; writers here are not merged).
        slowed = true;
        this.host.counters.writeSlowdowns++;
        this.slowdownDebtMs += this.slowdownMs(bytes);
        if (this.slowdownDebtMs >= 1) {
          const ms = Math.min(SLOWDOWN_MAX_MS, this.slowdownDebtMs);
          this.slowdownDebtMs = 0;
          await new Promise((r) => setTimeout(r, ms));
        }
        continue;
      }
      return;
    }
  }

  // ---- flushes -------------------------------------------------------------------------------

  scheduleFlush(): void {
    if (this.flushing || this.host.imms.length === 0 || this.host.closing() || this.bgError) return;
    this.flushing = this.flushLoop().finally(() => {
      this.flushing = null;
      this.notifyProgress();
      this.scheduleFlush();
    });
  }

  private async flushLoop(): Promise<void> {
    const h = this.host;
    while (h.imms.length > 0 && !h.closing() && !this.bgError) {
      const imm = h.imms[0];
      try {
        const f = await this.writeMemtable(imm);
        await h.walClosing.get(imm.walNumber);
        const edit = emptyEdit();
        edit.logNumber = h.imms.length > 1 ? h.imms[1].walNumber : h.mem().walNumber;
        if (f) {
          const level = this.levelForFlush(f);
          edit.added.push([level, f]);
          h.counters.levelWritten[level] += f.size;
        }
        await h.versions.logAndApply(edit, h.lastSeq());
        if (f) h.pendingOutputs.delete(f.number);
        h.imms.shift();
        h.flushedThrough(imm.lastSeq);
        h.counters.flushes++;
        h.walClosing.delete(imm.walNumber);
        h.unlinkQuietly(logFileName(imm.walNumber));
      } catch (e) {
        if (h.closing()) return;
        this.setError(e);
        return;
      }
      this.notifyProgress();
      this.scheduleCompaction();
    }
  }

  /** Writes a frozen memtable as a table, in the flush worker when there is one. */
  private async writeMemtable(imm: Memtable): Promise<FileMeta | null> {
    const h = this.host;
    if (this.flushWorker === null || !imm.batchesComplete) {
      const iter = imm.iterator();
      iter.seekToFirst();
      return writeTable(h.ctx, iter);
    }
    const number = h.versions.newFileNumber();
    h.pendingOutputs.add(number);
    try {
      const { batches, batchEnds } = imm.batchesForFlush(this.spareFlushBuffer);
      this.spareFlushBuffer = null; // transferred with the job; the worker hands it back
      // The memtable's order spares the worker a sort (it checks the order in one pass).
      const order = imm.sortedBatchPositions() ?? undefined;
      const r = await this.flushWorker.flush({ type: "flush", dir: h.dir, number, batches, batchEnds, order, table: h.ctx.table });
      addWrites(h.counters.writes, r.writes);
      // Kept only up to the budget stats() reports: a memtable that one huge batch filled
      // would otherwise leave a buffer of that batch's size behind for good.
      if (r.batches !== undefined && r.batches.buffer.byteLength <= flushBufferBudget(h.opts)) this.spareFlushBuffer = r.batches;
      if (r.file === null) h.pendingOutputs.delete(number);
      return r.file === null ? null : fromWire(r.file);
    } catch (e) {
      h.pendingOutputs.delete(number);
      throw e;
    }
  }

  /** A flushed table may go below L0 when nothing there overlaps it (saves a compaction). */
  private levelForFlush(f: FileMeta): number {
    if (this.compacting) return 0; // a running compaction may be writing into L1/L2
    const v = this.host.versions.current;
    let level = 0;
    if (v.overlapping(0, f.smallestUser, f.largestUser).length > 0) return 0;
    while (level < 2) {
      if (v.overlapping(level + 1, f.smallestUser, f.largestUser).length > 0) break;
      if (level + 2 < NUM_LEVELS) {
        let bytes = 0;
        for (const g of v.overlapping(level + 2, f.smallestUser, f.largestUser)) bytes += g.size;
        if (bytes > 10 * this.host.opts.targetFileSize) break;
      }
      level++;
    }
    return level;
  }

  // ---- compactions ---------------------------------------------------------------------------

  scheduleCompaction(): void {
    const h = this.host;
    if (this.compacting || h.closing() || this.bgError) return;
    if (pickCompaction(h.ctx, h.versions.current, h.versions.compactPointers) === null) return;
    this.compacting = this.withCompactionLock(async () => {
      while (!h.closing() && !this.bgError) {
        const c = pickCompaction(h.ctx, h.versions.current, h.versions.compactPointers);
        if (c === null) return;
        await this.runOneCompaction(c);
        this.notifyProgress();
      }
    })
      .catch((e) => {
        if (!h.closing()) this.setError(e);
      })
      .finally(() => {
        this.compacting = null;
        this.notifyProgress();
      });
  }

  /** Runs fn when no other compaction runs (compactRange and the background loop take turns). */
  withCompactionLock<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.compactionLock.then(fn);
    this.compactionLock = run.then(
      () => {},
      () => {},
    );
    return run;
  }

  /** Runs one compaction (a move or a merge) and logs its edit; call under the compaction lock. */
  async runOneCompaction(c: Compaction): Promise<void> {
    const h = this.host;
    const version = h.versions.current;
    h.versions.ref(version);
    try {
      const move = isTrivialMove(h.ctx, c);
      const edit = move ? trivialMoveEdit(c) : await this.merge(version, c);
      await h.versions.logAndApply(edit, h.lastSeq());
      for (const [, f] of edit.added) h.pendingOutputs.delete(f.number);
      h.counters.compactions++;
      if (move) {
        h.counters.trivialMoves++;
      } else {
        h.counters.levelRead[c.level] += totalSize(c.inputs[0]);
        h.counters.levelRead[c.level + 1] += totalSize(c.inputs[1]);
        for (const [level, f] of edit.added) h.counters.levelWritten[level] += f.size;
      }
    } catch (e) {
      if (e instanceof LsmError && e.message === ABORTED) return;
      throw e;
    } finally {
      h.versions.unref(version);
      h.deleteObsoleteFiles();
    }
  }

  /** Runs a compaction's merge, in the compaction worker when there is one. */
  private async merge(version: Version, c: Compaction): Promise<VersionEdit> {
    const h = this.host;
    const smallestSnapshot = h.smallestSnapshot();
    if (this.compactionWorker === null) return runCompaction(h.ctx, version, c, smallestSnapshot);
    const numbers: number[] = [];
    const newNumber = (): number => {
      const n = h.versions.newFileNumber();
      h.pendingOutputs.add(n);
      numbers.push(n);
      return n;
    };
    const job = {
      type: "compact" as const,
      dir: h.dir,
      level: c.level,
      inputs: [c.inputs[0].map(toWire), c.inputs[1].map(toWire)] as [WireFile[], WireFile[]],
      levels: version.levels.map((files) => files.map(toWire)),
      smallestSnapshot,
      targetFileSize: h.ctx.targetFileSize,
      l0CompactionTrigger: h.ctx.l0CompactionTrigger,
      level1MaxBytes: h.ctx.level1MaxBytes,
      table: h.ctx.table,
      abort: this.abortFlag,
    };
    try {
      // A large merge runs as two halves at once, the second in the flush worker (idle between
      // flushes; that half yields every 2 ms so a flush's awaits do not queue behind it), but only while
      // merges hold writers back: writes stopped to wait for one since the previous merge began
      // (the writer's thread then idles). Otherwise the second thread would only take a core from
      // readers and writers (measured at 300k: fills, 64 concurrent puts and reads were ~10 %
      // slower when always split, and puts still slower when split after mere slowdowns).
      const waited = h.counters.writeStalls;
      const behind = waited > this.waitedAtLastMerge;
      this.waitedAtLastMerge = waited;
      const halves = this.flushWorker !== null && behind ? splitCompaction(c, h.ctx.targetFileSize) : null;
      const results =
        halves === null
          ? [await this.compactionWorker.compact(job, newNumber)]
          : await bothHalves(
              this.compactionWorker.compact({ ...job, begin: halves[0].begin, end: halves[0].end }, newNumber),
              this.flushWorker!.compact({ ...job, begin: halves[1].begin, end: halves[1].end, sliceMs: 2 }, newNumber),
            );
      const r = {
        added: results.flatMap((x) => x.added),
        compactPointer: results[0].compactPointer,
        writes: noWrites(),
      };
      for (const x of results) addWrites(r.writes, x.writes);
      if (halves !== null) h.counters.splitCompactions++;
      addWrites(h.counters.writes, r.writes);
      const edit = emptyEdit();
      for (const [which, files] of c.inputs.entries()) for (const f of files) edit.deleted.push([c.level + which, f.number]);
      for (const f of r.added) edit.added.push([c.level + 1, fromWire(f)]);
      edit.compactPointers.push([c.level, r.compactPointer]);
      // Outputs the edit does not name (none, normally) are no longer pending.
      const added = new Set(r.added.map((f) => f.number));
      for (const n of numbers) if (!added.has(n)) h.pendingOutputs.delete(n);
      return edit;
    } catch (e) {
      for (const n of numbers) h.pendingOutputs.delete(n);
      throw e;
    }
  }
}
