// The driver's ReadIndex waiters: each read waits for the leader's quorum confirmation (a ReadState
// from the core), then for the state machine to apply through its index; bounded by a timeout.

import type { Clock, TimerHandle } from "./clock.ts";
import { NotLeaderError, ReadIndexTimeoutError } from "./errors.ts";
import type { NodeId, ReadState } from "./types.ts";

interface ReadWaiter {
  resolve: (index: number) => void;
  reject: (err: Error) => void;
  timer: TimerHandle;
  /** Set once a quorum confirmed leadership: the read is served when lastApplied reaches it. */
  index: number | null;
}

export class ReadWaiters {
  private readonly reads = new Map<number, ReadWaiter>();
  private nextContext = 1;

  constructor(
    private readonly clock: Clock,
    private readonly timeoutMs: number,
  ) {}

  get size(): number {
    return this.reads.size;
  }

  /** A fresh context number for the core's readIndex(). */
  newContext(): number {
    return this.nextContext++;
  }

  /** Waits for `context` to be confirmed and applied; rejects with ReadIndexTimeoutError after timeoutMs. */
  wait(context: number): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      const timer = this.clock.setTimeout(() => {
        if (this.reads.delete(context)) reject(new ReadIndexTimeoutError(this.timeoutMs));
      }, this.timeoutMs);
      this.reads.set(context, { resolve, reject, timer, index: null });
    });
  }

  /** The core confirmed these reads: each is served once the state machine applied its index. */
  confirm(readStates: ReadState[]): void {
    for (const rs of readStates) {
      const waiter = this.reads.get(rs.context);
      if (waiter) waiter.index = rs.index;
    }
  }

  serve(applied: number): void {
    for (const [context, waiter] of this.reads) {
      if (waiter.index !== null && waiter.index <= applied) {
        this.reads.delete(context);
        this.clock.clearTimeout(waiter.timer);
        waiter.resolve(waiter.index);
      }
    }
  }

  /** A deposed leader's unconfirmed reads will never be confirmed: send the clients to the new leader. */
  failUnconfirmed(leaderId: NodeId): void {
    for (const [context, waiter] of this.reads) {
      if (waiter.index === null) {
        this.reads.delete(context);
        this.clock.clearTimeout(waiter.timer);
        waiter.reject(new NotLeaderError(leaderId));
      }
    }
  }

  rejectAll(err: Error): void {
    for (const waiter of this.reads.values()) {
      this.clock.clearTimeout(waiter.timer);
      waiter.reject(err);
    }
    this.reads.clear();
  }
}
