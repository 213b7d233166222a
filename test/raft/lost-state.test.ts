// Lost durable state, as scenarios on the core simulator: a follower whose disk was wiped, whose
// newest entries were truncated, or whose state machine was discarded comes back recovering. It
// catches up from the leader without an append loop, and grants no vote until it has.
import { describe, expect, test } from "bun:test";
import { RELIABLE } from "../../src/sim/raft-core/index.ts";
import type { DiskFault } from "../../src/sim/raft-core/sim-node.ts";
import { Harness, cmd } from "./harness.ts";

function setup(name: string, snapshotEvery = 0): { h: Harness; leader: number; follower: number } {
  const h = new Harness(name, "lost-state.test.ts", 3, { snapshotEvery, network: RELIABLE });
  const leader = h.checkOneLeader();
  for (let i = 0; i < 60; i++) h.one(cmd(`v${i}`), 3, true);
  return { h, leader, follower: (leader + 1) % 3 };
}

/** Messages and bytes the network carries while `fn` runs. */
function traffic(h: Harness, fn: () => void): { messages: number; bytes: number } {
  const m0 = h.c.network.sent;
  const b0 = h.c.network.bytes;
  fn();
  return { messages: h.c.network.sent - m0, bytes: h.c.network.bytes - b0 };
}

describe("lost durable state", () => {
  for (const fault of ["wipe", "truncate", "discard-state"] as DiskFault[]) {
    test(`${fault}: the follower catches up under writes, with bounded traffic, then votes again`, () => {
      const { h, leader, follower } = setup(`${fault} catches up`, fault === "discard-state" ? 20 : 0);
      const lastIndex = h.c.status(leader).lastIndex;
      h.crash(follower);
      h.c.loseDisk(follower, fault, 30);
      h.restart(follower);
      expect(h.c.status(follower).recovering).not.toBe("");
      // Writes keep coming: before the fix the leader resent the same appends on every answer.
      const used = traffic(h, () => {
        for (let i = 0; i < 20; i++) {
          h.c.propose(leader, [cmd(`w${i}`)]);
          h.run(10);
        }
      });
      const s = h.c.status(follower);
      expect(s.lastIndex).toBe(h.c.status(leader).lastIndex);
      expect(h.c.nodes[follower]!.applied).toBe(h.c.oracle.maxApplied);
      expect(s.recovering).toBe("");
      expect(h.c.nodes[follower]!.disk.recovering).toBe(false);
      // 200 ticks of heartbeats and 20 writes to two followers, plus one catch-up of ~80 entries.
      expect(used.messages).toBeLessThan(800);
      expect(used.bytes).toBeLessThan(40 * 1024 + lastIndex * 200);
    });
  }

  test("a wiped follower grants no vote: with the leader down there is no leader until it returns", () => {
    const { h, leader, follower } = setup("wiped follower does not vote");
    const third = (leader + 2) % 3;
    h.crash(follower);
    h.c.loseDisk(follower, "wipe");
    h.crash(leader);
    h.restart(follower);
    // Only `third` holds every committed entry; the wiped node must not help anyone win... and
    // `third` cannot win alone: the cluster waits rather than risk a leader without committed entries.
    h.run(300);
    expect(h.c.leader()).toBe(-1);
    expect(h.c.status(follower).recovering).not.toBe("");
    expect(h.c.status(third).role).not.toBe("Leader");
    h.restart(leader);
    const newLeader = h.checkOneLeader(400);
    expect(newLeader).not.toBe(follower);
    h.one(cmd("after"), 3, true);
    expect(h.c.status(follower).recovering).toBe("");
  });

  test("a wiped node and a node that never got an entry do not elect an empty leader while the holder is down", () => {
    const h = new Harness("wiped plus empty", "lost-state.test.ts", 3, { network: RELIABLE });
    const leader = h.checkOneLeader();
    const empty = (leader + 2) % 3;
    const wiped = (leader + 1) % 3;
    h.crash(empty);
    h.c.loseDisk(empty, "wipe");
    h.c.nodes[empty]!.disk.recovering = false; // a node that never ran: empty, and not recovering
    for (let i = 0; i < 20; i++) h.one(cmd(`v${i}`), 2, true);
    h.crash(wiped);
    h.c.loseDisk(wiped, "wipe");
    h.crash(leader);
    h.restart(wiped);
    h.restart(empty);
    h.run(400);
    // Any leader now would have an empty log and lose 20 committed entries.
    expect(h.c.leader()).toBe(-1);
    h.restart(leader);
    h.checkOneLeader(400);
    h.one(cmd("after"), 3, true);
    expect(h.c.nodes[wiped]!.applied).toBe(h.c.oracle.maxApplied);
  });

  test("a new cluster whose nodes all start recovering (no identity files) still elects a leader", () => {
    const h = new Harness("new cluster recovering", "lost-state.test.ts", 3, { network: RELIABLE });
    for (let id = 0; id < 3; id++) {
      h.crash(id);
      h.c.loseDisk(id, "wipe");
    }
    for (let id = 0; id < 3; id++) h.restart(id);
    const leader = h.checkOneLeader();
    h.one(cmd("first"), 3, true);
    for (let id = 0; id < 3; id++) expect(h.c.status(id).recovering).toBe("");
    expect(leader).toBeGreaterThanOrEqual(0);
  });
});
