// Time as the driver sees it. Production uses RealClock; the simulators (src/sim/raft-node/clock.ts)
// provide a clock that tests advance by hand, so one seed and one schedule replay one execution.

export type TimerHandle = object | number;

export interface Clock {
  /** Milliseconds on this clock (epoch-based for RealClock, from 0 for SimClock). */
  now(): number;
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
}

export class RealClock implements Clock {
  now(): number {
    return Date.now();
  }
  setTimeout(fn: () => void, ms: number): TimerHandle {
    return setTimeout(fn, ms);
  }
  clearTimeout(handle: TimerHandle): void {
    clearTimeout(handle as ReturnType<typeof setTimeout>);
  }
}
