// Snapshot scenarios (6.824's 2D tests): compaction keeps logs small; followers that fell behind
// the compaction point catch up through InstallSnapshot, over lossy networks and across crashes.

import { describe, test } from "bun:test";
import { Harness, cmd } from "./harness.ts";

const FILE = "snapshot.test.ts";
const SNAPSHOT_EVERY = 10;
/** A log may hold what arrived since the last compaction, plus what is in flight. */
const MAX_LOG = 3 * SNAPSHOT_EVERY + 20;

function snapshotScenario(name: string, disconnect: boolean, reliable: boolean, crash: boolean): void {
  test(name, () => {
    const h = new Harness(name, FILE, 3, { snapshotEvery: SNAPSHOT_EVERY, unreliable: !reliable });
    const rng = h.c.rng;
    h.one(cmd(rng.int(1000)), 3, true);
    let leader = h.checkOneLeader();
    for (let i = 0; i < 30; i++) {
      let victim = (leader + 1) % 3;
      let sender = leader;
      if (i % 3 === 1) {
        sender = (leader + 1) % 3;
        victim = leader;
      }
      if (disconnect) {
        h.disconnect(victim);
        h.one(cmd(rng.int(1000)), 2, true);
      }
      if (crash) {
        h.crash(victim);
        h.one(cmd(rng.int(1000)), 2, true);
      }
      // Enough entries for the survivors to compact past where the victim stopped.
      for (let j = 0; j < SNAPSHOT_EVERY + 1; j++) h.c.propose(sender, [cmd(rng.int(1000))]);
      h.one(cmd(rng.int(1000)), 2, true);
      for (let k = 0; k < 3; k++) {
        if (!h.c.alive(k)) continue;
        const s = h.c.status(k);
        h.expect(s.lastIndex - s.firstIndex + 1 <= MAX_LOG, `node ${k} holds ${s.lastIndex - s.firstIndex + 1} entries (limit ${MAX_LOG})`);
      }
      if (disconnect) {
        h.connect(victim);
        h.one(cmd(rng.int(1000)), 3, true);
        leader = h.checkOneLeader();
      }
      if (crash) {
        h.restart(victim);
        h.one(cmd(rng.int(1000)), 3, true);
        leader = h.checkOneLeader();
      }
    }
    h.expect(h.c.stats.compactions > 0, "no node ever compacted its log");
    if (disconnect || crash) h.expect(h.c.stats.snapshotsInstalled > 0, "no follower ever needed a snapshot");
  });
}

describe("snapshots", () => {
  snapshotScenario("SnapshotBasic", false, true, false);
  snapshotScenario("SnapshotInstall", true, true, false);
  snapshotScenario("SnapshotInstallUnreliable", true, false, false);
  snapshotScenario("SnapshotInstallCrash", false, true, true);
  snapshotScenario("SnapshotInstallUnCrash", false, false, true);

  test("SnapshotAllCrash: every node crashes and restarts from its snapshot plus log tail", () => {
    const h = new Harness("SnapshotAllCrash", FILE, 3, { snapshotEvery: SNAPSHOT_EVERY });
    h.one(cmd("first"), 3, true);
    for (let i = 0; i < 5; i++) {
      for (let j = 0; j < SNAPSHOT_EVERY + 1; j++) h.one(cmd(`${i}-${j}`), 3, true);
      const before = h.c.oracle.maxApplied;
      for (let k = 0; k < 3; k++) h.crash(k);
      for (let k = 0; k < 3; k++) h.restart(k);
      const index = h.one(cmd(`after-${i}`), 3, true);
      h.expect(index > before, `index ${index} after a full restart, expected > ${before}`);
    }
  });
});
