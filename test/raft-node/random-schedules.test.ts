// Seeded random schedules of proposals, crashes, restarts, partitions and lossy links against a
// 5-node cluster; checks election safety and state machine safety throughout and convergence after.
// Replay one seed: KVRAFT_SEED=<seed> bun test test/raft-node/random-schedules.test.ts
// More seeds:      KVRAFT_SEEDS=<count> bun test test/raft-node/random-schedules.test.ts

import { afterEach, expect, test } from "bun:test";
import { type NodeId, NotLeaderError } from "../../src/raft/index.ts";
import { NodeSimCluster } from "../../src/sim/raft-node/index.ts";
import { Rng } from "../../src/util/rng.ts";
import { ListMachine } from "./list-machine.ts";

const enc = new TextEncoder();
const IDS: NodeId[] = [0, 1, 2, 3, 4];
const seeds = process.env.KVRAFT_SEED
  ? [Number(process.env.KVRAFT_SEED)]
  : Array.from({ length: Number(process.env.KVRAFT_SEEDS ?? 6) }, (_, i) => 1000 + i);

let running: NodeSimCluster<ListMachine> | null = null;
afterEach(async () => {
  await running?.stop();
  running = null;
});

for (const seed of seeds) {
  test(`random schedule, seed ${seed} (replay: KVRAFT_SEED=${seed})`, async () => {
    const rng = new Rng(seed);
    const c = new NodeSimCluster<ListMachine>({
      ids: IDS,
      seed,
      stateMachine: (_id, previous) => previous?.recover() ?? new ListMachine(undefined, 7),
      faults: { minDelayMs: 1, maxDelayMs: 20, lossRate: 0.02, duplicateRate: 0.02 },
      node: { snapshotThreshold: 30, snapshotChunkBytes: 64 },
    });
    running = c;
    await c.start();
    const down = new Set<NodeId>();
    const leaderOfTerm = new Map<number, NodeId>();
    let proposed = 0;

    const checkSafety = () => {
      for (const node of c.nodes.values()) {
        const s = node.status();
        if (s.role !== "Leader") continue;
        const known = leaderOfTerm.get(s.term);
        if (known !== undefined && known !== s.id) throw new Error(`seed ${seed}: two leaders (${known}, ${s.id}) in term ${s.term}`);
        leaderOfTerm.set(s.term, s.id);
      }
      const lists = [...c.machines.values()].map((m) => m.commands);
      const longest = lists.reduce((a, b) => (b.length > a.length ? b : a));
      for (const [id, m] of c.machines) {
        if (m.violations.length > 0) throw new Error(`seed ${seed}: node ${id}: ${m.violations[0]}`);
        for (let i = 0; i < m.commands.length; i++) {
          if (m.commands[i] !== longest[i]) throw new Error(`seed ${seed}: node ${id} applied ${m.commands[i]} where another applied ${longest[i]}`);
        }
      }
    };

    for (let round = 0; round < 40; round++) {
      const action = rng.int(10);
      if (action < 5) {
        const leader = c.leader();
        for (let k = rng.range(1, 8); leader && k > 0; k--) {
          try {
            await leader.propose(enc.encode(`s${seed}-${proposed++}`));
          } catch (err) {
            if (!(err instanceof NotLeaderError)) throw err;
          }
        }
      } else if (action === 5 && down.size < 2) {
        const victim = rng.pick(IDS.filter((id) => !down.has(id)));
        await c.crash(victim);
        down.add(victim);
      } else if (action === 6 && down.size > 0) {
        const back = rng.pick([...down]);
        down.delete(back);
        await c.restart(back);
      } else if (action === 7) {
        const shuffled = [...IDS].sort(() => rng.next() - 0.5);
        const cut = rng.range(1, 2);
        c.network.heal();
        c.network.partition(shuffled.slice(0, cut), shuffled.slice(cut));
      } else if (action === 8) {
        c.network.heal();
      }
      await c.runFor(rng.range(50, 500));
      checkSafety();
    }

    // Heal everything; a final command proves the cluster converges with every node applying it.
    c.network.heal();
    c.network.setFaults({ lossRate: 0, duplicateRate: 0 });
    for (const id of down) await c.restart(id);
    const barrier = `s${seed}-barrier`;
    let barrierTerm = -1; // proposed at most once per leader term, so retries stay bounded
    const converged = () => {
      const lists = [...c.machines.values()].map((m) => m.commands);
      return lists.every((l) => l.includes(barrier) && l.length === lists[0].length);
    };
    await c.runUntil(() => {
      const leader = c.leader();
      if (leader && leader.status().term !== barrierTerm && !c.machines.get(leader.id)!.commands.includes(barrier)) {
        barrierTerm = leader.status().term;
        leader.propose(enc.encode(barrier)).catch(() => {});
      }
      return converged();
    }, 60_000, `seed ${seed}: convergence after healing`);
    await c.runFor(2_000); // nothing still in flight changes the picture
    expect(converged()).toBe(true);
    checkSafety();
    const lists = [...c.machines.values()].map((m) => m.commands);
    for (const list of lists) expect(list).toEqual(lists[0]);
    const proposals = lists[0].filter((x) => x !== barrier);
    expect(new Set(proposals).size).toBe(proposals.length); // each proposal applied at most once
    expect(c.fatal.size).toBe(0);
  });
}
