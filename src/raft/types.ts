// The vocabulary shared by the Raft core, its driver, the log store, the transports and the state
// machine: log entries, persistent state, peer messages, and the interfaces the driver plugs into.
// Names follow the Raft paper (term, votedFor, commitIndex, lastApplied, matchIndex, nextIndex).

/** A node's id: a small non-negative integer (at bootstrap, its position in the `-addrs` list). */
export type NodeId = number;

/** No node (no vote cast, leader unknown). */
export const NONE: NodeId = -1;

export const enum EntryType {
  /** A client command: `data` is opaque to Raft and handed to the state machine. */
  Normal = 0,
  /** The empty entry a new leader appends to commit entries of earlier terms (§5.4.2, §8). */
  Noop = 1,
  /**
   * A configuration change: `data` is the whole new Membership (core/membership.ts). It takes
   * effect on every node as soon as it is in the node's log (§4.1 of the thesis). State machines
   * never see one: RaftNode hands it to them as a Noop.
   */
  ConfChange = 2,
}

/**
 * The cluster configuration: who votes, who only follows the log (learners), and where each
 * member is reached. Voters and learners are sorted and disjoint.
 */
export interface Membership {
  voters: NodeId[];
  learners: NodeId[];
  /** Address of each member that has one (bootstrap lists may give none). */
  addresses: Record<NodeId, string>;
}

export interface Entry {
  index: number;
  term: number;
  type: EntryType;
  data: Uint8Array;
}

/** What must be durable before a node answers a vote or an append (Figure 2, "persistent state"). */
export interface HardState {
  term: number;
  votedFor: NodeId;
  commitIndex: number;
}

/**
 * Identifies the state a snapshot captures: everything up to and including `index`, and the
 * configuration in force at `index` (`members` are its voters).
 */
export interface SnapshotMeta {
  index: number;
  term: number;
  /** The voters. */
  members: NodeId[];
  /** Non-voting members (absent: none). */
  learners?: NodeId[];
  /** Address per member id (absent: none known). */
  addresses?: Record<NodeId, string>;
}

/**
 * Peer messages. Every message carries the sender's term; a receiver that sees a higher term
 * steps down first (§5.1). Vote messages with `preVote` do not change anyone's term (§9.6).
 */
export type Message =
  | {
      type: "RequestVote";
      from: NodeId;
      to: NodeId;
      term: number;
      lastLogIndex: number;
      lastLogTerm: number;
      preVote: boolean;
      /**
       * Set by a candidate campaigning on the leader's TimeoutNow (leadership transfer): voters
       * grant it even while they still hear from that leader (the CheckQuorum lease). On the wire
       * (raftpb.Message) it travels in the `ok` field, which REQUEST_VOTE does not otherwise use.
       */
      transfer?: boolean;
      /**
       * The candidate is recovering lost durable state (core/recovery.ts): recovering voters grant
       * only such candidates, which in turn need the grant of every other voter.
       */
      recovering?: boolean;
    }
  | {
      type: "RequestVoteResponse";
      from: NodeId;
      to: NodeId;
      term: number;
      voteGranted: boolean;
      preVote: boolean;
    }
  | {
      type: "AppendEntries";
      from: NodeId;
      to: NodeId;
      term: number;
      prevLogIndex: number;
      prevLogTerm: number;
      entries: Entry[];
      leaderCommit: number;
    }
  | {
      type: "AppendEntriesResponse";
      from: NodeId;
      to: NodeId;
      term: number;
      success: boolean;
      /**
       * On success: the index of the last entry now matching the leader's log. On rejection: the
       * prevLogIndex that was rejected, so the leader can tell a stale rejection from a current one.
       */
      matchIndex: number;
      /**
       * On rejection (fast backtracking): the follower's conflicting term and its first index, or its log length.
       * conflictIndex 0 (never an answer to an append, which gives at least 1) marks a report of lost entries:
       * the follower's log ends at matchIndex, below what it acknowledged in this term.
       */
      conflictTerm: number;
      conflictIndex: number;
    }
  | {
      type: "Heartbeat";
      from: NodeId;
      to: NodeId;
      term: number;
      /** min(leader commitIndex, follower matchIndex): never asks a follower to commit what it may not hold. */
      commitIndex: number;
      /** ReadIndex round this heartbeat confirms leadership for (0 = none). */
      readContext: number;
    }
  | {
      type: "HeartbeatResponse";
      from: NodeId;
      to: NodeId;
      term: number;
      readContext: number;
    }
  | {
      /**
       * Emitted by the leader's core in Ready.messages when a follower needs compacted entries;
       * `snapshot` is then the core's compaction point. The driver does not send it as is: it takes
       * the state machine's current snapshot (whose meta.index may be higher), puts that meta in
       * the message and streams the chunks with Transport.sendSnapshot; it steps the answer into
       * the core, or calls reportSnapshot(to, false) if the stream failed.
       * Receiver: acceptSnapshot(m) (true ⇒ restore the state machine from the stream), then
       * step(m) in either case; the core answers with an InstallSnapshotResponse in Ready.messages
       * and, if it installed the snapshot, sets Ready.snapshot (reset the log store to it).
       * The driver must not apply entries or step other messages between acceptSnapshot and step.
       */
      type: "InstallSnapshot";
      from: NodeId;
      to: NodeId;
      term: number;
      snapshot: SnapshotMeta;
    }
  | {
      type: "InstallSnapshotResponse";
      from: NodeId;
      to: NodeId;
      term: number;
      success: boolean;
      /** The follower's last log index after installing (the snapshot index on success). */
      matchIndex: number;
    }
  | {
      /** Leadership transfer: the receiver campaigns at once, skipping PreVote (§3.10 of the thesis). */
      type: "TimeoutNow";
      from: NodeId;
      to: NodeId;
      term: number;
    };

