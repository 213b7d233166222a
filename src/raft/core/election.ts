// Elections (§5.2, PreVote §9.6, leader lease §4.2.3 of the thesis): who may ask for votes, the
// rule a voter grants by, and which answers a (pre-)candidate counts. Pure; roles change in raft.ts.

import type { RaftLog } from "./raft-log.ts";
import type { Message, NodeId, RaftRole } from "../types.ts";
import { NONE } from "../types.ts";

type MessageOf<T extends Message["type"]> = Extract<Message, { type: T }>;

/** pre-vote: ask without raising the term; election: a real vote; transfer: on the leader's TimeoutNow. */
export type CampaignKind = "pre-vote" | "election" | "transfer";

/** The RequestVote messages a campaign in `voteTerm` sends to every other voter. */
export function voteRequests(
  from: NodeId,
  voters: readonly NodeId[],
  voteTerm: number,
  log: RaftLog,
  kind: CampaignKind,
): Message[] {
  const out: Message[] = [];
  for (const to of voters) {
    if (to === from) continue;
    out.push({
      type: "RequestVote",
      from,
      to,
      term: voteTerm,
      lastLogIndex: log.lastIndex(),
      lastLogTerm: log.lastTerm(),
      preVote: kind === "pre-vote",
      ...(kind === "transfer" ? { transfer: true } : {}),
    });
  }
  return out;
}

/**
 * What a message of a higher term does to the receiver (§5.1): nothing at all (a vote request
 * inside the leader lease), nothing to its term (a pre-vote, or a granted pre-vote answer), or
 * it steps down into that term, following the sender when the sender is that term's leader.
 */
export function higherTermAction(
  m: Message,
  lease: { checkQuorum: boolean; leaderId: NodeId; electionElapsed: number; electionTicks: number },
): "ignore" | "keep-term" | "follow-sender" | "follow-none" {
  if (m.type === "RequestVote" && ignoresVoteRequest(m, lease)) return "ignore";
  if (m.type === "RequestVote" && m.preVote) return "keep-term";
  // Granted pre-votes carry the term we would campaign in.
  if (m.type === "RequestVoteResponse" && m.preVote && m.voteGranted) return "keep-term";
  if (m.type === "AppendEntries" || m.type === "Heartbeat" || m.type === "InstallSnapshot") return "follow-sender";
  return "follow-none";
}

/**
 * A node that heard from a live leader within the election timeout ignores (pre)votes of a
 * higher term (leader lease, §4.2.3 of the thesis), unless the leader itself asked for the
 * election (TimeoutNow).
 */
function ignoresVoteRequest(
  m: MessageOf<"RequestVote">,
  state: { checkQuorum: boolean; leaderId: NodeId; electionElapsed: number; electionTicks: number },
): boolean {
  const inLease = state.checkQuorum && state.leaderId !== NONE && state.electionElapsed < state.electionTicks;
  return inLease && m.transfer !== true;
}

/**
 * Figure 2's RequestVote rule: one vote per term (a repeat to the same candidate is fine), none
 * while a leader is known, and only for a log at least as up to date as ours. A pre-vote for a
 * higher term is granted on the log alone: it changes nothing.
 */
export function grantsVote(
  m: MessageOf<"RequestVote">,
  state: { term: number; votedFor: NodeId; leaderId: NodeId },
  log: RaftLog,
): boolean {
  const canVote =
    state.votedFor === m.from ||
    (state.votedFor === NONE && state.leaderId === NONE) ||
    (m.preVote && m.term > state.term);
  return canVote && log.isUpToDate(m.lastLogIndex, m.lastLogTerm);
}

/** Whether a (pre-)candidate in `role` at `term` counts this answer. */
export function countsVoteResponse(role: RaftRole, term: number, m: MessageOf<"RequestVoteResponse">): boolean {
  // A granted pre-vote counts only for the term this pre-campaign asks about (not an older one).
  if (role === "PreCandidate") return m.preVote && (!m.voteGranted || m.term === term + 1);
  if (role === "Candidate") return !m.preVote;
  return false;
}
