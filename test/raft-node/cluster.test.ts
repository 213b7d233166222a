// RaftNode clusters in simulated time: elections, replication, crash/restart, partitions,
// snapshots streamed to a lagging follower, ReadIndex, disk failures, and a real on-disk log.

import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { FileLogStore, NotLeaderError, NodeStoppedError, type NodeId, type RaftNode } from "../../src/raft/index.ts";
import { MemoryLogStore, NodeSimCluster, type NodeSimClusterOptions } from "../../src/sim/raft-node/index.ts";
import { ListMachine } from "./list-machine.ts";

const enc = new TextEncoder();
const clusters: NodeSimCluster<ListMachine>[] = [];
afterEach(async () => {
  for (const c of clusters.splice(0)) await c.stop();
});

function cluster(size: number, seed: number, extra: Partial<NodeSimClusterOptions<ListMachine>> = {}): NodeSimCluster<ListMachine> {
  const c = new NodeSimCluster<ListMachine>({
    ids: Array.from({ length: size }, (_, i) => i),
    seed,
    stateMachine: (_id, previous) => previous?.recover() ?? new ListMachine(),
    ...extra,
  });
  clusters.push(c);
  return c;
}

/** Proposes each command to whoever leads now, retrying through elections. */
async function proposeAll(c: NodeSimCluster<ListMachine>, commands: string[]): Promise<void> {
  for (const command of commands) {
    for (let attempt = 0; ; attempt++) {
      if (attempt > 50) throw new Error(`could not propose ${command}: no stable leader`);
      const leader = c.leader();
      if (leader) {
        try {
          await leader.propose(enc.encode(command));
          break;
        } catch (err) {
          if (!(err instanceof NotLeaderError)) throw err;
        }
      }
      await c.runFor(20);
    }
  }
}

function appliedEverywhere(c: NodeSimCluster<ListMachine>, count: number, ids = [...c.nodes.keys()]): boolean {
  return ids.every((id) => c.machines.get(id)!.commands.length >= count);
}

/** State machine safety: every node's applied list is a prefix of the longest one, no violations. */
function expectConsistent(c: NodeSimCluster<ListMachine>): void {
  const lists = [...c.machines.values()].map((m) => m.commands);
  const longest = lists.reduce((a, b) => (b.length > a.length ? b : a));
  for (const [id, m] of c.machines) {
    expect(m.violations).toEqual([]);
    expect(m.commands).toEqual(longest.slice(0, m.commands.length));
    expect(c.fatal.get(id)).toBeUndefined();
  }
}

