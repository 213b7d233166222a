// Log agreement scenarios (6.824's 2B tests) plus proposal batching and backpressure.

import { describe, expect, test } from "bun:test";
import { Harness, cmd } from "./harness.ts";

const FILE = "agreement.test.ts";

describe("agreement", () => {
  test("BasicAgree: commands commit on every node, at consecutive indexes", () => {
    const h = new Harness("BasicAgree", FILE, 3);
    h.checkOneLeader();
    for (let i = 1; i <= 3; i++) {
      h.expect(h.nCommitted(i + 1) === 0, `index ${i + 1} committed before Start()`);
      const index = h.one(cmd(i * 100), 3, false);
      h.expect(index === i + 1, `got index ${index}, expected ${i + 1} (after the leader's no-op)`);
    }
  });

  test("RPCBytes: each command travels to each follower about once", () => {
    const h = new Harness("RPCBytes", FILE, 3);
    h.checkOneLeader();
    h.one(cmd(99), 3, false);
    const before = h.c.network.bytes;
    let sent = 0;
    for (let i = 0; i < 10; i++) {
      const payload = cmd("x".repeat(5000) + i);
      sent += payload.byteLength;
      h.one(payload, 3, false);
    }
    const got = h.c.network.bytes - before;
    const expected = 2 * sent; // two followers
    h.expect(got <= expected + 50_000, `${got} bytes on the wire for ${expected} bytes of payload to followers`);
  });

  test("FailAgree: agreement continues with one follower disconnected and after it returns", () => {
    const h = new Harness("FailAgree", FILE, 3);
    h.one(cmd(101), 3, false);
    const leader = h.checkOneLeader();
    h.disconnect((leader + 1) % 3);
    h.one(cmd(102), 2, false);
    h.one(cmd(103), 2, false);
    h.run(30);
    h.one(cmd(104), 2, false);
    h.one(cmd(105), 2, false);
    h.connect((leader + 1) % 3);
    h.one(cmd(106), 3, true);
    h.run(30);
    h.one(cmd(107), 3, true);
  });

  test("FailNoAgree: no commit without a majority; the log recovers after reconnection", () => {
    const h = new Harness("FailNoAgree", FILE, 5);
    h.one(cmd(10), 5, false);
    const leader = h.checkOneLeader();
    for (const k of [1, 2, 3]) h.disconnect((leader + k) % 5);
    const r = h.c.propose(leader, [cmd(20)]);
    h.expect(r.ok, "leader rejected Start()");
    if (!r.ok) return;
    h.expect(r.index === 3, `expected index 3, got ${r.index}`);
    h.run(60);
    h.expect(h.nCommitted(r.index) === 0, `${h.nCommitted(r.index)} committed without a majority`);
    for (const k of [1, 2, 3]) h.connect((leader + k) % 5);
    const leader2 = h.checkOneLeader();
    const r2 = h.c.propose(leader2, [cmd(30)]);
    h.expect(r2.ok, "new leader rejected Start()");
    // Index 3 survives only if the old leader wins again; each new leader's no-op takes one index.
    if (r2.ok) h.expect(r2.index >= 4 && r2.index <= 5, `unexpected index ${r2.index}`);
    h.one(cmd(1000), 5, true);
  });

  test("ConcurrentStarts: many proposals in one tick commit in one batch, each exactly once", () => {
    const h = new Harness("ConcurrentStarts", FILE, 3);
    const leader = h.checkOneLeader();
    const indexes: number[] = [];
    for (let i = 0; i < 5; i++) {
      const r = h.c.propose(leader, [cmd(`c${i}`)]);
      h.expect(r.ok, `proposal ${i} rejected`);
      if (r.ok) indexes.push(r.index);
    }
    expect(new Set(indexes).size).toBe(5);
    for (const index of indexes) h.expect(h.wait(index, 3) === 3, `index ${index} not committed on all nodes`);
    // The same commands as one batch go out as a single AppendEntries per follower.
    const sentBefore = h.c.network.sent;
    const r = h.c.propose(leader, Array.from({ length: 50 }, (_, i) => cmd(`batch${i}`)));
    h.expect(r.ok, "batch rejected");
    const appends = h.c.network.sent - sentBefore;
    h.expect(appends === 2, `a 50-command batch produced ${appends} messages, expected one AppendEntries per follower`);
  });

  test("Rejoin: a partitioned leader's uncommitted entries are discarded when it rejoins", () => {
    const h = new Harness("Rejoin", FILE, 3);
    h.one(cmd(101), 3, true);
    const leader1 = h.checkOneLeader();
    h.disconnect(leader1);
    h.c.propose(leader1, [cmd(102)]);
    h.c.propose(leader1, [cmd(103)]);
    h.c.propose(leader1, [cmd(104)]);
    h.one(cmd(103), 2, true);
    const leader2 = h.checkOneLeader();
    h.disconnect(leader2);
    h.connect(leader1);
    h.one(cmd(104), 2, true);
    h.connect(leader2);
    h.one(cmd(105), 3, true);
  });

  test("Backup: a leader backs up quickly over long divergent logs", () => {
    const h = new Harness("Backup", FILE, 5);
    h.one(cmd("start"), 5, true);
    const leader1 = h.checkOneLeader();
    h.disconnect((leader1 + 2) % 5);
    h.disconnect((leader1 + 3) % 5);
    h.disconnect((leader1 + 4) % 5);
    for (let i = 0; i < 50; i++) h.c.propose(leader1, [cmd(`lost${i}`)]);
    h.run(30);
    h.disconnect(leader1);
    h.disconnect((leader1 + 1) % 5);
    h.connect((leader1 + 2) % 5);
    h.connect((leader1 + 3) % 5);
    h.connect((leader1 + 4) % 5);
    for (let i = 0; i < 50; i++) h.one(cmd(`ok${i}`), 3, true);
    const leader2 = h.checkOneLeader();
    const other = leader2 === (leader1 + 2) % 5 ? (leader1 + 3) % 5 : (leader1 + 2) % 5;
    h.disconnect(other);
    for (let i = 0; i < 50; i++) h.c.propose(leader2, [cmd(`lost2-${i}`)]);
    h.run(30);
    for (let i = 0; i < 5; i++) h.disconnect(i);
    h.connect(leader1);
    h.connect((leader1 + 1) % 5);
    h.connect(other);
    for (let i = 0; i < 50; i++) h.one(cmd(`ok2-${i}`), 3, true);
    for (let i = 0; i < 5; i++) h.connect(i);
    h.one(cmd("end"), 5, true);
  });

  test("Count: agreement does not cost too many messages", () => {
    const h = new Harness("Count", FILE, 3);
    h.checkOneLeader();
    const electionMessages = h.c.network.sent;
    h.expect(electionMessages < 60, `${electionMessages} messages to elect a leader`);
    const leader = h.checkOneLeader();
    const before = h.c.network.sent;
    const term = h.c.status(leader).term;
    const indexes: number[] = [];
    for (let i = 0; i < 10; i++) {
      const r = h.c.propose(leader, [cmd(i)]);
      if (r.ok) indexes.push(r.index);
      h.c.tick();
    }
    for (const index of indexes) h.wait(index, 3);
    h.expect(h.c.status(leader).term === term, "term changed under a reliable network");
    const used = h.c.network.sent - before;
    // Per command: an append and an answer per follower, plus commit notices and heartbeats.
    h.expect(used < 10 * 8 + 40, `${used} messages for 10 commands`);
    const idle = h.c.network.sent;
    h.run(100);
    const idleUsed = h.c.network.sent - idle;
    h.expect(idleUsed <= 3 * 100, `${idleUsed} messages in 100 idle ticks`);
  });

  test("Backpressure: proposals beyond the uncommitted bound fail fast, and succeed once committed", () => {
    const h = new Harness("Backpressure", FILE, 3, { maxPendingProposals: 20 });
    const leader = h.checkOneLeader();
    h.one(cmd("warm-up"), 3, false); // the leader's no-op is committed: nothing uncommitted
    h.disconnect((leader + 1) % 3);
    h.disconnect((leader + 2) % 3);
    let accepted = 0;
    let refused = 0;
    for (let i = 0; i < 30; i++) {
      const r = h.c.propose(leader, [cmd(i)]);
      if (r.ok) accepted++;
      else {
        refused++;
        h.expect(r.reason === "backpressure", `refused with ${r.reason}`);
      }
    }
    h.expect(accepted === 20 && refused === 10, `accepted ${accepted}, refused ${refused}; bound is 20`);
    h.connect((leader + 1) % 3);
    h.connect((leader + 2) % 3);
    h.one(cmd("drained"), 3, true);
  });

  test("Not leader: a follower's refusal names the leader", () => {
    const h = new Harness("NotLeader", FILE, 3);
    const leader = h.checkOneLeader();
    h.run(10);
    const follower = (leader + 1) % 3;
    const r = h.c.propose(follower, [cmd(1)]);
    expect(r).toEqual({ ok: false, leaderId: leader, reason: "not-leader" });
  });
});
