// Majority counting over one configuration's voters: vote tallies and the committed index implied
// by the voters' match indexes (etcd's quorum/majority.go). Learners never appear here.

import type { NodeId } from "../types.ts";

export const enum VoteResult {
  Pending = 0,
  Won = 1,
  Lost = 2,
}

/**
 * A majority configuration: a set of voters, any ⌊n/2⌋+1 of which form a quorum. It may be empty
 * on a node that has not yet learned any configuration (a joining node): nothing is ever won then.
 */
export class MajorityConfig {
  readonly voters: readonly NodeId[];

  constructor(voters: readonly NodeId[]) {
    const unique = [...new Set(voters)].sort((a, b) => a - b);
    if (unique.length !== voters.length) throw new RangeError(`duplicate voter ids in [${voters.join(", ")}]`);
    for (const id of unique) {
      if (!Number.isInteger(id) || id < 0) throw new RangeError(`voter ids must be non-negative integers, got ${id}`);
    }
    this.voters = unique;
  }

  get quorum(): number {
    return Math.floor(this.voters.length / 2) + 1;
  }

  includes(id: NodeId): boolean {
    return this.voters.includes(id);
  }

  /** Won once a quorum granted, Lost once a quorum can no longer be reached, else Pending. */
  voteResult(votes: ReadonlyMap<NodeId, boolean>): VoteResult {
    let granted = 0;
    let missing = 0;
    for (const id of this.voters) {
      const v = votes.get(id);
      if (v === undefined) missing++;
      else if (v) granted++;
    }
    if (granted >= this.quorum) return VoteResult.Won;
    if (granted + missing >= this.quorum) return VoteResult.Pending;
    return VoteResult.Lost;
  }

  /** The largest index that a quorum of voters has matched (sorted descending, take quorum-th). */
  committedIndex(matchIndex: (id: NodeId) => number): number {
    const matches = this.voters.map(matchIndex).sort((a, b) => b - a);
    return matches[this.quorum - 1] ?? 0;
  }

  /** True when the voters for which `active` holds form a quorum. */
  hasQuorum(active: (id: NodeId) => boolean): boolean {
    let n = 0;
    for (const id of this.voters) if (active(id)) n++;
    return n >= this.quorum;
  }
}
