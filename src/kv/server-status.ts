// What a KVServer reports about its replica: KVStatus (GetStatus, the CLI, tests) and KVDiagnostics
// (metrics and health in src/obs), built from the replica's parts when asked.
import { FileLogStore, type LogStore, type LogStoreStats, type NodeId, type RaftNode, type RaftNodeStatus } from "../raft/index.ts";
import type { DBStats } from "../lsm/index.ts";
import type { DiskWatch } from "./disk-watch.ts";
import type { ReadBatcher } from "./reads.ts";
import type { KVStateMachine } from "./state-machine.ts";

export interface KVStatus {
  id: NodeId;
  state: "Leader" | "Follower" | "Candidate";
  term: number;
  lastApplied: number;
  commitIndex: number;
  /** LSM bytes on disk plus Raft log bytes. */
  storageSize: number;
  leaderId: NodeId;
  /** The voters of the configuration this node uses. */
  members: NodeId[];
  /** Its learners (non-voting members). */
  learners: NodeId[];
  /** Address per member id, as stored with the configuration. */
  addresses: Record<NodeId, string>;
  snapshotIndex: number;
  /** User keys in this replica's applied state. */
  keyCount: number;
  /** Live client sessions (duplicate-detection records). */
  sessions: number;
  /** Snapshots this node has installed from a leader since it started. */
  snapshotsInstalled: number;
  /** ReadIndex rounds this node has asked for since it started (Gets share rounds). */
  readIndexRounds: number;
  /** Storage conditions an operator should see ("" when healthy): repair, recovery, low disk space, an unwritable directory. */
  storageHealth: string;
}

export interface KVDiagnostics {
  raft: RaftNodeStatus;
  /** Null once closed. */
  lsm: DBStats | null;
  /** The file log's counters (null when the caller passed its own log store). */
  log: LogStoreStats | null;
  sessions: number;
  readIndexRounds: number;
  pendingCommands: number;
}

/** The parts of a KVServer its status is read from. */
export interface ReplicaParts {
  id: NodeId;
  node: RaftNode;
  machine: KVStateMachine;
  reads: ReadBatcher;
  closed: boolean;
  /** Why the replica is being rebuilt right now (self-repair), or null. */
  repairing: string | null;
  diskWatch: DiskWatch | null;
  /** The log store the server opened itself (null when the caller passed one in). */
  ownedLogStore: LogStore | null;
  /** Commands in flight on the node. */
  pending: number;
}

export function replicaStatus(r: ReplicaParts): KVStatus {
  const status = r.node.status();
  return {
    id: r.id,
    state: status.role === "PreCandidate" ? "Candidate" : status.role,
    term: status.term,
    lastApplied: r.machine.lastApplied(),
    commitIndex: status.commitIndex,
    storageSize: (r.closed ? 0 : r.machine.diskBytes()) + status.logBytes,
    leaderId: status.leaderId,
    members: [...status.members],
    learners: [...status.learners],
    addresses: { ...status.addresses },
    snapshotIndex: status.snapshotIndex,
    keyCount: r.machine.userKeyCount,
    sessions: r.machine.sessionCount,
    snapshotsInstalled: status.snapshotsReceived,
    readIndexRounds: r.reads.roundsStarted,
    storageHealth: [r.repairing === null ? "" : `repairing: ${r.repairing}`, status.recovering, r.diskWatch?.health() ?? ""]
      .filter((s) => s !== "")
      .join("; "),
  };
}

/** Live views for metrics and health (src/obs), read when scraped: no copies kept, no hooks. */
export function replicaDiagnostics(r: ReplicaParts): KVDiagnostics {
  return {
    raft: r.node.status(),
    lsm: r.closed ? null : r.machine.lsmStats(),
    log: r.ownedLogStore instanceof FileLogStore ? r.ownedLogStore.stats() : null,
    sessions: r.machine.sessionCount,
    readIndexRounds: r.reads.roundsStarted,
    pendingCommands: r.pending,
  };
}
