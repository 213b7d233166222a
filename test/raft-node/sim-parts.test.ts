// The simulation building blocks on their own: SimClock ordering, NodeSimNetwork faults and snapshot
// streams, MemoryLogStore's synced-versus-written split.

import { describe, expect, test } from "bun:test";
import { type Message, EntryType, type Entry } from "../../src/raft/index.ts";
import { MemoryLogStore, SimClock, NodeSimNetwork, runFor } from "../../src/sim/raft-node/index.ts";
import { Rng } from "../../src/util/rng.ts";

const heartbeat = (from: number, to: number, term = 1): Message => ({ type: "Heartbeat", from, to, term, commitIndex: 0, readContext: 0 });
const entry = (index: number, term = 1): Entry => ({ index, term, type: EntryType.Normal, data: new Uint8Array([index & 0xff]) });

describe("SimClock", () => {
  test("fires due timers in time order, ties in the order they were set, with now() at the due time", () => {
    const clock = new SimClock();
    const seen: string[] = [];
    clock.setTimeout(() => seen.push(`b@${clock.now()}`), 20);
    clock.setTimeout(() => seen.push(`a@${clock.now()}`), 10);
    clock.setTimeout(() => seen.push(`a2@${clock.now()}`), 10);
    const cancelled = clock.setTimeout(() => seen.push("never"), 5);
    clock.clearTimeout(cancelled);
    clock.setTimeout(() => clock.setTimeout(() => seen.push(`nested@${clock.now()}`), 3), 12);
    expect(clock.advance(15)).toBe(4);
    expect(seen).toEqual(["a@10", "a2@10", "nested@15"]);
    expect(clock.now()).toBe(15);
    expect(clock.pendingTimers()).toBe(1);
    expect(clock.nextTimerAt()).toBe(20);
    expect(clock.step()).toBe(1);
    expect(seen.at(-1)).toBe("b@20");
    expect(() => clock.advanceTo(3)).toThrow(RangeError);
  });
});

describe("NodeSimNetwork", () => {
  function setup(seed = 1) {
    const clock = new SimClock();
    const network = new NodeSimNetwork(clock, new Rng(seed), { minDelayMs: 1, maxDelayMs: 10 });
    const inbox = new Map<number, Message[]>();
    const transports = [0, 1, 2].map((id) => {
      const t = network.transport(id);
      inbox.set(id, []);
      t.listen({
        onMessages: (ms) => inbox.get(id)!.push(...ms),
        onSnapshot: async (m, chunks) => {
          let n = 0;
          for await (const c of chunks) n += c.length;
          return { type: "InstallSnapshotResponse", from: m.to, to: m.from, term: m.term, success: true, matchIndex: n };
        },
      });
      return t;
    });
    return { clock, network, inbox, transports };
  }

  test("delivers after a delay, reorders, and drops across partitions (both ways) and one-way blocks", () => {
    const { clock, network, inbox, transports } = setup();
    transports[0].send(Array.from({ length: 20 }, (_, i) => ({ ...heartbeat(0, 1), readContext: i })));
    expect(inbox.get(1)).toHaveLength(0);
    clock.advance(10);
    const order = inbox.get(1)!.map((m) => (m as Extract<Message, { type: "Heartbeat" }>).readContext);
    expect(order.toSorted((a, b) => a - b)).toEqual(Array.from({ length: 20 }, (_, i) => i));
    expect(order).not.toEqual(Array.from({ length: 20 }, (_, i) => i)); // random delays reorder

    network.partition([0], [1, 2]);
    transports[0].send([heartbeat(0, 1)]);
    transports[1].send([heartbeat(1, 0)]);
    network.heal();
    network.blockOneWay(2, 0);
    transports[2].send([heartbeat(2, 0)]);
    transports[0].send([heartbeat(0, 2)]);
    clock.advance(10);
    expect(inbox.get(0)).toHaveLength(0);
    expect(inbox.get(2)).toHaveLength(1);
    expect(network.stats().dropped).toBe(3);
  });

  test("a partition formed while a message is in flight drops it; a restarted node never sees old traffic", () => {
    const { clock, network, inbox, transports } = setup();
    transports[0].send([heartbeat(0, 1)]);
    network.disconnect(1);
    clock.advance(10);
    network.reconnect(1);
    expect(inbox.get(1)).toHaveLength(0);

    transports[0].send([heartbeat(0, 2)]);
    const fresh = network.transport(2);
    const freshInbox: Message[] = [];
    fresh.listen({ onMessages: (ms) => freshInbox.push(...ms), onSnapshot: () => Promise.reject(new Error("unused")) });
    clock.advance(10);
    expect(inbox.get(2)).toHaveLength(0);
    expect(freshInbox).toHaveLength(0);
  });

  test("loss and duplication follow their rates", () => {
    const { clock, network, inbox, transports } = setup(3);
    network.setFaults({ lossRate: 0.3, duplicateRate: 0.3 });
    transports[0].send(Array.from({ length: 1000 }, () => heartbeat(0, 1)));
    clock.advance(10);
    const s = network.stats();
    expect(s.dropped).toBeGreaterThan(200);
    expect(s.dropped).toBeLessThan(400);
    expect(s.duplicated).toBeGreaterThan(100);
    expect(inbox.get(1)!.length).toBe(1000 - s.dropped + s.duplicated);
  });

  test("snapshots stream chunk by chunk, and fail when the link drops mid-stream", async () => {
    const { clock, network, transports } = setup();
    async function* chunks(n: number) {
      for (let i = 0; i < n; i++) yield new Uint8Array(100);
    }
    const install: Extract<Message, { type: "InstallSnapshot" }> = {
      type: "InstallSnapshot",
      from: 0,
      to: 1,
      term: 1,
      snapshot: { index: 10, term: 1, members: [0, 1, 2] },
    };
    let answer: unknown = null;
    transports[0].sendSnapshot(install, chunks(5)).then((r) => (answer = r));
    await runFor(clock, 200);
    expect(answer).toMatchObject({ type: "InstallSnapshotResponse", success: true, matchIndex: 500 });
    expect(network.stats().snapshotChunks).toBe(5);

    let failure: unknown = null;
    transports[0].sendSnapshot(install, chunks(50)).catch((e) => (failure = e));
    await runFor(clock, 30);
    network.partition([0], [1]);
    await runFor(clock, 1000);
    expect((failure as Error)?.name).toBe("NodeSimNetworkError");
    expect(network.stats().snapshotsFailed).toBe(1);
  });
});

