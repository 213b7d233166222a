// Recovery of lost durable state: a node that may have lost entries or a vote it acknowledged (a
// wiped or truncated disk, a discarded state machine) votes only for candidates recovering too,
// which need every other voter, until it has caught up with a leader. Pure; DESIGN.md "Lost durable state".

import { VoteResult } from "./quorum.ts";
import type { Message, NodeId } from "../types.ts";

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
   * longer says which entries were committed. It grants a (pre-)vote only to a candidate that is
   * recovering too, and such a candidate needs every other voter (tally), so a voter that kept the
   * committed entries is always among its electors. (The usual up-to-date rule applies as well.)
   */
  refusesVote(m: MessageOf<"RequestVote">): boolean {
    return this.recovering && m.recovering !== true;
  }

  /**
   * A recovering candidate wins only with the grant of every other voter; one refusal loses. Its
   * own vote and a majority would not do: a wiped node, another one, and a node that never got an
   * entry could elect an empty leader while the nodes holding the committed entries are down.
   * Unanimity includes them. This is also how a new cluster starts (kvserver starts every node on
   * an empty directory recovering: it cannot tell a new node from a wiped one): its first leader is
   * elected once every node is up. A single-node cluster needs no one else.
   */
  tally(self: NodeId, voters: readonly NodeId[], votes: ReadonlyMap<NodeId, boolean>): VoteResult {
    let pending = false;
    for (const v of voters) {
      if (v === self) continue;
      const vote = votes.get(v);
      if (vote === false) return VoteResult.Lost;
      if (vote === undefined) pending = true;
    }
    return pending ? VoteResult.Pending : VoteResult.Won;
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

  /**
   * A leader that was recovering (elected by every other voter, so nothing committed is missing
   * from its log) is done once an entry of its own term commits. Not at election: if it loses
   * leadership before that, it is still the node that lost state, and must recover again
   * (kvserver's RECOVERING marker stays until the same point).
   */
  leaderCommitted(): void {
    this.recovering = false;
    this.target = null;
  }
}
