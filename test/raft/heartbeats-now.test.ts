// The leader's out-of-band heartbeats (Raft.heartbeatsNow, what RaftNode.pulse sends when a busy
// thread has held its tick back): one per peer in the leader's term, none from anyone else.

import { describe, expect, test } from "bun:test";
import { Harness } from "./harness.ts";

describe("heartbeatsNow", () => {
  test("the leader gets one heartbeat per peer in its term; followers get none", () => {
    const h = new Harness("HeartbeatsNow", "heartbeats-now.test.ts", 3);
    const leader = h.checkOneLeader();
    const term = h.checkTerms();
    const beats = h.c.nodes[leader]!.raft!.heartbeatsNow();
    expect(beats.map((m) => ({ type: m.type, from: m.from, term: m.term })).sort()).toEqual([
      { type: "Heartbeat", from: leader, term },
      { type: "Heartbeat", from: leader, term },
    ]);
    expect(new Set(beats.map((m) => m.to))).toEqual(new Set([0, 1, 2].filter((id) => id !== leader)));
    for (const id of [0, 1, 2].filter((i) => i !== leader)) expect(h.c.nodes[id]!.raft!.heartbeatsNow()).toEqual([]);
    // Asking again and again changes nothing about who leads.
    for (let i = 0; i < 100; i++) h.c.nodes[leader]!.raft!.heartbeatsNow();
    h.run(100);
    expect(h.checkOneLeader()).toBe(leader);
    expect(h.checkTerms()).toBe(term);
  });
});