export type MessageType = Message["type"];

export type RaftRole = "Leader" | "Follower" | "Candidate" | "PreCandidate";

/**
 * The replicated state machine, as the driver sees it. Committed entries arrive in log order,
 * each index exactly once per lifetime of the machine's durable state. Only Normal and Noop
 * entries arrive: configuration changes are the driver's business and reach it as Noops.
 */
export interface StateMachine {
  /** Applies committed entries in order. Must not fsync: the Raft log is the write-ahead log. */
  apply(entries: Entry[]): Promise<void>;
  /** Index of the last entry applied (in memory or on disk); 0 for an empty machine. */
  lastApplied(): number;
  /** Term of that entry (0 for an empty machine): with the index, where a restarted log must resume. */
  lastAppliedTerm(): number;
  /**
   * Highest applied index the state machine has made durable on its own (a synced WAL or flushed
   * tables). The Raft log may be compacted only up to this index; after a crash, replay starts here.
   */
  durableAppliedIndex(): number;
  /** Forces the applied state to disk; returns the now-durable applied index. */
  sync(): Promise<number>;
  /**
   * While not null, the node's log is durable only through `index` and the machine may hold
   * applied entries above it (a leader applies committed entries before its own write syncs):
   * a machine that makes its applied state durable on its own (a background flush, a flush at
   * close) must not make an applied index above `index` durable, or a crash would leave it ahead
   * of the log. A machine whose durable state only moves with sync() may ignore this (the driver
   * never calls sync() while a limit is set).
   */
  limitDurableApplied?(index: number | null): void;
  /**
   * A consistent point-in-time image of the applied state as a stream of chunks. `meta.index` is
   * the applied index it captures. The stream must be readable while writes continue. A chunk
   * once handed out is never reused by the machine: the sender passes chunks on without a copy.
   */
  snapshot(): Promise<{ meta: SnapshotMeta; chunks: AsyncIterable<Uint8Array> }>;
  /** Replaces the whole state with the snapshot read from `chunks`; atomic across crashes. */
  restore(meta: SnapshotMeta, chunks: AsyncIterable<Uint8Array>): Promise<void>;
  /**
   * The meta (with its configuration) of the last snapshot restored, if the machine keeps it. A
   * node that crashed after a restore but before resetting its log resumes from it; without it the
   * node falls back to its bootstrap members there.
   */
  restoredSnapshot?(): SnapshotMeta | null;
}

