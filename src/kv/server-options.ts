// What a KVServer is opened with: its identity, storage and transport, and the Raft, state-machine
// and client-limit options (KVServerOptions and its parts).
import type { Clock, LogStore, Membership, NodeId, RaftObserver, Transport } from "../raft/index.ts";
import type { DiskWatchOptions } from "./disk-watch.ts";
import type { FatalError } from "./fail-stop.ts";
import type { KVStateMachineOptions } from "./state-machine.ts";
import type { TxnLimits } from "./txn.ts";
import type { WatchLimits } from "./watch-hub.ts";

export interface KVLimits {
  /** Default 4 KiB. */
  maxKeyBytes?: number;
  /** Default 1 MiB. */
  maxValueBytes?: number;
  /** Commands in flight on this node before new ones fail fast with resource_exhausted. Default 10,000. */
  maxPendingCommands?: number;
  /** How long a command waits for commit/apply (or a read for its ReadIndex). Default 500 ms. */
  commandTimeoutMs?: number;
  /**
   * How long a Batch call's writes wait for commit/apply before ErrTimeout. Default 1,500 ms,
   * under the Clerk's 2 s call timeout: a bulk load keeps thousands of writes in flight, so a batch
   * waits behind the others (writes in flight / throughput); one answered ErrTimeout is resent and,
   * not applied yet, proposed again: a second copy through the log and every apply, more load on a
   * cluster that was already behind (8,192 writes in flight on a loaded 2-core machine: 13% of the
   * writes timed out at 500 ms). At most commandTimeoutMs × 100, at least commandTimeoutMs.
   */
  batchTimeoutMs?: number;
  /**
   * Bytes of one batch entry (a Batch call's writes in one Raft entry) at most; a Batch with more
   * is split over several entries. Default 1 MiB (the Raft AppendEntries byte budget). A single
   * larger command gets an entry of its own (the Raft entry limit, 8 MiB, still applies).
   */
  maxBatchEntryBytes?: number;
}

export interface KVRaftOptions {
  tickMs?: number;
  electionTicks?: number;
  heartbeatTicks?: number;
  seed?: number;
  snapshotThreshold?: number;
  /** Compact the Raft log also once the entries it holds in memory pass this many bytes (default 64 MiB). */
  snapshotThresholdBytes?: number;
  snapshotChunkBytes?: number;
  maxPendingProposals?: number;
  /** Addresses of the bootstrap members (stored with the bootstrap configuration). */
  addresses?: Record<NodeId, string>;
  /** Called when the configuration in the log changes (e.g. to tell the transport who the peers are). */
  onMembershipChange?: (membership: Membership) => void;
  maxLearnerLag?: number;
  /** Metrics hooks (src/obs). */
  observer?: RaftObserver;
}

export interface KVStateOptions {
  memtableBytes?: number;
  blockCacheBytes?: number;
  /** Further LSM options (see DBOptions). */
  lsm?: KVStateMachineOptions["lsm"];
  /** A session idle this long (log time, from leader timestamps) expires. Default 1 hour. */
  sessionTtlMs?: number;
  /** Registered sessions at most (registrations beyond are refused). Default 100,000. */
  maxSessions?: number;
  /** Unregistered (eRaft-style) sessions at most (least recently used dropped beyond). Default 100,000. */
  maxUnregisteredSessions?: number;
  syncEveryEntries?: number;
  syncEveryBytes?: number;
  /** What snapshots this node sends: "files" (its LSM table files, the default) or "pairs" (readable by older builds). */
  snapshotFormat?: KVStateMachineOptions["snapshotFormat"];
}

export interface KVServerOptions {
  id: NodeId;
  peers: NodeId[];
  /** Creates `<dir>/raft` (the Raft log, unless `logStore` is given) and `<dir>/state` (the LSM). */
  dir: string;
  transport: Transport;
  clock?: Clock;
  /** A log store to use instead of `<dir>/raft` (e.g. a MemoryLogStore in simulations). */
  logStore?: LogStore;
  raft?: KVRaftOptions;
  state?: KVStateOptions;
  limits?: KVLimits;
  /** Bounds of Range, DeleteRange and Txn (txn.ts, range.ts). */
  txnLimits?: TxnLimits;
  /** Bounds of Watch (watch-hub.ts). */
  watchLimits?: WatchLimits;
  /**
   * Called once when the node meets an error it cannot recover from (storage I/O, a broken
   * invariant). The server already refuses everything; the process should log the message and exit.
   */
  onFatal?: (error: FatalError) => void;
  /** Watch the data directory (deleted, unwritable, low on space); off unless given. */
  diskWatch?: Omit<DiskWatchOptions, "dir">;
  /**
   * This node may have lost durable state (e.g. its data directory was created anew while its
   * cluster may exist): it starts recovering, granting no vote until it has caught up.
   */
  lostState?: string;
  /** Where repairs and recovery are reported (default: stderr). */
  log?: (line: string) => void;
}