const commands = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}-${i}`);

describe("RaftNode cluster (simulated)", () => {
  test("3 nodes elect one leader and apply 100 commands in the same order", async () => {
    const c = cluster(3, 1);
    await c.start();
    const leader = await c.waitForLeader();
    const leaders = [...c.nodes.values()].filter((n) => n.status().role === "Leader");
    expect(leaders).toHaveLength(1);
    await c.runUntil(() => [...c.nodes.values()].every((n) => n.status().leaderId === leader.id), 5_000, "followers learning the leader");
    for (const node of c.nodes.values()) expect(node.status().leaderId).toBe(leader.id);

    const cmds = commands("c", 100);
    await proposeAll(c, cmds);
    await c.runUntil(() => appliedEverywhere(c, 100), 10_000, "all nodes applying 100 commands");
    for (const m of c.machines.values()) expect(m.commands).toEqual(cmds);
    expectConsistent(c);
  });

  test("5 nodes agree under loss, duplication and reordering", async () => {
    const c = cluster(5, 2, { faults: { minDelayMs: 1, maxDelayMs: 15, lossRate: 0.05, duplicateRate: 0.05 } });
    await c.start();
    await c.waitForLeader();
    const cmds = commands("lossy", 100);
    await proposeAll(c, cmds);
    await c.runUntil(() => appliedEverywhere(c, 100), 30_000, "all nodes applying 100 commands");
    expectConsistent(c);
    // Every command proposed exactly once and accepted is applied exactly once.
    expect(new Set(c.machines.get(0)!.commands).size).toBe(c.machines.get(0)!.commands.length);
    expect(c.network.stats().dropped).toBeGreaterThan(0);
    expect(c.network.stats().duplicated).toBeGreaterThan(0);
  });

  test("a crashed leader restarts from its durable log and loses nothing committed", async () => {
    const c = cluster(3, 3);
    await c.start();
    const first = await c.waitForLeader();
    await proposeAll(c, commands("before", 50));
    await c.runUntil(() => appliedEverywhere(c, 50), 10_000, "first 50 applied");

    await c.crash(first.id);
    const second = await c.waitForLeader();
    expect(second.id).not.toBe(first.id);
    await proposeAll(c, commands("after", 50));
    await c.runUntil(() => appliedEverywhere(c, 100), 10_000, "next 50 applied by the survivors");

    const restarted = await c.restart(first.id);
    await c.runUntil(() => appliedEverywhere(c, 100), 10_000, "restarted node catching up");
    expect(restarted.status().role).toBe("Follower");
    expect(c.machines.get(first.id)!.commands).toEqual([...commands("before", 50), ...commands("after", 50)]);
    expectConsistent(c);
  });

  test("a whole-cluster crash with stale persisted commitIndexes replays every committed entry", async () => {
    const c = cluster(3, 12);
    await c.start();
    await c.waitForLeader();
    await proposeAll(c, commands("x", 30));
    await c.runUntil(() => appliedEverywhere(c, 30), 10_000, "30 applied");
    const commitBefore = Math.max(...[...c.nodes.values()].map((n) => n.status().commitIndex));
    for (const id of [0, 1, 2]) await c.crash(id as NodeId);
    // commitIndex-only changes are never synced on their own: what the disks hold lags.
    const persisted = [0, 1, 2].map((id) => (c.logs.get(id) as MemoryLogStore).reopen().hardState().commitIndex);
    expect(Math.min(...persisted)).toBeLessThan(commitBefore);
    for (const id of [0, 1, 2]) await c.restart(id as NodeId);
    await c.runUntil(() => appliedEverywhere(c, 30), 10_000, "replay after a whole-cluster crash");
    for (const m of c.machines.values()) expect(m.commands.slice(0, 30)).toEqual(commands("x", 30));
    expectConsistent(c);
  });

  test("a leader's own unsynced entry does not count toward commit (leader + one follower is not enough)", async () => {
    const c = cluster(3, 4);
    await c.start();
    const leader = await c.waitForLeader();
    await proposeAll(c, commands("ok", 10));
    await c.runUntil(() => appliedEverywhere(c, 10), 10_000, "first 10 applied");
    const [follower, down] = [...c.nodes.keys()].filter((id) => id !== leader.id);
    await c.crash(down!);
    // The leader's disk stops syncing; its AppendEntries still go out in parallel (thesis §10.2.1).
    (c.logs.get(leader.id) as MemoryLogStore).holdSyncs(true);
    const { index } = await leader.propose(enc.encode("pending"));
    await c.runUntil(() => c.node(follower!).status().lastIndex >= index, 1_000, "the follower holding the entry");
    await c.runFor(200);
    // Durable on one of three disks only: not committed, not applied, not acknowledged.
    expect(leader.status().commitIndex).toBeLessThan(index);
    for (const m of c.machines.values()) expect(m.commands).not.toContain("pending");
    await c.crash(leader.id);
    await c.restart(leader.id);
    await c.restart(down!);
    await proposeAll(c, commands("more", 5));
    await c.runUntil(() => appliedEverywhere(c, 15), 10_000, "all 15 applied");
    expectConsistent(c);
  });

  test("followers persist in parallel with the leader: a majority of others commits while the leader's disk lags", async () => {
    const c = cluster(3, 4);
    await c.start();
    const leader = await c.waitForLeader();
    await proposeAll(c, commands("ok", 10));
    await c.runUntil(() => appliedEverywhere(c, 10), 10_000, "first 10 applied");
    (c.logs.get(leader.id) as MemoryLogStore).holdSyncs(true);
    const { index } = await leader.propose(enc.encode("parallel"));
    await c.runUntil(() => leader.status().commitIndex >= index, 1_000, "commit by the two followers' disks");
    // Committed on the followers' disks: the leader applies it (and would answer its client) while
    // its own write is still held, and tells its machine not to make that apply durable.
    await c.runUntil(() => c.machines.get(leader.id)!.commands.includes("parallel"), 1_000, "the leader applying before its own sync");
    expect((c.logs.get(leader.id) as MemoryLogStore).pendingWrites).toBeGreaterThan(0);
    expect(c.machines.get(leader.id)!.durableLimit).toBe(10 + 1); // its log is durable through the no-op and the 10
    // It was on a majority of disks, so it survives losing the leader's unsynced write.
    await c.crash(leader.id);
    await c.restart(leader.id);
    await c.runUntil(() => appliedEverywhere(c, 11), 10_000, "the committed entry applied everywhere");
    for (const m of c.machines.values()) expect(m.commands[10]).toBe("parallel");
    expectConsistent(c);
  });

  test("a follower applies committed entries it already holds while its next write is still syncing", async () => {
    const c = cluster(3, 4);
    await c.start();
    const leader = await c.waitForLeader();
    await proposeAll(c, commands("ok", 10));
    await c.runUntil(() => appliedEverywhere(c, 10), 10_000, "first 10 applied");
    const follower = [...c.nodes.keys()].find((id) => id !== leader.id)!;
    const store = c.logs.get(follower) as MemoryLogStore;
    const machine = c.machines.get(follower)!;
    // The follower holds "a" durably; its commit reaches it with the AppendEntries of "b", whose write
    // never completes while syncs are held. "a" must be applied anyway: it is on this disk already.
    // (Appends and heartbeats from the leader are cut once the follower holds "a", so no commit-only
    // message tells it about "a" before "b" arrives.)
    const seen: number[] = [];
    machine.onApply = () => seen.push(store.pendingWrites);
    const a = await leader.propose(enc.encode("a"));
    await c.runUntil(() => c.node(follower).status().lastIndex >= a.index, 1_000, "a held by the follower");
    c.network.blockOneWay(leader.id, follower);
    await c.runUntil(() => leader.status().commitIndex >= a.index, 1_000, "a committed");
    expect(machine.commands).not.toContain("a");
    store.holdSyncs(true);
    c.network.heal();
    await leader.propose(enc.encode("b"));
    await c.runUntil(() => machine.commands.includes("a"), 1_000, "a applied during the follower's held write of b");
    expect(seen.at(-1)).toBeGreaterThan(0); // its apply ran while the write of "b" was pending
    expect(machine.commands).not.toContain("b");
    store.holdSyncs(false);
    await c.runUntil(() => appliedEverywhere(c, 12), 10_000, "all 12 applied");
    expectConsistent(c);
  });

  test("an apply that fails while the follower's next write syncs stops the node; nothing is applied after the gap", async () => {
    const c = cluster(3, 4);
    await c.start();
    const leader = await c.waitForLeader();
    await proposeAll(c, commands("ok", 10));
    await c.runUntil(() => appliedEverywhere(c, 10), 10_000, "first 10 applied");
    const follower = [...c.nodes.keys()].find((id) => id !== leader.id)!;
    const store = c.logs.get(follower) as MemoryLogStore;
    const machine = c.machines.get(follower)!;
    const node = c.node(follower);
    // As above: "a" is applied in the overlap with the write of "b"; here that apply fails.
    machine.onApply = (entries) => {
      if (entries.some((e) => new TextDecoder().decode(e.data) === "a")) throw new Error("the machine's disk says no");
    };
    const a = await leader.propose(enc.encode("a"));
    await c.runUntil(() => node.status().lastIndex >= a.index, 1_000, "a held by the follower");
    c.network.blockOneWay(leader.id, follower);
    await c.runUntil(() => leader.status().commitIndex >= a.index, 1_000, "a committed");
    store.holdSyncs(true);
    c.network.heal();
    await leader.propose(enc.encode("b"));
    await c.runUntil(() => store.pendingWrites > 0, 1_000, "the write of b pending");
    store.holdSyncs(false);
    await c.runUntil(() => node.status().stopped, 1_000, "the follower stopping on the failed apply");
    expect(node.status().fatal).toContain("the machine's disk says no");
    await proposeAll(c, commands("after", 3));
    await c.runFor(200);
    expect(machine.commands).not.toContain("b");
    expect(machine.violations).toEqual([]);
  });

  test("a partitioned leader is replaced; after healing its uncommitted entries are dropped", async () => {
    const c = cluster(5, 5);
    await c.start();
    const old = await c.waitForLeader();
    await proposeAll(c, commands("pre", 10));
    await c.runUntil(() => appliedEverywhere(c, 10), 10_000, "first 10 applied");

    const others = [...c.nodes.keys()].filter((id) => id !== old.id);
    c.network.partition([old.id], others);
    await old.propose(enc.encode("orphan")); // accepted locally, can never commit
    await c.runUntil(() => {
      const l = c.leader();
      return l !== undefined && l.id !== old.id;
    }, 10_000, "a new leader in the majority");
    await c.runUntil(() => old.status().role !== "Leader", 10_000, "old leader stepping down (check quorum)");
    await proposeAll(c, commands("majority", 20));
    await c.runUntil(() => appliedEverywhere(c, 30, others), 10_000, "majority applying");
    expect(c.machines.get(old.id)!.commands.length).toBe(10);

    c.network.heal();
    await c.runUntil(() => appliedEverywhere(c, 30), 10_000, "old leader catching up after heal");
    for (const m of c.machines.values()) expect(m.commands).not.toContain("orphan");
    expectConsistent(c);
  });

  test("a one-way partition does not wedge the cluster", async () => {
    const c = cluster(3, 6);
    await c.start();
    const leader = await c.waitForLeader();
    const follower = [...c.nodes.keys()].find((id) => id !== leader.id)!;
    c.network.blockOneWay(leader.id, follower); // the follower hears nothing but can still talk
    await proposeAll(c, commands("oneway", 20));
    await c.runFor(2_000);
    c.network.heal();
    await c.runUntil(() => appliedEverywhere(c, 20), 20_000, "all nodes applying after the one-way block");
    expectConsistent(c);
  });

  test("a lagging follower catches up through a snapshot streamed in several chunks", async () => {
    const c = cluster(3, 7, {
      stateMachine: (_id, previous) => previous?.recover() ?? new ListMachine(undefined, 10),
      node: { snapshotThreshold: 20, snapshotChunkBytes: 64 },
    });
    await c.start();
    const leader = await c.waitForLeader();
    const lagging = [...c.nodes.keys()].find((id) => id !== leader.id)!;
    c.network.disconnect(lagging);
    await proposeAll(c, commands("snap", 150));
    await c.runUntil(() => appliedEverywhere(c, 150, [...c.nodes.keys()].filter((id) => id !== lagging)), 20_000, "majority applying");
    const compactedTo = c.node(leader.id).status().snapshotIndex;
    expect(compactedTo).toBeGreaterThan(c.machines.get(lagging)!.lastApplied());

    c.network.reconnect(lagging);
    await c.runUntil(() => appliedEverywhere(c, 150), 20_000, "lagging follower catching up");
    expect(c.machines.get(lagging)!.restores).toBeGreaterThanOrEqual(1);
    expect(c.node(lagging).status().snapshotsReceived).toBeGreaterThanOrEqual(1);
    expect(c.network.stats().snapshotChunks).toBeGreaterThan(1);
    expect(c.node(lagging).status().snapshotIndex).toBeGreaterThan(0);
    // The follower keeps replicating normally after the install.
    await proposeAll(c, commands("post", 10));
    await c.runUntil(() => appliedEverywhere(c, 160), 10_000, "replication after the snapshot");
    expectConsistent(c);
  });

  test("big entries: the log is compacted by the bytes it holds long before the entry count is reached", async () => {
    for (const flushEvery of [5, 0]) {
      // flushEvery 0: the machine never flushes on its own, so compaction must force its sync.
      const c = cluster(3, 17 + flushEvery, {
        stateMachine: (_id, previous) => previous?.recover() ?? new ListMachine(undefined, flushEvery),
        node: { snapshotThreshold: 10_000, snapshotThresholdBytes: 8 * 1024 },
      });
      await c.start();
      const big = (i: number) => `${"x".repeat(1000)}-${i}`;
      let mostHeld = 0;
      for (let i = 0; i < 60; i++) {
        await proposeAll(c, [big(i)]);
        for (const id of c.nodes.keys()) {
          const log = c.logs.get(id)!;
          mostHeld = Math.max(mostHeld, log.lastIndex() - log.firstIndex() + 1);
        }
      }
      await c.runUntil(() => appliedEverywhere(c, 60), 20_000, "60 big entries applied");
      for (const id of c.nodes.keys()) expect(c.node(id).status().snapshotIndex).toBeGreaterThan(0);
      // 8 KiB of ~1 KB entries, twice over before a forced sync, and what is in flight meanwhile.
      expect(mostHeld).toBeLessThanOrEqual(30);
      expectConsistent(c);
      await c.stop();
    }
  });

  test("a follower that crashes after restoring a snapshot but before resetting its log recovers", async () => {
    const c = cluster(3, 8, {
      stateMachine: (_id, previous) => previous?.recover() ?? new ListMachine(undefined, 5),
      node: { snapshotThreshold: 10, snapshotChunkBytes: 128 },
    });
    await c.start();
    const leader = await c.waitForLeader();
    const lagging = [...c.nodes.keys()].find((id) => id !== leader.id)!;
    c.network.disconnect(lagging);
    await proposeAll(c, commands("x", 60));
    await c.runUntil(() => c.node(leader.id).status().snapshotIndex > 0, 20_000, "leader compacting");
    // The lagging node's log will not sync: it restores the machine, then "crashes" before the reset.
    (c.logs.get(lagging) as MemoryLogStore).holdSyncs(true);
    c.network.reconnect(lagging);
    await c.runUntil(() => c.machines.get(lagging)!.restores > 0, 20_000, "snapshot restored");
    const restoredAt = c.machines.get(lagging)!.lastApplied();
    await c.crash(lagging);
    const durableLog = (c.logs.get(lagging) as MemoryLogStore).reopen();
    expect(durableLog.lastIndex()).toBeLessThan(restoredAt); // the crash left the log behind the machine
    await c.restart(lagging); // machine ahead of the log: the driver resets the log to it
    expect(c.logs.get(lagging)!.snapshotMeta().index).toBe(restoredAt);
    await c.runUntil(() => appliedEverywhere(c, 60), 20_000, "recovered follower caught up");
    expectConsistent(c);
  });

  test("readIndex on the leader is confirmed and applied; followers answer NotLeaderError with the leader", async () => {
    const c = cluster(3, 9);
    await c.start();
    const leader = await c.waitForLeader();
    await proposeAll(c, commands("r", 5));
    await c.runUntil(() => appliedEverywhere(c, 5), 5_000, "5 commands applied");
    let readAt = -1;
    leader.readIndex().then((index) => (readAt = index));
    await c.runUntil(() => readAt >= 0, 5_000, "read index confirmed");
    expect(readAt).toBeGreaterThanOrEqual(6); // 5 commands + the leader's no-op
    expect(c.machines.get(leader.id)!.lastApplied()).toBeGreaterThanOrEqual(readAt);

    const follower = c.node([...c.nodes.keys()].find((id) => id !== leader.id)!);
    const err = await follower.readIndex().catch((e) => e);
    expect(err).toBeInstanceOf(NotLeaderError);
    expect(err.leaderId).toBe(leader.id);
    const proposeErr = await follower.propose(enc.encode("nope")).catch((e) => e);
    expect(proposeErr).toBeInstanceOf(NotLeaderError);
    expect(proposeErr.leaderId).toBe(leader.id);
  });

  test("a leader cut off from its quorum cannot serve a read", async () => {
    const c = cluster(3, 10);
    await c.start();
    const leader = await c.waitForLeader();
    c.network.partition([leader.id], [...c.nodes.keys()].filter((id) => id !== leader.id));
    let outcome: unknown = null;
    leader.readIndex().then(
      (index) => (outcome = index),
      (err) => (outcome = err),
    );
    await c.runUntil(() => outcome !== null, 10_000, "isolated leader's read failing");
    expect(outcome).toBeInstanceOf(Error);
  });

  test("a disk failure stops the node, surfaces the error, and nothing after it is acknowledged", async () => {
    const c = cluster(3, 11);
    await c.start();
    const leader = await c.waitForLeader();
    const victim = [...c.nodes.keys()].find((id) => id !== leader.id)!;
    (c.logs.get(victim) as MemoryLogStore).failSyncs(new Error("EIO: simulated disk failure"));
    await proposeAll(c, commands("d", 5));
    await c.runUntil(() => c.node(victim).status().stopped, 5_000, "victim stopping");
    expect(c.node(victim).status().fatal).toMatch(/EIO/);
    expect(c.fatal.get(victim)?.message).toMatch(/EIO/);
    await expect(c.node(victim).propose(enc.encode("x"))).rejects.toBeInstanceOf(NodeStoppedError);
    // The other two still form a quorum.
    await c.runUntil(() => appliedEverywhere(c, 5, [...c.nodes.keys()].filter((id) => id !== victim)), 10_000, "survivors applying");
    c.fatal.delete(victim);
    expectConsistent(c);
  });

  test("leadership transfer moves the leader to the chosen node", async () => {
    const c = cluster(3, 12);
    await c.start();
    const leader = await c.waitForLeader();
    await proposeAll(c, commands("t", 3));
    const target = [...c.nodes.keys()].find((id) => id !== leader.id)!;
    leader.transferLeadership(target);
    await c.runUntil(() => c.leader()?.id === target, 5_000, "transfer to the target");
    await proposeAll(c, commands("t2", 3));
    await c.runUntil(() => appliedEverywhere(c, 6), 5_000, "applying after transfer");
    expectConsistent(c);
  });
});

describe("RaftNode cluster on real log files", () => {
  test("3 nodes with FileLogStore replicate, stop, and replay the log into fresh machines", async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "kvraft-node-"));
    try {
      const dirOf = (id: NodeId) => path.join(root, `node-${id}`);
      const c = cluster(3, 13, {
        logStore: async (id, previous) => {
          await previous?.close();
          return FileLogStore.open(dirOf(id), { segmentBytes: 16 * 1024 });
        },
        // A machine with no durability: after a restart everything is replayed from the log.
        stateMachine: () => new ListMachine(),
      });
      await c.start();
      await c.waitForLeader();
      const cmds = commands("disk", 40);
      await proposeAll(c, cmds);
      await c.runUntil(() => appliedEverywhere(c, 40), 20_000, "all applying 40 commands");
      expect((c.logs.get(0) as FileLogStore).stats().fsyncs).toBeGreaterThan(0);
      for (const id of [0, 1, 2]) await c.crash(id as NodeId);
      for (const id of [0, 1, 2]) await c.restart(id as NodeId);
      // Committed entries are replayed after the (empty) machine's applied index 0.
      await c.runUntil(() => appliedEverywhere(c, 40), 20_000, "replay after restart");
      for (const m of c.machines.values()) expect(m.commands.slice(0, 40)).toEqual(cmds);
      await c.stop();
      for (const log of c.logs.values()) await log.close();
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
  });
});

export type { RaftNode };
