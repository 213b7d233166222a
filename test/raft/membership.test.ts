// Membership changes as stories, on the core simulator: grow 3 → 5 and shrink back, remove the
// leader, add a node that is partitioned away until its promotion, two changes at once, and
// learners that receive everything but never count.

import { describe, expect, test } from "bun:test";
import type { ConfChange, ConfChangeResult } from "../../src/raft/core/raft.ts";
import type { NodeId } from "../../src/raft/types.ts";
import { Harness, cmd } from "./harness.ts";

const FILE = "membership.test.ts";

/** Proposes `change` at the current leader until it is accepted, then waits until it is applied there. */
function change(h: Harness, c: ConfChange, budget = 500): ConfChangeResult & { ok: true } {
  const start = h.c.tickCount;
  while (h.c.tickCount - start < budget) {
    const leader = h.checkOneLeader();
    const r = h.c.proposeConfChange(leader, c);
    if (r.ok) {
      if (!h.c.runUntil(() => h.c.alive(leader) && h.c.status(leader).appliedIndex >= r.index, budget)) {
        h.fail(`change ${JSON.stringify(c)} at index ${r.index} was not applied within ${budget} ticks`);
      }
      return r;
    }
    if (r.reason === "invalid") h.fail(`change ${JSON.stringify(c)} refused as invalid: ${r.detail}`);
    h.c.run(5); // not the leader any more, or the previous change is still committing
  }
  h.fail(`change ${JSON.stringify(c)} was not accepted within ${budget} ticks`);
}

function voters(h: Harness, id: NodeId): NodeId[] {
  return h.c.status(id).membership.voters;
}

function learners(h: Harness, id: NodeId): NodeId[] {
  return h.c.status(id).membership.learners;
}

