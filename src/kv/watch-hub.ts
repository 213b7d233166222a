// Watches on one replica: each watch reads its events from the node's watch history (history.ts),
// page by page, from its next revision up to the applied index, then sleeps until the next apply.
// Nothing is buffered per watcher beyond one page, so a slow watcher only falls behind: it is
// caught up from the history, or cancelled with `compacted` once the log (and history) moved past it.
import type { NodeId } from "../raft/index.ts";
import { InvalidArgumentError, OverloadedError, UnavailableError } from "./errors.ts";
import { EVENT_PUT, prevValue, readEvents, type KeyEvent } from "./history.ts";
import { compareBytes, rangeBounds } from "./range.ts";
import type { KVStateMachine } from "./state-machine.ts";

export interface WatchLimits {
  /** Watches one node serves at once; one more is refused with resource_exhausted. Default 1,000. */
  maxWatches?: number;
  /** Bytes of history one answer reads before it is sent (whole revisions). Default 1 MiB. */
  maxWatchPageBytes?: number;
  /** Quiet time before a progress notification (for watches that asked for them). Default 5 s. */
  progressIntervalMs?: number;
}

export interface WatchSpec {
  key: Uint8Array;
  rangeEnd: Uint8Array;
  /** 0: changes after the current revision. */
  startRevision: number;
  prevKv: boolean;
  noPut: boolean;
  noDelete: boolean;
  progressNotify: boolean;
}

/** One answer of a watch stream. */
export type WatchMessage =
  | { kind: "created"; revision: number }
  | { kind: "events"; revision: number; events: { revision: number; event: KeyEvent }[] }
  | { kind: "progress"; revision: number }
  | { kind: "canceled"; revision: number; compactRevision: number; reason: string };

export interface WatchHubParts {
  id: NodeId;
  machine: KVStateMachine;
  /** The Raft log's first index: history below it is trimmed. */
  logFirstIndex: () => number;
  /** This node's current term, for answers' headers. */
  term?: () => number;
}

export class WatchHub {
  private readonly limits: Required<WatchLimits>;
  private active = 0;
  private closed = false;
  /** Watches waiting for the next apply. */
  private waiting = new Set<() => void>();
  private trimming = false;

  constructor(
    private readonly parts: WatchHubParts,
    limits: WatchLimits = {},
  ) {
    this.limits = {
      maxWatches: limits.maxWatches ?? 1_000,
      maxWatchPageBytes: limits.maxWatchPageBytes ?? 1 << 20,
      progressIntervalMs: limits.progressIntervalMs ?? 5_000,
    };
  }

  /** The term answers are sent in (0 when the hub has no Raft node, as in unit tests). */
  get term(): number {
    return this.parts.term?.() ?? 0;
  }

  get watchCount(): number {
    return this.active;
  }

  /** Called after every apply (and snapshot install): wakes the watches, trims history to the log. */
  applied(): void {
    const wake = this.waiting;
    this.waiting = new Set();
    for (const resolve of wake) resolve();
    this.trim();
  }

  /** Ends every watch with `unavailable` (the node is stopping): clients resume on another node. */
  close(): void {
    this.closed = true;
    this.applied();
  }

  /** Validates a watch and reserves its place; throws a KVError when it cannot be served. */
  open(spec: WatchSpec, signal: AbortSignal): AsyncGenerator<WatchMessage> {
    rangeBounds(spec.key, spec.rangeEnd, "watch range");
    if (!Number.isSafeInteger(spec.startRevision) || spec.startRevision < 0) {
      throw new InvalidArgumentError(`start_revision ${spec.startRevision} is negative`);
    }
    if (this.closed) throw new UnavailableError(`node ${this.parts.id} is closing; watch another node`);
    if (!this.parts.machine.recordsHistory) throw new UnavailableError(`node ${this.parts.id} keeps no watch history (watchHistory is off); watch another node`);
    if (this.active >= this.limits.maxWatches) {
      throw new OverloadedError(`node ${this.parts.id} already serves ${this.active} watches (limit ${this.limits.maxWatches}); watch another node or close some`);
    }
    this.active++;
    return this.run(spec, signal);
  }

  private async *run(spec: WatchSpec, signal: AbortSignal): AsyncGenerator<WatchMessage> {
    const { machine } = this.parts;
    try {
      const { start, end } = rangeBounds(spec.key, spec.rangeEnd);
      const userStart = start.subarray(1);
      const userEnd = end.subarray(1);
      const all = end.length === 1; // USER_END: every key >= key
      const accept = (event: KeyEvent): boolean => {
        if (event.type === EVENT_PUT ? spec.noPut : spec.noDelete) return false;
        return compareBytes(event.key, userStart) >= 0 && (all || compareBytes(event.key, userEnd) < 0);
      };
      let next = spec.startRevision === 0 ? machine.lastApplied() + 1 : spec.startRevision;
      // A start this node cannot serve is answered before `created`: the client tries another node.
      if (next >= machine.historyStart) yield { kind: "created", revision: machine.lastApplied() };
      let quietSince = Date.now();
      for (;;) {
        // The client went away while this watch slept: end it (return() waits for a pending await).
        if (signal.aborted) return;
        if (this.closed) throw new UnavailableError(`node ${this.parts.id} is closing; resume the watch on another node from revision ${next}`);
        if (next < machine.historyStart) {
          yield {
            kind: "canceled",
            revision: machine.lastApplied(),
            compactRevision: machine.historyStart,
            reason: `required revision ${next} has been compacted on node ${this.parts.id}; the oldest revision available is ${machine.historyStart}`,
          };
          return;
        }
        const applied = machine.lastApplied();
        if (next <= applied) {
          const page = readEvents(machine.store, next, applied, this.limits.maxWatchPageBytes, accept);
          // Trimming may have run between the check above and the read: never skip silently.
          if (next < machine.historyStart) continue;
          next = page.last + 1;
          if (page.events.length > 0) {
            for (const e of page.events) {
              if (!spec.prevKv) e.event.prev = null;
              else e.event.prevValue = prevValue(machine.store, e.event) ?? undefined;
            }
            yield { kind: "events", revision: page.last, events: page.events };
            quietSince = Date.now();
          }
          continue;
        }
        const progressDue = spec.progressNotify ? quietSince + this.limits.progressIntervalMs - Date.now() : Infinity;
        if (progressDue <= 0) {
          yield { kind: "progress", revision: next - 1 };
          quietSince = Date.now();
          continue;
        }
        await this.nextApply(progressDue, signal);
      }
    } finally {
      this.active--;
    }
  }

  /** Resolves at the next apply, after `ms` (progress), or when the client goes away. */
  private nextApply(ms: number, signal: AbortSignal): Promise<void> {
    return new Promise<void>((resolve) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const wake = (): void => {
        this.waiting.delete(wake);
        clearTimeout(timer);
        signal.removeEventListener("abort", wake);
        resolve();
      };
      this.waiting.add(wake);
      signal.addEventListener("abort", wake);
      if (Number.isFinite(ms)) timer = setTimeout(wake, ms);
    });
  }

  /** Drops history the Raft log no longer holds (in the background, between applies). */
  private trim(): void {
    if (this.trimming || this.closed) return;
    const first = this.parts.logFirstIndex();
    if (first <= this.parts.machine.historyStart) return;
    this.trimming = true;
    void this.parts.machine
      .trimHistory(first)
      .catch(() => {
        // A closed or failed state machine reports itself on its next apply.
      })
      .finally(() => {
        this.trimming = false;
      });
  }
}
