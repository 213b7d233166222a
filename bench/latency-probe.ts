// Where a single client's Put latency goes: a 3-node kvraft cluster, one closed-loop client for a
// few seconds, then the nodes' own histograms (/metrics) beside the client's percentiles: log
// fsync, save (write + fsync), the KV request time on the leader (arrival → answer), RPC time.
// Usage: bun bench/latency-probe.ts [--seconds S] [--path http1|clerk-h2|clerk-grpc] [--clients N]
// [--cpu-prof DIR] (profiles of every member, written when they stop). Also each node's event-loop
// thread's time on a CPU and runnable but waiting for one, per Put (/proc/PID/schedstat). A tool, not a suite.

import * as fs from "node:fs";
import * as path from "node:path";
import { startKvraft } from "./clusters.ts";
import type { LoadConfig, LoadResult } from "./loadgen.ts";
import type { ClientPath } from "./native-clients.ts";
import { killAllChildren, spawnTracked } from "./proc.ts";
import { Histogram, latencyMillis } from "./stats.ts";

const args = process.argv.slice(2);
const seconds = Number(args[args.indexOf("--seconds") + 1] ?? 5) || 5;
const clientPath = (args.includes("--path") ? args[args.indexOf("--path") + 1] : "http1") as ClientPath;
const clients = args.includes("--clients") ? Number(args[args.indexOf("--clients") + 1]) : 1;
const cpuProfDir = args.includes("--cpu-prof") ? path.resolve(args[args.indexOf("--cpu-prof") + 1]!) : undefined;

type Samples = Map<string, number>;

async function scrape(port: number): Promise<Samples> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const out: Samples = new Map();
  for (const line of text.split("\n")) {
    if (line.startsWith("#") || line.trim() === "") continue;
    const space = line.lastIndexOf(" ");
    out.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return out;
}

/** The change of every series named `name` (whatever its labels) that carries `labels`. */
function delta(after: Samples, before: Samples, name: string, labels = ""): number {
  let total = 0;
  for (const [key, value] of after) {
    if (key !== name && !key.startsWith(`${name}{`)) continue;
    if (labels && !key.includes(labels)) continue;
    total += value - (before.get(key) ?? 0);
  }
  return total;
}

/** Mean and an upper-bound p50/p99 from a Prometheus histogram's bucket deltas. */
function histogram(after: Samples, before: Samples, base: string, labels = ""): string {
  const count = delta(after, before, `${base}_count`, labels);
  const sum = delta(after, before, `${base}_sum`, labels);
  if (count <= 0) return "no samples";
  const buckets: [number, number][] = [];
  for (const key of after.keys()) {
    if (!key.startsWith(`${base}_bucket{`) || (labels && !key.includes(labels))) continue;
    const le = /le="([^"]+)"/.exec(key)?.[1];
    if (le === undefined) continue;
    buckets.push([le === "+Inf" ? Infinity : Number(le), (after.get(key) ?? 0) - (before.get(key) ?? 0)]);
  }
  buckets.sort((a, b) => a[0] - b[0]);
  const q = (p: number) => buckets.find(([, c]) => c >= p * count)?.[0] ?? NaN;
  return `n ${count}, mean ${((sum / count) * 1000).toFixed(2)} ms, p50 ≤ ${(q(0.5) * 1000).toFixed(1)} ms, p99 ≤ ${(q(0.99) * 1000).toFixed(1)} ms`;
}

/** A main thread's time on a CPU and waiting for one (ns, /proc/PID/schedstat), or null. */
function schedstat(pid: number): [number, number] | null {
  try {
    const [run, wait] = fs.readFileSync(`/proc/${pid}/schedstat`, "utf8").split(" ").map(Number);
    return [run!, wait!];
  } catch {
    return null;
  }
}

