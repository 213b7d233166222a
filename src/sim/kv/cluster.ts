// Simulated KV clusters: real KVServers (real LSM in temp dirs, MemoryLogStore for the Raft log)
// on a NodeSimNetwork and SimClock, with client RPCs delivered in a seed-fixed order.
import { settle } from "../raft-node/cluster.ts";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { MemoryLogStore, SimClock, NodeSimNetwork } from "../raft-node/index.ts";
import { Rng } from "../../util/rng.ts";
import { InvalidArgumentError, KVError, OverloadedError, SessionExpiredError } from "../../kv/errors.ts";
import { KVServer, type BatchAnswer, type CommandArgs, type CommandReply, type KVLimits, type KVStateOptions, type RegisterReply } from "../../kv/server.ts";

/** How long a simulated client waits for a lost request or reply before trying again. */
const RPC_TIMEOUT_MS = 100;
/** Real-time bound on one simulated millisecond's I/O (a stuck server must not hang the run). */
const SETTLE_MAX_REAL_MS = 20_000;

export interface KvSimClusterOptions {
  servers: number;
  seed: number;
  unreliable?: boolean;
  /** Raft log entries past the durable applied index before the log is compacted. */
  snapshotThreshold?: number;
  snapshotChunkBytes?: number;
  state?: KVStateOptions;
  limits?: KVLimits;
  tickMs?: number;
  electionTicks?: number;
}

/** A client RPC that reaches its server at `due` (delivered in step(), sorted, never mid-I/O). */
interface PendingCall {
  due: number;
  clientId: bigint;
  seq: number;
  run: () => void;
}

const UNRELIABLE = { minDelayMs: 1, maxDelayMs: 12, lossRate: 0.1, duplicateRate: 0.05 };
const RELIABLE = { minDelayMs: 1, maxDelayMs: 3, lossRate: 0, duplicateRate: 0 };

export class KvSimCluster {
  readonly clock = new SimClock();
  readonly rng: Rng;
  readonly net: NodeSimNetwork;
  readonly servers: (KVServer | null)[];
  readonly root: string;
  private readonly stores: MemoryLogStore[];
  private unreliable = false;
  crashes = 0;
  /** Crashes of a leader whose disk held its syncs (runLaggingLeader in workload.ts). */
  laggingLeaderCrashes = 0;
  /** Entries those leaders applied (and answered) whose own write the crash then lost. */
  appliedThenLost = 0;
  partitions = 0;
  /** Registered-session runs: registrations refused (a full table), writes refused as session-expired, and of those the ones whose outcome stayed unknown. */
  readonly sessionEvents = { registrationsRefused: 0, expiredRefusals: 0, uncertainWrites: 0 };
  /** Snapshots installed by server incarnations that have since crashed. */
  private installedBeforeCrash = 0;
  private calls: PendingCall[] = [];
  private callSeq = 0;
  /**
   * Places where real I/O timing leaked into the schedule, so this run may not replay: still()
   * had to let simulated time run, or a step's settle hit its real-time bound with a server busy.
   */
  replayBreaks = 0;

  private constructor(readonly options: KvSimClusterOptions) {
    this.rng = new Rng(options.seed);
    // Replay mode: per-link fault streams and sorted deliveries, so real I/O timing within one
    // simulated millisecond does not change what the network does.
    this.net = new NodeSimNetwork(this.clock, this.rng.fork(), RELIABLE, { linkSeed: options.seed });
    this.servers = new Array(options.servers).fill(null);
    this.stores = Array.from({ length: options.servers }, () => new MemoryLogStore());
    this.root = fs.mkdtempSync(path.join(os.tmpdir(), "kvraft-sim-"));
  }

  static async start(options: KvSimClusterOptions): Promise<KvSimCluster> {
    const cluster = new KvSimCluster(options);
    try {
      cluster.setUnreliable(options.unreliable ?? false);
      for (let i = 0; i < options.servers; i++) await cluster.startServer(i);
    } catch (error) {
      await cluster.close();
      throw error;
    }
    return cluster;
  }

