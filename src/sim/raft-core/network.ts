// The simulated network: per-message delay (hence reordering), loss, duplication, and symmetric
// or one-way partitions, all drawn from the simulation's one seeded Rng.

import type { Rng } from "../../util/rng.ts";
import type { Message, NodeId } from "../../raft/types.ts";

export interface NetworkOptions {
  /** Delivery delay in ticks (>= 1), uniform in [minDelay, maxDelay]; distinct delays reorder messages. */
  minDelay: number;
  maxDelay: number;
  /** Probability that a message is dropped. */
  lossRate: number;
  /** Probability that a message is delivered twice (at independent delays). */
  duplicateRate: number;
}

export const RELIABLE: NetworkOptions = { minDelay: 1, maxDelay: 1, lossRate: 0, duplicateRate: 0 };
export const UNRELIABLE: NetworkOptions = { minDelay: 1, maxDelay: 4, lossRate: 0.1, duplicateRate: 0.05 };

/** A message in flight; `payload` carries what a real transport would stream (the snapshot state). */
export interface Envelope {
  message: Message;
  payload?: SnapshotPayload;
  sentAt: number;
}

export interface SnapshotPayload {
  state: number;
}

export class CoreSimNetwork {
  options: NetworkOptions;
  /** blocked[from][to]: messages from → to are dropped. */
  private readonly blocked: boolean[][];
  /** Deliveries bucketed by the tick they are due; a bucket keeps send order. */
  private readonly due = new Map<number, Envelope[]>();
  private inFlight = 0;
  sent = 0;
  delivered = 0;
  dropped = 0;
  bytes = 0;

  constructor(
    readonly size: number,
    private readonly rng: Rng,
    options: NetworkOptions,
    /** Bound on messages in flight: beyond it new messages are dropped (a full socket buffer). */
    private readonly maxInFlight = 100_000,
  ) {
    validate(options);
    this.options = options;
    this.blocked = Array.from({ length: size }, () => new Array<boolean>(size).fill(false));
  }

  setOptions(options: NetworkOptions): void {
    validate(options);
    this.options = options;
  }

  send(envelope: Envelope, now: number): void {
    const { from, to } = envelope.message;
    this.sent++;
    this.bytes += messageBytes(envelope.message);
    if (this.blocked[from]![to] || this.rng.chance(this.options.lossRate) || this.inFlight >= this.maxInFlight) {
      this.dropped++;
      return;
    }
    this.enqueue(envelope, now);
    if (this.rng.chance(this.options.duplicateRate)) this.enqueue(envelope, now);
  }

  private enqueue(envelope: Envelope, now: number): void {
    const at = now + this.rng.range(this.options.minDelay, this.options.maxDelay);
    let bucket = this.due.get(at);
    if (bucket === undefined) {
      bucket = [];
      this.due.set(at, bucket);
    }
    bucket.push(envelope);
    this.inFlight++;
  }

  /** Removes and returns the messages due at `now` that the current partitions let through. */
  takeDue(now: number): Envelope[] {
    const bucket = this.due.get(now);
    if (bucket === undefined) return [];
    this.due.delete(now);
    this.inFlight -= bucket.length;
    const out: Envelope[] = [];
    for (const env of bucket) {
      if (this.blocked[env.message.from]![env.message.to]) this.dropped++;
      else out.push(env);
    }
    this.delivered += out.length;
    return out;
  }

  /** Splits the nodes into groups that cannot reach each other (nodes in no group are isolated). */
  partition(groups: NodeId[][]): void {
    const groupOf = new Array<number>(this.size).fill(-1);
    groups.forEach((g, i) => g.forEach((id) => (groupOf[id] = i)));
    for (let a = 0; a < this.size; a++) {
      for (let b = 0; b < this.size; b++) {
        this.blocked[a]![b] = a !== b && (groupOf[a] === -1 || groupOf[a] !== groupOf[b]);
      }
    }
  }

  /** Cuts one direction only: `from` can no longer reach `to`. */
  blockOneWay(from: NodeId, to: NodeId): void {
    this.blocked[from]![to] = true;
  }

  isolate(id: NodeId): void {
    for (let other = 0; other < this.size; other++) {
      this.blocked[id]![other] = other !== id;
      this.blocked[other]![id] = other !== id;
    }
  }

  reconnect(id: NodeId): void {
    for (let other = 0; other < this.size; other++) {
      this.blocked[id]![other] = false;
      this.blocked[other]![id] = false;
    }
  }

  heal(): void {
    for (const row of this.blocked) row.fill(false);
  }

  canReach(from: NodeId, to: NodeId): boolean {
    return !this.blocked[from]![to];
  }

  describePartitions(): string {
    const cuts: string[] = [];
    for (let a = 0; a < this.size; a++) for (let b = 0; b < this.size; b++) if (this.blocked[a]![b]) cuts.push(`${a}->${b}`);
    return cuts.length === 0 ? "none" : cuts.join(" ");
  }
}

/** Approximate wire size, for the RPC-bytes scenario: payloads plus a fixed header per entry. */
export function messageBytes(m: Message): number {
  if (m.type !== "AppendEntries") return 32;
  let n = 48;
  for (const e of m.entries) n += 24 + e.data.byteLength;
  return n;
}

function validate(o: NetworkOptions): void {
  if (!Number.isInteger(o.minDelay) || !Number.isInteger(o.maxDelay) || o.minDelay < 1 || o.maxDelay < o.minDelay) {
    throw new RangeError(`network delays must be integers with 1 <= minDelay <= maxDelay, got ${o.minDelay}..${o.maxDelay}`);
  }
  for (const [name, p] of [["lossRate", o.lossRate], ["duplicateRate", o.duplicateRate]] as const) {
    if (!(p >= 0 && p <= 1)) throw new RangeError(`network ${name} must be in [0, 1], got ${p}`);
  }
}