const cluster = await startKvraft(3, { cpuProfDir });
try {
  const leader = await cluster.leader();
  const ports = cluster.members.map((m) => m.clientPort);
  const before = await Promise.all(ports.map(scrape));
  const schedBefore = cluster.members.map((m) => schedstat(m.process.pid));
  const config: LoadConfig = {
    protocol: "kvraft",
    host: "127.0.0.1",
    port: leader.clientPort,
    workload: (process.env.PROBE_WORKLOAD ?? "put") as LoadConfig["workload"],
    clients,
    durationMs: seconds * 1000,
    keyCount: 0,
    tag: "lp",
    valueBytes: 100,
    watchPids: cluster.members.map((m) => m.process.pid),
    path: clientPath,
    ports,
  };
  const child = spawnTracked([process.execPath, path.resolve(import.meta.dir, "loadgen.ts"), JSON.stringify(config)], { stdout: "pipe", output: "inherit" });
  const stdout = await new Response(child.stdout as ReadableStream<Uint8Array>).text();
  const r = JSON.parse(stdout.trim().split("\n").at(-1)!) as LoadResult;
  const after = await Promise.all(ports.map(scrape));
  const schedAfter = cluster.members.map((m) => schedstat(m.process.pid));
  const lat = latencyMillis(Histogram.fromJSON(r.histogram));
  const leaderCpu = r.cpu[leader.process.pid];
  console.log(`leader CPU ${leaderCpu !== undefined ? ((leaderCpu * 1e6) / r.ops).toFixed(0) : "?"} µs/Put, generator ${((r.generatorCpu * 1e6) / r.ops).toFixed(0)} µs/Put`);
  console.log(`client (${clientPath}, ${clients} concurrent): ${(r.ops / r.seconds).toFixed(0)} Put/s, p50 ${lat.p50.toFixed(2)} ms, p99 ${lat.p99.toFixed(2)} ms, p99.9 ${lat.p999.toFixed(2)} ms`);
  for (const [i, m] of cluster.members.entries()) {
    const role = m === leader ? "leader" : "follower";
    const fsyncs = delta(after[i]!, before[i]!, "kvraft_raft_log_fsync_seconds_count");
    const fsyncSeconds = delta(after[i]!, before[i]!, "kvraft_raft_log_fsync_seconds_sum");
    console.log(`node ${m.id} (${role}): log fsync n ${fsyncs}, mean ${fsyncs > 0 ? ((fsyncSeconds / fsyncs) * 1000).toFixed(2) : "-"} ms`);
    console.log(`  log save (write + fsync): ${histogram(after[i]!, before[i]!, "kvraft_raft_log_save_seconds")}`);
    const [s0, s1] = [schedBefore[i], schedAfter[i]];
    // Time the event-loop thread was runnable but not running: what a loaded machine adds to each hop.
    if (s0 && s1) console.log(`  main thread per Put: on a CPU ${((s1[0] - s0[0]) / 1e3 / r.ops).toFixed(0)} µs, waiting for a CPU ${((s1[1] - s0[1]) / 1e3 / r.ops).toFixed(0)} µs`);
    if (m === leader) {
      console.log(`  KV Put, arrival → answer: ${histogram(after[i]!, before[i]!, "kvraft_kv_request_duration_seconds", 'op="Put"')}`);
      const timedOut = delta(after[i]!, before[i]!, "kvraft_kv_requests_total", 'result="ErrTimeout"');
      console.log(`  answered ErrTimeout (not applied within the server's command timeout; the Clerk retries): ${timedOut}`);
      const flushes = delta(after[i]!, before[i]!, "kvraft_lsm_flushes_total");
      const compactions = delta(after[i]!, before[i]!, "kvraft_lsm_compactions_total");
      const stalls = delta(after[i]!, before[i]!, "kvraft_lsm_write_stalls_total");
      const slowdowns = delta(after[i]!, before[i]!, "kvraft_lsm_write_slowdowns_total");
      console.log(`  LSM memtable flushes ${flushes}, compactions ${compactions}, write stalls ${stalls}, slowdowns ${slowdowns} during the window`);
    }
  }
} finally {
  await cluster.stop();
  killAllChildren();
}