describe("membership", () => {
  test("grow 3 → 5 through learners, then shrink back to 3", () => {
    const h = new Harness("grow and shrink", FILE, 5, { members: [0, 1, 2], maxLearnerLag: 0 });
    h.one(cmd("before"), 3, true);
    // Spares know no configuration: they never campaign and hold nothing.
    h.c.run(100);
    expect(voters(h, 3)).toEqual([]);
    expect(h.c.status(3).lastIndex).toBe(0);

    for (const id of [3, 4]) {
      change(h, { type: "add-learner", id, address: `127.0.0.1:${7000 + id}` });
      h.c.runUntil(() => learners(h, id).includes(id), 200);
      expect(learners(h, id)).toContain(id);
      h.one(cmd(`learner ${id} follows`), 3 + (id - 2), true);
      change(h, { type: "promote", id });
    }
    h.c.run(20);
    for (let id = 0; id < 5; id++) expect(voters(h, id)).toEqual([0, 1, 2, 3, 4]);
    expect(h.c.status(h.checkOneLeader()).membership.addresses).toEqual({ 3: "127.0.0.1:7003", 4: "127.0.0.1:7004" });
    h.one(cmd("five voters"), 5, true);

    // With five voters two may fail: isolate 0 and 1 and the cluster still commits.
    h.disconnect(0);
    h.disconnect(1);
    h.one(cmd("three of five"), 3, true);
    h.connect(0);
    h.connect(1);

    for (const id of [4, 3]) change(h, { type: "remove", id });
    h.c.run(20);
    const leader = h.checkOneLeader();
    expect(voters(h, leader)).toEqual([0, 1, 2]);
    const index = h.one(cmd("three again"), 3, true);
    // Removed nodes no longer receive the log.
    h.c.run(50);
    expect(h.c.nodes[3]!.applied).toBeLessThan(index);
    expect(h.c.nodes[4]!.applied).toBeLessThan(index);
  });

  test("removing the leader: it hands over to the most caught-up voter and steps down", () => {
    const h = new Harness("remove the leader", FILE, 3);
    h.one(cmd("x"), 3, true);
    const old = h.checkOneLeader();
    const termBefore = h.c.status(old).term;
    const r = h.c.proposeConfChange(old, { type: "remove", id: old });
    expect(r.ok).toBe(true);
    // The hand-over (TimeoutNow) elects a successor in the next term, well before an election timeout.
    const handedOver = h.c.runUntil(() => h.c.leaders().some((l) => l.id !== old && l.term === termBefore + 1), 8);
    expect(handedOver).toBe(true);
    expect(h.c.status(old).role).toBe("Follower");
    const next = h.checkOneLeader();
    expect(voters(h, next)).toEqual([0, 1, 2].filter((id) => id !== old));
    // Two voters now; the removed node neither leads nor campaigns again.
    h.one(cmd("after"), 2, true);
    h.c.run(300);
    expect(h.c.leaders().every((l) => l.id !== old)).toBe(true);
    expect(h.c.status(old).term).toBeLessThanOrEqual(h.c.status(next).term);
  });

  test("a node partitioned away is added as a learner, cannot be promoted until it catches up", () => {
    const h = new Harness("partitioned learner", FILE, 4, { members: [0, 1, 2], snapshotEvery: 10, maxLearnerLag: 2 });
    h.disconnect(3);
    h.one(cmd("a"), 3, true);
    // A learner does not count: adding it commits with the three voters alone.
    change(h, { type: "add-learner", id: 3 });
    for (let i = 0; i < 25; i++) h.one(cmd(`w${i}`), 3, true);
    const leader = h.checkOneLeader();
    const refused = h.c.proposeConfChange(leader, { type: "promote", id: 3 });
    expect(refused).toMatchObject({ ok: false, reason: "learner-behind" });
    // Back on the network it catches up: the early entries are compacted, so by InstallSnapshot.
    const installedBefore = h.c.stats.snapshotsInstalled;
    h.connect(3);
    h.c.runUntil(() => h.c.nodes[3]!.applied >= h.c.status(leader).commitIndex, 300);
    expect(h.c.stats.snapshotsInstalled).toBeGreaterThan(installedBefore);
    expect(learners(h, 3)).toEqual([3]);
    change(h, { type: "promote", id: 3 });
    // Four voters need three: with one voter cut off, the commit needs the new voter.
    h.disconnect((leader + 1) % 3);
    h.one(cmd("needs the new voter"), 3, true);
  });

  test("two changes at once: the second is refused until the first commits", () => {
    const h = new Harness("two changes", FILE, 5, { members: [0, 1, 2] });
    h.one(cmd("x"), 3, true);
    const leader = h.checkOneLeader();
    const first = h.c.proposeConfChange(leader, { type: "add-learner", id: 3 });
    const second = h.c.proposeConfChange(leader, { type: "add-learner", id: 4 });
    expect(first.ok).toBe(true);
    expect(second).toMatchObject({ ok: false, reason: "change-pending" });
    h.c.runUntil(() => h.c.status(leader).commitIndex >= (first as { index: number }).index, 100);
    expect(h.c.proposeConfChange(leader, { type: "add-learner", id: 4 }).ok).toBe(true);
    // Nonsense is refused with the reason.
    h.c.run(30);
    expect(h.c.proposeConfChange(leader, { type: "add-learner", id: 4 })).toMatchObject({ ok: false, reason: "invalid" });
    expect(h.c.proposeConfChange(leader, { type: "promote", id: 1 })).toMatchObject({ ok: false, reason: "invalid" });
  });

  test("a new leader proposes no change before it has committed an entry of its term", () => {
    const h = new Harness("own-term commit first", FILE, 3);
    h.one(cmd("x"), 3, true);
    const old = h.checkOneLeader();
    h.disconnect(old);
    // Catch the new leader in the tick it wins, before its no-op can commit.
    let leader = -1;
    h.c.runUntil(() => {
      const l = h.c.leaders().find((x) => x.id !== old);
      if (l === undefined) return false;
      leader = l.id;
      return true;
    }, 300);
    expect(h.c.proposeConfChange(leader, { type: "remove", id: old })).toMatchObject({ ok: false, reason: "change-pending" });
    h.c.run(20);
    expect(h.c.proposeConfChange(leader, { type: "remove", id: old }).ok).toBe(true);
  });

  test("learners never count: two learners cannot replace two missing voters", () => {
    const h = new Harness("learners never count", FILE, 5, { members: [0, 1, 2] });
    h.one(cmd("x"), 3, true);
    change(h, { type: "add-learner", id: 3 });
    change(h, { type: "add-learner", id: 4 });
    const leader = h.checkOneLeader();
    for (const id of [0, 1, 2]) if (id !== leader) h.disconnect(id);
    const r = h.c.propose(leader, [cmd("stalls")]);
    expect(r.ok).toBe(true);
    h.c.run(8); // within an election timeout: the learners have the entry, the leader cannot commit it
    expect(h.c.nodes[3]!.disk.entries.some((e) => e.index === (r as { index: number }).index)).toBe(true);
    expect(h.c.status(leader).commitIndex).toBeLessThan((r as { index: number }).index);
    // And learners never start an election, whatever happens to the voters.
    h.disconnect(leader);
    h.c.run(200);
    expect(h.c.leaders().filter((l) => l.id === 3 || l.id === 4)).toEqual([]);
    expect(h.c.status(3).term).toBe(h.c.status(4).term);
  });
});
