// One randomized full-fault run: proposals, reads, transfers, crashes (at any point of the driver
// loop), restarts, symmetric and one-way partitions, on a lossy reordering network with
// snapshots; then a healing phase that must end with every node applying the same history.

import { mix, hex } from "./checker.ts";
import { CoreSimCluster } from "./cluster.ts";
import { CRASH_POINTS, FAULTY, healEverything, injectNetworkFaults } from "./faults.ts";
import type { DiskFault } from "./sim-node.ts";

export interface ScheduleOptions {
  seed: number;
  nodes: number;
  /** Ticks of faulty operation before the healing phase. */
  steps: number;
  /**
   * Also lose disks: a down node's disk wiped, its newest entries truncated, or its state machine
   * discarded (self-repair). A separate family of runs: without it a seed replays byte for byte.
   */
  diskFaults?: boolean;
}

export interface ScheduleResult {
  /** The one summary line the CLI prints: `seed S: ... ok hash=<hex>`. */
  line: string;
  hash: string;
  cluster: CoreSimCluster;
}

const DISK_FAULTS: readonly DiskFault[] = ["wipe", "truncate", "discard-state"];
/** Ticks the healed cluster gets to converge before that counts as a liveness failure. */
const HEAL_TICKS = 1000;

export function replayCommand(o: ScheduleOptions): string {
  return `bun run sim --seed ${o.seed} --nodes ${o.nodes} --steps ${o.steps}${o.diskFaults ? " --disk-faults" : ""}`;
}

function majority(n: number): number {
  return Math.floor(n / 2) + 1;
}

export function runRandomSchedule(o: ScheduleOptions): ScheduleResult {
  if (!Number.isInteger(o.steps) || o.steps < 0) throw new RangeError(`steps must be a non-negative integer, got ${o.steps}`);
  const c = new CoreSimCluster({
    seed: o.seed,
    nodes: o.nodes,
    network: FAULTY,
    snapshotEvery: 25,
    maxInflight: 4,
    maxBytesPerAppend: 64,
    replay: replayCommand(o),
    ...(o.diskFaults ? { startRecovering: true } : {}),
  });
  const rng = c.rng;
  const n = o.nodes;
  const maxDown = Math.max(0, Math.floor((n - 1) / 2) + (rng.chance(0.2) ? 1 : 0));
  let command = 0;
  let readContext = 0;
  const payload = () => {
    command++;
    const bytes = new Uint8Array(1 + rng.int(24));
    bytes[0] = command & 0xff;
    for (let i = 1; i < bytes.length; i++) bytes[i] = rng.int(256);
    return bytes;
  };

  for (let step = 0; step < o.steps; step++) {
    const leader = c.leader();
    if (rng.chance(0.3)) {
      const target = leader !== -1 && rng.chance(0.8) ? leader : rng.int(n);
      const batch = Array.from({ length: 1 + rng.int(3) }, payload);
      c.propose(target, batch);
    }
    if (leader !== -1 && rng.chance(0.05)) c.readIndex(rng.chance(0.8) ? leader : rng.int(n), ++readContext);
    if (leader !== -1 && rng.chance(0.004)) c.transferLeadership(leader, rng.int(n));
    const down = c.nodes.filter((x) => !x.alive).map((x) => x.id);
    if (down.length < maxDown && rng.chance(0.006)) c.crashAt(rng.int(n), rng.pick(CRASH_POINTS));
    // A disk fault only while enough nodes keep their promises to elect a leader (a majority not
    // recovering): losing more is losing the cluster's data, which no protocol can repair.
    if (o.diskFaults && down.length > 0 && rng.chance(0.01) && c.recoveringCount() < n - majority(n)) {
      const victim = rng.pick(down);
      if (!c.nodes[victim]!.disk.recovering) c.loseDisk(victim, rng.pick(DISK_FAULTS), 1 + rng.int(40));
    }
    if (down.length > 0 && rng.chance(0.03)) c.restart(rng.pick(down));
    injectNetworkFaults(c);
    c.tick();
  }

  // Healing: every node up, a reliable network; the cluster must elect a leader, commit a fresh
  // entry and bring every state machine to the same applied index.
  healEverything(c);
  let finalIndex = -1;
  const converged = c.runUntil(() => {
    const leader = c.leader();
    if (leader === -1) return false;
    if (finalIndex === -1 || c.status(leader).lastIndex < finalIndex) {
      const r = c.propose(leader, [new TextEncoder().encode(`final-${o.seed}`)]);
      if (r.ok) finalIndex = r.index;
      return false;
    }
    const target = c.oracle.maxApplied;
    return target >= finalIndex && c.nodes.every((x) => x.applied === target);
  }, HEAL_TICKS);
  if (!converged) c.fail("liveness", `after healing for ${HEAL_TICKS} ticks the cluster did not converge: ${c.describe()}`);

  let h = c.oracle.historyHash();
  for (const x of c.nodes) h = mix(h, x.id, x.applied, x.state);
  const hash = hex(h);
  const s = c.stats;
  const confirmedReads = [...c.reads.values()].filter((r) => r.index !== undefined).length;
  const line =
    `seed ${o.seed}: nodes=${n} steps=${o.steps} ticks=${c.tickCount} terms=${c.maxTerm()} leaders=${s.elections} ` +
    `committed=${c.oracle.maxApplied} applied=${c.nodes.map((x) => x.applied).join("/")} reads=${confirmedReads}/${c.reads.size} ` +
    `crashes=${s.crashes} partitions=${s.partitions} snapshots=${s.snapshotsInstalled}/${s.snapshotsSent} compactions=${s.compactions} ` +
    `messages=${c.network.sent}${o.diskFaults ? ` disk-faults=${s.diskFaults}` : ""} ok hash=${hash}`;
  return { line, hash, cluster: c };
}
