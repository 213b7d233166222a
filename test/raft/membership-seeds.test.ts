// Randomized membership schedules: learners added, promoted and removed (the leader included)
// while crashes, partitions, one-way cuts, loss and reordering go on; each run ends healed and
// converged. Invariants: one leader per term across configurations, leaders and candidates are
// voters, elections won and commits made by voters only, no committed entry lost, same history.

import { describe, test } from "bun:test";
import { InvariantViolation, membershipReplayCommand, runMembershipSchedule } from "../../src/sim/raft-core/index.ts";

const SEEDS = 90;
const FIRST_SEED = Number(process.env.RAFT_FIRST_SEED ?? 1);
const SIZES = [3, 5, 7] as const;

describe("random membership schedules", () => {
  test(`${SEEDS} seeds keep every invariant and converge after healing`, () => {
    const failures: string[] = [];
    let changes = 0;
    for (let seed = FIRST_SEED; seed < FIRST_SEED + SEEDS; seed++) {
      const nodes = SIZES[seed % SIZES.length]!;
      const steps = nodes === 7 ? 800 : 1200;
      try {
        const { line } = runMembershipSchedule({ seed, nodes, steps });
        changes += Number(/changes=(\d+)\//.exec(line)?.[1] ?? 0);
      } catch (e) {
        failures.push(e instanceof InvariantViolation ? e.message : `seed ${seed}: ${String(e)}\nreplay: ${membershipReplayCommand({ seed, nodes, steps })}`);
        if (failures.length >= 3) break;
      }
    }
    if (failures.length > 0) throw new Error(failures.join("\n\n"));
    // The schedules really change membership (about 20 accepted changes per run).
    if (changes < SEEDS * 5) throw new Error(`only ${changes} membership changes were accepted over ${SEEDS} runs`);
  }, 120_000);
});
