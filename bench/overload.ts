// The cluster suite's overload point: raw HTTP/2 writers that retry refusals as the Clerk does
// (after the node's retry-after-ms hint, jittered), first at a few concurrencies to find the
// saturating one (the smallest within 90% of the best goodput), then at 4× and 16× it. Reports goodput (acknowledged
// writes per second over the last three quarters of each run) against the peak, p99 of acknowledged writes (from the first try), refusals,
// and how many leader changes the members counted during each run.

import * as path from "node:path";
import type { Cluster } from "./clusters.ts";
import type { BurstConfig, BurstSummary } from "./overload-burst.ts";
import { cpuSeconds, spawnTracked } from "./proc.ts";
import type { Progress } from "./progress.ts";
import { formatCount, formatMillis, renderTable } from "./table.ts";

const BURST = path.resolve(import.meta.dir, "overload-burst.ts");
/** Concurrencies tried to find the saturating one (group commit keeps gaining past 512 writers). */
const PROBES = [32, 128, 512, 2048];
/** The saturating concurrency: the smallest probe within this share of the best probe's goodput. */
const SATURATED_SHARE = 0.9;
/** Overload factors measured against the saturating concurrency. */
const FACTORS = [4, 16];
/** Streams per HTTP/2 connection (below the server's 256 per connection). */
const STREAMS_PER_CONNECTION = 200;
const VALUE_BYTES = 100;

export interface OverloadRun {
  clients: number;
  /** Concurrency / saturating concurrency (1 for the probes). */
  factor: number | null;
  goodput: number;
  okP99Ms: number;
  refused: number;
  timeouts: number;
  other: number;
  otherSamples: string[];
  hung: number;
  /** Answered ErrWrongLeader: the node the writers were sent to stopped leading. */
  wrongLeader: number;
  leaderChanges: number;
  /** Cores the leader used during the run (CPU seconds / wall seconds). */
  leaderCores: number;
}

export interface OverloadResult {
  runs: OverloadRun[];
  peak: number;
  saturating: number;
  table: string;
}

async function runBurstProcess(config: BurstConfig): Promise<BurstSummary> {
  const child = spawnTracked([process.execPath, BURST, JSON.stringify(config)], { stdout: "pipe", output: "inherit" });
  const stdout = await new Response(child.stdout as ReadableStream<Uint8Array>).text();
  const code = await child.exited;
  if (code !== 0) throw new Error(`overload generator exited with status ${code}`);
  return JSON.parse(stdout.trim().split("\n").at(-1) ?? "{}") as BurstSummary;
}

/** Sum over the members of kvraft_raft_leader_changes_total. */
async function leaderChanges(cluster: Cluster): Promise<number> {
  let total = 0;
  for (const m of cluster.members) {
    const text = await (await fetch(`http://127.0.0.1:${m.clientPort}/metrics`, { signal: AbortSignal.timeout(5_000) })).text();
    total += Number(/^kvraft_raft_leader_changes_total\{[^}]*\} (\d+)/m.exec(text)?.[1] ?? 0);
  }
  return total;
}

let tagCounter = 0;

async function run(cluster: Cluster, clients: number, factor: number | null, seconds: number, progress: Progress): Promise<OverloadRun> {
  const leader = await cluster.leader();
  const before = await leaderChanges(cluster);
  progress.start(`[cluster] overload ×${clients}${factor === null ? " (probe)" : ` (${factor}× saturating)`}`, 0, "ms");
  const connections = Math.ceil(clients / STREAMS_PER_CONNECTION);
  const cpuBefore = cpuSeconds(leader.process.pid) ?? NaN;
  const t0 = performance.now();
  const r = await runBurstProcess({
    port: leader.clientPort,
    connections,
    streams: Math.ceil(clients / connections),
    keyPrefix: `ov${(tagCounter++).toString(36)}`,
    valueBytes: VALUE_BYTES,
    hangAfterMs: 30_000,
    durationMs: seconds * 1000,
    retry: true,
  });
  const leaderCores = ((cpuSeconds(leader.process.pid) ?? NaN) - cpuBefore) / ((performance.now() - t0) / 1000);
  const changes = (await leaderChanges(cluster)) - before;
  const out: OverloadRun = {
    clients,
    factor,
    goodput: r.goodput,
    okP99Ms: r.okP99Ms,
    refused: r.exhausted,
    timeouts: r.timeouts,
    other: r.other,
    otherSamples: r.otherSamples,
    hung: r.hung,
    wrongLeader: r.wrongLeader,
    leaderChanges: changes,
    leaderCores,
  };
  progress.finish(`${formatCount(out.goodput)} writes/s acknowledged, p99 ${formatMillis(out.okP99Ms)} ms, ${r.exhausted} refused, ${r.timeouts} timed out, ${changes} leader changes`);
  return out;
}

export async function runOverloadPoint(cluster: Cluster, seconds: number, progress: Progress): Promise<OverloadResult> {
  const runs: OverloadRun[] = [];
  for (const clients of PROBES) runs.push(await run(cluster, clients, null, seconds, progress));
  const peak = Math.max(...runs.map((r) => r.goodput));
  const best = runs.find((r) => r.goodput >= SATURATED_SHARE * peak)!;
  for (const factor of FACTORS) runs.push(await run(cluster, best.clients * factor, factor, seconds, progress));
  const rows = runs.map((r) => [
    String(r.clients),
    r.factor === null ? (r === best ? "saturating" : "probe") : `${r.factor}×`,
    formatCount(r.goodput),
    `${Math.round((100 * r.goodput) / peak)}%`,
    formatMillis(r.okP99Ms),
    formatCount(r.refused),
    formatCount(r.timeouts),
    String(r.other + r.hung + r.wrongLeader),
    String(r.leaderChanges),
    r.leaderCores.toFixed(2),
  ]);
  const table =
    `kvraft under overload: raw HTTP/2 Puts to the leader, each writer retrying refusals after the node's hint (${seconds} s per run)\n` +
    renderTable(
      [
        { header: "writers", align: "right" },
        { header: "load" },
        { header: "goodput/s", align: "right" },
        { header: "of peak", align: "right" },
        { header: "p99 ms", align: "right" },
        { header: "refused", align: "right" },
        { header: "timed out", align: "right" },
        { header: "errors (incl. wrong leader)", align: "right" },
        { header: "leader changes", align: "right" },
        { header: "leader cores", align: "right" },
      ],
      rows,
    );
  return { runs, peak, saturating: best.clients, table };
}
