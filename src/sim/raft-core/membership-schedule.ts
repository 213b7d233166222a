// One randomized run that mixes membership changes (add learner, promote, remove — the leader
// included) with proposals, reads, transfers, crashes, partitions and a lossy network. Spare nodes
// start empty and wait to be added. A separate seed family from schedule.ts (`--membership`), so
// the plain runs keep their exact output.

import { mix, hex } from "./checker.ts";
import { CoreSimCluster } from "./cluster.ts";
import { CRASH_POINTS, FAULTY, healEverything, injectNetworkFaults } from "./faults.ts";
import type { ScheduleOptions, ScheduleResult } from "./schedule.ts";
import type { ConfChange } from "../../raft/core/raft.ts";
import type { NodeId } from "../../raft/types.ts";

const HEAL_TICKS = 1500;

export function membershipReplayCommand(o: ScheduleOptions): string {
  return `bun run sim --membership --seed ${o.seed} --nodes ${o.nodes} --steps ${o.steps}`;
}

export function runMembershipSchedule(o: ScheduleOptions): ScheduleResult {
  if (!Number.isInteger(o.steps) || o.steps < 0) throw new RangeError(`steps must be a non-negative integer, got ${o.steps}`);
  if (o.nodes < 2) throw new RangeError(`a membership run needs at least 2 nodes (one spare), got ${o.nodes}`);
  const n = o.nodes;
  const bootstrap = Array.from({ length: Math.max(1, n - 2) }, (_, i) => i);
  const c = new CoreSimCluster({
    seed: o.seed,
    nodes: n,
    members: bootstrap,
    network: FAULTY,
    snapshotEvery: 25,
    maxInflight: 4,
    maxBytesPerAppend: 64,
    maxLearnerLag: 5,
    replay: membershipReplayCommand(o),
  });
  const rng = c.rng;
  const maxDown = Math.max(0, Math.floor((n - 1) / 2) + (rng.chance(0.2) ? 1 : 0));
  const changes = { proposed: 0, accepted: 0, leaderRemovals: 0 };
  let command = 0;
  let readContext = 0;
  const payload = () => {
    command++;
    const bytes = new Uint8Array(1 + rng.int(24));
    bytes[0] = command & 0xff;
    for (let i = 1; i < bytes.length; i++) bytes[i] = rng.int(256);
    return bytes;
  };

  /** A random change that makes sense against the leader's configuration, or null. */
  const pickChange = (leader: NodeId): ConfChange | null => {
    const m = c.status(leader).membership;
    const others = c.nodes.map((x) => x.id).filter((id) => !m.voters.includes(id) && !m.learners.includes(id));
    const kind = rng.int(10);
    if (kind < 4 && others.length > 0) return { type: "add-learner", id: rng.pick(others), address: `sim-${rng.int(1000)}` };
    if (kind < 7 && m.learners.length > 0) return { type: "promote", id: rng.pick(m.learners) };
    if (kind < 8 && m.learners.length > 0) return { type: "remove", id: rng.pick(m.learners) };
    if (m.voters.length > 2) return { type: "remove", id: rng.chance(0.4) ? leader : rng.pick(m.voters) };
    return null;
  };

  for (let step = 0; step < o.steps; step++) {
    const leader = c.leader();
    if (rng.chance(0.3)) {
      const target = leader !== -1 && rng.chance(0.8) ? leader : rng.int(n);
      c.propose(target, Array.from({ length: 1 + rng.int(3) }, payload));
    }
    if (leader !== -1 && rng.chance(0.05)) c.readIndex(rng.chance(0.8) ? leader : rng.int(n), ++readContext);
    // A proposal may have crashed the leader (an armed crash strikes in its next Ready).
    if (leader !== -1 && rng.chance(0.004) && c.alive(leader)) c.transferLeadership(leader, rng.pick(c.status(leader).membership.voters));
    if (leader !== -1 && rng.chance(0.03) && c.alive(leader)) {
      const change = pickChange(leader);
      if (change !== null) {
        changes.proposed++;
        const r = c.proposeConfChange(leader, change);
        if (r.ok) {
          changes.accepted++;
          if (change.type === "remove" && change.id === leader) changes.leaderRemovals++;
        }
      }
    }
    const down = c.nodes.filter((x) => !x.alive).map((x) => x.id);
    if (down.length < maxDown && rng.chance(0.006)) c.crashAt(rng.int(n), rng.pick(CRASH_POINTS));
    if (down.length > 0 && rng.chance(0.03)) c.restart(rng.pick(down));
    injectNetworkFaults(c);
    c.tick();
  }

  // Healing: every node up on a reliable network. A leader must commit a fresh entry and every
  // member of its configuration (voters and learners) must apply the same history up to it;
  // removed nodes keep a prefix of it (the oracle checks every apply).
  healEverything(c);
  let finalIndex = -1;
  let members: NodeId[] = [];
  const converged = c.runUntil(() => {
    const leader = c.leader();
    if (leader === -1) return false;
    const s = c.status(leader);
    if (finalIndex === -1 || s.lastIndex < finalIndex) {
      const r = c.propose(leader, [new TextEncoder().encode(`final-${o.seed}`)]);
      if (r.ok) finalIndex = r.index;
      return false;
    }
    members = [...s.membership.voters, ...s.membership.learners];
    const target = c.oracle.maxApplied;
    return target >= finalIndex && members.every((id) => c.nodes[id]!.applied === target);
  }, HEAL_TICKS);
  if (!converged) c.fail("liveness", `after healing for ${HEAL_TICKS} ticks the members did not converge: ${c.describe()}`);

  let h = c.oracle.historyHash();
  for (const x of c.nodes) h = mix(h, x.id, x.applied, x.state);
  const hash = hex(h);
  const s = c.stats;
  const m = c.status(c.leader()).membership;
  const line =
    `seed ${o.seed}: membership nodes=${n} steps=${o.steps} ticks=${c.tickCount} terms=${c.maxTerm()} leaders=${s.elections} ` +
    `committed=${c.oracle.maxApplied} changes=${changes.accepted}/${changes.proposed} leader-removals=${changes.leaderRemovals} ` +
    `voters=[${m.voters.join(",")}] learners=[${m.learners.join(",")}] applied=${c.nodes.map((x) => x.applied).join("/")} ` +
    `crashes=${s.crashes} partitions=${s.partitions} snapshots=${s.snapshotsInstalled}/${s.snapshotsSent} messages=${c.network.sent} ok hash=${hash}`;
  return { line, hash, cluster: c };
}
