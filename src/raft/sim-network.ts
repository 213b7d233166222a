// A simulated network for Raft nodes: one Transport per node, deliveries scheduled on a SimClock with
// seeded delay, loss, duplication and reordering; partitions and disconnects; streamed snapshots.

import type { Rng } from "../util/rng.ts";
import type { SimClock } from "./clock.ts";
import type { Message, NodeId, Transport, TransportHandler } from "./types.ts";

type InstallSnapshot = Extract<Message, { type: "InstallSnapshot" }>;
type InstallSnapshotResponse = Extract<Message, { type: "InstallSnapshotResponse" }>;

export interface NetworkFaults {
  /** Delivery delay is uniform in [minDelayMs, maxDelayMs]; different delays reorder messages. */
  minDelayMs: number;
  maxDelayMs: number;
  /** Probability that a message is dropped. */
  lossRate: number;
  /** Probability that a delivered message is delivered a second time (with its own delay). */
  duplicateRate: number;
}

export interface SimNetworkStats {
  sent: number;
  delivered: number;
  dropped: number;
  duplicated: number;
  snapshotsStarted: number;
  snapshotsCompleted: number;
  snapshotsFailed: number;
  /** Snapshot chunks that reached their receiver. */
  snapshotChunks: number;
}

/** A link was down (partition, disconnect, closed endpoint) while a snapshot was streaming. */
export class SimNetworkError extends Error {
  readonly code = "NETWORK";
  constructor(message: string) {
    super(message);
    this.name = "SimNetworkError";
  }
}

const DEFAULT_FAULTS: NetworkFaults = { minDelayMs: 1, maxDelayMs: 5, lossRate: 0, duplicateRate: 0 };

export class SimNetwork {
  private faults: NetworkFaults;
  private readonly endpoints = new Map<NodeId, SimTransport>();
  /** Directed links that drop everything: "from->to". */
  private readonly blocked = new Set<string>();
  private readonly disconnected = new Set<NodeId>();
  private readonly counters: SimNetworkStats = {
    sent: 0,
    delivered: 0,
    dropped: 0,
    duplicated: 0,
    snapshotsStarted: 0,
    snapshotsCompleted: 0,
    snapshotsFailed: 0,
    snapshotChunks: 0,
  };

  constructor(
    readonly clock: SimClock,
    private readonly rng: Rng,
    faults: Partial<NetworkFaults> = {},
  ) {
    this.faults = checkFaults({ ...DEFAULT_FAULTS, ...faults });
  }

  /**
   * The Transport of node `id`. A node restarted after a crash asks again: the previous endpoint
   * is closed (messages in flight to it are lost) and a fresh one is returned.
   */
  transport(id: NodeId): Transport {
    this.endpoints.get(id)?.closeNow();
    const endpoint = new SimTransport(this, id);
    this.endpoints.set(id, endpoint);
    return endpoint;
  }

  setFaults(faults: Partial<NetworkFaults>): void {
    this.faults = checkFaults({ ...this.faults, ...faults });
  }

  /** Cuts every link between the two groups, both ways. */
  partition(groupA: NodeId[], groupB: NodeId[]): void {
    for (const a of groupA) {
      for (const b of groupB) {
        this.blocked.add(`${a}->${b}`);
        this.blocked.add(`${b}->${a}`);
      }
    }
  }

  /** Cuts one direction only: `from` can no longer reach `to`, but hears from it. */
  blockOneWay(from: NodeId, to: NodeId): void {
    this.blocked.add(`${from}->${to}`);
  }

  /** The node can neither send nor receive, until reconnect(). */
  disconnect(id: NodeId): void {
    this.disconnected.add(id);
  }

  reconnect(id: NodeId): void {
    this.disconnected.delete(id);
  }

  /** Removes every partition, one-way block and disconnect. */
  heal(): void {
    this.blocked.clear();
    this.disconnected.clear();
  }

  canReach(from: NodeId, to: NodeId): boolean {
    if (this.disconnected.has(from) || this.disconnected.has(to) || this.blocked.has(`${from}->${to}`)) return false;
    const endpoint = this.endpoints.get(to);
    return endpoint !== undefined && endpoint.isOpen();
  }

  stats(): SimNetworkStats {
    return { ...this.counters };
  }

  // ---- used by the endpoints -------------------------------------------------------------------

  /** @internal */
  route(sender: SimTransport, messages: Message[]): void {
    for (const message of messages) {
      this.counters.sent++;
      if (message.from !== sender.id) throw new Error(`node ${sender.id} sent a message claiming to be from ${message.from}`);
      if (!this.canReach(message.from, message.to) || this.rng.chance(this.faults.lossRate)) {
        this.counters.dropped++;
        continue;
      }
      // A deep copy at send time: the receiver must never share mutable state with the sender.
      this.schedule(structuredClone(message));
      if (this.rng.chance(this.faults.duplicateRate)) {
        this.counters.duplicated++;
        this.schedule(structuredClone(message));
      }
    }
  }

