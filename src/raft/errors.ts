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
