// The driver's waiters for membership changes: a proposed change resolves once its entry is
// committed and applied at the index and term it was proposed with, and fails if another entry
// took that place, if a snapshot skipped over it, or after a timeout.

import type { Clock, TimerHandle } from "./clock.ts";
import { ConfChangeLostError } from "./errors.ts";
import { type Entry, EntryType, type Membership, type SnapshotMeta } from "./types.ts";

interface ConfChangeWaiter {
  term: number;
  membership: Membership;
  resolve: (m: Membership) => void;
  reject: (err: Error) => void;
  timer: TimerHandle;
}

export class ConfChangeWaiters {
  private readonly waiters = new Map<number, ConfChangeWaiter>();

  constructor(
    private readonly clock: Clock,
    private readonly timeoutMs: number,
  ) {}

  get size(): number {
    return this.waiters.size;
  }

  wait(index: number, term: number, membership: Membership): Promise<Membership> {
    return new Promise<Membership>((resolve, reject) => {
      const timer = this.clock.setTimeout(() => {
        if (this.waiters.delete(index)) reject(new ConfChangeLostError(`not committed within ${this.timeoutMs} ms (the leader may have lost its quorum)`));
      }, this.timeoutMs);
      this.waiters.set(index, { term, membership, resolve, reject, timer });
    });
  }

  /** Committed entries just applied: settle the waiters at their indexes. */
  committed(entries: readonly Entry[]): void {
    if (this.waiters.size === 0) return;
    for (const e of entries) {
      const w = this.waiters.get(e.index);
      if (w === undefined) continue;
      this.settle(e.index, w);
      if (e.term === w.term && e.type === EntryType.ConfChange) w.resolve(w.membership);
      else w.reject(new ConfChangeLostError(`a new leader replaced it at index ${e.index}`));
    }
  }

  /** A snapshot was installed: changes at or below its index can no longer be observed here. */
  skipped(meta: SnapshotMeta): void {
    for (const [index, w] of this.waiters) {
      if (index > meta.index) continue;
      this.settle(index, w);
      w.reject(new ConfChangeLostError(`this node installed a snapshot past index ${index} before seeing it applied`));
    }
  }

  rejectAll(err: Error): void {
    for (const [index, w] of this.waiters) {
      this.settle(index, w);
      w.reject(err);
    }
  }

  private settle(index: number, w: ConfChangeWaiter): void {
    this.waiters.delete(index);
    this.clock.clearTimeout(w.timer);
  }
}
