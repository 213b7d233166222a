// Recovery of lost durable state: a node that may have lost entries or a vote it acknowledged (a
// wiped or truncated disk, a discarded state machine) neither votes nor campaigns until it has
// caught up with a live leader's commit index. Pure; see DESIGN.md "Lost durable state".

import type { RaftLog } from "./raft-log.ts";
import type { Message } from "../types.ts";

type MessageOf<T extends Message["type"]> = Extract<Message, { type: T }>;

export class Recovery {
  /** The leader's commitIndex in the first AppendEntries heard while recovering: the goal. */
  private target: number | null = null;

  constructor(private recovering: boolean) {}

  get active(): boolean {
    return this.recovering;
  }

  /** What GetStatus shows: how far the node must get before it votes again. */
  describe(): string {
    if (!this.recovering) return "";
    return this.target === null
      ? "recovering lost durable state: not voting until a leader is heard from and caught up with"
      : `recovering lost durable state: not voting until committed through index ${this.target}`;
  }

  /**
   * A recovering voter's promises are gone: it may have voted in this term already, and its log no
   * longer says which entries were committed, so it grants no (pre-)vote. The one exception is a
   * candidate whose log is as empty as ours: no entry was ever appended that either of us knows
   * of, which is how every node of a new cluster starts (a node started without its identity
   * file cannot tell a new cluster from a wiped disk).
   */
  refusesVote(m: MessageOf<"RequestVote">, log: RaftLog): boolean {
    if (!this.recovering) return false;
    return !(m.lastLogIndex === 0 && log.lastIndex() === 0 && log.snapshot.index === 0);
  }

  /** Campaigning asks others to trust our log: only an empty one (a new cluster) may, see refusesVote. */
  blocksCampaign(log: RaftLog): boolean {
    return this.recovering && !(log.lastIndex() === 0 && log.snapshot.index === 0);
  }

  /**
   * An AppendEntries from the current leader: its leaderCommit is the leader's real commitIndex
   * (a Heartbeat's is capped by what the leader believes we hold, which after a loss is a lie).
   */
  heardFromLeader(m: MessageOf<"AppendEntries">): void {
    if (this.recovering && this.target === null) this.target = m.leaderCommit;
  }

  /**
   * Ends recovery once our commitIndex (entries we durably hold) has reached the target and is an
   * entry of the current term: the leader's log holds every entry committed in earlier terms before
   * its own term's first one, so from there on nothing committed is missing here (a leader's
   * commitIndex alone can lag right after its election).
   */
  maybeFinish(commitIndex: number, commitTerm: number | undefined, currentTerm: number): boolean {
    if (!this.recovering || this.target === null || commitIndex < this.target || commitTerm !== currentTerm) return false;
    this.recovering = false;
    this.target = null;
    return true;
  }

  /** A leader's log is the authority for its term: nothing left to catch up with. */
  becameLeader(): void {
    this.recovering = false;
    this.target = null;
  }
}
