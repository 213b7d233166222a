// Harness for simulated Raft clusters (used by raft and KV scenario tests): simulated time that
// advances timer by timer, letting real async I/O (LSM files, fsyncs) settle between steps.

import { Rng } from "../../util/rng.ts";
import { SimClock } from "./clock.ts";
import { MemoryLogStore } from "./memory-log-store.ts";
import { RaftNode, type RaftNodeOptions } from "../../raft/node.ts";
import { type NetworkFaults, NodeSimNetwork } from "./network.ts";
import type { LogStore, NodeId, StateMachine } from "../../raft/types.ts";

export interface SettleOptions {
  /** True once nothing is in flight; settle() yields to the event loop until then. */
  isIdle?: () => boolean;
  /** Bound on real time one settle may wait for isIdle() (default 10 000 ms). */
  maxWaitMs?: number;
}

const macrotask = () => new Promise<void>((resolve) => setImmediate(resolve));
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Lets promise chains and real I/O callbacks run: yields to the event loop until isIdle() holds
 * (at least two turns). Simulated time does not move. The bound is in real time, not in turns: on
 * a loaded machine one fsync can outlast thousands of turns, and letting simulated time run on
 * while a node is still persisting would fire election timers no real deployment would see.
 */
export async function settle(options: SettleOptions = {}): Promise<void> {
  const deadline = performance.now() + (options.maxWaitMs ?? 10_000);
  for (let turn = 0; ; turn++) {
    // Spin on macrotasks briefly (I/O completions arrive within a few turns on a quiet machine),
    // then sleep a millisecond at a time so a slow disk does not cost a busy core.
    if (turn < 200) await macrotask();
    else await sleep(1);
    if (turn >= 1 && (options.isIdle?.() ?? true)) return;
    if (performance.now() > deadline) return;
  }
}

/** Advances `clock` by `ms`, one due instant at a time, settling I/O before and after each. */
export async function runFor(clock: SimClock, ms: number, options: SettleOptions = {}): Promise<void> {
  const end = clock.now() + ms;
  for (;;) {
    await settle(options);
    const next = clock.nextTimerAt();
    if (next === undefined || next > end) break;
    clock.step();
  }
  clock.advanceTo(end);
  await settle(options);
}

/**
 * Advances time until `predicate` holds (checked after every step), at most `timeoutMs` of
 * simulated time; throws with `what` in the message when it never does.
 */
export async function runUntil(
  clock: SimClock,
  predicate: () => boolean,
  timeoutMs: number,
  what = "condition",
  options: SettleOptions = {},
): Promise<void> {
  const end = clock.now() + timeoutMs;
  for (;;) {
    await settle(options);
    if (predicate()) return;
    const next = clock.nextTimerAt();
    if (next === undefined || next > end) break;
    clock.step();
  }
  clock.advanceTo(Math.max(clock.now(), end));
  await settle(options);
  if (!predicate()) throw new Error(`simulation: ${what} did not happen within ${timeoutMs} ms of simulated time`);
}

export interface NodeSimClusterOptions<SM extends StateMachine> {
  ids: NodeId[];
  seed: number;
  /** Builds node `id`'s machine; on restart `previous` is the crashed incarnation to recover from. */
  stateMachine: (id: NodeId, previous: SM | undefined) => SM | Promise<SM>;
  /** Builds node `id`'s log; default a MemoryLogStore (reopened from its durable part on restart). */
  logStore?: (id: NodeId, previous: LogStore | undefined) => LogStore | Promise<LogStore>;
  faults?: Partial<NetworkFaults>;
  /** Extra RaftNode options for every node (tickMs defaults to 10 here). */
  node?: Partial<Omit<RaftNodeOptions, "id" | "peers" | "logStore" | "transport" | "stateMachine" | "clock">>;
  /** Extra idle condition for settle (e.g. "no LSM flush running"). */
  isIdle?: () => boolean;
}

/** A whole cluster in simulated time: nodes, their stores and machines, the network, crash/restart. */
export class NodeSimCluster<SM extends StateMachine> {
  readonly clock = new SimClock();
  readonly rng: Rng;
  readonly network: NodeSimNetwork;
  readonly nodes = new Map<NodeId, RaftNode>();
  readonly machines = new Map<NodeId, SM>();
  readonly logs = new Map<NodeId, LogStore>();
  readonly fatal = new Map<NodeId, Error>();
  private incarnation = 0;

