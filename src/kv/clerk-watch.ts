// The Clerk's Watch: a server stream from any node, resumed after a node failure from the revision
// after the last one it delivered (events of one revision always arrive together), so the caller
// sees every event once, in revision order. `compacted` is final only when no node still has the
// revision.
import { Code, ConnectError } from "@connectrpc/connect";
import { Event_EventType, WatchRequest_FilterType } from "../gen/kvraftpb/kvraft_pb.ts";
import { bytes, prefixRangeEnd, toClerkKV, type ClerkKV, type ClerkParts } from "./clerk-txn.ts";
import { ClerkError, RETRYABLE } from "./clerk-outcomes.ts";

export interface WatchOptions {
  /** Exclusive end of the watched range ("\0": every key >= key). */
  end?: string | Uint8Array;
  /** Watch every key that starts with `key`. */
  prefix?: boolean;
  /** First revision to deliver (0 or absent: changes from now on). */
  startRevision?: number;
  prevKv?: boolean;
  noPut?: boolean;
  noDelete?: boolean;
  /** Also deliver empty batches that only move `revision` forward. */
  progressNotify?: boolean;
  /** Ends the watch. */
  signal?: AbortSignal;
}

export interface WatchEvent {
  type: "put" | "delete";
  kv: ClerkKV;
  /** With prevKv: the key before this change (absent when it did not exist). */
  prevKv?: ClerkKV;
}

/** Every event up to `revision` has been delivered. */
export interface WatchBatch {
  revision: number;
  events: WatchEvent[];
}

/**
 * The start revision is older than what every node's history holds. (Not a ClerkError subclass:
 * client.ts imports this file, and a class cannot extend one from a module still initializing.)
 */
export class WatchCompactedError extends Error {
  override readonly name = "WatchCompactedError";
  readonly code = Code.OutOfRange;
  constructor(
    readonly compactRevision: number,
    message: string,
  ) {
    super(message);
  }
}

export async function* clerkWatch(parts: ClerkParts, key: string, options: WatchOptions = {}): AsyncGenerator<WatchBatch> {
  const rangeEnd = options.prefix ? prefixRangeEnd(key) : options.end === undefined ? new Uint8Array(0) : typeof options.end === "string" ? bytes(options.end) : options.end;
  const filters = [...(options.noPut ? [WatchRequest_FilterType.NOPUT] : []), ...(options.noDelete ? [WatchRequest_FilterType.NODELETE] : [])];
  /** The next revision to deliver; 0 until a node told us the current one. */
  let next = options.startRevision ?? 0;
  const n = parts.clients.length;
  let backoff = parts.backoffMs;
  let lastConnected = Date.now();
  let lastProblem = "no attempt made";
  /** Nodes in a row that answered compacted (the earliest revision they still hold). */
  let compacted: number[] = [];
  while (options.signal?.aborted !== true) {
    const node = parts.leader;
    const abort = new AbortController();
    const stop = (): void => abort.abort();
    options.signal?.addEventListener("abort", stop);
    try {
      const stream = parts.clients[node]!.watch(
        { key: bytes(key), rangeEnd, startRevision: BigInt(next), prevKv: options.prevKv ?? false, filters, progressNotify: options.progressNotify ?? false },
        { signal: abort.signal },
      );
      for await (const response of stream) {
        const revision = Number(response.header?.revision ?? 0n);
        if (response.created) {
          lastConnected = Date.now();
          backoff = parts.backoffMs;
          compacted = [];
          if (next === 0) next = revision + 1;
          continue;
        }
        if (response.canceled) {
          if (response.compactRevision > 0n) {
            compacted.push(Number(response.compactRevision));
            if (compacted.length >= n) {
              throw new WatchCompactedError(
                Math.min(...compacted),
                `watch from revision ${next} of ${JSON.stringify(key)}: compacted on every node; the oldest revision available is ${Math.min(...compacted)}`,
              );
            }
          }
          lastProblem = `node ${parts.ids[node]}: ${response.cancelReason}`;
          break;
        }
        // A resumed stream never repeats a revision already delivered (defence in depth).
        const events = response.events
          .filter((e) => Number(e.kv?.modRevision ?? 0n) >= next)
          .map((e): WatchEvent => {
            const event: WatchEvent = { type: e.type === Event_EventType.DELETE ? "delete" : "put", kv: toClerkKV(e.kv!) };
            if (e.prevKv !== undefined) event.prevKv = toClerkKV(e.prevKv);
            return event;
          });
        if (revision + 1 > next) next = revision + 1;
        if (events.length > 0 || options.progressNotify) yield { revision, events };
      }
      if (abort.signal.aborted) return;
      lastProblem = `node ${parts.ids[node]} ended the watch`;
    } catch (error) {
      if (error instanceof ClerkError || error instanceof WatchCompactedError) throw error;
      if (options.signal?.aborted) return;
      const connectError = ConnectError.from(error);
      lastProblem = `node ${parts.ids[node]} (${parts.addrs[node]}): ${connectError.message}`;
      if (!RETRYABLE.has(connectError.code) && connectError.code !== Code.ResourceExhausted) {
        throw new ClerkError(connectError.code, `node ${parts.ids[node]} (${parts.addrs[node]}) refused the watch: ${connectError.rawMessage}`);
      }
    } finally {
      options.signal?.removeEventListener("abort", stop);
      abort.abort();
    }
    // Any node can serve a watch: move on, and pause once per round of failures.
    parts.leader = (node + 1) % n;
    if (Date.now() - lastConnected > parts.operationTimeoutMs) {
      throw new ClerkError(Code.Unavailable, `watch of ${JSON.stringify(key)}: no node served it for ${parts.operationTimeoutMs} ms (last: ${lastProblem}); resume from revision ${next}`);
    }
    if (parts.leader === 0 || compacted.length > 0) {
      await new Promise((resolve) => setTimeout(resolve, backoff * (0.5 + Math.random())));
      backoff = Math.min(backoff * 2, parts.maxBackoffMs);
    }
  }
}
