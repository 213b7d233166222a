// Membership changes through RaftNode, in simulated time: a new node joins empty, catches up by
// snapshot as a learner and is promoted; the stored configuration (not the bootstrap list) is
// what a restarted node uses; one change at a time; the leader removes itself and hands over.

import { afterEach, describe, expect, test } from "bun:test";
import {
  type ConfChange,
  ConfChangePendingError,
  InvalidConfChangeError,
  type Membership,
  NotLeaderError,
  type NodeId,
} from "../../src/raft/index.ts";
import { NodeSimCluster } from "../../src/sim/raft-node/index.ts";
import { ListMachine } from "./list-machine.ts";

const enc = new TextEncoder();
const clusters: NodeSimCluster<ListMachine>[] = [];
afterEach(async () => {
  for (const c of clusters.splice(0)) await c.stop();
});

function cluster(seed: number, snapshotThreshold = 10_000): NodeSimCluster<ListMachine> {
  const c = new NodeSimCluster<ListMachine>({
    ids: [0, 1, 2],
    seed,
    stateMachine: (_id, previous) => previous?.recover() ?? new ListMachine(undefined, 5),
    node: { snapshotThreshold, maxLearnerLag: 0 },
  });
  clusters.push(c);
  return c;
}

async function write(c: NodeSimCluster<ListMachine>, prefix: string, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    for (let attempt = 0; ; attempt++) {
      if (attempt > 50) throw new Error(`could not propose ${prefix}-${i}`);
      const leader = c.leader();
      if (leader) {
        try {
          await leader.propose(enc.encode(`${prefix}-${i}`));
          break;
        } catch (err) {
          if (!(err instanceof NotLeaderError)) throw err;
        }
      }
      await c.runFor(20);
    }
  }
}

/** Proposes `change` at whoever leads, retrying while refused for now (change pending, learner behind, no leader). */
async function change(c: NodeSimCluster<ListMachine>, conf: ConfChange): Promise<Membership> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const leader = c.leader();
    if (leader) {
      try {
        return await settleChange(c, leader.proposeConfChange(conf));
      } catch (err) {
        if (!(err instanceof ConfChangePendingError || err instanceof NotLeaderError)) throw err;
      }
    }
    await c.runFor(50);
  }
  throw new Error(`change ${JSON.stringify(conf)} was refused for 100 attempts`);
}

/** Runs the cluster while the leader's proposeConfChange promise is pending. */
async function settleChange<T>(c: NodeSimCluster<ListMachine>, promise: Promise<T>): Promise<T> {
  let done = false;
  const tracked = promise.finally(() => {
    done = true;
  });
  tracked.catch(() => {}); // observed below, after the run; not an unhandled rejection meanwhile
  await c.runUntil(() => done, 5_000, "the membership change to apply");
  return tracked;
}

describe("RaftNode membership", () => {
  test("a joining node catches up by snapshot as a learner, is promoted, and the log's configuration outlives the bootstrap list", async () => {
    const c = cluster(3, 20);
    await c.start();
    await c.waitForLeader();
    await write(c, "a", 60);
    await c.runFor(200);

    const joiner = await c.join(3);
    await c.runFor(300);
    expect(joiner.status().role).toBe("Follower"); // it waits, without campaigning
    expect(joiner.status().term).toBe(0);

    const added = await change(c, { type: "add-learner", id: 3, address: "127.0.0.1:7003" });
    expect(added).toEqual({ voters: [0, 1, 2], learners: [3], addresses: { 3: "127.0.0.1:7003" } });
    await c.runUntil(() => c.machines.get(3)!.commands.length >= 60, 5_000, "the learner catching up");
    expect(joiner.status().snapshotsReceived).toBeGreaterThan(0);
    expect(joiner.status().learners).toEqual([3]);

    await change(c, { type: "promote", id: 3 });
    await write(c, "b", 30);
    await c.runUntil(() => [0, 1, 2, 3].every((id) => c.machines.get(id)!.commands.length >= 90), 5_000, "four voters applying");
    for (const id of [0, 1, 2, 3]) expect(c.node(id).status().members).toEqual([0, 1, 2, 3]);

    // Restarted with the stale bootstrap list (or none at all), nodes use the stored configuration:
    // node 0 from its compacted log's snapshot meta, the joiner likewise.
    expect(c.logs.get(0)!.snapshotMeta().index).toBeGreaterThan(0);
    await c.crash(0);
    await c.crash(3);
    const r0 = await c.restart(0, [0, 1, 2]);
    const r3 = await c.restart(3, []);
    for (const n of [r0, r3]) {
      expect(n.status().members).toEqual([0, 1, 2, 3]);
      expect(n.status().addresses).toEqual({ 3: "127.0.0.1:7003" });
    }
    // Four voters: with two down the cluster cannot commit, so both restarted nodes count.
    await c.crash(1);
    await write(c, "c", 10);
    await c.runUntil(() => [0, 2, 3].every((id) => c.machines.get(id)!.commands.length >= 100), 5_000, "three of four voters");
  });

  test("one change at a time: a second is refused with ConfChangePendingError; nonsense with InvalidConfChangeError", async () => {
    const c = cluster(5);
    await c.start();
    await c.waitForLeader();
    await write(c, "a", 3);
    await c.runUntil(() => c.machines.get(c.leader()!.id)!.commands.length >= 3, 2_000, "the first writes");
    await c.join(3);
    await c.join(4);
    const leader = c.leader()!;
    const first = leader.proposeConfChange({ type: "add-learner", id: 3 });
    await expect(leader.proposeConfChange({ type: "add-learner", id: 4 })).rejects.toBeInstanceOf(ConfChangePendingError);
    await settleChange(c, first);
    await expect(leader.proposeConfChange({ type: "promote", id: 1 })).rejects.toBeInstanceOf(InvalidConfChangeError);
    await expect(leader.proposeConfChange({ type: "remove", id: 9 })).rejects.toThrow(/not a member/);
    const follower = [...c.nodes.values()].find((n) => n !== leader && n.status().members.includes(n.id))!;
    await expect(follower.proposeConfChange({ type: "add-learner", id: 4 })).rejects.toBeInstanceOf(NotLeaderError);
    expect((await settleChange(c, leader.proposeConfChange({ type: "add-learner", id: 4 }))).learners).toEqual([3, 4]);
  });

  test("the leader removes itself: it hands over, steps down, and writes go on with the other two", async () => {
    const c = cluster(7);
    await c.start();
    const old = await c.waitForLeader();
    await write(c, "a", 5);
    await c.runUntil(() => c.machines.get(old.id)!.commands.length >= 5, 2_000, "the first writes");
    const membership = await settleChange(c, old.proposeConfChange({ type: "remove", id: old.id }));
    expect(membership.voters).not.toContain(old.id);
    await c.runUntil(() => c.leader() !== undefined && c.leader() !== old, 2_000, "a successor");
    expect(old.status().role).toBe("Follower");
    const rest: NodeId[] = [0, 1, 2].filter((id) => id !== old.id);
    await write(c, "b", 5);
    await c.runUntil(() => rest.every((id) => c.machines.get(id)!.commands.length >= 10), 5_000, "the two voters applying");
    await c.runFor(2_000);
    expect(c.leader()).not.toBe(old);
  });
});
