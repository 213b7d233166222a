// Fail-stop: the one error that ends a node. Turns a storage failure or a broken invariant into a
// FatalError whose message says what broke, where (file, offset), and what the operator can do.
import { LogStoreError, NodeStoppedError } from "../raft/index.ts";
import { LsmError } from "../lsm/index.ts";
import { KVCorruptionError } from "./errors.ts";

/** An unrecoverable failure: the node must stop (a supervisor restarts it). */
export class FatalError extends Error {
  override readonly name = "FatalError";
  constructor(
    message: string,
    readonly file?: string,
    readonly offset?: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** The errno-style code anywhere in an error's cause chain (ENOSPC, EACCES, ...), if any. */
export function errnoOf(error: unknown): string | null {
  for (let e: unknown = error, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    const code = (e as NodeJS.ErrnoException).code;
    if (typeof code === "string" && /^E[A-Z0-9]+$/.test(code)) return code;
  }
  return null;
}

/** True for corruption of the state machine's files (repairable from a leader's snapshot). */
export function isStateMachineCorruption(error: unknown): boolean {
  for (let e: unknown = error, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    // A BACKGROUND error wraps the failure that made the database read-only: look inside.
    if (e instanceof LsmError && e.code === "CORRUPTION") return true;
    if (e instanceof KVCorruptionError) return true;
    if (e instanceof LogStoreError) return false;
  }
  return false;
}

const ADVICE: Record<string, string> = {
  ENOSPC: "the disk is full: free space (or grow the volume), then restart the node",
  EDQUOT: "the disk quota is exhausted: raise it, then restart the node",
  EACCES: "the data directory is no longer writable by this process: restore its permissions, then restart the node",
  EPERM: "the data directory is no longer writable by this process: restore its permissions, then restart the node",
  EROFS: "the data directory's file system is read-only: remount it read-write, then restart the node",
  ENOENT:
    "a file of the data directory (or the directory itself) was deleted: restore it, or empty the directory and restart " +
    "the node so it catches up from the leader",
  EIO: "the disk reports I/O errors: replace it, then empty the data directory and restart the node (it catches up from the leader)",
};

/**
 * Describes `error`, met while doing `what` (e.g. "raft log write"), as a FatalError: one line
 * with the file and offset when known, and advice. A FatalError passes through unchanged.
 */
export function toFatal(what: string, error: unknown): FatalError {
  if (error instanceof FatalError) return error;
  let inner: unknown = error;
  // The driver wraps the real failure in NodeStoppedError; describe the failure itself.
  while (inner instanceof NodeStoppedError && inner.cause !== undefined) inner = inner.cause;
  const message = inner instanceof Error ? inner.message : String(inner);
  const file = inner instanceof LsmError || inner instanceof LogStoreError ? inner.file : undefined;
  const offset = inner instanceof LsmError || inner instanceof LogStoreError ? inner.offset : undefined;
  const where = file === undefined ? "" : ` [file ${file}${offset === undefined ? "" : ` offset ${offset}`}]`;
  const errno = errnoOf(inner);
  let advice: string;
  if (errno !== null && ADVICE[errno] !== undefined) advice = ADVICE[errno]!;
  else if ((inner instanceof LsmError || inner instanceof LogStoreError) && inner.code === "CORRUPTION") {
    advice = "the named file is damaged: empty this node's data directory and restart it; it catches up from the leader";
  } else if (inner instanceof LsmError || inner instanceof LogStoreError) {
    advice = "storage failed: check the disk and the system log, then restart the node";
  } else {
    advice =
      "an invariant broke (a bug, or a message that should never arrive): the node stopped to protect the data; " +
      "restart it and report this line";
  }
  return new FatalError(`${what} failed: ${message}${where}; ${advice}`, file, offset, { cause: inner });
}
