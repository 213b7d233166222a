// Admission control of client calls: a node-wide bound on calls and request bytes in flight, checked
// before a call is parsed; one more is refused at once with resource_exhausted and a retry hint
// (the `retry-after-ms` header or trailer), so an overload costs the node a refusal, not a backlog.
// The bound on calls follows what the node answers: TARGET_CALL_MS worth of its measured answer
// rate (Little's law), between MIN_CALLS and maxCalls, so admitted calls finish well inside the KV
// command timeout however slow the machine is. The hint grows while refused clients come
// back faster than MAX_REFUSALS_PER_ANSWER per answered call, and shrinks once they stop.

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
   * `applies` decides from the decoded request (absent: always).
   */
  grpcAnswers?: ReadonlyMap<string, GrpcAnswer>;
}

/** See AdmissionOptions.grpcAnswers. */
export interface GrpcAnswer {
  readonly message: Uint8Array;
  readonly holdMs: number;
  applies?(request: unknown): boolean;
}

export const DEFAULT_MAX_CALLS = 1024;
export const DEFAULT_MAX_BYTES = 64 * 1024 * 1024;
/** The name of the hint on refusals: milliseconds to wait before retrying on the same node. */
export const RETRY_AFTER_HEADER = "retry-after-ms";
/** Bounds of the hint: a node never tells a client to come back at once, nor to go away for long. */
const MIN_HINT_MS = 10;
const MAX_HINT_MS = 2000;
/**
 * Refusals per answered call a node accepts before it lengthens its hint: refused clients come
 * back, and each refusal costs about half an answered call's CPU, so a short hint under a flood
 * of retrying clients would spend the node on refusals (goodput collapse).
 */
const MAX_REFUSALS_PER_ANSWER = 0.25;
/** Completions are counted over windows of this length to estimate how fast the node drains. */
const RATE_WINDOW_MS = 100;
/**
 * How long an admitted call may take, its wait behind the others included. The bound on calls is
 * this much of the answer rate: while calls take less, the bound grows (a write's own time, fsync
 * and a round trip, is not queueing, and more calls in flight make bigger, cheaper batches); once
 * they take this long it stops. Well inside the KV command timeout (500 ms). A target below a
 * write's own time would shrink the bound call by call down to MIN_CALLS (measured: goodput at
 * 512 writers fell to about 60% of the unbounded node's with 100 ms).
 */
const TARGET_CALL_MS = 250;
/** The bound on calls never drops below this (or maxCalls, if smaller): a cold node still serves. */
const MIN_CALLS = 128;
/** Refused gRPC answers held back at once at most (each a timer); beyond it, answered at once. */
const MAX_HELD = 1000;

/** A ready-made refusal for the count: its hint, its message and its Connect JSON error body. */
export interface RefusalAnswer {
  readonly limit: number;
  readonly retryAfterMs: number;
  readonly message: string;
  readonly json: Uint8Array;
  /** The same refusal as an error, for the paths that answer through invokeUnary or the adapter. */
  readonly error: ConnectError;
}

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
  /** Calls completed per ms, smoothed over the last windows (0 until one is measured). */
  private rate = 0;
  /** The bound on calls in force now (see the header). */
  private limit: number;
  private held = 0;
  /** Refusals counted when the current rate window began. */
  private refusedAtWindowStart = 0;
  /** The hint's lower bound, raised while refusals outnumber answers (see MAX_REFUSALS_PER_ANSWER). */
  private hintFloor = 0;
  private answer: RefusalAnswer | null = null;
  private readonly covered = new Map<string, boolean>();

  constructor(private readonly options: AdmissionOptions) {
    this.maxCalls = positive("maxCalls", options.maxCalls ?? DEFAULT_MAX_CALLS);
    this.maxBytes = positive("maxBytes", options.maxBytes ?? DEFAULT_MAX_BYTES);
    this.limit = Math.min(this.maxCalls, MIN_CALLS);
  }

  /** The bound on calls in flight in force now (adapts between MIN_CALLS and maxCalls). */
  get callLimit(): number {
    return this.limit;
  }

  /** True when one more call would be refused for the count alone (the lanes' early check). */
  get full(): boolean {
    return this.calls >= this.limit;
  }

  /** Counts a refusal a lane answered itself (from full), without a ticket. */
  refusedEarly(): void {
    this.stats.refusedCalls++;
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
    if (this.calls >= this.limit) {
      this.stats.refusedCalls++;
      // Shared by every refusal of the moment: an error object (and its stack) per refused call
      // was a visible part of an overloaded node's CPU.
      return this.refusalAnswer().error;
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
      const measured = this.windowDone / (now - this.windowStart);
      this.rate = this.rate === 0 ? measured : (this.rate + measured) / 2;
      this.limit = Math.round(Math.min(this.maxCalls, Math.max(MIN_CALLS, this.rate * TARGET_CALL_MS)));
      const refusals = this.stats.refusedCalls + this.stats.refusedBytes;
      const refused = refusals - this.refusedAtWindowStart;
      if (refused > this.windowDone * MAX_REFUSALS_PER_ANSWER) this.hintFloor = Math.min(MAX_HINT_MS, Math.max(this.retryAfterMs(), this.hintFloor * 1.5));
      else if (refused === 0) this.hintFloor = this.hintFloor < MIN_HINT_MS ? 0 : this.hintFloor * 0.7;
      this.refusedAtWindowStart = refusals;
      this.windowStart = now;
      this.windowDone = 0;
    }
  }

  /**
   * How long a refused client should wait: about the time the node needs to drain half its calls
   * (clients add jitter). Changes at most once per rate window, so lanes may cache answers by it.
   */
  retryAfterMs(): number {
    const drainMs = this.rate > 0 ? this.calls / 2 / this.rate : 250;
    // In steps of 10 ms: a handful of distinct answers, each made once (see refusalAnswer).
    return Math.round(Math.min(MAX_HINT_MS, Math.max(MIN_HINT_MS, drainMs, this.hintFloor)) / 10) * 10;
  }

  /**
   * The refusal of a call for the count, ready to send: what the lanes answer from a stream's
   * headers alone, made once per (limit, hint) and reused (a flood is answered from this).
   */
  refusalAnswer(): RefusalAnswer {
    const hint = this.retryAfterMs();
    const cached = this.answer;
    if (cached !== null && cached.retryAfterMs === hint && cached.limit === this.limit) return cached;
    const message = `this node is overloaded: ${this.limit} calls in flight, its limit now (at most ${this.maxCalls}); retry after ${hint} ms`;
    this.answer = {
      limit: this.limit,
      retryAfterMs: hint,
      message,
      json: new TextEncoder().encode(JSON.stringify({ code: "resource_exhausted", message })),
      error: new ConnectError(message, Code.ResourceExhausted, { [RETRY_AFTER_HEADER]: String(hint) }),
    };
    return this.answer;
  }

  /** The successful answer a refused gRPC call of `path` gets instead of the error, if any. */
  grpcAnswer(path: string): GrpcAnswer | undefined {
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
