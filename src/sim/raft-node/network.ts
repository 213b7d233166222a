// A simulated network for Raft nodes: one Transport per node, deliveries scheduled on a SimClock with
// seeded delay, loss, duplication and reordering; partitions and disconnects; streamed snapshots.

import { Rng } from "../../util/rng.ts";
import type { TimerHandle } from "../../raft/clock.ts";
import type { SimClock } from "./clock.ts";
import type { Message, NodeId, Transport, TransportHandler } from "../../raft/types.ts";

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

export interface NodeSimNetworkStats {
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
export class NodeSimNetworkError extends Error {
  readonly code = "NETWORK";
  constructor(message: string) {
    super(message);
    this.name = "NodeSimNetworkError";
  }
}

const DEFAULT_FAULTS: NetworkFaults = { minDelayMs: 1, maxDelayMs: 5, lossRate: 0, duplicateRate: 0 };

export interface NodeSimNetworkOptions {
  /**
   * Replay mode, for nodes whose real I/O completes in a varying order within one simulated
   * instant: every directed link (and every snapshot stream) draws its faults from its own Rng
   * seeded from `linkSeed` and the link, so the order in which nodes send does not matter; and
   * messages are delivered only by deliverDue(), due ones sorted by (due, from, to, link sequence).
   * Snapshot hops fail at once when an endpoint is closed. The shared `rng` is not used.
   */
  linkSeed?: number;
}

interface Queued {
  due: number;
  from: NodeId;
  to: NodeId;
  /** Per-link send order: the only order that does not depend on real I/O timing. */
  seq: number;
  message: Message;
  target: SimTransport | undefined;
}

interface PendingHop {
  from: NodeId;
  to: NodeId;
  timer: TimerHandle;
  reject: (err: Error) => void;
}

/** A 32-bit mix of the words (murmur3 finalizer per word), for seeding per-link streams. */
function mix(words: number[]): number {
  let h = 0x9747b28c;
  for (const w of words) {
    let k = Math.imul(w >>> 0, 0xcc9e2d51);
    k = Math.imul((k << 15) | (k >>> 17), 0x1b873593);
    h ^= k;
    h = (Math.imul((h << 13) | (h >>> 19), 5) + 0xe6546b64) | 0;
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

export class NodeSimNetwork {
  private faults: NetworkFaults;
  private readonly endpoints = new Map<NodeId, SimTransport>();
  /** Directed links that drop everything: "from->to". */
  private readonly blocked = new Set<string>();
  private readonly disconnected = new Set<NodeId>();
  private readonly counters: NodeSimNetworkStats = {
    sent: 0,
    delivered: 0,
    dropped: 0,
    duplicated: 0,
    snapshotsStarted: 0,
    snapshotsCompleted: 0,
    snapshotsFailed: 0,
    snapshotChunks: 0,
  };

  /** Replay mode only (see NodeSimNetworkOptions). */
  private readonly linkSeed: number | undefined;
  private readonly linkRngs = new Map<string, Rng>();
  private readonly linkSeqs = new Map<string, number>();
  private readonly streamCounts = new Map<string, number>();
  private queue: Queued[] = [];
  private readonly pendingHops = new Set<PendingHop>();
  /** Snapshot streams running, and how many of them are waiting on a hop (simulated time). */
  private streamsActive = 0;
  private streamsInHop = 0;

  constructor(
    readonly clock: SimClock,
    private readonly rng: Rng,
    faults: Partial<NetworkFaults> = {},
    options: NodeSimNetworkOptions = {},
  ) {
    this.faults = checkFaults({ ...DEFAULT_FAULTS, ...faults });
    if (options.linkSeed !== undefined && !Number.isFinite(options.linkSeed)) {
      throw new RangeError(`NodeSimNetwork linkSeed must be a finite number, got ${options.linkSeed}`);
    }
    this.linkSeed = options.linkSeed;
  }

  /** True in replay mode: deliveries wait for deliverDue(). */
  get replay(): boolean {
    return this.linkSeed !== undefined;
  }

  /**
   * Replay mode: delivers every message due by now, in (due, from, to, link sequence) order.
   * Returns how many were handed to a receiver.
   */
  deliverDue(): number {
    if (this.queue.length === 0) return 0;
    const now = this.clock.now();
    const due: Queued[] = [];
    const later: Queued[] = [];
    for (const q of this.queue) (q.due <= now ? due : later).push(q);
    if (due.length === 0) return 0;
    this.queue = later;
    due.sort((a, b) => a.due - b.due || a.from - b.from || a.to - b.to || a.seq - b.seq);
    let delivered = 0;
    for (const q of due) if (this.arrive(q.message, q.target)) delivered++;
    return delivered;
  }

  /** Messages scheduled and not yet delivered (replay mode). */
  queuedMessages(): number {
    return this.queue.length;
  }

  /**
   * False while a snapshot stream is doing real work (reading the sender's image, or the receiver
   * consuming a chunk or restoring): only hops wait on simulated time.
   */
  isIdle(): boolean {
    return this.streamsActive === this.streamsInHop;
  }

  /**
   * A node goes down at once: its endpoint closes (traffic to and from it is lost) and every
   * snapshot hop to or from it fails now rather than after a delay of simulated time, so a node
   * can be closed while simulated time stands still.
   */
  down(id: NodeId): void {
    this.endpoints.get(id)?.closeNow();
    for (const hop of [...this.pendingHops]) {
      if (hop.from !== id && hop.to !== id) continue;
      this.pendingHops.delete(hop);
      this.clock.clearTimeout(hop.timer);
      hop.reject(new NodeSimNetworkError(`link ${hop.from}->${hop.to}: node ${id} went down`));
    }
  }

  private linkRng(from: NodeId, to: NodeId): Rng {
    const key = `${from}->${to}`;
    let rng = this.linkRngs.get(key);
    if (!rng) {
      rng = this.seededRng([from, to, 0]);
      this.linkRngs.set(key, rng);
    }
    return rng;
  }

  private seededRng(words: number[]): Rng {
    const seed = this.linkSeed!;
    const lo = seed >>> 0;
    const hi = Math.trunc(seed / 4294967296) >>> 0;
    // 52 bits of seed: two independent mixes (the Rng constructor uses both 32-bit halves).
    return new Rng(mix([hi, lo, ...words, 1]) * 1048576 + (mix([lo, hi, ...words, 2]) & 0xfffff));
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

  stats(): NodeSimNetworkStats {
    return { ...this.counters };
  }

  // ---- used by the endpoints -------------------------------------------------------------------

  /** @internal */
  route(sender: SimTransport, messages: Message[]): void {
    for (const message of messages) {
      this.counters.sent++;
      if (message.from !== sender.id) throw new Error(`node ${sender.id} sent a message claiming to be from ${message.from}`);
      const rng = this.replay ? this.linkRng(message.from, message.to) : this.rng;
      // Replay mode draws every fault of a message even when the link is down, so a link's
      // stream of draws depends only on what its sender sent.
      const reachable = this.canReach(message.from, message.to);
      const lost = this.replay ? rng.chance(this.faults.lossRate) : reachable && rng.chance(this.faults.lossRate);
      if (!reachable || lost) {
        this.counters.dropped++;
        continue;
      }
      // A deep copy at send time: the receiver must never share mutable state with the sender.
      this.schedule(structuredClone(message), rng);
      if (rng.chance(this.faults.duplicateRate)) {
        this.counters.duplicated++;
        this.schedule(structuredClone(message), rng);
      }
    }
  }

  private delay(rng: Rng = this.rng): number {
    return rng.range(this.faults.minDelayMs, this.faults.maxDelayMs);
  }

  private schedule(message: Message, rng: Rng): void {
    const target = this.endpoints.get(message.to);
    const delay = this.delay(rng);
    if (this.replay) {
      const key = `${message.from}->${message.to}`;
      const seq = (this.linkSeqs.get(key) ?? 0) + 1;
      this.linkSeqs.set(key, seq);
      this.queue.push({ due: this.clock.now() + delay, from: message.from, to: message.to, seq, message, target });
      return;
    }
    this.clock.setTimeout(() => this.arrive(message, target), delay);
  }

  private arrive(message: Message, target: SimTransport | undefined): boolean {
    // Checked again on arrival: a partition that forms while a message is in flight drops it,
    // and a node restarted meanwhile never sees its previous incarnation's traffic.
    if (!this.canReach(message.from, message.to) || this.endpoints.get(message.to) !== target || !target) {
      this.counters.dropped++;
      return false;
    }
    this.counters.delivered++;
    target.deliver([message]);
    return true;
  }

  /** Waits one network delay of simulated time, then checks the link. */
  private async hop(from: NodeId, to: NodeId, what: string, rng: Rng): Promise<void> {
    if (this.replay && (!this.canReach(from, to) || !this.endpoints.get(from)?.isOpen())) {
      throw new NodeSimNetworkError(`${what}: link ${from}->${to} is down`);
    }
    const delay = this.delay(rng);
    this.streamsInHop++;
    try {
      await new Promise<void>((resolve, reject) => {
        const hop: PendingHop = { from, to, reject, timer: 0 };
        hop.timer = this.clock.setTimeout(() => {
          this.pendingHops.delete(hop);
          resolve();
        }, delay);
        this.pendingHops.add(hop);
      });
    } finally {
      this.streamsInHop--;
    }
    if (!this.canReach(from, to)) throw new NodeSimNetworkError(`${what}: link ${from}->${to} is down`);
  }

  /** @internal Streams a snapshot chunk by chunk; every chunk takes a network delay. */
  async streamSnapshot(
    sender: SimTransport,
    message: InstallSnapshot,
    chunks: AsyncIterable<Uint8Array>,
  ): Promise<InstallSnapshotResponse> {
    this.counters.snapshotsStarted++;
    this.streamsActive++;
    const { from, to } = message;
    // Replay mode: each stream has its own Rng (numbered per link in the sender's order), used for
    // chunk and header hops one way and the response hop the other way.
    let rng = this.rng;
    if (this.replay) {
      const key = `${from}->${to}`;
      const n = (this.streamCounts.get(key) ?? 0) + 1;
      this.streamCounts.set(key, n);
      rng = this.seededRng([from, to, n]);
    }
    const source = chunks[Symbol.asyncIterator]();
    const stream: { error: Error | null } = { error: null };
    const network = this;
    async function* received(): AsyncGenerator<Uint8Array> {
      for (;;) {
        const next = await source.next();
        if (next.done) return;
        try {
          await network.hop(from, to, `snapshot ${message.snapshot.index} chunk`, rng);
        } catch (err) {
          stream.error = err as Error;
          throw err;
        }
        network.counters.snapshotChunks++;
        yield next.value.slice();
      }
    }
    try {
      if (!sender.isOpen()) throw new NodeSimNetworkError(`node ${from} has closed its transport`);
      await this.hop(from, to, `snapshot ${message.snapshot.index} header`, rng);
      const target = this.endpoints.get(to);
      const handler = target?.handler;
      if (!target || !handler) throw new NodeSimNetworkError(`node ${to} is not listening`);
      const response = await handler.onSnapshot(structuredClone(message), received());
      if (stream.error) throw stream.error;
      await this.hop(to, from, `snapshot ${message.snapshot.index} response`, rng);
      if (this.endpoints.get(to) !== target) throw new NodeSimNetworkError(`node ${to} restarted during the snapshot`);
      this.counters.snapshotsCompleted++;
      return structuredClone(response);
    } catch (err) {
      this.counters.snapshotsFailed++;
      throw err instanceof NodeSimNetworkError ? err : new NodeSimNetworkError(`snapshot to ${to} failed: ${(err as Error).message}`);
    } finally {
      // Releases the sender's snapshot (e.g. an LSM read view) whether or not the receiver read it all.
      try {
        await source.return?.();
      } finally {
        this.streamsActive--;
      }
    }
  }
}

/** One node's view of the NodeSimNetwork. */
class SimTransport implements Transport {
  handler: TransportHandler | null = null;
  private open = true;

  constructor(
    private readonly network: NodeSimNetwork,
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
    throw new RangeError(`NodeSimNetwork delays must be integers with 0 <= min <= max, got [${f.minDelayMs}, ${f.maxDelayMs}]`);
  }
  for (const [name, p] of [["lossRate", f.lossRate], ["duplicateRate", f.duplicateRate]] as const) {
    if (!(p >= 0 && p <= 1)) throw new RangeError(`NodeSimNetwork ${name} must be in [0, 1], got ${p}`);
  }
  return f;
}
