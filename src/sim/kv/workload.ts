// MIT 6.824's kvraft workload (GenericTest) on a KvSimCluster: clients, crashes, partitions and an
// unreliable network, the per-client append audit, the linearizability check and the history hash.
import { KvSimApiClerk } from "./api-clerk.ts";
import { KvSimBatchClerk, type BatchOp } from "./batch-clerk.ts";
import { KvSimClerk } from "./clerk.ts";
import { KvSimCluster } from "./cluster.ts";
import { checkHistory, type CheckResult, type Operation } from "../check/index.ts";
import { Rng } from "../../util/rng.ts";
import { crc32cUpdate } from "../../util/crc32c.ts";
import type { KVStateOptions } from "../../kv/server.ts";

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
  /** Clients also send Batch RPCs (several writes and Gets, logged as batch entries); appends are audited once each. */
  batch?: boolean;
}

export interface WorkloadResult {
  history: Operation[];
  failures: string[];
  check: CheckResult;
  operations: number;
  appendsAudited: number;
  crashes: number;
  /** Leaders crashed while their disk held syncs, and the entries they had applied early then lost locally. */
  laggingLeaderCrashes: number;
  appliedThenLost: number;
  partitions: number;
  snapshotsInstalled: number;
  /**
   * CRC-32C of the history (ops, outputs, times), in (call, client) order. The same options give
   * the same hash: the real LSM I/O of a simulated millisecond finishes before the next one
   * starts, and every input of a millisecond (timers, network deliveries, client calls) reaches
   * the servers in an order fixed by the seed, not by which I/O finished first.
   * One gap: the state machine's background flush (every `syncEveryEntries` applied entries,
   * default 5 000) moves the durable index when it finishes, and so the log compaction point.
   * runKvSim's snapshot threshold forces flushes (awaited) long before that.
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
        // The Batch client's commands each run under a session slot of their own (ids ×100 + slot).
        const batcher = o.batch ? new KvSimBatchClerk(cluster, BigInt(iteration * 1000 + client + 701), history) : null;
        /** What this client last saw of each key: the value a Cas expects. */
        const seen = new Map<string, string | null>();
        if (!o.randomKeys) await clerk.put(ownKey, "");
        while (!done.value) {
          // 6.824 draws random keys from as many keys as there are clients.
          const key = o.randomKeys ? String(rng.int(o.clients)) : ownKey;
          const r = rng.next();
          // With the API mix, fewer Appends: a value that keeps growing leaves a Cas little to win.
          if (batcher !== null && r < 0.3) {
            // A batch of 2..6 commands on random keys: repeated keys cut it into several entries.
            const ops: BatchOp[] = [];
            for (let n = rng.range(2, 6); ops.length < n; ) {
              const k = String(rng.int(o.clients));
              if (rng.chance(0.2)) ops.push({ op: "Get", key: k, value: "" });
              else ops.push({ op: "Append", key: k, value: `x ${iteration}.${client}.b ${appended++} r` });
            }
            await batcher.batch(ops);
          } else if (r < (api === null ? 0.5 : 0.25)) {
            // Registered runs audit that no token appears twice: tokens name the iteration too.
            const writer = o.registered || o.batch ? `${iteration}.${client}` : client;
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
      // Late in the iteration the leader's disk stops completing syncs, until the crash that ends
      // the iteration: its followers' acknowledgements commit its last write, it applies and
      // answers those entries before its own write is durable (RaftNode's early apply), and the
      // crash then loses that write on its disk. Every answer must survive on the followers.
      const lagRng = new Rng((o.seed * 173 + iteration * 11 + 3) % Number.MAX_SAFE_INTEGER);
      const lagAt = o.opsPerIteration !== undefined ? Math.floor(o.opsPerIteration * (0.6 + 0.3 * lagRng.next())) : Infinity;
      let lagging: { server: number; applied: number } | null = null;
      while (cluster.clock.now() < end && (o.opsPerIteration === undefined || completed < o.opsPerIteration)) {
        await cluster.run(10);
        if (o.crash && lagging === null && completed >= lagAt) {
          const leader = cluster.leaderIndex();
          if (leader >= 0) {
            cluster.holdSyncs(leader);
            lagging = { server: leader, applied: cluster.servers[leader]!.raft.status().appliedBeforeOwnSync };
          }
        }
      }
      done.value = true;
      await cluster.until(partitioner);
      cluster.heal();
      if (o.crash) {
        const lagged = lagging === null ? null : cluster.servers[lagging.server];
        if (lagging !== null && lagged) {
          cluster.laggingLeaderCrashes++;
          cluster.appliedThenLost += lagged.raft.status().appliedBeforeOwnSync - lagging.applied;
        }
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
      } else if (o.registered || o.batch) {
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
    laggingLeaderCrashes: cluster.laggingLeaderCrashes,
    appliedThenLost: cluster.appliedThenLost,
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
