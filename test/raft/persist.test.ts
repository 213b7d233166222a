// Crash-recovery scenarios (6.824's 2C tests): persistence, Figure 8, unreliable networks, churn.

import { describe, test } from "bun:test";
import { Harness, cmd } from "./harness.ts";

const FILE = "persist.test.ts";

describe("persistence", () => {
  test("Persist1: state survives crashes of all nodes, of the leader, and of followers", () => {
    const h = new Harness("Persist1", FILE, 3);
    h.one(cmd(11), 3, true);
    for (let i = 0; i < 3; i++) h.crash(i);
    for (let i = 0; i < 3; i++) h.restart(i);
    h.one(cmd(12), 3, true);
    const leader1 = h.checkOneLeader();
    h.crash(leader1);
    h.restart(leader1);
    h.one(cmd(13), 3, true);
    const leader2 = h.checkOneLeader();
    h.crash(leader2);
    h.one(cmd(14), 2, true);
    h.restart(leader2);
    h.wait(5, 3); // the restarted node replays and catches up to index 5
    const i3 = (h.checkOneLeader() + 1) % 3;
    h.crash(i3);
    h.one(cmd(15), 2, true);
    h.restart(i3);
    h.one(cmd(16), 3, true);
  });

  test("Persist2: repeated crashes of overlapping majorities", () => {
    const h = new Harness("Persist2", FILE, 5);
    let index = 1;
    for (let iters = 0; iters < 5; iters++) {
      h.one(cmd(10 + index++), 5, true);
      const leader1 = h.checkOneLeader();
      h.crash((leader1 + 1) % 5);
      h.crash((leader1 + 2) % 5);
      h.one(cmd(10 + index++), 3, true);
      h.crash(leader1);
      h.crash((leader1 + 3) % 5);
      h.crash((leader1 + 4) % 5);
      h.restart((leader1 + 1) % 5);
      h.restart((leader1 + 2) % 5);
      h.run(30);
      h.restart((leader1 + 3) % 5);
      h.one(cmd(10 + index++), 3, true);
      h.restart((leader1 + 4) % 5);
      h.restart(leader1);
    }
    h.one(cmd(1000), 5, true);
  });

  test("Persist3: a leader crashing right after a partitioned commit", () => {
    const h = new Harness("Persist3", FILE, 3);
    h.one(cmd(101), 3, false);
    const leader = h.checkOneLeader();
    h.disconnect((leader + 2) % 3);
    h.one(cmd(102), 2, false);
    h.crash(leader);
    h.crash((leader + 1) % 3);
    h.connect((leader + 2) % 3);
    h.restart(leader);
    h.one(cmd(103), 2, true);
    h.restart((leader + 1) % 3);
    h.one(cmd(104), 3, true);
  });

  test("Crash points: crashes between persist, send and apply lose nothing acknowledged", () => {
    const h = new Harness("CrashPoints", FILE, 3);
    h.one(cmd("base"), 3, true);
    for (const point of ["before-persist", "after-persist", "after-send"] as const) {
      for (let round = 0; round < 5; round++) {
        const leader = h.checkOneLeader();
        const victim = round % 2 === 0 ? leader : (leader + 1) % 3;
        h.c.crashAt(victim, point);
        h.c.propose(leader, [cmd(`${point}-${round}`)]);
        h.run(5);
        h.restart(victim);
        h.one(cmd(`after-${point}-${round}`), 3, true);
      }
    }
  });

  test("Figure8: leaders crash at random; the survivors never lose or reorder committed entries", () => {
    const h = new Harness("Figure8", FILE, 5);
    const rng = h.c.rng;
    h.one(cmd("start"), 1, true);
    let nup = 5;
    for (let iters = 0; iters < 300; iters++) {
      let leader = -1;
      for (let i = 0; i < 5; i++) {
        if (h.c.alive(i) && h.c.propose(i, [cmd(rng.int(1_000_000))]).ok) leader = i;
      }
      h.run(rng.chance(0.1) ? rng.range(1, 50) : rng.range(1, 3));
      if (leader !== -1) {
        h.crash(leader);
        nup--;
      }
      if (nup < 3) {
        const s = rng.int(5);
        if (!h.c.alive(s)) {
          h.restart(s);
          nup++;
        }
      }
    }
    for (let i = 0; i < 5; i++) if (!h.c.alive(i)) h.restart(i);
    h.one(cmd("end"), 5, true);
  });

  test("UnreliableAgree: concurrent proposals commit on a lossy, reordering, duplicating network", () => {
    const h = new Harness("UnreliableAgree", FILE, 5, { unreliable: true });
    for (let iters = 1; iters < 50; iters++) {
      for (let j = 0; j < 4; j++) {
        const leader = h.c.leader();
        if (leader !== -1) h.c.propose(leader, [cmd(100 * iters + j)]);
      }
      h.one(cmd(iters), 1, true);
    }
    h.setUnreliable(false);
    h.one(cmd(100), 5, true);
  });

  test("Figure8Unreliable: leader changes with an unreliable network and long partitions", () => {
    const h = new Harness("Figure8Unreliable", FILE, 5, { unreliable: true });
    const rng = h.c.rng;
    h.one(cmd(rng.int(10_000)), 1, true);
    let nup = 5;
    for (let iters = 0; iters < 400; iters++) {
      let leader = -1;
      for (let i = 0; i < 5; i++) {
        if (h.connected[i] && h.c.propose(i, [cmd(rng.int(10_000))]).ok) leader = i;
      }
      h.run(rng.chance(0.1) ? rng.range(1, 50) : rng.range(1, 3));
      if (leader !== -1 && rng.chance(0.5)) {
        h.disconnect(leader);
        nup--;
      }
      if (nup < 3) {
        const s = rng.int(5);
        if (!h.connected[s]) {
          h.connect(s);
          nup++;
        }
      }
    }
    for (let i = 0; i < 5; i++) if (!h.connected[i]) h.connect(i);
    h.setUnreliable(false);
    h.one(cmd(rng.int(10_000)), 5, true);
  });

  for (const unreliable of [false, true]) {
    const name = unreliable ? "UnreliableChurn" : "ReliableChurn";
    test(`${name}: crashes, restarts and partitions while clients keep proposing`, () => {
      const h = new Harness(name, FILE, 5, { unreliable, snapshotEvery: 0 });
      const rng = h.c.rng;
      const accepted: { index: number; data: Uint8Array }[] = [];
      for (let iters = 0; iters < 300; iters++) {
        for (let i = 0; i < 5; i++) {
          if (rng.chance(0.3) && h.c.alive(i)) {
            const data = cmd(`${name}-${iters}-${i}`);
            const r = h.c.propose(i, [data]);
            if (r.ok) accepted.push({ index: r.index, data });
          }
        }
        const what = rng.next();
        const who = rng.int(5);
        if (what < 0.2) h.disconnect(who);
        else if (what < 0.5) h.connect(who);
        else if (what < 0.6 && h.c.alive(who)) h.crash(who);
        else if (what < 0.9 && !h.c.alive(who)) h.restart(who);
        h.run(rng.range(1, 7));
      }
      h.setUnreliable(false);
      for (let i = 0; i < 5; i++) {
        if (!h.c.alive(i)) h.restart(i);
        h.connect(i);
      }
      const last = h.one(cmd("final"), 5, true);
      // Every node applied the same history up to `last` (the oracle checks each apply); some of
      // the accepted proposals made it, and those that did sit where they were proposed.
      let committed = 0;
      for (const a of accepted) if (a.index <= last && h.c.appliedDataIs(a.index, a.data)) committed++;
      h.expect(committed > 0, "no proposal survived the churn");
      h.expect(h.c.stats.crashes > 10 && h.c.tickCount > 900, `too little churn: ${h.c.stats.crashes} crashes in ${h.c.tickCount} ticks`);
    });
  }
});
