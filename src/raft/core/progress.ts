// The leader's view of one follower (etcd's tracker/progress.go and inflights.go): how far its log
// is known to match, what to send next, and how many appends may be in flight. See DESIGN.md.

import type { NodeId } from "../types.ts";

/**
 * Probe: the leader does not know where the follower's log ends; it sends one append per
 * heartbeat interval and waits for the answer. Replicate: the follower is known to match up to
 * matchIndex; appends are pipelined optimistically (nextIndex runs ahead) within a bounded
 * window. Snapshot: the follower needs entries the leader has compacted; nothing is sent until
 * the snapshot transfer reports back.
 */
export type ProgressState = "probe" | "replicate" | "snapshot";

/** A bounded FIFO of the last index of each append in flight to one follower. */
export class Inflights {
  private readonly buffer: number[];
  private start = 0;
  private count = 0;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`maxInflight must be a positive integer, got ${capacity}`);
    this.buffer = new Array<number>(capacity).fill(0);
  }

  get size(): number {
    return this.count;
  }

  full(): boolean {
    return this.count === this.capacity;
  }

  add(lastIndex: number): void {
    if (this.full()) throw new Error("invariant: Inflights.add on a full window (caller must check isPaused first)");
    this.buffer[(this.start + this.count) % this.capacity] = lastIndex;
    this.count++;
  }

  /** Frees every append whose last index is <= index (the follower acknowledged them). */
  freeLE(index: number): void {
    while (this.count > 0 && (this.buffer[this.start] as number) <= index) {
      this.start = (this.start + 1) % this.capacity;
      this.count--;
    }
  }

  /** Frees the oldest append (used when a full window's appends may all have been lost). */
  freeFirst(): void {
    if (this.count === 0) return;
    this.start = (this.start + 1) % this.capacity;
    this.count--;
  }

  reset(): void {
    this.start = 0;
    this.count = 0;
  }
}

export class Progress {
  state: ProgressState = "probe";
  matchIndex = 0;
  nextIndex: number;
  /** Probe state: an append is outstanding; send no other until a response or the next heartbeat. */
  probeSent = false;
  /** Snapshot state: the index of the snapshot being sent. */
  pendingSnapshot = 0;
  /** Heard from since the last CheckQuorum round (any response counts). */
  recentActive = false;
  readonly inflights: Inflights;

  constructor(
    readonly id: NodeId,
    nextIndex: number,
    maxInflight: number,
  ) {
    this.nextIndex = nextIndex;
    this.inflights = new Inflights(maxInflight);
  }

  becomeProbe(): void {
    // After a snapshot, the follower holds at least the snapshot: probe right after it.
    const next = this.state === "snapshot" ? Math.max(this.matchIndex + 1, this.pendingSnapshot + 1) : this.matchIndex + 1;
    this.reset("probe");
    this.nextIndex = next;
  }

  becomeReplicate(): void {
    this.reset("replicate");
    this.nextIndex = this.matchIndex + 1;
  }

  becomeSnapshot(snapshotIndex: number): void {
    this.reset("snapshot");
    this.pendingSnapshot = snapshotIndex;
  }

  private reset(state: ProgressState): void {
    this.state = state;
    this.probeSent = false;
    this.pendingSnapshot = 0;
    this.inflights.reset();
  }

  /** Records an acknowledgement up to `index`; returns false if it carried no news (stale or duplicate). */
  maybeUpdate(index: number): boolean {
    let updated = false;
    if (this.matchIndex < index) {
      this.matchIndex = index;
      updated = true;
      this.probeSent = false;
    }
    this.nextIndex = Math.max(this.nextIndex, index + 1);
    return updated;
  }

  /**
   * Handles a rejected append whose prevLogIndex was `rejected`; `hint` is where the leader should
   * resume (from the follower's conflict term/index). Returns false for a stale rejection.
   */
  maybeDecreaseTo(rejected: number, hint: number): boolean {
    if (this.state === "replicate") {
      // Answers to appends at or below what is already matched are stale.
      if (rejected <= this.matchIndex) return false;
      this.nextIndex = Math.max(this.matchIndex + 1, Math.min(rejected, hint));
      return true;
    }
    // Probe (or snapshot): only the answer to the append we last sent counts.
    if (this.nextIndex - 1 !== rejected) return false;
    this.nextIndex = Math.max(this.matchIndex + 1, Math.min(rejected, hint));
    this.probeSent = false;
    return true;
  }

  /**
   * The follower reports that its log ends at `lastIndex`, below what it acknowledged (it lost
   * durable entries: a wiped or truncated disk, a discarded state machine). Its rejections of
   * appends at matchIndex would otherwise look stale forever, and the same appends be resent on
   * every heartbeat answer. Forget the match (safe: commitIndex never moves back) and probe from
   * its real end. Returns false when the report is old news (the match is already that low).
   */
  lostEntries(lastIndex: number): boolean {
    if (lastIndex >= this.matchIndex) return false;
    this.reset("probe");
    this.matchIndex = 0;
    this.nextIndex = lastIndex + 1;
    return true;
  }

  /** Notes an append just sent whose last entry is `lastIndex` (the optimistic pipeline step). */
  sentEntries(lastIndex: number, entryCount: number): void {
    if (this.state === "replicate") {
      if (entryCount > 0) {
        this.nextIndex = lastIndex + 1;
        this.inflights.add(lastIndex);
      }
    } else if (this.state === "probe") {
      this.probeSent = true;
    } else {
      throw new Error(`invariant: sending entries to follower ${this.id} in snapshot state`);
    }
  }

  /** Whether no append may be sent now. */
  isPaused(): boolean {
    switch (this.state) {
      case "probe":
        return this.probeSent;
      case "replicate":
        return this.inflights.full();
      case "snapshot":
        return true;
    }
  }
}
