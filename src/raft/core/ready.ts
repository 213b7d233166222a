// The core's side of the Ready/advance handshake (etcd's rawnode.go): what has accumulated for the
// driver since the last Ready (messages, confirmed reads, a snapshot to install, changed hard and
// soft state, log writes and commits) and the bookkeeping when the driver reports it done.

import type { RaftLog } from "./raft-log.ts";
import type { Entry, HardState, Message, NodeId, RaftRole, Ready, ReadState, SnapshotMeta } from "../types.ts";

export interface SoftState {
  role: RaftRole;
  leaderId: NodeId;
  term: number;
}

export class Outbox {
  messages: Message[] = [];
  readStates: ReadState[] = [];
  /** A snapshot the follower handler installed into the core's log; the driver resets its log to it. */
  snapshot: SnapshotMeta | null = null;
  private prevHardState: HardState;
  private prevSoft: { role: RaftRole; leaderId: NodeId };
  private outstanding: Ready | null = null;

  constructor(hardState: HardState, soft: { role: RaftRole; leaderId: NodeId }) {
    this.prevHardState = { ...hardState };
    this.prevSoft = { role: soft.role, leaderId: soft.leaderId };
  }

  /** A Ready was handed out and not yet advanced: no other may be built. */
  get busy(): boolean {
    return this.outstanding !== null;
  }

  /** Whether anything is due for the driver, given the current state. */
  hasWork(log: RaftLog, hs: HardState, soft: SoftState): boolean {
    return (
      this.messages.length > 0 ||
      this.readStates.length > 0 ||
      this.snapshot !== null ||
      log.stableIndex < log.lastIndex() ||
      log.appliedIndex < log.commitIndex ||
      !sameHardState(hs, this.prevHardState) ||
      soft.role !== this.prevSoft.role ||
      soft.leaderId !== this.prevSoft.leaderId
    );
  }

  /** Builds the next Ready and empties the outbox. */
  take(log: RaftLog, hs: HardState, soft: SoftState, maxCommittedBytes: number): Ready {
    if (this.outstanding !== null) throw new Error("Raft.ready() called again before advance() of the previous Ready");
    const softChanged = soft.role !== this.prevSoft.role || soft.leaderId !== this.prevSoft.leaderId;
    const rd: Ready = {
      hardState: sameHardState(hs, this.prevHardState) ? null : hs,
      entries: log.unstableEntries(),
      messages: this.messages,
      committedEntries: log.nextCommitted(maxCommittedBytes),
      snapshot: this.snapshot,
      readStates: this.readStates,
      softState: softChanged ? { ...soft } : null,
    };
    this.messages = [];
    this.readStates = [];
    this.snapshot = null;
    this.prevSoft = { role: soft.role, leaderId: soft.leaderId };
    this.outstanding = rd;
    return rd;
  }

  /** The driver persisted, sent and applied everything in `rd`: move the log's stable and applied marks. */
  advance(rd: Ready, log: RaftLog): void {
    if (rd !== this.outstanding) throw new Error("Raft.advance() must be given the Ready last returned by ready()");
    this.outstanding = null;
    if (rd.hardState !== null) this.prevHardState = rd.hardState;
    // The log may have changed since ready(): an entry still holding the term it had in `rd`
    // proves (log matching) that everything up to it is what was persisted.
    for (let i = rd.entries.length - 1; i >= 0; i--) {
      const e = rd.entries[i] as Entry;
      if (log.term(e.index) === e.term) {
        if (e.index > log.stableIndex) log.stableIndex = e.index;
        break;
      }
    }
    const lastCommitted = rd.committedEntries[rd.committedEntries.length - 1];
    if (lastCommitted !== undefined && lastCommitted.index > log.appliedIndex) log.appliedTo(lastCommitted.index);
  }
}

function sameHardState(a: HardState, b: HardState): boolean {
  return a.term === b.term && a.votedFor === b.votedFor && a.commitIndex === b.commitIndex;
}
