// What the Raft core takes and gives back at its surface: the state it starts from, the results
// of propose / readIndex / proposeConfChange, and the status it reports.

import type { ConfChangeRefusal } from "./config-change.ts";
import type { ProgressStatus } from "./replication.ts";
import type { Entry, HardState, Membership, NodeId, RaftRole, SnapshotMeta } from "../types.ts";

export type { ProgressStatus } from "./replication.ts";

export interface RaftInitialState {
  /** As persisted. */
  hardState: HardState;
  /**
   * Log compaction point, with the configuration in force there ({index:0, term:0, members:
   * bootstrap voters} when none; no members at all for a node that joins an existing cluster).
   */
  snapshot: SnapshotMeta;
  /** Persisted entries after snapshot.index, in order. */
  entries: Entry[];
  /** The state machine's applied index: committed entries after it are re-delivered in committedEntries. */
  appliedIndex: number;
  /** The node may have lost durable state it acknowledged: no votes until caught up (recovery.ts). */
  recovering?: boolean;
}

export type ProposeResult =
  | { ok: true; index: number; term: number }
  | { ok: false; leaderId: NodeId; reason: "not-leader" | "backpressure" | "transferring" };

export type ReadIndexResult = { ok: true } | { ok: false; leaderId: NodeId; reason?: "not-leader" | "backpressure" };

export type ConfChangeResult =
  | { ok: true; index: number; term: number; membership: Membership }
  | { ok: false; leaderId: NodeId; reason: "not-leader" | "transferring" | ConfChangeRefusal; detail?: string };

export interface RaftStatus {
  id: NodeId;
  role: RaftRole;
  term: number;
  leaderId: NodeId;
  commitIndex: number;
  appliedIndex: number;
  firstIndex: number;
  lastIndex: number;
  votedFor: NodeId;
  /** The configuration in force (the latest in the log, committed or not). */
  membership: Membership;
  progress?: Record<NodeId, ProgressStatus>;
  /** Why this node does not vote yet ("" when it does): it is recovering lost durable state. */
  recovering: string;
}

