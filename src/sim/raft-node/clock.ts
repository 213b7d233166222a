// Simulated time for the node-level simulator: nothing happens until advance() moves it, so one
// seed and one schedule replay one execution exactly.

import type { Clock, TimerHandle } from "../../raft/clock.ts";

interface SimTimer {
  at: number;
  /** Insertion order: timers due at the same instant fire in the order they were set. */
  seq: number;
  fn: () => void;
  cancelled: boolean;
}

/** A timer that runs forever at zero delay would hang advance(); this bounds one call. */
const MAX_FIRES_PER_ADVANCE = 1_000_000;

/** Simulated time: nothing happens until advance() moves it, firing due timers in time order. */
export class SimClock implements Clock {
  private time: number;
  private seq = 0;
  private heap: SimTimer[] = [];
  private live = 0;

  constructor(start = 0) {
    this.time = start;
  }

  now(): number {
    return this.time;
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    const delay = Number.isFinite(ms) && ms > 0 ? ms : 0;
    const timer: SimTimer = { at: this.time + delay, seq: this.seq++, fn, cancelled: false };
    this.push(timer);
    this.live++;
    return timer;
  }

  clearTimeout(handle: TimerHandle): void {
    const timer = handle as SimTimer;
    if (timer && !timer.cancelled && typeof timer.fn === "function") {
      timer.cancelled = true;
      this.live--;
    }
  }

  /** Number of timers set and not yet fired or cancelled. */
  pendingTimers(): number {
    return this.live;
  }

  /** When the earliest pending timer is due, or undefined when none is pending. */
  nextTimerAt(): number | undefined {
    this.dropCancelled();
    return this.heap[0]?.at;
  }

  /**
   * Moves time forward by `ms`, firing every timer due by then (including ones set by timers that
   * fire) in time order, with `now()` equal to each timer's due time while it runs. Returns how
   * many timers fired.
   */
  advance(ms: number): number {
    if (!(ms >= 0)) throw new RangeError(`SimClock.advance needs a non-negative duration, got ${ms}`);
    return this.advanceTo(this.time + ms);
  }

  /** Like advance(), to an absolute time (never backwards). */
  advanceTo(target: number): number {
    if (target < this.time) throw new RangeError(`SimClock cannot go back from ${this.time} to ${target}`);
    let fired = 0;
    for (;;) {
      this.dropCancelled();
      const next = this.heap[0];
      if (!next || next.at > target) break;
      this.pop();
      this.live--;
      next.cancelled = true;
      this.time = next.at;
      next.fn();
      if (++fired > MAX_FIRES_PER_ADVANCE) {
        throw new Error(`SimClock: more than ${MAX_FIRES_PER_ADVANCE} timers fired by one advance (a zero-delay timer loop?)`);
      }
    }
    this.time = target;
    return fired;
  }

  /** Fires only the timers due at the earliest pending instant; returns how many fired. */
  step(): number {
    const at = this.nextTimerAt();
    if (at === undefined) return 0;
    let fired = 0;
    while (this.nextTimerAt() === at) {
      const timer = this.pop()!;
      this.live--;
      timer.cancelled = true;
      this.time = at;
      timer.fn();
      fired++;
    }
    return fired;
  }

  private dropCancelled(): void {
    while (this.heap.length > 0 && this.heap[0].cancelled) this.pop();
  }

  private less(a: SimTimer, b: SimTimer): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq);
  }

  private push(timer: SimTimer): void {
    const heap = this.heap;
    heap.push(timer);
    let i = heap.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.less(heap[i], heap[parent])) break;
      [heap[i], heap[parent]] = [heap[parent], heap[i]];
      i = parent;
    }
  }

  private pop(): SimTimer | undefined {
    const heap = this.heap;
    const top = heap[0];
    const last = heap.pop();
    if (heap.length > 0 && last) {
      heap[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let smallest = i;
        if (l < heap.length && this.less(heap[l], heap[smallest])) smallest = l;
        if (r < heap.length && this.less(heap[r], heap[smallest])) smallest = r;
        if (smallest === i) break;
        [heap[i], heap[smallest]] = [heap[smallest], heap[i]];
        i = smallest;
      }
    }
    return top;
  }
}