  get size(): number {
    return this.servers.length;
  }

  setUnreliable(unreliable: boolean): void {
    this.unreliable = unreliable;
    this.net.setFaults(unreliable ? UNRELIABLE : RELIABLE);
  }

  async startServer(i: number): Promise<void> {
    if (this.servers[i] !== null) throw new Error(`server ${i} is already running`);
    const o = this.options;
    this.servers[i] = await KVServer.open({
      id: i,
      peers: Array.from({ length: this.size }, (_, j) => j),
      dir: path.join(this.root, `node-${i}`),
      transport: this.net.transport(i),
      clock: this.clock,
      logStore: this.stores[i],
      raft: {
        tickMs: o.tickMs ?? 10,
        electionTicks: o.electionTicks ?? 10,
        heartbeatTicks: 1,
        seed: (o.seed * 7919 + i * 104729 + this.crashes) >>> 0,
        snapshotThreshold: o.snapshotThreshold,
        snapshotChunkBytes: o.snapshotChunkBytes,
      },
      state: { memtableBytes: 64 << 10, blockCacheBytes: 64 << 10, ...o.state },
      limits: o.limits,
    });
  }

  /**
   * The process dies: unsynced Raft log writes are lost; the LSM keeps what its flushes wrote (the
   * state machine writes no LSM WAL), so a restart replays the log from an older applied index.
   */
  async crash(i: number): Promise<void> {
    const server = this.servers[i];
    if (server === null) return;
    this.servers[i] = null;
    this.crashes++;
    this.installedBeforeCrash += (await server.getStatus()).snapshotsInstalled;
    // Off the network at once: snapshot hops to or from it fail now, so closing needs no simulated time.
    this.net.down(i);
    this.stores[i].crash();
    await server.close({ asCrash: true });
    this.stores[i] = this.stores[i].reopen();
  }

  /** The server that leads now (by its own account), or -1. */
  leaderIndex(): number {
    return this.servers.findIndex((server) => server !== null && server.raft.status().role === "Leader");
  }

  /**
   * Server `i`'s disk stops completing syncs (its writes stay pending) until it crashes: a leader
   * whose own fdatasync lags while its followers' acknowledgements commit its entries.
   */
  holdSyncs(i: number): void {
    this.stores[i].holdSyncs(true);
  }

  async crashAll(): Promise<void> {
    for (let i = 0; i < this.size; i++) await this.crash(i);
  }

  async restartAll(): Promise<void> {
    for (let i = 0; i < this.size; i++) if (this.servers[i] === null) await this.startServer(i);
  }

  /** Splits the servers into groups that cannot reach each other (replacing any earlier split). */
  partition(groups: number[][]): void {
    this.net.heal();
    this.partitions++;
    for (let a = 0; a < groups.length; a++) {
      for (let b = a + 1; b < groups.length; b++) this.net.partition(groups[a], groups[b]);
    }
  }

  heal(): void {
    this.net.heal();
  }

