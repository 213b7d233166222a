// Single-server configuration changes (etcd's confchange/, §4.1 of the Raft thesis): what a change
// may be, the configuration it leads to, and when a leader may propose one. Pure functions.

import type { Membership, NodeId } from "../types.ts";
import { isMember, normalizeMembership } from "./membership.ts";

/**
 * One server at a time: add a learner (non-voting, receives the log and snapshots), promote a
 * caught-up learner to voter, or remove any member (voter or learner, the leader included).
 */
export type ConfChange =
  | { type: "add-learner"; id: NodeId; address?: string }
  | { type: "promote"; id: NodeId }
  | { type: "remove"; id: NodeId };

/** Why a leader refuses a change now (retry later) or at all (invalid). */
export type ConfChangeRefusal =
  /** A change is still uncommitted, or this leader has not yet committed an entry of its term. */
  | "change-pending"
  /** The learner to promote is too far behind the leader's log. */
  | "learner-behind"
  /** The change makes no sense against the current configuration. */
  | "invalid";

/** The configuration after `change`, or a sentence saying why the change is invalid. */
export function applyConfChange(current: Membership, change: ConfChange): Membership | string {
  const { id } = change;
  if (!Number.isInteger(id) || id < 0 || id > 0xffff_ffff) return `node id ${id} is not an integer in [0, 2^32)`;
  switch (change.type) {
    case "add-learner": {
      if (isMember(current, id)) return `node ${id} is already a ${current.voters.includes(id) ? "voter" : "learner"}`;
      const address = change.address ?? "";
      if (address.length > 512) return `the address of node ${id} is longer than 512 characters`;
      const addresses = address === "" ? { ...current.addresses } : { ...current.addresses, [id]: address };
      return normalizeMembership({ voters: current.voters, learners: [...current.learners, id], addresses });
    }
    case "promote": {
      if (current.voters.includes(id)) return `node ${id} is already a voter`;
      if (!current.learners.includes(id)) return `node ${id} is not a learner; add it as a learner first`;
      return normalizeMembership({
        voters: [...current.voters, id],
        learners: current.learners.filter((l) => l !== id),
        addresses: current.addresses,
      });
    }
    case "remove": {
      if (!isMember(current, id)) return `node ${id} is not a member`;
      const voters = current.voters.filter((v) => v !== id);
      if (voters.length === 0) return `node ${id} is the last voter; a cluster needs at least one`;
      const addresses = { ...current.addresses };
      delete addresses[id];
      return normalizeMembership({ voters, learners: current.learners.filter((l) => l !== id), addresses });
    }
  }
}

/** What a leader knows when a change is proposed. */
export interface ConfChangeContext {
  membership: Membership;
  lastConfigIndex: number;
  commitIndex: number;
  committedInCurrentTerm: boolean;
  lastIndex: number;
  maxLearnerLag: number;
  /** How far a member's log is known to match the leader's. */
  matchIndex: (id: NodeId) => number;
}

/** The configuration a change leads to, or why the leader refuses it. */
export function checkConfChange(
  change: ConfChange,
  ctx: ConfChangeContext,
): { ok: true; next: Membership } | { ok: false; reason: ConfChangeRefusal; detail?: string } {
  if (!changeAllowed(ctx)) return { ok: false, reason: "change-pending" };
  const next = applyConfChange(ctx.membership, change);
  if (typeof next === "string") return { ok: false, reason: "invalid", detail: next };
  if (change.type === "promote") {
    // Learners catch up before they vote: a voter far behind would stall commits it must count for.
    // A learner that never acknowledged anything (matchIndex 0) may not even be running.
    const match = ctx.matchIndex(change.id);
    if (match === 0 || match + ctx.maxLearnerLag < ctx.lastIndex) {
      return { ok: false, reason: "learner-behind", detail: `learner ${change.id} holds the log through ${match}, the leader's ends at ${ctx.lastIndex}` };
    }
  }
  return { ok: true, next };
}

/**
 * Whether a leader may propose a change now. One change at a time: the previous configuration
 * entry must be committed. And the leader must have committed an entry of its own term first:
 * otherwise a configuration entry from an earlier term that this leader does not hold could
 * still commit, and two single-server changes that both leave one configuration would have
 * majorities that do not overlap (the fix to the thesis' algorithm, raft-dev, 2015).
 */
export function changeAllowed(state: { lastConfigIndex: number; commitIndex: number; committedInCurrentTerm: boolean }): boolean {
  return state.lastConfigIndex <= state.commitIndex && state.committedInCurrentTerm;
}

export function describeConfChange(change: ConfChange): string {
  switch (change.type) {
    case "add-learner":
      return `add node ${change.id}${change.address ? ` at ${change.address}` : ""} as a learner`;
    case "promote":
      return `promote learner ${change.id} to voter`;
    case "remove":
      return `remove node ${change.id}`;
  }
}
