// Message-level scenarios on bare Raft cores (no simulator): the Figure 8 commit rule, fast
// backtracking, proposal batching, the Ready contract, and the assertions that guard invariants.

import { describe, expect, test } from "bun:test";
import { Raft, type RaftConfig, type RaftInitialState } from "../../src/raft/core/raft.ts";
import { RaftLog } from "../../src/raft/core/raft-log.ts";
import { Inflights } from "../../src/raft/core/progress.ts";
import { MajorityConfig, VoteResult } from "../../src/raft/core/quorum.ts";
import { EntryType, NONE, type Entry, type Message } from "../../src/raft/types.ts";

const PEERS = [0, 1, 2];

function entries(terms: number[], from = 1, bytes = 0): Entry[] {
  return terms.map((term, i) => ({ index: from + i, term, type: EntryType.Normal, data: new Uint8Array(bytes) }));
}

function core(id: number, init: Partial<RaftInitialState> = {}, config: Partial<RaftConfig> = {}): Raft {
  return new Raft(
    // Node 0 times out first (random 0 ⇒ shortest timeout), so scenarios know who campaigns.
    { id, electionTicks: 10, heartbeatTicks: 1, random: () => (id === 0 ? 0 : 0.99), preVote: true, checkQuorum: true, maxInflight: 4, maxBytesPerAppend: 1024, ...config },
    {
      hardState: init.hardState ?? { term: 0, votedFor: NONE, commitIndex: 0 },
      snapshot: init.snapshot ?? { index: 0, term: 0, members: PEERS },
      entries: init.entries ?? [],
      appliedIndex: init.appliedIndex ?? 0,
    },
  );
}

/** A hand-driven network: messages wait in `queue` until a scenario delivers them. */
class Net {
  queue: Message[] = [];
  constructor(readonly nodes: Raft[]) {}
  drain(): void {
    for (const n of this.nodes) {
      while (n.hasReady()) {
        const rd = n.ready();
        this.queue.push(...rd.messages);
        n.advance(rd);
      }
    }
  }
  /** Delivers queued messages matching `filter` (others stay queued), until quiet. */
  deliver(filter: (m: Message) => boolean = () => true, rounds = 100): void {
    for (let i = 0; i < rounds; i++) {
      this.drain();
      const now = this.queue.filter(filter);
      if (now.length === 0) return;
      this.queue = this.queue.filter((m) => !filter(m));
      for (const m of now) this.nodes[m.to]!.step(m);
    }
  }
  take(filter: (m: Message) => boolean): Message[] {
    this.drain();
    const out = this.queue.filter(filter);
    this.queue = this.queue.filter((m) => !filter(m));
    return out;
  }
}

function elect(net: Net, id: number): void {
  for (let i = 0; i < 30 && net.nodes[id]!.status().role !== "Leader"; i++) {
    net.nodes[id]!.tick();
    net.deliver();
  }
  expect(net.nodes[id]!.status().role).toBe("Leader");
}