  private delay(): number {
    return this.rng.range(this.faults.minDelayMs, this.faults.maxDelayMs);
  }

  private schedule(message: Message): void {
    const target = this.endpoints.get(message.to);
    this.clock.setTimeout(() => {
      // Checked again on arrival: a partition that forms while a message is in flight drops it,
      // and a node restarted meanwhile never sees its previous incarnation's traffic.
      if (!this.canReach(message.from, message.to) || this.endpoints.get(message.to) !== target || !target) {
        this.counters.dropped++;
        return;
      }
      this.counters.delivered++;
      target.deliver([message]);
    }, this.delay());
  }

  /** Waits one network delay of simulated time, then checks the link. */
  private async hop(from: NodeId, to: NodeId, what: string): Promise<void> {
    await new Promise<void>((resolve) => this.clock.setTimeout(resolve, this.delay()));
    if (!this.canReach(from, to)) throw new SimNetworkError(`${what}: link ${from}->${to} is down`);
  }

  /** @internal Streams a snapshot chunk by chunk; every chunk takes a network delay. */
  async streamSnapshot(
    sender: SimTransport,
    message: InstallSnapshot,
    chunks: AsyncIterable<Uint8Array>,
  ): Promise<InstallSnapshotResponse> {
    this.counters.snapshotsStarted++;
    const { from, to } = message;
    const source = chunks[Symbol.asyncIterator]();
    const stream: { error: Error | null } = { error: null };
    const network = this;
    async function* received(): AsyncGenerator<Uint8Array> {
      for (;;) {
        const next = await source.next();
        if (next.done) return;
        try {
          await network.hop(from, to, `snapshot ${message.snapshot.index} chunk`);
        } catch (err) {
          stream.error = err as Error;
          throw err;
        }
        network.counters.snapshotChunks++;
        yield next.value.slice();
      }
    }
    try {
      if (!sender.isOpen()) throw new SimNetworkError(`node ${from} has closed its transport`);
      await this.hop(from, to, `snapshot ${message.snapshot.index} header`);
      const target = this.endpoints.get(to);
      const handler = target?.handler;
      if (!target || !handler) throw new SimNetworkError(`node ${to} is not listening`);
      const response = await handler.onSnapshot(structuredClone(message), received());
      if (stream.error) throw stream.error;
      await this.hop(to, from, `snapshot ${message.snapshot.index} response`);
      if (this.endpoints.get(to) !== target) throw new SimNetworkError(`node ${to} restarted during the snapshot`);
      this.counters.snapshotsCompleted++;
      return structuredClone(response);
    } catch (err) {
      this.counters.snapshotsFailed++;
      throw err instanceof SimNetworkError ? err : new SimNetworkError(`snapshot to ${to} failed: ${(err as Error).message}`);
    } finally {
      // Releases the sender's snapshot (e.g. an LSM read view) whether or not the receiver read it all.
      await source.return?.();
    }
  }
}

/** One node's view of the SimNetwork. */
class SimTransport implements Transport {
  handler: TransportHandler | null = null;
  private open = true;

  constructor(
    private readonly network: SimNetwork,
    readonly id: NodeId,
  ) {}

  isOpen(): boolean {
    return this.open;
  }

  send(messages: Message[]): void {
    if (this.open && messages.length > 0) this.network.route(this, messages);
  }

  sendSnapshot(message: InstallSnapshot, chunks: AsyncIterable<Uint8Array>): Promise<InstallSnapshotResponse> {
    return this.network.streamSnapshot(this, message, chunks);
  }

  listen(handler: TransportHandler): void {
    if (this.handler) throw new Error(`SimTransport ${this.id}: listen() called twice`);
    this.handler = handler;
  }

  deliver(messages: Message[]): void {
    if (this.open && this.handler) this.handler.onMessages(messages);
  }

  closeNow(): void {
    this.open = false;
    this.handler = null;
  }

  async close(): Promise<void> {
    this.closeNow();
  }
}

function checkFaults(f: NetworkFaults): NetworkFaults {
  if (!(f.minDelayMs >= 0 && f.maxDelayMs >= f.minDelayMs && Number.isInteger(f.minDelayMs) && Number.isInteger(f.maxDelayMs))) {
    throw new RangeError(`SimNetwork delays must be integers with 0 <= min <= max, got [${f.minDelayMs}, ${f.maxDelayMs}]`);
  }
  for (const [name, p] of [["lossRate", f.lossRate], ["duplicateRate", f.duplicateRate]] as const) {
    if (!(p >= 0 && p <= 1)) throw new RangeError(`SimNetwork ${name} must be in [0, 1], got ${p}`);
  }
  return f;
}