  constructor(private readonly options: NodeSimClusterOptions<SM>) {
    this.rng = new Rng(options.seed);
    this.network = new NodeSimNetwork(this.clock, this.rng.fork(), options.faults);
  }

  async start(): Promise<void> {
    for (const id of this.options.ids) await this.startNode(id);
  }

  node(id: NodeId): RaftNode {
    const node = this.nodes.get(id);
    if (!node) throw new Error(`node ${id} is not running`);
    return node;
  }

  /** The running leader with the highest term, if any. */
  leader(): RaftNode | undefined {
    let best: RaftNode | undefined;
    for (const node of this.nodes.values()) {
      const s = node.status();
      if (s.role === "Leader" && !s.stopped && (!best || s.term > best.status().term)) best = node;
    }
    return best;
  }

  isIdle(): boolean {
    for (const [id, node] of this.nodes) {
      // A node whose simulated disk is held on purpose cannot become idle; waiting for it is pointless.
      const log = this.logs.get(id);
      if (log instanceof MemoryLogStore && log.holdingSyncs) continue;
      if (!node.isIdle()) return false;
    }
    return this.options.isIdle?.() ?? true;
  }

  runFor(ms: number): Promise<void> {
    return runFor(this.clock, ms, { isIdle: () => this.isIdle() });
  }

  runUntil(predicate: () => boolean, timeoutMs: number, what?: string): Promise<void> {
    return runUntil(this.clock, predicate, timeoutMs, what, { isIdle: () => this.isIdle() });
  }

  async waitForLeader(timeoutMs = 10_000): Promise<RaftNode> {
    await this.runUntil(() => this.leader() !== undefined, timeoutMs, "leader election");
    return this.leader()!;
  }

  /**
   * Kills node `id` as a power loss would: unsynced log writes are lost (MemoryLogStore), the node
   * stops at once, and its machine is recovered by the factory on restart.
   */
  async crash(id: NodeId): Promise<void> {
    const log = this.logs.get(id);
    if (log instanceof MemoryLogStore) log.crash();
    this.network.transport(id); // closes the old endpoint: in-flight traffic to it is lost
    await this.nodes.get(id)?.stop();
    this.nodes.delete(id);
  }

  /**
   * Starts node `id` again from what its crashed incarnation left durable; `peers` replaces the
   * bootstrap list it is given (which a node with a stored configuration must ignore).
   */
  async restart(id: NodeId, peers?: NodeId[]): Promise<RaftNode> {
    if (this.nodes.has(id)) throw new Error(`node ${id} is still running; crash() it first`);
    return this.startNode(id, peers);
  }

  /** Starts a new, empty node `id` that joins the running cluster: no bootstrap members at all. */
  async join(id: NodeId): Promise<RaftNode> {
    if (this.nodes.has(id) || this.logs.has(id)) throw new Error(`node ${id} already exists`);
    return this.startNode(id, []);
  }

  /** Crashes node `id` and forgets its disk and machine: the node is gone for good. */
  async destroy(id: NodeId): Promise<void> {
    await this.crash(id);
    this.logs.delete(id);
    this.machines.delete(id);
  }

  /** Stops every node (draining their cycles). */
  async stop(): Promise<void> {
    for (const node of this.nodes.values()) await node.stop();
  }

  private async startNode(id: NodeId, peers: NodeId[] = this.options.ids): Promise<RaftNode> {
    const previousLog = this.logs.get(id);
    let log: LogStore;
    if (this.options.logStore) log = await this.options.logStore(id, previousLog);
    else log = previousLog instanceof MemoryLogStore ? previousLog.reopen() : new MemoryLogStore();
    const machine = await this.options.stateMachine(id, this.machines.get(id));
    this.logs.set(id, log);
    this.machines.set(id, machine);
    const node = await RaftNode.start({
      tickMs: 10,
      ...this.options.node,
      id,
      peers,
      logStore: log,
      transport: this.network.transport(id),
      stateMachine: machine,
      clock: this.clock,
      seed: this.rng.nextU32() + 1000 * ++this.incarnation,
      onFatal: (err) => {
        this.fatal.set(id, err);
        this.options.node?.onFatal?.(err);
      },
    });
    this.nodes.set(id, node);
    return node;
  }
}
