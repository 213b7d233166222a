// ReadIndex bookkeeping on the leader (§6.4 of the Raft thesis): each read records the commit
// index at request time and waits until a quorum has acknowledged a heartbeat sent after it.

import type { MajorityConfig } from "./quorum.ts";
import type { NodeId, ReadState } from "../types.ts";

interface PendingRead {
  context: number;
  index: number;
  /** Heartbeat round that confirms this read: any quorum ack of round >= this one does. */
  round: number;
}

/**
 * Rounds are numbered by the leader. A heartbeat carries the newest round registered when it was
 * sent, so a follower's ack of round r proves it still followed this leader after every read of
 * round <= r was registered. Reads are therefore released in order, and one round confirms many.
 */
export class ReadOnly {
  private pending: PendingRead[] = [];
  /** Reads that arrived before this leader committed an entry of its term (§6.4): no index yet. */
  private deferred: number[] = [];
  private round = 0;
  /** Highest round each voter has acknowledged. */
  private acked = new Map<NodeId, number>();

  constructor(private readonly maxPending: number) {}

  get size(): number {
    return this.pending.length + this.deferred.length;
  }

  /** The newest round to put in heartbeats (0 when no read waits). */
  currentRound(): number {
    return this.pending.length > 0 ? this.round : 0;
  }

  full(): boolean {
    return this.size >= this.maxPending;
  }

  /** Holds a read until the leader's commitIndex is known to be current (see addDeferred). */
  defer(context: number): void {
    this.deferred.push(context);
  }

  /** The first entry of the leader's term committed: deferred reads register at `index`. */
  addDeferred(index: number): boolean {
    if (this.deferred.length === 0) return false;
    for (const context of this.deferred) this.add(context, index);
    this.deferred = [];
    return true;
  }

  /** Registers a read; returns its round, which the caller broadcasts in a heartbeat. */
  add(context: number, index: number): number {
    this.round++;
    this.pending.push({ context, index, round: this.round });
    return this.round;
  }

  /**
   * Records `from`'s acknowledgement of `round` and returns the reads now confirmed by a quorum of
   * `voters` (the leader `self` counts as having acknowledged every round; learners never count).
   */
  ack(from: NodeId, round: number, voters: MajorityConfig, self: NodeId): ReadState[] {
    if (round <= 0 || this.pending.length === 0) return [];
    if ((this.acked.get(from) ?? 0) < round) this.acked.set(from, round);
    return this.release(voters.committedIndex((id) => (id === self ? Number.MAX_SAFE_INTEGER : (this.acked.get(id) ?? 0))));
  }

  /** Releases every read of round <= `round`, in order. */
  release(round: number): ReadState[] {
    let n = 0;
    while (n < this.pending.length && (this.pending[n] as PendingRead).round <= round) n++;
    if (n === 0) return [];
    return this.pending.splice(0, n).map((r) => ({ context: r.context, index: r.index }));
  }

  /** Drops all reads (on losing leadership: their callers must retry elsewhere). */
  reset(): void {
    this.pending = [];
    this.deferred = [];
    this.acked.clear();
  }
}
