// What a Clerk is opened with (ClerkOptions) and what its getStatus() reports per node (NodeStatus).
import type { Transport } from "@connectrpc/connect";
import type { BatchOptions } from "./clerk-batch.ts";

export interface ClerkOptions {
  /**
   * Nodes' addresses, taken to be nodes 0, 1, … in order: "localhost:5001" or "http://host:port".
   * Only a start: the Clerk learns the members' real ids and addresses from the configuration
   * (GetStatus) when a leader hint names a node it does not know or every node it knows failed,
   * so one live address of a cluster whose members moved is enough.
   */
  addrs: readonly string[];
  /** Makes a Connect transport for one base URL (createConnectTransport from connect-node or -web). */
  transport: (baseUrl: string) => Transport;
  /** Deadline of one RPC to one node. */
  callTimeoutMs?: number;
  /** Total time one operation may take across all retries before it fails. */
  operationTimeoutMs?: number;
  /** Upper bound on RPCs per operation. */
  maxAttempts?: number;
  /** First backoff after a failed round; doubles up to maxBackoffMs. */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** Deadline of each node's answer in getStatus(). */
  statusTimeoutMs?: number;
  /**
   * Use this unregistered session id instead of registering one (eRaft's way: exactly-once only
   * within the server's window for unregistered clients). By default the Clerk registers.
   */
  clientId?: bigint;
  /**
   * Largest key + value this Clerk sends (default 4 MiB, the server's request limit): a bigger
   * one fails at once instead of being refused by every node in turn.
   */
  maxRequestBytes?: number;
  /**
   * Operations this Clerk runs at once (default 256). The server's session keeps one reply per
   * session, so each concurrent operation uses a session of its own, registered when first needed
   * (a Raft entry each) and kept for reuse; beyond this many, operations wait their turn. 1 runs
   * operations one at a time, in call order. With `clientId` it is always 1.
   */
  maxConcurrency?: number;
  /**
   * Coalesce concurrent Get/Put/Append/Delete operations to a node into Batch RPCs (default on);
   * false sends one Command RPC per operation.
   */
  batch?: BatchOptions | false;
}

export type NodeStatus =
  | {
      online: true;
      id: number;
      address: string;
      /** Leader, Follower or Candidate. */
      state: string;
      term: bigint;
      lastApplied: bigint;
      commitIndex: bigint;
      storageSize: bigint;
      leaderId?: bigint;
      members: bigint[];
      snapshotIndex: bigint;
      keyCount: bigint;
      /** Storage conditions ("" when healthy): low disk space, recovering lost state, repair. */
      storageHealth: string;
    }
  | { online: false; id: number; address: string; state: "Offline"; error: string };

/** How putMany / appendMany run. */
export interface BulkOptions {
  /**
   * Writes in flight at once (default and at most: the Clerk's maxConcurrency, one session each).
   * They travel as Batch RPCs of up to `batch.maxCommands` (1,024) writes, `batches` of them at
   * once. For a bulk load, open the Clerk with maxConcurrency 4096-8192: throughput is writes in
   * flight over a batch's latency until the CPU is full; 4,096 fill two cores, more helps on a
   * machine shared with other work (src/kv/DESIGN.md, "Where a batch's time goes").
   */
  concurrency?: number;
  /**
   * Batch RPCs in flight at most (1..64). Default: enough to carry `concurrency` writes at
   * `batch.maxCommands` each, at least 4 (so 4,096 writes go as 4 RPCs of 1,024, 8,192 as 8).
   * More RPCs of fewer writes each smooth the pipeline; fewer cost less per write.
   */
  batches?: number;
  /** Called once per acknowledged write (applied exactly once), in acknowledgement order: progress, checkpoints. */
  onWritten?: (key: string, value: string) => void;
}
