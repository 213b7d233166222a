// The Raft core's configuration: timing, limits and the seeded randomness, checked on construction.

import type { NodeId } from "../types.ts";

export interface RaftConfig {
  id: NodeId;
  /** Election timeout base: a follower campaigns after a random timeout in [electionTicks, 2*electionTicks). */
  electionTicks: number;
  /** A leader sends heartbeats every heartbeatTicks (must be < electionTicks). */
  heartbeatTicks: number;
  /** Seeded uniform [0,1) source: the only randomness the core uses. */
  random: () => number;
  preVote: boolean;
  checkQuorum: boolean;
  /** AppendEntries in flight per follower in replicate state. */
  maxInflight: number;
  /** Payload bytes per AppendEntries; a message always carries at least one entry if any are due. */
  maxBytesPerAppend: number;
  /** Bound on uncommitted entries; propose fails fast with "backpressure" beyond it (default 10000). */
  maxPendingProposals?: number;
  /** Bound on ReadIndex requests waiting for confirmation (default 10000). */
  maxPendingReads?: number;
  /** Payload bytes of committed entries per Ready (default 16 MiB; always at least one entry). */
  maxCommittedBytesPerReady?: number;
  /** A learner is promoted only if its log is at most this many entries behind the leader's (default 1000). */
  maxLearnerLag?: number;
}

/** The configuration checked, with every default filled in. */
export function resolveConfig(c: RaftConfig): Required<RaftConfig> {
  validateConfig(c);
  return {
    maxPendingProposals: 10_000,
    maxPendingReads: 10_000,
    maxCommittedBytesPerReady: 16 * 1024 * 1024,
    maxLearnerLag: 1000,
    ...c,
  };
}

export function validateConfig(c: RaftConfig): void {
  const positive = (name: string, v: number) => {
    if (!Number.isInteger(v) || v < 1) throw new RangeError(`RaftConfig.${name} must be a positive integer, got ${v}`);
  };
  positive("electionTicks", c.electionTicks);
  positive("heartbeatTicks", c.heartbeatTicks);
  positive("maxInflight", c.maxInflight);
  positive("maxBytesPerAppend", c.maxBytesPerAppend);
  if (c.maxPendingProposals !== undefined) positive("maxPendingProposals", c.maxPendingProposals);
  if (c.maxPendingReads !== undefined) positive("maxPendingReads", c.maxPendingReads);
  if (c.maxCommittedBytesPerReady !== undefined) positive("maxCommittedBytesPerReady", c.maxCommittedBytesPerReady);
  if (c.maxLearnerLag !== undefined && !(Number.isInteger(c.maxLearnerLag) && c.maxLearnerLag >= 0)) {
    throw new RangeError(`RaftConfig.maxLearnerLag must be a non-negative integer, got ${c.maxLearnerLag}`);
  }
  if (c.heartbeatTicks >= c.electionTicks) {
    throw new RangeError(`RaftConfig.heartbeatTicks (${c.heartbeatTicks}) must be below electionTicks (${c.electionTicks})`);
  }
}
