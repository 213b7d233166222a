// Leader election scenarios (6.824's 2A tests), plus PreVote, CheckQuorum and leadership transfer.

import { describe, expect, test } from "bun:test";
import { Harness, cmd } from "./harness.ts";

const FILE = "election.test.ts";

describe("election", () => {
  test("InitialElection: one leader, agreed term, stable without failures", () => {
    const h = new Harness("InitialElection", FILE, 3);
    h.checkOneLeader();
    const term1 = h.checkTerms();
    h.expect(term1 >= 1, `term is ${term1}, expected at least 1`);
    h.run(200);
    const term2 = h.checkTerms();
    h.expect(term1 === term2, `term changed from ${term1} to ${term2} without failures`);
    h.checkOneLeader();
  });

  test("ReElection: a new leader after the old one is cut off; none without a quorum", () => {
    const h = new Harness("ReElection", FILE, 3);
    const leader1 = h.checkOneLeader();
    h.disconnect(leader1);
    h.checkOneLeader();
    h.connect(leader1); // the old leader rejoins: still one leader
    const leader2 = h.checkOneLeader();
    h.disconnect(leader2);
    h.disconnect((leader2 + 1) % 3);
    h.run(200);
    h.checkNoLeader();
    h.connect((leader2 + 1) % 3);
    h.checkOneLeader();
    h.connect(leader2);
    h.checkOneLeader();
  });

  test("ManyElections: a leader emerges while random triples are partitioned away", () => {
    const h = new Harness("ManyElections", FILE, 7);
    h.checkOneLeader();
    for (let iter = 0; iter < 10; iter++) {
      const [a, b, c] = [h.c.rng.int(7), h.c.rng.int(7), h.c.rng.int(7)];
      h.disconnect(a);
      h.disconnect(b);
      h.disconnect(c);
      // Either the current leader survived or a new one is elected among the (at least 4) others.
      h.checkOneLeader();
      h.connect(a);
      h.connect(b);
      h.connect(c);
    }
    h.checkOneLeader();
  });

  test("PreVote: a partitioned node rejoining does not depose a healthy leader", () => {
    const h = new Harness("PreVote", FILE, 5);
    const leader = h.checkOneLeader();
    const term = h.c.status(leader).term;
    const outsider = (leader + 1) % 5;
    h.disconnect(outsider);
    h.run(300); // many election timeouts: only pre-votes, so its term must not grow
    h.expect(h.c.status(outsider).term === term, `isolated node's term grew to ${h.c.status(outsider).term} (was ${term})`);
    h.expect(h.c.status(outsider).role === "PreCandidate" || h.c.status(outsider).role === "Follower", "isolated node left pre-vote");
    h.connect(outsider);
    h.run(100);
    h.expect(h.checkOneLeader() === leader, "the healthy leader was deposed by a rejoining node");
    h.expect(h.c.status(leader).term === term, `the term moved from ${term} to ${h.c.status(leader).term}`);
  });

  test("PreVote off: the same rejoin does disrupt (the test above can fail)", () => {
    const h = new Harness("PreVoteOff", FILE, 5, { preVote: false, checkQuorum: false });
    const leader = h.checkOneLeader();
    const term = h.c.status(leader).term;
    const outsider = (leader + 1) % 5;
    h.disconnect(outsider);
    h.run(300);
    h.expect(h.c.status(outsider).term > term, "without PreVote an isolated node's term grows");
    h.connect(outsider);
    h.run(100);
    h.expect(h.c.status(h.checkOneLeader()).term > term, "without PreVote the rejoin forces a new term");
  });

  test("CheckQuorum: a leader cut off from the majority steps down; the majority elects another", () => {
    const h = new Harness("CheckQuorum", FILE, 5);
    const old = h.checkOneLeader();
    const minority = [old, (old + 1) % 5];
    const majority = [0, 1, 2, 3, 4].filter((i) => !minority.includes(i));
    h.c.partition([minority, majority]);
    h.run(60); // > 2 election timeouts
    h.expect(h.c.status(old).role !== "Leader", `old leader ${old} still leads without a quorum`);
    const leaders = h.c.leaders().filter(({ id }) => majority.includes(id));
    h.expect(leaders.length === 1, `expected one leader on the majority side, found ${leaders.length}`);
    // Writes on the minority side fail fast; writes on the majority commit.
    h.expect(!h.c.propose(old, [cmd("lost")]).ok, "deposed leader accepted a proposal");
    h.c.heal();
    for (let i = 0; i < 5; i++) h.connected[i] = true;
    h.one(cmd("after-heal"), 5, true);
  });

  test("Transfer: leadership moves to a caught-up follower, with no lost writes", () => {
    const h = new Harness("Transfer", FILE, 3);
    const leader = h.checkOneLeader();
    h.one(cmd(1), 3, false);
    const target = (leader + 1) % 3;
    h.c.transferLeadership(leader, target);
    h.expect(!h.c.propose(leader, [cmd("during")]).ok, "proposal accepted during a transfer");
    h.c.runUntil(() => h.c.leader() === target, 50);
    h.expect(h.c.leader() === target, `leadership did not move to ${target} (leader is ${h.c.leader()})`);
    h.one(cmd(2), 3, false);
  });

  test("Transfer to a lagging follower waits for it to catch up", () => {
    const h = new Harness("TransferLagging", FILE, 3);
    const leader = h.checkOneLeader();
    const laggard = (leader + 2) % 3;
    h.disconnect(laggard);
    for (let i = 0; i < 20; i++) h.one(cmd(i), 2, false);
    h.connect(laggard);
    h.c.transferLeadership(leader, laggard);
    h.c.runUntil(() => h.c.leader() === laggard, 100);
    h.expect(h.c.leader() === laggard, "lagging follower did not take over after catching up");
    h.expect(h.c.status(laggard).lastIndex >= 21, "new leader misses entries");
    h.one(cmd("x"), 3, false);
  });
});

describe("election: unit", () => {
  test("a single-node cluster elects itself and commits at once", () => {
    const h = new Harness("SingleNode", FILE, 1);
    h.checkOneLeader();
    const idx = h.one(cmd("solo"), 1, false);
    expect(idx).toBe(2); // after the leader's no-op
  });
});
