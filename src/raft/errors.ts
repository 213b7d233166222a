// Typed errors of the Raft layer: what a caller of RaftNode (propose, readIndex) can be refused with.
// Callers match them by class (instanceof), never by message or string code.

import { NONE, type NodeId } from "./types.ts";

/** Thrown (or returned) when a request needs the leader and this node is not it. */
export class NotLeaderError extends Error {
  readonly code = "NOT_LEADER";
  constructor(
    readonly leaderId: NodeId,
    message = leaderId === NONE
      ? "this node is not the leader and no leader is known yet; retry shortly"
      : `this node is not the leader; node ${leaderId} is`,
  ) {
    super(message);
    this.name = "NotLeaderError";
  }
}

/** The leader refused work for now (too many uncommitted entries, or a leadership transfer): retry shortly. */
export class BackpressureError extends Error {
  readonly code = "BACKPRESSURE";
  constructor(readonly reason: "backpressure" | "transferring") {
    super(
      reason === "transferring"
        ? "leadership is being transferred; retry shortly"
        : "too many uncommitted proposals or pending reads on this leader; retry shortly",
    );
    this.name = "BackpressureError";
  }
}

export class EntryTooLargeError extends Error {
  readonly code = "ENTRY_TOO_LARGE";
  constructor(size: number, limit: number) {
    super(`a command of ${size} bytes exceeds maxEntryBytes (${limit}); split it into smaller commands`);
    this.name = "EntryTooLargeError";
  }
}

export class ReadIndexTimeoutError extends Error {
  readonly code = "TIMEOUT";
  constructor(ms: number) {
    super(`readIndex was not confirmed and applied within ${ms} ms; the leader may have lost its quorum — retry`);
    this.name = "ReadIndexTimeoutError";
  }
}

/** The node was stopped, or stopped itself after a fatal error (see `cause`). */
export class NodeStoppedError extends Error {
  readonly code = "STOPPED";
  constructor(id: NodeId, cause?: Error) {
    super(cause ? `raft node ${id} stopped after a fatal error: ${cause.message}` : `raft node ${id} is stopped`, { cause });
    this.name = "NodeStoppedError";
  }
}

/**
 * The leader refused a configuration change for now: another change is not yet committed, this
 * leader has not yet committed an entry of its term, or the learner to promote is still catching up.
 */
export class ConfChangePendingError extends Error {
  readonly code = "CONF_CHANGE_PENDING";
  constructor(
    readonly reason: "change-pending" | "learner-behind",
    detail?: string,
  ) {
    super(
      reason === "change-pending"
        ? "another membership change is still in progress (one at a time); retry once it has committed"
        : `the learner is still catching up with the leader's log${detail ? ` (${detail})` : ""}; retry shortly`,
    );
    this.name = "ConfChangePendingError";
  }
}

/** The change makes no sense against the current membership (adding a member twice, removing the last voter, ...). */
export class InvalidConfChangeError extends Error {
  readonly code = "INVALID_CONF_CHANGE";
  constructor(detail: string) {
    super(`invalid membership change: ${detail}`);
    this.name = "InvalidConfChangeError";
  }
}

/** A proposed change did not commit (a new leader overwrote it) or its outcome is unknown: list the members and retry. */
export class ConfChangeLostError extends Error {
  readonly code = "CONF_CHANGE_LOST";
  constructor(why: string) {
    super(`the membership change did not complete: ${why}; list the members to see the current configuration and retry`);
    this.name = "ConfChangeLostError";
  }
}
