// ReadIndex scenarios: reads are confirmed by a quorum at an index covering every earlier commit;
// a leader that lost its quorum never confirms one.

import { describe, expect, test } from "bun:test";
import { Harness, cmd } from "./harness.ts";

const FILE = "read-index.test.ts";

describe("ReadIndex", () => {
  test("a read is confirmed by a heartbeat round, at the commit index of its request", () => {
    const h = new Harness("ReadConfirmed", FILE, 3);
    const leader = h.checkOneLeader();
    const index = h.one(cmd("w1"), 3, false);
    expect(h.c.readIndex(leader, 1)).toEqual({ ok: true });
    h.c.runUntil(() => h.c.reads.get(1)!.index !== undefined, 20);
    const r = h.c.reads.get(1)!;
    h.expect(r.index !== undefined, "read was not confirmed");
    h.expect(r.index! >= index, `read index ${r.index} below the committed write at ${index}`);
  });

  test("many reads in one tick share one heartbeat round", () => {
    const h = new Harness("ReadBatch", FILE, 3);
    const leader = h.checkOneLeader();
    h.one(cmd("w"), 3, false);
    h.run(1);
    const sent = h.c.network.sent;
    h.c.readIndexMany(leader, Array.from({ length: 10 }, (_, i) => 10 + i));
    h.expect(h.c.network.sent - sent <= 2, `10 reads sent ${h.c.network.sent - sent} messages`);
    h.c.runUntil(() => [...h.c.reads.values()].every((r) => r.index !== undefined), 20);
    for (let ctx = 10; ctx < 20; ctx++) h.expect(h.c.reads.get(ctx)!.index !== undefined, `read ${ctx} not confirmed`);
  });

  test("a single-node cluster answers at once", () => {
    const h = new Harness("ReadSingle", FILE, 1);
    h.checkOneLeader();
    h.one(cmd("solo"), 1, false);
    h.c.readIndex(0, 7);
    h.expect(h.c.reads.get(7)!.index === 2, `single-node read got index ${h.c.reads.get(7)!.index}`);
  });

  test("a new leader defers reads until it has committed an entry of its term", () => {
    const h = new Harness("ReadDeferred", FILE, 3);
    let leader = -1;
    h.c.runUntil(() => (leader = h.c.leader()) !== -1, 200);
    // Right after winning, the no-op is not yet committed.
    const s = h.c.status(leader);
    h.expect(s.commitIndex < s.lastIndex, "no-op already committed; the scenario needs it pending");
    h.c.readIndex(leader, 1);
    h.c.runUntil(() => h.c.reads.get(1)!.index !== undefined, 30);
    h.expect(h.c.reads.get(1)!.index! >= s.lastIndex, `read index ${h.c.reads.get(1)!.index} is below the no-op ${s.lastIndex}`);
  });

  test("a partitioned old leader cannot serve a read", () => {
    const h = new Harness("ReadStaleLeader", FILE, 5);
    const old = h.checkOneLeader();
    h.one(cmd("before"), 5, false);
    const minority = [old, (old + 1) % 5];
    const majority = [0, 1, 2, 3, 4].filter((i) => !minority.includes(i));
    h.c.partition([minority, majority]);
    // Still believes it leads (CheckQuorum has not fired yet): the read is accepted but must not be confirmed.
    h.expect(h.c.readIndex(old, 1).ok, "old leader refused the read before stepping down");
    for (const i of minority) h.connected[i] = false;
    h.checkOneLeader();
    h.one(cmd("on-majority"), 3, true);
    h.run(100);
    h.expect(h.c.reads.get(1)!.index === undefined, `the partitioned leader confirmed a read at ${h.c.reads.get(1)!.index}`);
    h.expect(h.c.status(old).role !== "Leader", "old leader still leads");
    const refused = h.c.readIndex(old, 2);
    h.expect(!refused.ok, "deposed leader accepted a read");
  });

  test("a follower refuses reads and names the leader", () => {
    const h = new Harness("ReadFollower", FILE, 3);
    const leader = h.checkOneLeader();
    h.run(10);
    const r = h.c.readIndex((leader + 1) % 3, 5);
    expect(r).toEqual({ ok: false, leaderId: leader, reason: "not-leader" });
  });
});