  /** Resolves after `ms` of simulated time. */
  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.clock.setTimeout(resolve, ms));
  }

  /** Advances simulated time by `ms`, one millisecond at a time, letting I/O and promises run between. */
  async run(ms: number): Promise<void> {
    const end = this.clock.now() + ms;
    while (this.clock.now() < end) await this.step();
  }

  /**
   * One simulated millisecond, then the event loop runs until every server's Raft driver is idle
   * (bounded in real time): simulated time does not race ahead of a real fsync or LSM write, so a
   * loaded machine slows a run down instead of starving it of progress.
   */
  private async step(): Promise<void> {
    this.tick();
    await settle({ isIdle: () => this.isIdle(), maxWaitMs: SETTLE_MAX_REAL_MS });
    if (!this.isIdle()) this.replayBreaks++;
  }

  /** One simulated millisecond: its timers, then its network deliveries and client calls. */
  private tick(): void {
    this.clock.advance(1);
    // Synchronously after the timers, before any I/O callback can run: every input of this
    // millisecond reaches the servers in an order fixed by the seed.
    this.net.deliverDue();
    this.deliverCalls();
  }

  private isIdle(): boolean {
    // A server whose syncs are held waits on its disk by design, not on this millisecond's I/O.
    return (
      this.net.isIdle() &&
      this.servers.every((server, i) => server === null || server.isIdle() || (this.stores[i].holdingSyncs && server.waitsOnlyForLog()))
    );
  }

  private deliverCalls(): void {
    if (this.calls.length === 0) return;
    const now = this.clock.now();
    const due = this.calls.filter((c) => c.due <= now);
    if (due.length === 0) return;
    this.calls = this.calls.filter((c) => c.due > now);
    due.sort((a, b) => a.due - b.due || (a.clientId < b.clientId ? -1 : a.clientId > b.clientId ? 1 : a.seq - b.seq));
    for (const call of due) call.run();
  }

  /**
   * Awaits `promise` (opening or closing servers: real disk I/O) with simulated time standing
   * still, so the schedule does not depend on how long the disk takes. If it has not settled
   * after `stillMs` real ms, something waits on simulated time: it then runs as in untilReal()
   * and replayBreaks counts it.
   */
  async still<T>(promise: Promise<T>, stillMs = 20_000): Promise<T> {
    let settled = false;
    promise.then(
      () => (settled = true),
      () => (settled = true),
    );
    const deadline = performance.now() + stillMs;
    while (!settled && performance.now() < deadline) await Bun.sleep(1);
    if (settled) return promise;
    this.replayBreaks++;
    return this.untilReal(promise);
  }

  /** An Rng for one client, from the cluster seed and the client id (independent of call order). */
  clientRng(clientId: bigint): Rng {
    const id = Number(BigInt.asUintN(32, clientId));
    return new Rng(((this.options.seed % 1_000_000_007) * 4_294_967_296 + id * 2_654_435_761) % Number.MAX_SAFE_INTEGER);
  }

  /**
   * Simulated time moves one millisecond per real millisecond until `promise` settles (for tests
   * that drive one server call by hand; not replayable: how far time moves depends on the disk).
   * Fails after `maxRealMs`.
   */
  async untilReal<T>(promise: Promise<T>, maxRealMs = 60_000): Promise<T> {
    let settled = false;
    promise.then(
      () => (settled = true),
      () => (settled = true),
    );
    const deadline = performance.now() + maxRealMs;
    await yieldToIO();
    while (!settled) {
      if (performance.now() >= deadline) {
        throw new Error(`simulation: nothing settled within ${maxRealMs} real ms; servers: ${await this.describe()}`);
      }
      this.tick();
      await Bun.sleep(1);
    }
    return promise;
  }

  /** Advances simulated time until `promise` settles; fails after `maxMs` of simulated time. */
  async until<T>(promise: Promise<T>, maxMs = 60_000): Promise<T> {
    let settled = false;
    promise.then(
      () => (settled = true),
      () => (settled = true),
    );
    const deadline = this.clock.now() + maxMs;
    await yieldToIO();
    while (!settled) {
      if (this.clock.now() >= deadline) {
        throw new Error(`simulation: nothing settled within ${maxMs} ms of simulated time; servers: ${await this.describe()}`);
      }
      await this.step();
    }
    return promise;
  }

  /**
   * One client RPC to server `i`: a network delay each way; on an unreliable network the request
   * or the reply may be lost (the client then hears nothing for RPC_TIMEOUT_MS).
   */
  async call(i: number, args: CommandArgs, rng: Rng = this.rng): Promise<CommandReply | null> {
    return this.rpc(i, args.clientId, (server) => server.command(args), rng);
  }

  /** One RegisterSession RPC to server `i`, with the same delays and losses as call(). */
  register(i: number, clientId: bigint, rng: Rng = this.rng): Promise<RegisterReply | null> {
    return this.rpc(
      i,
      clientId,
      (server) =>
        server.registerSession().catch((error: unknown) => {
          if (error instanceof OverloadedError) this.sessionEvents.registrationsRefused++;
          throw error;
        }),
      rng,
    );
  }

  /** One Batch RPC to server `i` (null: no answer), with the same delays and losses as call(). */
  batchCall(i: number, commands: CommandArgs[], clientId: bigint, rng: Rng = this.rng): Promise<BatchAnswer[] | null> {
    return this.rpc(i, clientId, (server) => server.batch(commands), rng);
  }

  /** Any call of a KVServer (Range, Txn), with the same delays and losses as call(). */
  callServer<T>(i: number, clientId: bigint, fn: (server: KVServer) => Promise<T>, rng: Rng = this.rng): Promise<T | null> {
    return this.rpc(i, clientId, fn, rng);
  }

  /**
   * One client RPC: a network delay each way; on an unreliable network the request or the reply
   * may be lost (the client then hears nothing for RPC_TIMEOUT_MS). Refusals a retry can cure
   * (overload, unavailable) are heard as nothing too; the others reach the client.
   */
  private async rpc<T>(i: number, clientId: bigint, fn: (server: KVServer) => Promise<T>, rng: Rng): Promise<T | null> {
    const lost = this.unreliable && rng.chance(0.1);
    const delay = rng.range(1, 3);
    if (this.servers[i] === null || lost) {
      await this.sleep(RPC_TIMEOUT_MS);
      return null;
    }
    let reply: T | null;
    try {
      reply = await this.atServer(delay, clientId, () => {
        const server = this.servers[i];
        return server === null ? null : fn(server);
      });
    } catch (error) {
      if (error instanceof KVError && !(error instanceof InvalidArgumentError) && !(error instanceof SessionExpiredError)) reply = null;
      else throw error;
    }
    if (reply === null || (this.unreliable && rng.chance(0.1))) {
      await this.sleep(RPC_TIMEOUT_MS);
      return null;
    }
    await this.sleep(rng.range(1, 3));
    return reply;
  }

  /** Runs `fn` at a server after `delay` ms, in step(), ordered by client among same-time calls. */
  private atServer<T>(delay: number, clientId: bigint, fn: () => Promise<T> | T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.calls.push({
        due: this.clock.now() + delay,
        clientId,
        seq: this.callSeq++,
        run: () => {
          try {
            Promise.resolve(fn()).then(resolve, reject);
          } catch (error) {
            reject(error);
          }
        },
      });
    });
  }

  /** Snapshots installed by every server incarnation so far. */
  async snapshotsInstalled(): Promise<number> {
    let total = this.installedBeforeCrash;
    for (const server of this.servers) if (server !== null) total += (await server.getStatus()).snapshotsInstalled;
    return total;
  }

  /** One line per server: role, term, applied and commit index (for failure messages). */
  async describe(): Promise<string> {
    const parts: string[] = [];
    for (const [i, server] of this.servers.entries()) {
      if (server === null) {
        parts.push(`${i}: down`);
        continue;
      }
      const s = await server.getStatus();
      parts.push(`${i}: ${s.state} term ${s.term} applied ${s.lastApplied} commit ${s.commitIndex} snapshot ${s.snapshotIndex}`);
    }
    return parts.join("; ");
  }

  /** Raft log bytes of every running server. */
  logBytes(): number[] {
    return this.servers.map((_, i) => this.stores[i].sizeBytes());
  }

  async close(): Promise<void> {
    const closing = this.servers.map((server, i) => {
      this.servers[i] = null;
      this.net.down(i);
      return server?.close().catch(() => {});
    });
    await this.still(Promise.all(closing)).catch(() => {});
    fs.rmSync(this.root, { recursive: true, force: true });
  }
}

function yieldToIO(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
