// The shared deadline timer: waiters expire in order at their deadline, settled ones never do,
// and only one clock timer is pending however many waiters there are.
import { describe, expect, test } from "bun:test";
import { DeadlineQueue } from "../../src/kv/deadlines.ts";
import { SimClock } from "../../src/sim/raft-node/index.ts";

function waiter(deadline: number, log: number[], id: number) {
  return {
    deadline,
    settled: false,
    expire() {
      this.settled = true;
      log.push(id);
    },
  };
}

describe("DeadlineQueue", () => {
  test("expires due waiters in order, skips settled ones, keeps one timer", () => {
    const clock = new SimClock();
    const queue = new DeadlineQueue(clock);
    const log: number[] = [];
    const waiters = Array.from({ length: 100 }, (_, i) => {
      clock.advance(i % 3 === 0 ? 1 : 0);
      const w = waiter(clock.now() + 500, log, i);
      queue.add(w);
      return w;
    });
    expect(clock.pendingTimers()).toBe(1);
    for (const w of waiters) if (w.deadline % 2 === 0 && w.deadline > 510) w.settled = true; // answered in time
    clock.advance(505);
    const firstBatch = [...log];
    expect(firstBatch.length).toBeGreaterThan(0);
    expect(firstBatch.every((id) => waiters[id]!.deadline <= clock.now())).toBe(true);
    clock.advance(1_000);
    const expected = waiters.filter((w) => !(w.deadline % 2 === 0 && w.deadline > 510)).map((w) => waiters.indexOf(w));
    expect(log).toEqual(expected);
    expect(clock.pendingTimers()).toBe(0);
  });

  test("a waiter added after the queue drained arms the timer again; clear() forgets everything", () => {
    const clock = new SimClock();
    const queue = new DeadlineQueue(clock);
    const log: number[] = [];
    queue.add(waiter(100, log, 1));
    clock.advance(200);
    expect(log).toEqual([1]);
    queue.add(waiter(300, log, 2));
    expect(clock.pendingTimers()).toBe(1);
    queue.clear();
    expect(clock.pendingTimers()).toBe(0);
    clock.advance(500);
    expect(log).toEqual([1]);
  });

  test("memory stays bounded by the waiters of one timeout window", () => {
    const clock = new SimClock();
    const queue = new DeadlineQueue(clock);
    const log: number[] = [];
    for (let i = 0; i < 20_000; i++) {
      const w = waiter(clock.now() + 50, log, i);
      queue.add(w);
      w.settled = true; // answered at once, as most commands are
      clock.advance(1);
    }
    expect(log).toEqual([]);
    expect((queue as unknown as { items: unknown[] }).items.length).toBeLessThan(2_200);
  });
});
