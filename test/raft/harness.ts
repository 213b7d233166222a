// A 6.824-style test harness over the core-level simulator: connect/disconnect, crash/restart,
// "one(cmd)" agreement, leader checks. Every failure names the seed and how to replay it.

import { CoreSimCluster, UNRELIABLE, RELIABLE, type ClusterOptions } from "../../src/sim/raft-core/index.ts";
import { NONE, type NodeId } from "../../src/raft/types.ts";

/** Scenarios run with this seed; RAFT_SEED=S reruns them all with another. */
export const SEED = Number(process.env.RAFT_SEED ?? 1);

/** Ticks in which an election must settle (electionTicks 10 ⇒ timeouts of 10..19 ticks). */
export const ELECTION_BUDGET = 150;

export class Harness {
  readonly c: CoreSimCluster;
  readonly n: number;
  readonly connected: boolean[];
  private readonly where: string;

  constructor(
    readonly name: string,
    file: string,
    n: number,
    options: Partial<ClusterOptions> & { unreliable?: boolean } = {},
  ) {
    this.n = n;
    const seed = options.seed ?? SEED;
    this.where = `seed ${seed}; replay: RAFT_SEED=${seed} bun test test/raft/${file} -t "${name}"`;
    this.c = new CoreSimCluster({
      seed,
      nodes: n,
      network: options.unreliable ? UNRELIABLE : RELIABLE,
      replay: this.where,
      ...options,
    });
    this.connected = new Array<boolean>(n).fill(true);
  }

  fail(message: string): never {
    throw new Error(`${this.name}: ${message}\n  cluster: ${this.c.describe()}\n  ${this.where}`);
  }

  expect(condition: boolean, message: string): void {
    if (!condition) this.fail(message);
  }

  run(ticks: number): void {
    this.c.run(ticks);
  }

  disconnect(id: NodeId): void {
    this.connected[id] = false;
    this.c.isolate(id);
  }

  connect(id: NodeId): void {
    this.connected[id] = true;
    // Rebuild the partition from the connected set: disconnected nodes stay isolated.
    this.c.partition([this.connected.flatMap((ok, i) => (ok ? [i] : []))]);
  }

  crash(id: NodeId): void {
    this.c.crashAt(id, "now");
  }

  restart(id: NodeId): void {
    this.c.restart(id);
  }

  setUnreliable(on: boolean): void {
    this.c.setNetwork(on ? UNRELIABLE : RELIABLE);
  }

  /** The single leader among connected live nodes (waiting up to the budget for one). */
  checkOneLeader(budget = ELECTION_BUDGET): NodeId {
    let found = NONE;
    const ok = this.c.runUntil(() => {
      const leadersByTerm = new Map<number, NodeId[]>();
      for (const { id, term } of this.c.leaders()) {
        if (!this.connected[id]) continue;
        leadersByTerm.set(term, [...(leadersByTerm.get(term) ?? []), id]);
      }
      let lastTerm = -1;
      for (const [term, ids] of leadersByTerm) {
        if (ids.length > 1) this.fail(`term ${term} has ${ids.length} leaders (${ids.join(", ")})`);
        if (term > lastTerm) {
          lastTerm = term;
          found = ids[0]!;
        }
      }
      return lastTerm !== -1;
    }, budget);
    if (!ok) this.fail(`expected one leader within ${budget} ticks, got none`);
    return found;
  }

  checkNoLeader(): void {
    for (const { id } of this.c.leaders()) {
      if (this.connected[id]) this.fail(`expected no leader among connected nodes, but ${id} claims to be one`);
    }
  }

  /** All connected live nodes agree on the term; returns it. */
  checkTerms(): number {
    let term = -1;
    for (let i = 0; i < this.n; i++) {
      if (!this.connected[i] || !this.c.alive(i)) continue;
      const t = this.c.status(i).term;
      if (term === -1) term = t;
      else if (t !== term) this.fail(`servers disagree on term (${term} vs ${t})`);
    }
    return term;
  }

  /** How many nodes have applied `index` (agreement at each index is checked by the oracle). */
  nCommitted(index: number): number {
    return this.c.appliedCount(index);
  }

  /**
   * Submits `cmd` until some leader commits it on at least `expected` nodes (6.824's one()).
   * With retry, a leader that loses the entry is tried again; returns the entry's index.
   */
  one(cmd: Uint8Array, expected: number, retry: boolean, budget = 2000): number {
    const start = this.c.tickCount;
    let starter = 0;
    while (this.c.tickCount - start < budget) {
      let index = -1;
      for (let k = 0; k < this.n; k++) {
        starter = (starter + 1) % this.n;
        if (!this.connected[starter] || !this.c.alive(starter)) continue;
        const r = this.c.propose(starter, [cmd]);
        if (r.ok) {
          index = r.index;
          break;
        }
      }
      if (index !== -1) {
        const deadline = this.c.tickCount + 200;
        while (this.c.tickCount < deadline) {
          if (this.nCommitted(index) >= expected && this.c.appliedDataIs(index, cmd)) return index;
          this.c.tick();
        }
        if (!retry) this.fail(`one(${decode(cmd)}) failed to reach agreement on ${expected} nodes at index ${index}`);
      } else {
        this.c.run(5);
      }
    }
    this.fail(`one(${decode(cmd)}) failed to reach agreement within ${budget} ticks`);
  }

  /** Waits until at least n nodes applied index; returns the number that did. */
  wait(index: number, n: number, budget = 500): number {
    this.c.runUntil(() => this.nCommitted(index) >= n, budget);
    return this.nCommitted(index);
  }
}

export function cmd(value: number | string): Uint8Array {
  return new TextEncoder().encode(String(value));
}

export function decode(bytes: Uint8Array): string {
  return new TextDecoder().decode(bytes);
}
