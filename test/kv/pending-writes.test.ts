// PendingWrites: how a proposed write is answered, told as scenarios of propose and apply order.
import { describe, expect, test } from "bun:test";
import { DeadlineQueue } from "../../src/kv/deadlines.ts";
import { PendingWrites, type AppliedCommand } from "../../src/kv/pending-writes.ts";
import { RESULT_NO_KEY, RESULT_OK, type ResultCode } from "../../src/kv/sessions.ts";
import { SimClock } from "../../src/sim/raft-node/index.ts";

function table(appliedIndex = 0) {
  const clock = new SimClock();
  return { clock, writes: new PendingWrites(clock, new DeadlineQueue(clock), 500, appliedIndex) };
}

const applied = (index: number, term: number, clientId: bigint, commandId: bigint, result: ResultCode = RESULT_OK): AppliedCommand => ({ index, term, clientId, commandId, result });

async function settledWith<T>(promise: Promise<T>): Promise<T | "pending"> {
  return Promise.race([promise, new Promise<"pending">((resolve) => setTimeout(() => resolve("pending"), 5))]);
}

describe("PendingWrites", () => {
  test("the entry applied at a write's index answers it with its result", async () => {
    const { writes } = table();
    const { waiter, outcome } = writes.open(1n, 1n);
    writes.place(waiter, 5, 2);
    writes.applied([applied(4, 2, 9n, 9n), applied(5, 2, 1n, 1n, RESULT_NO_KEY)]);
    expect(await outcome).toEqual(applied(5, 2, 1n, 1n, RESULT_NO_KEY));
    expect(writes.size).toBe(0);
  });

  test("another term at its index means the leader lost it: ErrWrongLeader", async () => {
    const { writes } = table();
    const { waiter, outcome } = writes.open(1n, 1n);
    writes.place(waiter, 5, 2);
    writes.applied([applied(5, 3, 0n, 0n)]);
    expect(await outcome).toMatchObject({ err: "ErrWrongLeader" });
  });

  test("applied before propose returned: answered by its (clientId, commandId), with no race", async () => {
    const { writes } = table();
    const { waiter, outcome } = writes.open(1n, 7n);
    writes.applied([applied(1, 1, 1n, 7n)]);
    expect(await outcome).toEqual(applied(1, 1, 1n, 7n));
    writes.place(waiter, 1, 1); // too late to matter
    expect(writes.size).toBe(0);
  });

  test("placed at an index already applied with someone else's entry: ErrWrongLeader", async () => {
    const { writes } = table();
    const { waiter, outcome } = writes.open(1n, 7n);
    writes.applied([applied(1, 1, 2n, 1n)]);
    expect(await settledWith(outcome)).toBe("pending");
    writes.place(waiter, 1, 1);
    expect(await outcome).toMatchObject({ err: "ErrWrongLeader" });
  });

  test("a snapshot covering its index answers from the session records it brought", async () => {
    const { writes } = table();
    const a = writes.open(1n, 1n);
    const b = writes.open(2n, 1n);
    const c = writes.open(3n, 1n);
    writes.place(a.waiter, 3, 1);
    writes.place(b.waiter, 4, 1);
    writes.place(c.waiter, 20, 1);
    writes.restored(10, (clientId) => (clientId === 1n ? RESULT_NO_KEY : null));
    expect(await a.outcome).toEqual(applied(3, 1, 1n, 1n, RESULT_NO_KEY));
    expect(await b.outcome).toMatchObject({ err: "ErrWrongLeader" });
    expect(await settledWith(c.outcome)).toBe("pending"); // its entry may still come
  });

  test("a deadline answers ErrTimeout; close answers the rest", async () => {
    const { clock, writes } = table();
    const a = writes.open(1n, 1n);
    writes.place(a.waiter, 1, 1);
    clock.advance(500);
    expect(await a.outcome).toMatchObject({ err: "ErrTimeout" });
    const b = writes.open(1n, 2n);
    writes.close({ err: "ErrWrongLeader", value: "" });
    expect(await b.outcome).toMatchObject({ err: "ErrWrongLeader" });
  });

  test("a batch entry waits the batch timeout, on its own queue; a command beside it still times out at its own", async () => {
    const clock = new SimClock();
    const writes = new PendingWrites(clock, new DeadlineQueue(clock), 500, 0, { deadlines: new DeadlineQueue(clock), timeoutMs: 1500 });
    const entry = writes.open(0n, 1n, true);
    writes.place(entry.waiter, 1, 1);
    const command = writes.open(7n, 1n);
    writes.place(command.waiter, 2, 1);
    clock.advance(500);
    expect(await command.outcome).toMatchObject({ err: "ErrTimeout" });
    expect(await settledWith(entry.outcome)).toBe("pending");
    clock.advance(999);
    expect(await settledWith(entry.outcome)).toBe("pending");
    clock.advance(1);
    expect(await entry.outcome).toMatchObject({ err: "ErrTimeout" });
    // Without a batch queue, a batch entry takes the commands' timeout.
    const plain = table();
    const lone = plain.writes.open(0n, 1n, true);
    plain.clock.advance(500);
    expect(await lone.outcome).toMatchObject({ err: "ErrTimeout" });
  });
});
