// 200 randomized full-fault schedules (crashes at every driver-loop point, partitions, one-way
// cuts, loss, duplication, reordering, snapshots, transfers, reads), each ending in a liveness check.

import { describe, test } from "bun:test";
import { InvariantViolation, runRandomSchedule } from "../../src/sim/raft-core/index.ts";

const SEEDS = 200;
const FIRST_SEED = Number(process.env.RAFT_FIRST_SEED ?? 1);
const SIZES = [3, 5, 7] as const;

describe("random fault schedules", () => {
  test(`${SEEDS} seeds keep every invariant and converge after healing`, () => {
    const failures: string[] = [];
    for (let seed = FIRST_SEED; seed < FIRST_SEED + SEEDS; seed++) {
      const nodes = SIZES[seed % SIZES.length]!;
      const steps = nodes === 7 ? 800 : 1500;
      try {
        runRandomSchedule({ seed, nodes, steps });
      } catch (e) {
        // InvariantViolation's message already names the seed, the invariant, the events and the replay.
        failures.push(e instanceof InvariantViolation ? e.message : `seed ${seed}: ${String(e)}\nreplay: bun run sim --seed ${seed} --nodes ${nodes} --steps ${steps}`);
        if (failures.length >= 3) break;
      }
    }
    if (failures.length > 0) throw new Error(failures.join("\n\n"));
  }, 120_000);
});

describe("random fault schedules with disk faults", () => {
  // A separate family: wiped disks, truncated logs and discarded state machines of down nodes
  // (at most as many as leave a majority that kept its promises). Election safety, leader
  // completeness, durability counting recovering nodes as abstainers, and "a recovering node
  // grants no vote" are checked on every tick.
  test("100 seeds keep every invariant and converge after healing", () => {
    const failures: string[] = [];
    for (let seed = FIRST_SEED; seed < FIRST_SEED + 100; seed++) {
      const nodes = SIZES[seed % SIZES.length]!;
      const steps = nodes === 7 ? 800 : 1500;
      try {
        runRandomSchedule({ seed, nodes, steps, diskFaults: true });
      } catch (e) {
        failures.push(e instanceof InvariantViolation ? e.message : `seed ${seed}: ${String(e)}\nreplay: bun run sim --seed ${seed} --nodes ${nodes} --steps ${steps} --disk-faults`);
        if (failures.length >= 3) break;
      }
    }
    if (failures.length > 0) throw new Error(failures.join("\n\n"));
  }, 120_000);
});
