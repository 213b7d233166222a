// A LogStore in memory for simulations. It keeps what is "synced" apart from what is only written,
// so a simulated crash loses exactly the saves whose fsync had not completed.

import type { Entry, HardState, LogStore, SnapshotMeta } from "../../raft/types.ts";
import { NONE } from "../../raft/types.ts";
import { cloneSnapshotMeta } from "../../raft/core/membership.ts";
import { LogStoreError } from "../../raft/log/log-error.ts";
import { entriesIn, termAt } from "../../raft/log/log-window.ts";

/** What survives a crash: the state as of the last completed sync. */
interface DurableImage {
  hard: HardState;
  snapshot: SnapshotMeta;
  log: Entry[];
}

export interface MemoryLogStoreStats {
  saves: number;
  fsyncs: number;
}

const ENTRY_OVERHEAD_BYTES = 26; // what FileLogStore spends per entry record, so sizes compare

export class MemoryLogStore implements LogStore {
  /** The state as written (what reads see), ahead of the durable image by the unsynced writes. */
  private current: DurableImage;
  /** Operations written but not yet synced, replayed onto the durable image by the next sync. */
  private unsynced: Array<(image: DurableImage) => void> = [];
  private waiters: Array<{ resolve: () => void; reject: (err: Error) => void }> = [];
  private syncScheduled = false;
  private held = false;
  private injectedFailure: Error | null = null;
  private dead: LogStoreError | null = null;
  private counters: MemoryLogStoreStats = { saves: 0, fsyncs: 0 };

  /** A fresh empty log, or (through reopen) a new incarnation over a crashed one's durable image. */
  constructor(private readonly image: DurableImage = emptyImage()) {
    this.current = { hard: { ...image.hard }, snapshot: cloneMeta(image.snapshot), log: image.log.slice() };
  }

  hardState(): HardState {
    return { ...this.current.hard };
  }
  snapshotMeta(): SnapshotMeta {
    return cloneMeta(this.current.snapshot);
  }
  firstIndex(): number {
    return this.current.snapshot.index + 1;
  }
  lastIndex(): number {
    return this.current.snapshot.index + this.current.log.length;
  }
  term(index: number): number | undefined {
    return termAt(this.current.snapshot, this.current.log, index);
  }

  entries(lo: number, hi: number, maxBytes = Infinity): Entry[] {
    return entriesIn(this.current.snapshot, this.current.log, lo, hi, maxBytes);
  }

  sizeBytes(): number {
    return this.current.log.reduce((sum, e) => sum + e.data.length + ENTRY_OVERHEAD_BYTES, 0);
  }

  stats(): MemoryLogStoreStats {
    return { ...this.counters };
  }

  save(hardState: HardState | null, entries: Entry[]): Promise<void> {
    if (this.dead) return Promise.reject(this.dead);
    if (entries.length > 0) {
      const first = entries[0].index;
      if (first <= this.current.snapshot.index || first > this.lastIndex() + 1) {
        return Promise.reject(
          new LogStoreError("INVALID_ARGUMENT", `cannot append at index ${first}: the log holds [${this.firstIndex()}, ${this.lastIndex()}]`),
        );
      }
      for (let i = 1; i < entries.length; i++) {
        if (entries[i].index !== first + i) {
          return Promise.reject(new LogStoreError("INVALID_ARGUMENT", `entries are not contiguous at index ${entries[i].index}`));
        }
      }
    }
    const saved = entries.slice();
    const hs = hardState ? { ...hardState } : null;
    // As FileLogStore (MustSync): a commitIndex-only change is written but not synced on its own,
    // so a crash may lose it — which is what recovery must cope with.
    const mustSync =
      saved.length > 0 || (hs !== null && (hs.term !== this.current.hard.term || hs.votedFor !== this.current.hard.votedFor));
    const apply = (target: DurableImage) => {
      if (saved.length > 0) {
        target.log.length = saved[0].index - target.snapshot.index - 1;
        for (const entry of saved) target.log.push(entry);
      }
      if (hs) target.hard = { ...hs };
    };
    apply(this.current);
    this.counters.saves++;
    if (!mustSync) {
      this.unsynced.push(apply);
      return Promise.resolve();
    }
    return this.write(apply);
  }

