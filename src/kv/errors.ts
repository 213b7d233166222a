// Typed errors of the KV layer. Each class is one failure a client can be refused with; its `code`
// is the one Connect code it maps to (src/kv/service.ts holds the only mapping). Match by class.

/** The Connect code (by its wire name) each KV refusal is answered with. */
export type KVErrorCode = "invalid_argument" | "resource_exhausted" | "unavailable" | "failed_precondition";

/** A refusal of a client request; nothing was applied. Messages say what was wrong and what to do. */
export abstract class KVError extends Error {
  abstract readonly code: KVErrorCode;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** The request itself is wrong (bad op, empty or oversized key or value): retrying cannot help. */
export class InvalidArgumentError extends KVError {
  override readonly name = "InvalidArgumentError";
  readonly code = "invalid_argument";
}

/** The wait suggested with a refusal for commands or proposals in flight (a burst drains in about this). */
export const OVERLOADED_RETRY_AFTER_MS = 100;

/** This node has too much in flight: retry after a backoff (on this node, it is the leader). */
export class OverloadedError extends KVError {
  override readonly name = "OverloadedError";
  readonly code = "resource_exhausted";
  /** The wait to suggest to the client (sent as retry-after-ms); none: the client's own backoff. */
  readonly retryAfterMs: number | undefined;
  constructor(message: string, options?: { cause?: unknown; retryAfterMs?: number }) {
    super(message, options);
    this.retryAfterMs = options?.retryAfterMs;
  }
}

/** This node cannot serve now (closed, starting, not able to take commands): try another node. */
export class UnavailableError extends KVError {
  override readonly name = "UnavailableError";
  readonly code = "unavailable";
}

/** A snapshot stream or a stored record failed a format, length or checksum check. */
export class KVCorruptionError extends Error {
  override readonly name = "KVCorruptionError";
}

/**
 * A request of a registered session that no longer exists (expired after sessionTtlMs without a
 * request, or never registered): it was not applied. Register a new session; a write retried
 * under the old one may or may not have been applied before the session expired.
 */
export class SessionExpiredError extends KVError {
  override readonly name = "SessionExpiredError";
  readonly code = "failed_precondition";
}

/** A retried Txn whose answer the session no longer holds (the client moved on, or it expired). */
export class OutcomeUnknownError extends KVError {
  override readonly name = "OutcomeUnknownError";
  readonly code = "failed_precondition";
}