/**
 * How a node reaches its peers. Delivery is unreliable: messages may be lost, duplicated,
 * delayed or reordered; Raft tolerates all of it. `send` never throws for a network fault.
 */
export interface Transport {
  send(messages: Message[]): void;
  /** Streams a snapshot to a peer; resolves with the peer's answer, rejects on a network fault. */
  sendSnapshot(
    message: Extract<Message, { type: "InstallSnapshot" }>,
    chunks: AsyncIterable<Uint8Array>,
  ): Promise<Extract<Message, { type: "InstallSnapshotResponse" }>>;
  /** Registers the receiving side. Called once by the driver before any traffic. */
  listen(handler: TransportHandler): void;
  close(): Promise<void>;
}

export interface TransportHandler {
  onMessages(messages: Message[]): void;
  onSnapshot(
    message: Extract<Message, { type: "InstallSnapshot" }>,
    chunks: AsyncIterable<Uint8Array>,
  ): Promise<Extract<Message, { type: "InstallSnapshotResponse" }>>;
}

/**
 * The durable Raft log (implemented by `log-store.ts` on real files, and by the simulator's disk).
 * Entries between the last snapshot and `lastIndex()` are held in memory as well as on disk; their
 * number is bounded by the snapshot threshold, which compacts the prefix.
 */
export interface LogStore {
  /** State recovered at open (term 0, no vote, commit 0 for a new log). */
  hardState(): HardState;
  /** The compaction point: entries up to and including `index` are gone (index 0, term 0 when none). */
  snapshotMeta(): SnapshotMeta;
  /** First index held (snapshotMeta().index + 1). */
  firstIndex(): number;
  /** Last index held (snapshotMeta().index when empty). */
  lastIndex(): number;
  /** Term of the entry at `index`, for snapshotMeta().index <= index <= lastIndex(); else undefined. */
  term(index: number): number | undefined;
  /** Entries in [lo, hi), at most `maxBytes` of payload (always at least one entry if any exist). */
  entries(lo: number, hi: number, maxBytes?: number): Entry[];
  /**
   * Makes `hardState` (if given) and `entries` durable. When entries[0].index <= lastIndex(), the
   * conflicting suffix from entries[0].index on is truncated first. Resolves after fsync; calls
   * that arrive while a sync is in flight share the next one (group commit). Exception (etcd's
   * MustSync): a save with no entries whose hard state differs from the last one only in
   * commitIndex may resolve at once and become durable with a later save — commitIndex is
   * recoverable, term and votedFor are not.
   */
  save(hardState: HardState | null, entries: Entry[]): Promise<void>;
  /** Drops entries up to and including `meta.index` (which must be held or equal the snapshot). */
  compact(meta: SnapshotMeta): Promise<void>;
  /** Discards every entry; the log continues after `meta.index` (after installing a snapshot). */
  resetToSnapshot(meta: SnapshotMeta): Promise<void>;
  /** Bytes on disk. */
  sizeBytes(): number;
  close(): Promise<void>;
}

/** A linearizable read the leader has confirmed: serve `context`'s read once lastApplied >= index. */
export interface ReadState {
  context: number;
  index: number;
}

/**
 * What the core asks its driver to do next (etcd's Ready). The driver must, in order:
 * 1. persist `hardState` and `entries` (one fsync) and install `snapshot` if set,
 * 2. then send `messages` (a vote or append answer is never sent before it is durable). A leader's
 *    own AppendEntries, Heartbeat and InstallSnapshot may leave before or during step 1 (thesis
 *    §10.2.1): the core counts the leader's entries toward commit only once advance() reports them,
 *    durable,
 * 3. apply `committedEntries` to the state machine, serve `readStates` once applied (entries this
 *    node's log already held durably before step 1 may be applied while step 1 runs: they are
 *    committed and on this disk, so nothing about them waits for this write),
 * 4. call `advance(ready)`.
 */
export interface Ready {
  hardState: HardState | null;
  entries: Entry[];
  messages: Message[];
  committedEntries: Entry[];
  snapshot: SnapshotMeta | null;
  readStates: ReadState[];
  /** Set when role or leader changed. */
  softState: { role: RaftRole; leaderId: NodeId; term: number } | null;
}