describe("MemoryLogStore", () => {
  test("a crash keeps only what was synced", async () => {
    const store = new MemoryLogStore();
    await store.save({ term: 1, votedFor: 0, commitIndex: 0 }, [entry(1), entry(2)]);
    store.holdSyncs(true);
    const pending = store.save({ term: 2, votedFor: 1, commitIndex: 2 }, [entry(3, 2)]).catch((e) => e);
    expect(store.lastIndex()).toBe(3); // written, readable
    store.crash();
    expect((await pending).code).toBe("CLOSED");
    const next = store.reopen();
    expect(next.lastIndex()).toBe(2);
    expect(next.hardState()).toEqual({ term: 1, votedFor: 0, commitIndex: 0 });
  });

  test("saves in one turn share a sync; compaction and reset survive reopen", async () => {
    const store = new MemoryLogStore();
    await Promise.all(Array.from({ length: 10 }, (_, i) => store.save(null, [entry(i + 1)])));
    expect(store.stats()).toEqual({ saves: 10, fsyncs: 1 });
    await store.compact({ index: 4, term: 1, members: [0] });
    await expect(store.save(null, [entry(3)])).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    await store.close();
    const reopened = store.reopen();
    expect([reopened.firstIndex(), reopened.lastIndex()]).toEqual([5, 10]);
    await reopened.resetToSnapshot({ index: 20, term: 3, members: [0] });
    reopened.crash();
    const again = reopened.reopen();
    expect([again.firstIndex(), again.lastIndex(), again.term(20)]).toEqual([21, 20, 3]);
  });

  test("a commitIndex-only hard state is not synced on its own and is lost by a crash (MustSync)", async () => {
    const store = new MemoryLogStore();
    await store.save({ term: 1, votedFor: 0, commitIndex: 0 }, [entry(1), entry(2)]);
    await store.save({ term: 1, votedFor: 0, commitIndex: 2 }, []);
    expect(store.stats()).toEqual({ saves: 2, fsyncs: 1 });
    expect(store.hardState().commitIndex).toBe(2);
    store.crash();
    const next = store.reopen();
    expect(next.hardState()).toEqual({ term: 1, votedFor: 0, commitIndex: 0 });
    // It rides with the next synced save; a vote change is never lazy.
    await next.save({ term: 1, votedFor: 0, commitIndex: 2 }, []);
    await next.save({ term: 2, votedFor: 1, commitIndex: 2 }, []);
    expect(next.stats().fsyncs).toBe(1);
    next.crash();
    expect(next.reopen().hardState()).toEqual({ term: 2, votedFor: 1, commitIndex: 2 });
  });

  test("an injected sync failure rejects the write and kills the store", async () => {
    const store = new MemoryLogStore();
    store.failSyncs(new Error("EIO"));
    await expect(store.save(null, [entry(1)])).rejects.toMatchObject({ code: "IO" });
    await expect(store.save(null, [entry(2)])).rejects.toMatchObject({ code: "IO" });
  });
});