describe("core", () => {
  test("Figure 8: a leader does not commit an earlier term's entry by counting replicas", () => {
    // n0 holds [1, 2]; n1 holds [1]; n2 holds [1]. n0 wins term 3 with n1's vote.
    const init = (terms: number[], term: number): Partial<RaftInitialState> => ({
      hardState: { term, votedFor: NONE, commitIndex: 1 },
      entries: entries(terms, 1, 100),
    });
    const nodes = [core(0, init([1, 2], 2), { maxBytesPerAppend: 1 }), core(1, init([1], 2)), core(2, init([1], 2))];
    const net = new Net(nodes);
    const toNode2 = (m: Message) => m.to === 2 || m.from === 2;
    const isVote = (m: Message) => m.type === "RequestVote" || m.type === "RequestVoteResponse";
    for (let i = 0; i < 30 && nodes[0]!.status().role !== "Leader"; i++) {
      nodes[0]!.tick();
      net.deliver((m) => !toNode2(m) && isVote(m));
    }
    expect(nodes[0]!.status().role).toBe("Leader");
    expect(nodes[0]!.status().term).toBe(3);
    // Deliver n0 ↔ n1 one message at a time until n1 holds index 2 (term 2), but not the no-op.
    for (let i = 0; i < 20 && nodes[1]!.status().lastIndex < 2; i++) {
      const [m] = net.take((x) => !toNode2(x));
      if (m === undefined) break;
      nodes[m.to]!.step(m);
    }
    expect(nodes[1]!.status().lastIndex).toBe(2);
    for (const m of net.take((x) => x.type === "AppendEntriesResponse")) nodes[m.to]!.step(m);
    // Index 2 (term 2) is on a majority, yet not committed: only the term-3 no-op can commit it.
    expect(nodes[0]!.status().progress![1]!.matchIndex).toBe(2);
    expect(nodes[0]!.status().commitIndex).toBe(1);
    net.deliver((m) => !toNode2(m));
    expect(nodes[0]!.status().commitIndex).toBe(3);
  });

  test("fast backtracking skips a whole conflicting term in one round trip", () => {
    const leaderLog = entries([1, 1, 1, ...new Array<number>(50).fill(3)]);
    const followerLog = entries([1, 1, 1, ...new Array<number>(50).fill(2)]);
    const nodes = [
      core(0, { hardState: { term: 3, votedFor: 0, commitIndex: 3 }, entries: leaderLog }),
      core(1, { hardState: { term: 3, votedFor: 0, commitIndex: 3 }, entries: followerLog }),
      core(2, { hardState: { term: 3, votedFor: 0, commitIndex: 3 }, entries: leaderLog }),
    ];
    const net = new Net(nodes);
    elect(net, 0);
    const rejections = () => net.queue.filter((m) => m.type === "AppendEntriesResponse" && !m.success).length;
    let total = 0;
    for (let i = 0; i < 50; i++) {
      net.drain();
      total += rejections();
      const q = net.queue;
      net.queue = [];
      if (q.length === 0) break;
      for (const m of q) nodes[m.to]!.step(m);
    }
    expect(total).toBeLessThanOrEqual(2);
    expect(nodes[1]!.status().lastIndex).toBe(nodes[0]!.status().lastIndex);
    expect(nodes[1]!.raftLog.term(4)).toBe(3);
  });

  test("proposals before one ready() leave as one Ready.entries and one AppendEntries per follower", () => {
    const nodes = PEERS.map((id) => core(id));
    const net = new Net(nodes);
    elect(net, 0);
    net.deliver();
    const leader = nodes[0]!;
    for (let i = 0; i < 20; i++) expect(leader.propose([new Uint8Array([i])]).ok).toBe(true);
    const rd = leader.ready();
    expect(rd.entries.length).toBe(20);
    const appends = rd.messages.filter((m) => m.type === "AppendEntries");
    expect(appends.length).toBe(2);
    for (const m of appends) if (m.type === "AppendEntries") expect(m.entries.length).toBe(20);
    leader.advance(rd);
  });

  test("the byte limit splits appends and the in-flight window bounds the pipeline", () => {
    const nodes = PEERS.map((id) => core(id, {}, { maxBytesPerAppend: 10, maxInflight: 3 }));
    const net = new Net(nodes);
    elect(net, 0);
    net.deliver();
    const leader = nodes[0]!;
    leader.propose(Array.from({ length: 20 }, () => new Uint8Array(10)));
    const appends = net.take((m) => m.type === "AppendEntries" && m.to === 1);
    expect(appends.length).toBe(3); // window of 3, one 10-byte entry each
    for (const m of appends) if (m.type === "AppendEntries") expect(m.entries.length).toBe(1);
    expect(leader.status().progress![1]!.inflight).toBe(3);
    for (const m of appends) nodes[1]!.step(m);
    net.deliver(); // each acknowledgement frees window space for the next append
    expect(nodes[1]!.status().lastIndex).toBe(leader.status().lastIndex);
  });

  test("Ready contract: ready() twice without advance() throws", () => {
    const n = core(0, { snapshot: { index: 0, term: 0, members: [0] } });
    n.tick();
    for (let i = 0; i < 30 && !n.hasReady(); i++) n.tick();
    n.ready();
    expect(() => n.ready()).toThrow(/before advance/);
  });

  test("stale or duplicate messages change nothing", () => {
    const nodes = PEERS.map((id) => core(id));
    const net = new Net(nodes);
    elect(net, 0);
    nodes[0]!.propose([new Uint8Array([1])]);
    net.drain();
    const copies = net.queue.map((m) => ({ ...m }));
    net.deliver();
    const before = nodes.map((n) => n.status());
    for (const m of copies) nodes[m.to]!.step(m); // duplicates, arriving late
    net.deliver();
    expect(nodes.map((n) => n.status().commitIndex)).toEqual(before.map((s) => s.commitIndex));
    expect(nodes.map((n) => n.status().term)).toEqual(before.map((s) => s.term));
    // A message from an old term is answered with the current term and otherwise ignored.
    nodes[1]!.step({ type: "AppendEntries", from: 2, to: 1, term: 0, prevLogIndex: 0, prevLogTerm: 0, entries: entries([0]), leaderCommit: 5 });
    expect(nodes[1]!.status().commitIndex).toBe(before[1]!.commitIndex);
  });

  test("invariant assertions: committed entries are never truncated; bad input is refused", () => {
    const log = new RaftLog({ index: 0, term: 0, members: PEERS }, entries([1, 1, 1]), 3, 0);
    expect(() => log.appendFromLeader(0, entries([2, 2]))).toThrow(/committed/);
    expect(() => new RaftLog({ index: 0, term: 0, members: PEERS }, entries([1, 1]), 5, 0)).toThrow(/beyond the log's last index/);
    expect(() => new RaftLog({ index: 0, term: 0, members: PEERS }, entries([1, 1], 2), 0, 0)).toThrow(/contiguously/);
    expect(() => core(0, {}, { heartbeatTicks: 10 })).toThrow(/heartbeatTicks/);
    expect(() => core(0, { snapshot: { index: 0, term: 0, members: [1, 1] } })).toThrow(/duplicate voter/);
    expect(() => core(0).propose([])).toThrow(RangeError);
    const n = core(0, { hardState: { term: 1, votedFor: NONE, commitIndex: 2 }, entries: entries([1, 1, 1]) });
    expect(n.status().commitIndex).toBe(2);
  });

  test("a node restarts with committed entries after its applied index re-delivered", () => {
    const n = core(0, { hardState: { term: 1, votedFor: NONE, commitIndex: 3 }, entries: entries([1, 1, 1, 1]), appliedIndex: 1 });
    const rd = n.ready();
    expect(rd.committedEntries.map((e) => e.index)).toEqual([2, 3]);
    n.advance(rd);
    expect(n.status().appliedIndex).toBe(3);
  });

  test("quorum and inflights helpers", () => {
    const q = new MajorityConfig([0, 1, 2, 3, 4]);
    expect(q.quorum).toBe(3);
    expect(q.committedIndex((id) => [9, 7, 5, 3, 1][id]!)).toBe(5);
    expect(q.voteResult(new Map([[0, true], [1, true]]))).toBe(VoteResult.Pending);
    expect(q.voteResult(new Map([[0, true], [1, true], [2, true]]))).toBe(VoteResult.Won);
    expect(q.voteResult(new Map([[0, false], [1, false], [2, false]]))).toBe(VoteResult.Lost);
    expect(() => new MajorityConfig([1, 1])).toThrow(/duplicate/);
    const w = new Inflights(3);
    w.add(1);
    w.add(2);
    w.add(3);
    expect(w.full()).toBe(true);
    expect(() => w.add(4)).toThrow();
    w.freeLE(2);
    expect(w.size).toBe(1);
    w.freeFirst();
    expect(w.size).toBe(0);
  });
});
