// RaftNode's options with their defaults, the status it reports, and the core's RaftConfig built
// from them: everything a caller tunes about a node, in one place.

import type { Clock } from "./clock.ts";
import type { RaftConfig, RaftStatus } from "./core/raft.ts";
import type { Entry, LogStore, Membership, Message, NodeId, RaftRole, Ready, StateMachine, Transport } from "./types.ts";

export interface RaftNodeOptions {
  id: NodeId;
  /**
   * The bootstrap voters. Used only while neither the log nor a snapshot holds a configuration
   * (a brand-new cluster); after that the configuration in the log is the truth. Empty for a node
   * that joins an existing cluster: it waits, without campaigning, for a leader to add it.
   */
  peers: NodeId[];
  /** Addresses of the bootstrap voters, stored with the bootstrap configuration. */
  addresses?: Record<NodeId, string>;
  /** Called after a cycle in which the configuration changed (a change entry appended, truncated or installed). */
  onMembershipChange?: (membership: Membership) => void;
  logStore: LogStore;
  transport: Transport;
  stateMachine: StateMachine;
  /** Default RealClock. */
  clock?: Clock;
  /** Default 50. */
  tickMs?: number;
  /** Default 10. */
  electionTicks?: number;
  /**
   * Default 2: with the 50 ms tick a heartbeat every 100 ms (etcd's default) against a 500–1000 ms
   * election timeout. Heartbeats are most of an idle cluster's CPU; reads send their own at once.
   */
  heartbeatTicks?: number;
  /** Seed of the election-timeout Rng (default: random; give one in simulations). */
  seed?: number;
  /** Default true. */
  preVote?: boolean;
  /** Default true. */
  checkQuorum?: boolean;
  /** Default 64. */
  maxInflight?: number;
  /** Default 1 MiB. */
  maxBytesPerAppend?: number;
  /** Uncommitted entries before propose fails with BackpressureError (default 10 000). */
  maxPendingProposals?: number;
  /** A single command above this is refused with EntryTooLargeError (default 8 MiB). */
  maxEntryBytes?: number;
  /** Compact the log when (durable applied index − compaction point) exceeds this (default 10 000). */
  snapshotThreshold?: number;
  /**
   * Compact the log also when the entries it holds in memory pass this many payload bytes (default
   * 64 MiB): big entries (a Batch of 1,024 puts is ~130 KB) would otherwise hold gigabytes before
   * the entry count is reached.
   */
  snapshotThresholdBytes?: number;
  /** Default 1 MiB. */
  snapshotChunkBytes?: number;
  /** A readIndex() not served within this rejects with ReadIndexTimeoutError (default 3 election timeouts). */
  readTimeoutMs?: number;
  /** A learner is promoted only when at most this many entries behind the leader (default 1000). */
  maxLearnerLag?: number;
  /** A proposed membership change not applied within this fails with ConfChangeLostError (default 10 election timeouts). */
  confChangeTimeoutMs?: number;
  /** Called once if the node stops on a fatal error (disk failure, invariant violation). */
  onFatal?: (error: Error) => void;
  /** This node may have lost durable state it acknowledged: it votes only once caught up (core/recovery.ts). */
  recovering?: boolean;
  /**
   * Default true: a leader applies (and answers) entries a majority of the other voters holds
   * durably while its own log write still runs (thesis §10.2.1). False waits for its own write.
   */
  applyBeforeLeaderSync?: boolean;
  /** Metrics hooks (src/obs); absent in simulations. */
  observer?: RaftObserver;
}

/** Synchronous, cheap notifications for metrics: what happened, never a decision. */
export interface RaftObserver {
  proposed(count: number): void;
  /** One durable log save of `entries` (write + fsync) that took `seconds`. */
  saved(entries: readonly Entry[], seconds: number): void;
  sent(messages: readonly Message[]): void;
  softState(soft: NonNullable<Ready["softState"]>): void;
}

export interface RaftNodeStatus {
  id: NodeId;
  role: RaftRole;
  term: number;
  leaderId: NodeId;
  commitIndex: number;
  /** The state machine's applied index. */
  lastApplied: number;
  /** The log's compaction point. */
  snapshotIndex: number;
  firstIndex: number;
  lastIndex: number;
  /** The voters of the configuration in force (the latest in the log). */
  members: NodeId[];
  learners: NodeId[];
  /** Address per member id, as stored with the configuration. */
  addresses: Record<NodeId, string>;
  logBytes: number;
  pendingReads: number;
  snapshotsSent: number;
  snapshotsReceived: number;
  /** Bytes of snapshot streams read as a follower (what catch-up by InstallSnapshot moved). */
  snapshotBytesReceived: number;
  /** Entries this node applied as leader before its own log write of them was durable. */
  appliedBeforeOwnSync: number;
  /** The leader's view of each follower (leaders only). */
  progress?: RaftStatus["progress"];
  stopped: boolean;
  /** The fatal error that stopped the node, if any. */
  fatal: string | null;
  /** Why the node does not vote yet ("" when it does): recovering lost durable state. */
  recovering: string;
}

export const DEFAULTS = {
  tickMs: 50,
  electionTicks: 10,
  heartbeatTicks: 2,
  maxInflight: 64,
  maxBytesPerAppend: 1024 * 1024,
  maxPendingProposals: 10_000,
  maxEntryBytes: 8 * 1024 * 1024,
  snapshotThreshold: 10_000,
  snapshotThresholdBytes: 64 * 1024 * 1024,
  snapshotChunkBytes: 1024 * 1024,
  applyBeforeLeaderSync: true,
};

/** The options with every default filled in. */
export type ResolvedNodeOptions = RaftNodeOptions & typeof DEFAULTS & { readTimeoutMs: number; confChangeTimeoutMs: number };

export function resolveOptions(options: RaftNodeOptions): ResolvedNodeOptions {
  const merged = { ...DEFAULTS, ...stripUndefined(options) } as RaftNodeOptions & typeof DEFAULTS;
  const electionMs = merged.electionTicks * merged.tickMs;
  return { ...merged, readTimeoutMs: options.readTimeoutMs ?? 3 * electionMs, confChangeTimeoutMs: options.confChangeTimeoutMs ?? 10 * electionMs };
}

/** The core's configuration for this node; `random` is the seeded election-timeout source. */
export function coreConfig(options: RaftNodeOptions, random: () => number): RaftConfig {
  return {
    id: options.id,
    electionTicks: options.electionTicks ?? DEFAULTS.electionTicks,
    heartbeatTicks: options.heartbeatTicks ?? DEFAULTS.heartbeatTicks,
    random,
    preVote: options.preVote ?? true,
    checkQuorum: options.checkQuorum ?? true,
    maxInflight: options.maxInflight ?? DEFAULTS.maxInflight,
    maxBytesPerAppend: options.maxBytesPerAppend ?? DEFAULTS.maxBytesPerAppend,
    maxPendingProposals: options.maxPendingProposals ?? DEFAULTS.maxPendingProposals,
    ...(options.maxLearnerLag !== undefined ? { maxLearnerLag: options.maxLearnerLag } : {}),
  };
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
