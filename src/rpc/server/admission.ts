// Admission control of client calls: a node-wide bound on calls and request bytes in flight, checked
// before a call is parsed; one more is refused at once with resource_exhausted and a retry hint
// (the `retry-after-ms` header or trailer), so an overload costs the node a refusal, not a backlog.

import { Code, ConnectError } from "@connectrpc/connect";

export interface AdmissionOptions {
  /** Client calls in flight on the node at most (default 1024). */
  maxCalls?: number;
  /** Request bytes of the calls in flight at most (default 64 MiB); one call is always let in. */
  maxBytes?: number;
  /** Which methods are admitted (the others, e.g. the peers' and health, are never counted). */
  covers(path: string): boolean;
  /**
   * A successful answer for a refused gRPC call of this path instead of the error, held for
   * `holdMs` first: what a client that retries every RPC error on the next node at once stops on.
   */
  grpcAnswers?: ReadonlyMap<string, { message: Uint8Array; holdMs: number }>;
}

export const DEFAULT_MAX_CALLS = 1024;
export const DEFAULT_MAX_BYTES = 64 * 1024 * 1024;
/** The name of the hint on refusals: milliseconds to wait before retrying on the same node. */
export const RETRY_AFTER_HEADER = "retry-after-ms";
/** Bounds of the hint: a node never tells a client to come back at once, nor to go away for long. */
const MIN_HINT_MS = 10;
const MAX_HINT_MS = 1000;
/** Completions are counted over windows of this length to estimate how fast the node drains. */
const RATE_WINDOW_MS = 250;
/** Refused gRPC answers held back at once at most (each a timer); beyond it, answered at once. */
const MAX_HELD = 1000;

/** One admitted call: give it back with `release` when answered. */
export interface Ticket {
  readonly bytes: number;
}

export class Admission {
  readonly maxCalls: number;
  readonly maxBytes: number;
  private calls = 0;
  private bytes = 0;
  /** Counters for /metrics. */
  readonly stats = { admitted: 0, refusedCalls: 0, refusedBytes: 0 };
  private windowStart = Date.now();
  private windowDone = 0;
  /** Calls completed per ms in the last full window (0 until one is measured). */
  private rate = 0;
  private held = 0;
  private readonly covered = new Map<string, boolean>();

  constructor(private readonly options: AdmissionOptions) {
    this.maxCalls = positive("maxCalls", options.maxCalls ?? DEFAULT_MAX_CALLS);
    this.maxBytes = positive("maxBytes", options.maxBytes ?? DEFAULT_MAX_BYTES);
  }

  get inFlightCalls(): number {
    return this.calls;
  }

  get inFlightBytes(): number {
    return this.bytes;
  }

  /** Whether calls of `path` are counted (memoized: paths are the routes' handful). */
  covers(path: string): boolean {
    let covered = this.covered.get(path);
    if (covered === undefined) {
      covered = this.options.covers(path);
      if (this.covered.size < 1024) this.covered.set(path, covered);
    }
    return covered;
  }

  /** A ticket for a call of `bytes` request bytes, or the refusal to answer it with. */
  admit(bytes: number): Ticket | ConnectError {
    if (this.calls >= this.maxCalls) {
      this.stats.refusedCalls++;
      return this.refusal(`${this.calls} calls in flight (limit ${this.maxCalls})`);
    }
    if (this.calls > 0 && this.bytes + bytes > this.maxBytes) {
      this.stats.refusedBytes++;
      return this.refusal(`${this.bytes} request bytes in flight (limit ${this.maxBytes})`);
    }
    this.calls++;
    this.bytes += bytes;
    this.stats.admitted++;
    return { bytes };
  }

  release(ticket: Ticket): void {
    this.calls--;
    this.bytes -= ticket.bytes;
    this.windowDone++;
    const now = Date.now();
    if (now - this.windowStart >= RATE_WINDOW_MS) {
      this.rate = this.windowDone / (now - this.windowStart);
      this.windowStart = now;
      this.windowDone = 0;
    }
  }

  /** How long a refused client should wait: about the time the node needs to drain half its calls. */
  retryAfterMs(): number {
    const drainMs = this.rate > 0 ? this.calls / 2 / this.rate : MAX_HINT_MS / 4;
    return Math.round(Math.min(MAX_HINT_MS, Math.max(MIN_HINT_MS, drainMs)));
  }

  /** The successful answer a refused gRPC call of `path` gets instead of the error, if any. */
  grpcAnswer(path: string): { message: Uint8Array; holdMs: number } | undefined {
    return this.options.grpcAnswers?.get(path);
  }

  /** Waits the answer's hold, unless too many are held already (then at once). */
  async hold(ms: number): Promise<void> {
    if (this.held >= MAX_HELD) return;
    this.held++;
    try {
      await new Promise((resolve) => setTimeout(resolve, ms));
    } finally {
      this.held--;
    }
  }

  private refusal(what: string): ConnectError {
    const hint = this.retryAfterMs();
    return new ConnectError(`this node is overloaded: ${what}; retry after ${hint} ms`, Code.ResourceExhausted, { [RETRY_AFTER_HEADER]: String(hint) });
  }
}

function positive(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 1) throw new RangeError(`admission: ${name} must be a positive integer, got ${value}`);
  return value;
}
