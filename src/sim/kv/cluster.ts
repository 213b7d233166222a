// Simulated KV clusters: real KVServers (real LSM in temp dirs, MemoryLogStore for the Raft log)
// on a NodeSimNetwork and SimClock, a retrying test Clerk that records every operation, and MIT
// 6.824's kvraft workload (GenericTest) with crashes, partitions and an unreliable network.
import { settle } from "../raft-node/cluster.ts";
import { KvSimApiClerk } from "./api-clerk.ts";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { checkHistory, type CheckResult, type Operation } from "../check/index.ts";
import { MemoryLogStore, SimClock, NodeSimNetwork } from "../raft-node/index.ts";
import { Rng } from "../../util/rng.ts";
import { crc32cUpdate } from "../../util/crc32c.ts";
import { InvalidArgumentError, KVError, OverloadedError, SessionExpiredError } from "../../kv/errors.ts";
import { KVServer, type CommandArgs, type CommandReply, type KVLimits, type KVOp, type KVStateOptions, type RegisterReply } from "../../kv/server.ts";

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

  /** The process dies: unsynced Raft log writes are lost; the LSM keeps what it wrote. */
  async crash(i: number): Promise<void> {
    const server = this.servers[i];
    if (server === null) return;
    this.servers[i] = null;
    this.crashes++;
    this.installedBeforeCrash += (await server.getStatus()).snapshotsInstalled;
    // Off the network at once: snapshot hops to or from it fail now, so closing needs no simulated time.
    this.net.down(i);
    this.stores[i].crash();
    await server.close();
    this.stores[i] = this.stores[i].reopen();
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
    return this.net.isIdle() && this.servers.every((server) => server === null || server.isIdle());
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


/**
 * The test Clerk: retries one operation with the same commandId until a server answers OK or
 * ErrNoKey, following leader hints and rotating through servers; records call and return times.
 * With `registered`, it writes under a session from RegisterSession, as kvraft's Clerk does.
 */
export class KvSimClerk {
  private leader: number;
  private nextCommandId = 0n;
  private reachable: number[];
  /** This client's own draws (request and reply loss and delay): independent of other clients. */
  private readonly rng: Rng;
  /** The registered session (registered mode), null until registered and after it expired. */
  private session: bigint | null = null;

  constructor(
    private readonly cluster: KvSimCluster,
    readonly clientId: bigint,
    private readonly history: Operation[],
    private readonly deadlineMs = 60_000,
    /** The servers this client can talk to (a client inside a partition); default all. */
    reachable?: number[],
    private readonly registered = false,
  ) {
    this.reachable = reachable ?? Array.from({ length: cluster.size }, (_, i) => i);
    this.leader = this.reachable[0];
    this.rng = cluster.clientRng(clientId);
  }

  /** Changes which servers this client can talk to (all when omitted), e.g. after a heal. */
  reach(servers?: number[]): void {
    this.reachable = servers ?? Array.from({ length: this.cluster.size }, (_, i) => i);
    if (!this.reachable.includes(this.leader)) this.leader = this.reachable[0];
  }

  get(key: string): Promise<CommandReply> {
    return this.op("Get", key, "");
  }
  put(key: string, value: string): Promise<CommandReply> {
    return this.op("Put", key, value);
  }
  append(key: string, value: string): Promise<CommandReply> {
    return this.op("Append", key, value);
  }
  delete(key: string): Promise<CommandReply> {
    return this.op("Delete", key, "");
  }

  /**
   * Runs one operation to completion. In registered mode a write refused as session-expired on
   * its first attempt runs again under a new session; after a retry its outcome is unknown: it
   * stays open in the history (the checker lets it take effect or not) and ErrTimeout is returned.
   */
  async op(op: KVOp, key: string, value: string): Promise<CommandReply> {
    let commandId = ++this.nextCommandId;
    const clock = this.cluster.clock;
    const record: Operation = { clientId: this.clientId, input: { op, key, value }, output: null, call: clock.now(), return: Infinity };
    this.history.push(record);
    const giveUp = clock.now() + this.deadlineMs;
    const withSession = this.registered && op !== "Get";
    let attempts = 0;
    while (clock.now() < giveUp) {
      if (withSession && this.session === null) {
        this.session = await this.register(giveUp);
        commandId = ++this.nextCommandId;
      }
      const args: CommandArgs = withSession
        ? { key, value, op, clientId: this.session!, commandId, registered: true }
        : { key, value, op, clientId: this.clientId, commandId };
      let reply: CommandReply | null;
      try {
        attempts++;
        reply = await this.cluster.call(this.leader, args, this.rng);
      } catch (error) {
        if (!(error instanceof SessionExpiredError)) throw error;
        this.session = null;
        this.cluster.sessionEvents.expiredRefusals++;
        if (attempts > 1) {
          this.cluster.sessionEvents.uncertainWrites++;
          return { err: "ErrTimeout", value: "" };
        }
        continue;
      }
      if (reply !== null && (reply.err === "OK" || reply.err === "ErrNoKey")) {
        record.output = { err: reply.err, value: reply.value };
        record.return = clock.now();
        return reply;
      }
      this.follow(reply?.leaderId);
    }
    throw new Error(`client ${this.clientId}: ${op} ${JSON.stringify(key)} got no answer in ${this.deadlineMs} ms of simulated time`);
  }

  /** RegisterSession until a leader grants one (a full table is refused: retried after a pause). */
  private async register(giveUp: number): Promise<bigint> {
    while (this.cluster.clock.now() < giveUp) {
      const reply = await this.cluster.register(this.leader, this.clientId, this.rng);
      if (reply !== null && reply.err === "OK") return reply.clientId;
      this.follow(reply?.leaderId);
    }
    throw new Error(`client ${this.clientId}: RegisterSession got no session in ${this.deadlineMs} ms of simulated time`);
  }

  private follow(leaderId: number | undefined): void {
    if (leaderId !== undefined && leaderId !== this.leader && this.reachable.includes(leaderId)) {
      this.leader = leaderId;
    } else {
      this.leader = this.reachable[(this.reachable.indexOf(this.leader) + 1) % this.reachable.length];
    }
  }
}

/**
 * 6.824's checkClntAppends: client `client` appended "x client j y" for j = 0..count-1 to its key,
 * in order; each must appear exactly once, in order. Returns the problems found.
 */
export function checkClientAppends(client: number, value: string, count: number): string[] {
  const problems: string[] = [];
  let lastOffset = -1;
  for (let j = 0; j < count; j++) {
    const token = `x ${client} ${j} y`;
    const offset = value.indexOf(token);
    if (offset < 0) {
      problems.push(`client ${client}: append ${JSON.stringify(token)} was lost`);
      continue;
    }
    if (value.lastIndexOf(token) !== offset) problems.push(`client ${client}: append ${JSON.stringify(token)} was applied twice`);
    if (offset < lastOffset) problems.push(`client ${client}: append ${JSON.stringify(token)} is out of order`);
    lastOffset = offset;
  }
  // Anything beyond the expected tokens (e.g. an append the client never acknowledged) is suspect too.
  const extra = value.replace(/x \d+ \d+ y/g, "");
  if (extra.length > 0) problems.push(`client ${client}: unexpected text in its key: ${JSON.stringify(extra.slice(0, 60))}`);
  return problems;
}

export interface WorkloadOptions {
  seed: number;
  servers: number;
  clients: number;
  unreliable: boolean;
  crash: boolean;
  partitions: boolean;
  /** Clients use a few shared keys with Put/Append/Get (checked only by linearizability). */
  randomKeys: boolean;
  iterations: number;
  /** Simulated time of load per iteration. */
  iterationMs: number;
  /** Ends an iteration early once this many operations completed in it. */
  opsPerIteration?: number;
  snapshotThreshold?: number;
  /** Fails when a server's Raft log exceeds this many bytes at the end of an iteration. */
  maxLogBytes?: number;
  state?: KVStateOptions;
  /** Clients write under registered sessions (RegisterSession), as kvraft's Clerk does. */
  registered?: boolean;
  /** Between operations a client idles for `idleMs` with this chance (lets sessions expire). */
  idle?: { chance: number; ms: number };
  /** randomKeys runs also use compare-and-swap (Txn) and Range (issue 14). */
  api?: boolean;
}

export interface WorkloadResult {
  history: Operation[];
  failures: string[];
  check: CheckResult;
  operations: number;
  appendsAudited: number;
  crashes: number;
  partitions: number;
  snapshotsInstalled: number;
  /**
   * CRC-32C of the history (ops, outputs, times), in (call, client) order. The same options give
   * the same hash: the real LSM I/O of a simulated millisecond finishes before the next one
   * starts, and every input of a millisecond (timers, network deliveries, client calls) reaches
   * the servers in an order fixed by the seed, not by which I/O finished first.
   * One gap: the state machine's background `db.sync()` (every `syncEveryEntries` applied entries,
   * default 10 000) is not part of KVServer.isIdle(), so when it fires its finish time moves the
   * log compaction point. runKvSim's snapshot threshold forces syncs long before that.
   */
  hash: string;
  /** KvSimCluster.replayBreaks: 0 means the run depended on the seed alone. */
  replayBreaks: number;
  sessionEvents: KvSimCluster["sessionEvents"];
}

/** MIT 6.824 kvraft GenericTest, in simulated time, with every history checked. */
export async function runWorkload(o: WorkloadOptions): Promise<WorkloadResult> {
  const cluster = await KvSimCluster.start({
    servers: o.servers,
    seed: o.seed,
    unreliable: o.unreliable,
    snapshotThreshold: o.snapshotThreshold,
    state: o.state,
  });
  const history: Operation[] = [];
  const failures: string[] = [];
  let appendsAudited = 0;
  let snapshotsInstalled = 0;
  try {
    for (let iteration = 0; iteration < o.iterations; iteration++) {
      const done = { value: false };
      let completed = 0;
      const clients = Array.from({ length: o.clients }, async (_, client) => {
        const rng = new Rng((o.seed * 31 + iteration * 977 + client * 13) >>> 0);
        const clerk = new KvSimClerk(cluster, BigInt(iteration * 1000 + client + 1), history, undefined, undefined, o.registered);
        const ownKey = String(client);
        let last = "";
        let appended = 0;
        // The etcd-style client has its own session id (commandIds increase per session).
        const api = o.api ? new KvSimApiClerk(cluster, BigInt(iteration * 1000 + client + 501), history) : null;
        /** What this client last saw of each key: the value a Cas expects. */
        const seen = new Map<string, string | null>();
        if (!o.randomKeys) await clerk.put(ownKey, "");
        while (!done.value) {
          // 6.824 draws random keys from as many keys as there are clients.
          const key = o.randomKeys ? String(rng.int(o.clients)) : ownKey;
          const r = rng.next();
          // With the API mix, fewer Appends: a value that keeps growing leaves a Cas little to win.
          if (r < (api === null ? 0.5 : 0.25)) {
            // Registered runs audit that no token appears twice: tokens name the iteration too.
            const writer = o.registered ? `${iteration}.${client}` : client;
            const token = o.randomKeys ? `x ${writer} ${appended} r` : `x ${client} ${appended} y`;
            await clerk.append(key, token);
            last += token;
            appended++;
          } else if (o.randomKeys && r < (api === null ? 0.6 : 0.35)) {
            await clerk.put(key, `p ${client} ${appended++} `);
          } else if (api !== null && r < 0.72) {
            const now = await api.cas(key, seen.get(key) ?? null, `c ${client} ${appended++} `);
            if (now !== undefined) seen.set(key, now);
          } else if (api !== null && r < 0.78) {
            await api.range("0", "9");
          } else {
            const reply = await clerk.get(key);
            if (api !== null) seen.set(key, reply.err === "ErrNoKey" ? null : reply.value);
            if (!o.randomKeys && reply.value !== last) {
              failures.push(`client ${client}: Get(${key}) returned ${JSON.stringify(reply.value.slice(-60))}, expected …${JSON.stringify(last.slice(-60))}`);
            }
          }
          completed++;
          if (o.idle !== undefined && rng.chance(o.idle.chance)) await cluster.sleep(o.idle.ms);
        }
        return { clerk, key: ownKey, appended };
      });
      const partitioner = o.partitions ? runPartitioner(cluster, done, new Rng((o.seed * 131 + iteration * 7 + 5) % Number.MAX_SAFE_INTEGER)) : Promise.resolve();
      const end = cluster.clock.now() + o.iterationMs;
      while (cluster.clock.now() < end && (o.opsPerIteration === undefined || completed < o.opsPerIteration)) await cluster.run(10);
      done.value = true;
      await cluster.until(partitioner);
      cluster.heal();
      if (o.crash) {
        // Simulated time stands still while servers close and open (real fsyncs): crash() takes a
        // server off the network first, so no close waits on a network hop.
        await cluster.still(cluster.crashAll());
        await cluster.still(cluster.restartAll());
      }
      const results = await cluster.until(Promise.all(clients), 120_000);
      if (!o.randomKeys) {
        for (const [client, result] of results.entries()) {
          const reply = await cluster.until(result.clerk.get(result.key));
          failures.push(...checkClientAppends(client, reply.value, result.appended));
          appendsAudited += result.appended;
        }
      } else if (o.registered) {
        // Exactly once, audited directly: every append token is unique, so none may appear twice.
        for (let key = 0; key < o.clients; key++) {
          const reply = await cluster.until(results[0]!.clerk.get(String(key)));
          const tokens: string[] = reply.value.match(/x \S+ \d+ r/g) ?? [];
          const twice = tokens.filter((token, i) => tokens.indexOf(token) !== i);
          if (twice.length > 0) failures.push(`key ${key}: append ${JSON.stringify(twice[0])} was applied twice`);
          appendsAudited += tokens.length;
        }
      }
      if (o.maxLogBytes !== undefined) {
        // Compaction runs after apply; give it a moment of quiet before measuring.
        await cluster.run(200);
        cluster.logBytes().forEach((bytes, i) => {
          if (bytes > o.maxLogBytes!) failures.push(`server ${i}: Raft log is ${bytes} bytes, above the bound ${o.maxLogBytes}`);
        });
      }
    }
    snapshotsInstalled = await cluster.snapshotsInstalled();
  } finally {
    await cluster.close();
  }
  // Operations started in one simulated millisecond were recorded in the order their promises
  // resumed; (call time, client) is the order the seed fixes.
  history.sort((a, b) => a.call - b.call || (a.clientId < b.clientId ? -1 : a.clientId > b.clientId ? 1 : 0));
  const check = checkHistory(history, { timeoutMs: 20_000 });
  if (check.result === "illegal") failures.push(check.explanation);
  if (check.result === "timeout") failures.push(check.explanation);
  return {
    history,
    failures,
    check,
    operations: history.length,
    appendsAudited,
    crashes: cluster.crashes,
    partitions: cluster.partitions,
    snapshotsInstalled,
    replayBreaks: cluster.replayBreaks,
    sessionEvents: cluster.sessionEvents,
    hash: hashHistory(history),
  };
}

/**
 * Every 100-300 ms, a fresh random split of the servers into two groups (6.824's partitioner).
 * Runs inside clock timer callbacks, so a split happens before any I/O of that millisecond.
 */
function runPartitioner(cluster: KvSimCluster, done: { value: boolean }, rng: Rng): Promise<void> {
  return new Promise<void>((resolve) => {
    const split = (): void => {
      if (done.value) return resolve();
      const groups: number[][] = [[], []];
      for (let i = 0; i < cluster.size; i++) groups[rng.int(2)].push(i);
      cluster.partition(groups);
      cluster.clock.setTimeout(split, rng.range(100, 300));
    };
    split();
  });
}

function hashHistory(history: Operation[]): string {
  const encoder = new TextEncoder();
  let crc = 0;
  for (const op of history) {
    const line = `${op.clientId}|${op.input.op}|${op.input.key}|${op.input.value}|${op.output?.err}|${op.output?.value}|${op.call}|${op.return}\n`;
    crc = crc32cUpdate(crc, encoder.encode(line));
  }
  return crc.toString(16).padStart(8, "0");
}

export interface KvSimOptions {
  seed: number;
  nodes: number;
  /** Client operations to run (spread over three crash/restart rounds). */
  steps: number;
  /**
   * Extra flags: `--sessions` runs the session family: every client writes under a registered
   * session, the table holds 3 sessions for 5 clients and sessions expire after 300 ms of log
   * time, so registrations are refused, sessions expire mid-retry and clients register again.
   */
  extra?: string[];
}

/**
 * Randomized client load under every fault (unreliable network, partitions, crashes, snapshots),
 * checked for linearizability. The line ends `ok hash=<hex>` or `FAIL … hash=<hex>`; one seed
 * replays one run, byte for byte (test/kv/sim-determinism.test.ts).
 */
export async function runKvSim(options: KvSimOptions): Promise<{ line: string; ok: boolean }> {
  const iterations = 3;
  const sessions = options.extra?.includes("--sessions") ?? false;
  const apiOps = options.extra?.includes("--api") ?? false;
  const result = await runWorkload({
    seed: options.seed,
    servers: options.nodes,
    clients: 5,
    unreliable: true,
    crash: true,
    partitions: true,
    randomKeys: true,
    iterations,
    iterationMs: 20_000,
    opsPerIteration: Math.max(1, Math.ceil(options.steps / iterations)),
    snapshotThreshold: 50,
    ...(sessions ? { registered: true, state: { sessionTtlMs: 300, maxSessions: 3 }, idle: { chance: 0.2, ms: 400 } } : {}),
    ...(apiOps ? { api: true } : {}),
  });
  const ok = result.failures.length === 0;
  const summary =
    `kv ${sessions ? "sessions " : ""}${apiOps ? "api " : ""}${options.nodes} nodes, ${result.operations} ops, ${result.crashes} crashes, ${result.partitions} partitions, ` +
    (sessions
      ? `${result.sessionEvents.registrationsRefused} registrations refused, ${result.sessionEvents.expiredRefusals} writes refused as session-expired ` +
        `(${result.sessionEvents.uncertainWrites} outcomes unknown), `
      : "") +
    `${result.snapshotsInstalled} snapshots installed, ${result.appendsAudited > 0 ? `${result.appendsAudited} appends audited, ` : ""}` +
    `${result.replayBreaks > 0 ? `NOT REPLAYABLE (${result.replayBreaks} waits on real I/O timed out), ` : ""}` +
    `history ${result.check.result === "ok" ? "linearizable" : result.check.result}`;
  const line = ok
    ? `seed ${options.seed}: ${summary} ok hash=${result.hash}`
    : `seed ${options.seed}: ${summary} FAIL ${result.failures[0]} hash=${result.hash}`;
  return { line, ok };
}
