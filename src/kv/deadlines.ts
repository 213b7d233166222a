// One timer for every waiting command: waiters join a FIFO in deadline order (every waiter gets the
// same timeout, so arrival order is deadline order) and a single timer, armed for the oldest live
// deadline, expires whatever is due. A timer per command costs more than the command at 10k/s.

import type { Clock, TimerHandle } from "../raft/index.ts";

export interface Deadline {
  /** Clock time (ms) at which expire() runs unless the waiter settled first. */
  readonly deadline: number;
  /** True once answered; a settled entry is skipped (and dropped) when the queue reaches it. */
  readonly settled: boolean;
  expire(): void;
}

export class DeadlineQueue {
  private items: Deadline[] = [];
  private head = 0;
  private timer: TimerHandle | null = null;

  constructor(private readonly clock: Clock) {}

  /** Adds a waiter; its deadline must not be earlier than any already queued. */
  add(item: Deadline): void {
    this.items.push(item);
    if (this.timer === null) this.arm(item.deadline);
  }

  /** Forgets every waiter without expiring any (the owner answers them itself). */
  clear(): void {
    if (this.timer !== null) this.clock.clearTimeout(this.timer);
    this.timer = null;
    this.items = [];
    this.head = 0;
  }

  private arm(at: number): void {
    this.timer = this.clock.setTimeout(() => this.fire(), Math.max(0, at - this.clock.now()));
  }

  private fire(): void {
    this.timer = null;
    const now = this.clock.now();
    while (this.head < this.items.length) {
      const item = this.items[this.head]!;
      if (!item.settled) {
        if (item.deadline > now) break;
        item.expire();
      }
      this.head++;
    }
    // Drop what the head has passed, so the array holds about one timeout's worth of waiters.
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    if (this.head < this.items.length && this.timer === null) this.arm(this.items[this.head]!.deadline);
  }
}
