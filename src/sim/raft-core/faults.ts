// Fault steps shared by the core simulator's schedules (plain, --disk-faults, --membership): where
// a crash may strike, the network faults of one tick, and the healing that ends a schedule.
// Each draws from the cluster's seeded generator in a fixed order, so a seed replays exactly.

import type { CoreSimCluster } from "./cluster.ts";
import { RELIABLE, type NetworkOptions } from "./network.ts";
import type { CrashPoint } from "./sim-node.ts";

/** The lossy, reordering, duplicating network of a schedule's faulty phase. */
export const FAULTY: NetworkOptions = { minDelay: 1, maxDelay: 4, lossRate: 0.08, duplicateRate: 0.03 };

export const CRASH_POINTS: readonly (CrashPoint | "now")[] = ["now", "before-persist", "after-persist", "after-send"];

/** One tick's chance of a random symmetric partition, a one-way block, or healing them all. */
export function injectNetworkFaults(c: CoreSimCluster): void {
  const rng = c.rng;
  const n = c.nodes.length;
  if (rng.chance(0.006)) {
    const side = c.nodes.map(() => rng.chance(0.5));
    c.partition([c.nodes.filter((_, i) => side[i]).map((x) => x.id), c.nodes.filter((_, i) => !side[i]).map((x) => x.id)]);
  }
  if (n > 1 && rng.chance(0.003)) {
    const from = rng.int(n);
    c.blockOneWay(from, (from + 1 + rng.int(n - 1)) % n);
  }
  if (rng.chance(0.01)) c.heal();
}

/** The start of every healing phase: no partitions, a reliable network, every node up and unarmed. */
export function healEverything(c: CoreSimCluster): void {
  c.heal();
  c.setNetwork(RELIABLE);
  for (const x of c.nodes) {
    x.armedCrash = null;
    c.restart(x.id);
  }
}
