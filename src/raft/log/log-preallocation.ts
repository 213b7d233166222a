// Segment space ahead of the appends: background zero-fill of the active segment and a spare
// segment prepared before rollover, so an fdatasync never has to commit file-size metadata.

import * as fs from "node:fs";
import * as path from "node:path";
import { ioError } from "./log-error.ts";
import { traceSpan, tracing, wallNow } from "../../util/trace.ts";
import { fillZeros, type LogCounters, PREALLOCATE_STEP, type Segment, SPARE_FILE } from "./log-files.ts";

/** A zero-filled, synced file waiting to become the next segment. */
export interface Spare {
  handle: fs.promises.FileHandle;
  allocated: number;
}

export class SegmentPreallocator {
  /** Zero-fill step: PREALLOCATE_STEP, or the whole segment when that is smaller. */
  readonly step: number;
  /** A background zero fill of the active segment; never rejects (errors go to backgroundError). */
  private extending: Promise<void> | null = null;
  private spare: Spare | null = null;
  /** A background spare preparation; never rejects (errors go to backgroundError). */
  private sparePrep: Promise<void> | null = null;
  /** The first failure of background work: the store refuses every later call with it. */
  backgroundError: unknown = null;

  constructor(
    private readonly dir: string,
    private readonly segmentBytes: number,
    private readonly counters: LogCounters,
  ) {
    this.step = Math.min(PREALLOCATE_STEP, segmentBytes);
  }

  get spareReady(): boolean {
    return this.spare !== null;
  }

  /** Waits until the active segment has zero-filled space through `end` (normally already true). */
  async ensureAllocated(segment: Segment, handle: fs.promises.FileHandle, end: number): Promise<void> {
    while (segment.allocated < end) {
      this.counters.allocationWaits++;
      if (this.extending === null) this.extending = this.extend(segment, handle, end);
      await this.extending;
      this.throwBackgroundError();
    }
  }

  /**
   * After a flush: start zero-filling the next step of the active segment once less than half a step
   * is left, and prepare a spare segment once the active one is half full. Both run in the
   * background; a flush waits for them only when it outruns them.
   */
  prepareAhead(segment: Segment, handle: fs.promises.FileHandle): void {
    if (this.backgroundError !== null) return;
    if (
      this.extending === null &&
      segment.allocated < this.segmentBytes &&
      segment.allocated - segment.size < this.step / 2
    ) {
      this.extending = this.extend(segment, handle, segment.allocated + this.step);
    }
    if (this.spare === null && this.sparePrep === null && segment.size >= this.segmentBytes / 2) {
      this.sparePrep = this.prepareSpare();
    }
  }

  /** The prepared spare, waiting for (or starting) its preparation when there is none yet. */
  async takeSpare(rollover: boolean): Promise<Spare> {
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

  /** Before sealing the active segment: its zero fill must not run on after the handle closes. */
  async settleExtension(): Promise<void> {
    if (this.extending) await this.extending;
    this.throwBackgroundError();
  }

  async settleBackground(): Promise<void> {
    if (this.extending) await this.extending;
    if (this.sparePrep) await this.sparePrep;
  }

  /** At close: the spare stays on disk zero-filled; open removes it (it holds nothing of the log). */
  async closeSpare(): Promise<void> {
    await this.spare?.handle.close();
    this.spare = null;
  }

  throwBackgroundError(): void {
    if (this.backgroundError !== null) throw ioError(this.dir, this.backgroundError);
  }

  /**
   * Zero-fills the active segment from its allocated end to at least `end` (rounded up to a step)
   * and syncs it. Disjoint from the appends, which stay below `allocated`, so both may run at once.
   */
  private extend(segment: Segment, handle: fs.promises.FileHandle, end: number): Promise<void> {
    const target = Math.min(this.segmentBytes, Math.ceil(end / this.step) * this.step);
    const run = async () => {
      const traced = tracing ? wallNow() : 0;
      await fillZeros(handle, segment.allocated, target, this.dir, this.counters);
      if (tracing) traceSpan("zerofill", traced, target - segment.allocated);
      const synced = tracing ? wallNow() : 0;
      await handle.sync();
      if (tracing) traceSpan("zerofill-sync", synced);
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

  private prepareSpare(): Promise<void> {
    const run = async () => {
      const handle = await fs.promises.open(path.join(this.dir, SPARE_FILE), "w+");
      try {
        const traced = tracing ? wallNow() : 0;
        await fillZeros(handle, 0, this.step, this.dir, this.counters);
        await handle.sync();
        if (tracing) traceSpan("spare", traced, this.step);
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
}