  compact(meta: SnapshotMeta): Promise<void> {
    if (this.dead) return Promise.reject(this.dead);
    if (meta.index <= this.current.snapshot.index) return this.write(() => {});
    if (meta.index > this.lastIndex() || this.term(meta.index) !== meta.term) {
      return Promise.reject(
        new LogStoreError("INVALID_ARGUMENT", `cannot compact to index ${meta.index} term ${meta.term}: the log holds up to ${this.lastIndex()}`),
      );
    }
    const apply = (target: DurableImage) => {
      target.log.splice(0, meta.index - target.snapshot.index);
      target.snapshot = cloneMeta(meta);
    };
    apply(this.current);
    return this.write(apply);
  }

  resetToSnapshot(meta: SnapshotMeta): Promise<void> {
    if (this.dead) return Promise.reject(this.dead);
    if (meta.index < this.current.snapshot.index) {
      return Promise.reject(
        new LogStoreError("INVALID_ARGUMENT", `cannot reset to snapshot index ${meta.index}: already compacted through ${this.current.snapshot.index}`),
      );
    }
    const apply = (target: DurableImage) => {
      target.log.length = 0;
      target.snapshot = cloneMeta(meta);
    };
    apply(this.current);
    return this.write(apply);
  }

  async close(): Promise<void> {
    if (this.dead) return;
    this.held = false;
    this.flush();
    this.dead = new LogStoreError("CLOSED", "memory log store is closed");
  }

  // ---- simulation controls ---------------------------------------------------------------------

  /** True while syncs are deliberately held: a node waiting on this store is stuck by design. */
  get holdingSyncs(): boolean {
    return this.held;
  }

  /** Writes whose callers still wait for their sync (held, or not yet flushed this turn). */
  get pendingWrites(): number {
    return this.waiters.length;
  }

  /** While held, writes stay unsynced (their promises pending) until release or crash. */
  holdSyncs(hold: boolean): void {
    this.held = hold;
    if (!hold) this.scheduleSync();
  }

  /** Every later sync fails with `error` (a dying disk), until called with null. */
  failSyncs(error: Error | null): void {
    this.injectedFailure = error;
  }

  /**
   * The process dies: unsynced writes are lost and this instance is dead. Their callers are
   * rejected (a real process would never hear back) so the old driver stops instead of hanging.
   */
  crash(): void {
    const waiters = this.waiters;
    this.unsynced = [];
    this.waiters = [];
    this.dead = new LogStoreError("CLOSED", "memory log store crashed (simulated)");
    for (const w of waiters) w.reject(this.dead);
  }

  /** A new incarnation reading what the last one made durable (after crash() or close()). */
  reopen(): MemoryLogStore {
    if (!this.dead) throw new Error("MemoryLogStore.reopen: crash() or close() this instance first");
    return new MemoryLogStore(this.image);
  }

  // ---- group commit ----------------------------------------------------------------------------

  private write(apply: (image: DurableImage) => void): Promise<void> {
    this.unsynced.push(apply);
    const done = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    this.scheduleSync();
    return done;
  }

  private scheduleSync(): void {
    if (this.syncScheduled || this.held) return;
    this.syncScheduled = true;
    // Every write made in this turn of the event loop shares one "fsync".
    queueMicrotask(() => {
      this.syncScheduled = false;
      if (!this.held && !this.dead) this.flush();
    });
  }

  private flush(): void {
    if (this.unsynced.length === 0 && this.waiters.length === 0) return;
    const ops = this.unsynced;
    const waiters = this.waiters;
    this.unsynced = [];
    this.waiters = [];
    if (this.injectedFailure) {
      this.dead = new LogStoreError("IO", `simulated sync failure: ${this.injectedFailure.message}`, undefined, undefined, {
        cause: this.injectedFailure,
      });
      for (const w of waiters) w.reject(this.dead);
      return;
    }
    for (const op of ops) op(this.image);
    this.counters.fsyncs++;
    for (const w of waiters) w.resolve();
  }
}

function emptyImage(): DurableImage {
  return { hard: { term: 0, votedFor: NONE, commitIndex: 0 }, snapshot: { index: 0, term: 0, members: [] }, log: [] };
}

function cloneMeta(meta: SnapshotMeta): SnapshotMeta {
  return cloneSnapshotMeta(meta);
}
