// The cluster suite: three kvserver processes (and with --vs-etcd a three-member etcd) on
// 127.0.0.1 under a closed-loop generator in its own process; Put, Get and a 50/50 mix at several
// client counts, over each client path (hand-made HTTP/1.1, kvraft's Clerk over HTTP/2 and gRPC,
// etcd's etcd3 client), systems and paths alternating point by point. Reports throughput, latency percentiles,
// errors, CPU per process and per operation, RSS, and how long a restarted node takes to serve.

import * as path from "node:path";
import type { BenchOptions } from "./args.ts";
import { kvserverMissing, rssOf, startEtcd, startKvraft, type Cluster } from "./clusters.ts";
import type { LoadConfig, LoadResult, Workload } from "./loadgen.ts";
import { PATH_LABEL, PATH_SYSTEM, type ClientPath } from "./native-clients.ts";
import { runOverloadPoint, type OverloadResult } from "./overload.ts";
import { etcdBinary } from "./machine.ts";
import { cpuSeconds, sleep, spawnTracked } from "./proc.ts";
import type { Progress } from "./progress.ts";
import { alternate, type SuiteResult } from "./report.ts";
import { Histogram, latencyMillis, ratio, summarize, type LatencySummary, type Summary } from "./stats.ts";
import { lineChart } from "./svg.ts";
import { formatBytes, formatCount, formatMillis, formatRatio, formatSummary, renderTable } from "./table.ts";

const LOADGEN = path.resolve(import.meta.dir, "loadgen.ts");
const WORKLOADS: Exclude<Workload, "preload">[] = ["put", "get", "mix"];
/** Workloads only a Clerk path runs (the bulk API is the Clerk's). */
const CLERK_ONLY = new Set<string>(["bulk"]);
const DEFAULT_PATHS: ClientPath[] = ["http1", "clerk-h2", "clerk-grpc", "etcd3"];
const VALUE_BYTES = 100;

interface Plan {
  workloads: Exclude<Workload, "preload">[];
  paths: ClientPath[];
  seconds: number;
  /** Unmeasured seconds of the same load before each window. */
  warmupSeconds: number;
  clients: number[];
  runs: number;
  preloadKeys: number;
}

export interface PointRun {
  system: string;
  path: ClientPath;
  workload: string;
  clients: number;
  opsPerSec: number;
  errors: number;
  errorSamples: string[];
  latency: LatencySummary;
  /** Cores used by each member during the window (CPU seconds / wall seconds), member order. */
  serverCores: number[];
  leader: number;
  generatorCores: number;
  generatorCpuMicrosPerOp: number | null;
  leaderCpuMicrosPerOp: number | null;
  clusterCpuMicrosPerOp: number | null;
}

let tagCounter = 0;

export async function runGenerator(config: LoadConfig): Promise<LoadResult> {
  const child = spawnTracked([process.execPath, LOADGEN, JSON.stringify(config)], { stdout: "pipe", output: "inherit" });
  const stdout = await new Response(child.stdout as ReadableStream<Uint8Array>).text();
  const code = await child.exited;
  if (code !== 0) throw new Error(`load generator exited with status ${code}`);
  const last = stdout.trim().split("\n").at(-1) ?? "";
  return JSON.parse(last) as LoadResult;
}

async function preload(cluster: Cluster, keys: number, progress: Progress): Promise<void> {
  const leader = await cluster.leader();
  progress.start(`[cluster] ${cluster.label} preload ${keys} keys`, 0, "ms");
  const r = await runGenerator({
    protocol: cluster.protocol,
    host: "127.0.0.1",
    port: leader.clientPort,
    workload: "preload",
    clients: 64,
    durationMs: 120_000,
    keyCount: keys,
    tag: "pre",
    valueBytes: VALUE_BYTES,
    watchPids: [],
  });
  if (r.ops < keys) throw new Error(`${cluster.label}: preload wrote ${r.ops} of ${keys} keys (${r.errors} errors: ${r.errorSamples.join("; ")})`);
  progress.finish(`${r.ops} keys in ${r.seconds.toFixed(1)} s`);
}

async function runPoint(cluster: Cluster, path: ClientPath, workload: Workload, clients: number, plan: Plan, progress: Progress): Promise<PointRun> {
  const leader = await cluster.leader();
  const pids = cluster.members.map((m) => m.process.pid);
  const label = `[cluster] ${cluster.label} ${path} ${workload} ×${clients}`;
  progress.start(label, (plan.warmupSeconds + plan.seconds) * 1000, "ms");
  const started = performance.now();
  const ticker = setInterval(() => progress.tick(performance.now() - started), 200);
  let r: LoadResult;
  try {
    r = await runGenerator({
      protocol: cluster.protocol,
      host: "127.0.0.1",
      port: leader.clientPort,
      workload,
      clients,
      durationMs: plan.seconds * 1000,
      warmupMs: plan.warmupSeconds * 1000,
      keyCount: plan.preloadKeys,
      tag: `${cluster.system[0]}${(tagCounter++).toString(36)}`,
      valueBytes: VALUE_BYTES,
      watchPids: pids,
      path,
      ports: cluster.members.map((m) => m.clientPort),
    });
  } finally {
    clearInterval(ticker);
  }
  const latency = latencyMillis(Histogram.fromJSON(r.histogram));
  const cpu = pids.map((pid) => r.cpu[pid] ?? NaN);
  const leaderCpu = cpu[cluster.members.indexOf(leader)];
  const perOp = (seconds: number) => (r.ops > 0 && Number.isFinite(seconds) ? (seconds * 1e6) / r.ops : null);
  const point: PointRun = {
    system: cluster.system,
    path,
    workload,
    clients,
    opsPerSec: r.ops / r.seconds,
    errors: r.errors,
    errorSamples: r.errorSamples,
    latency,
    serverCores: cpu.map((c) => c / r.seconds),
    leader: leader.id,
    generatorCores: r.generatorCpu / r.seconds,
    generatorCpuMicrosPerOp: perOp(r.generatorCpu),
    leaderCpuMicrosPerOp: perOp(leaderCpu),
    clusterCpuMicrosPerOp: perOp(cpu.reduce((a, b) => a + b, 0)),
  };
  progress.finish(
    `${formatCount(point.opsPerSec)} ops/s, p50 ${formatMillis(latency.p50)} ms, p99 ${formatMillis(latency.p99)} ms, ${r.errors} errors` +
      (r.errorSamples.length ? ` (${r.errorSamples[0]})` : ""),
  );
  return point;
}

/** Starts one cluster; a side that cannot start is reported and skipped, the other still runs. */
async function startOrNote(label: string, start: () => Promise<Cluster>, clusters: Cluster[], notes: string[], progress: Progress): Promise<void> {
  progress.start(`[cluster] starting ${label}`, 0, "ms");
  try {
    clusters.push(await start());
    progress.finish("leader elected");
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    progress.finish(`could not start: ${message.split("\n")[0]}`);
    notes.push(`${label}: skipped — could not start: ${message.split("\n").slice(0, 4).join(" | ")}`);
  }
}

/**
 * Cores each member burns with no load at all (ticks, heartbeats, timers): what every per-op CPU
 * figure at low load carries on top of the work itself.
 */
async function idleCores(cluster: Cluster, ms: number): Promise<number[]> {
  const before = cluster.members.map((m) => cpuSeconds(m.process.pid) ?? NaN);
  const t0 = performance.now();
  await sleep(ms);
  const seconds = (performance.now() - t0) / 1000;
  return cluster.members.map((m, i) => ((cpuSeconds(m.process.pid) ?? NaN) - before[i]) / seconds);
}

function summaryOf(points: PointRun[], pick: (p: PointRun) => number | null): Summary | null {
  const values = points.map(pick).filter((v): v is number => v !== null && Number.isFinite(v));
  return values.length ? summarize(values) : null;
}

export async function runClusterSuite(o: BenchOptions, progress: Progress): Promise<SuiteResult> {
  const plan: Plan = {
    workloads: o.workloads === null ? WORKLOADS : o.workloads.filter((w): w is Exclude<Workload, "preload"> => w !== "overload"),
    paths: o.paths ?? DEFAULT_PATHS,
    seconds: o.seconds ?? (o.quick ? 2 : 10),
    warmupSeconds: o.warmupSeconds ?? (o.quick ? 1 : 3),
    clients: o.clients ?? (o.quick ? [1, 64] : [1, 16, 64, 256]),
    runs: o.runs,
    preloadKeys: o.quick ? 1_000 : 10_000,
  };
  const notes: string[] = [];
  const clusters: Cluster[] = [];
  const points: PointRun[] = [];
  const restarts: Record<string, number> = {};
  const idle: Record<string, number[]> = {};
  const memory: Record<string, { rss: number; peakRss: number }[]> = {};
  let overload: OverloadResult | null = null;
  try {
    const missing = kvserverMissing();
    if (missing) notes.push(`kvraft: skipped — ${missing}`);
    else await startOrNote("kvraft", () => startKvraft(3, { fastLane: !o.noFastLane }), clusters, notes, progress);
    if (o.vsEtcd) {
      if (etcdBinary()) await startOrNote("etcd", startEtcd, clusters, notes, progress);
      else notes.push("etcd: skipped — no `etcd` binary on PATH (Debian: apt-get install etcd-server)");
    }
    if (clusters.length === 0) {
      notes.push("nothing to run: no kvserver yet, and etcd not requested (--vs-etcd) or absent");
      return { suite: "cluster", title: "Cluster: nothing measured", tables: [], notes, charts: [], data: { plan, points } };
    }
    progress.log(`[cluster] ${clusters.map((c) => c.label).join(" / ")}, 3 members each, ${plan.seconds} s per point after ${plan.warmupSeconds} s of warm-up, clients ${plan.clients.join(", ")}, ${plan.runs} run(s)`);
    for (const c of clusters) await preload(c, plan.preloadKeys, progress);
    for (const c of clusters) {
      progress.start(`[cluster] ${c.label} idle CPU`, 0, "ms");
      idle[c.system] = await idleCores(c, o.quick ? 1000 : 3000);
      progress.finish(`${idle[c.system].map((x) => x.toFixed(3)).join(" + ")} cores with no load`);
    }
    // Every (system, path) pair that applies, alternated point by point.
    const units = clusters.flatMap((c) => plan.paths.filter((p) => PATH_SYSTEM[p] === "both" || PATH_SYSTEM[p] === c.system).map((path) => ({ c, path })));
    for (const workload of plan.workloads) {
      for (const clients of plan.clients) {
        const applicable = CLERK_ONLY.has(workload) ? units.filter((u) => u.path.startsWith("clerk")) : units;
        await alternate(applicable, plan.runs, async ({ c, path }) => {
          try {
            points.push(await runPoint(c, path, workload, clients, plan, progress));
          } catch (e) {
            // One failed point (a generator that could not connect, a leader lost for too long)
            // is reported; the other points and the other system still run.
            const message = (e instanceof Error ? e.message : String(e)).split("\n")[0];
            progress.finish(`failed: ${message}`);
            notes.push(`${c.label} ${path} ${workload} ×${clients}: point failed: ${message}`);
          }
        });
      }
    }
    const ours = clusters.find((c) => c.system === "ours");
    if (ours !== undefined && (o.workloads === null || o.workloads.includes("overload"))) {
      try {
        overload = await runOverloadPoint(ours, o.quick ? 3 : Math.min(plan.seconds, 5), progress);
      } catch (e) {
        const message = (e instanceof Error ? e.message : String(e)).split("\n")[0];
        progress.finish(`failed: ${message}`);
        notes.push(`kvraft overload point failed: ${message}`);
      }
    }
    for (const c of clusters) memory[c.system] = rssOf(c.members);
    for (const c of clusters) {
      progress.start(`[cluster] ${c.label} restart a follower (kill -9) until it serves`, 0, "ms");
      try {
        restarts[c.system] = await c.restartFollower();
        progress.finish(`${Math.round(restarts[c.system])} ms`);
      } catch (e) {
        progress.finish(`failed: ${(e as Error).message.split("\n")[0]}`);
        notes.push(`${c.label}: restart measurement failed: ${(e as Error).message.split("\n")[0]}`);
      }
    }
  } finally {
    for (const c of clusters) await c.stop();
  }

  const systems = clusters.map((c) => c.system);
  const labelOf = (s: string) => clusters.find((c) => c.system === s)?.label ?? s;
  const select = (s: string, path: ClientPath, w: string, n: number) => points.filter((p) => p.system === s && p.path === path && p.workload === w && p.clients === n);
  const pathsOf = (s: string) => plan.paths.filter((p) => points.some((q) => q.system === s && q.path === p));
  const tables: string[] = [];
  for (const s of systems) {
    for (const path of pathsOf(s)) {
      const rows: string[][] = [];
      for (const w of plan.workloads) {
        for (const n of plan.clients) {
          const ps = select(s, path, w, n);
          if (!ps.length) continue;
          const ms = (pick: (p: PointRun) => number) => formatSummary(summaryOf(ps, pick), formatMillis);
          const cores = ps[0].serverCores.map((_, i) => summaryOf(ps, (p) => p.serverCores[i])?.median ?? NaN);
          rows.push([
            w,
            String(n),
            formatSummary(summaryOf(ps, (p) => p.opsPerSec)),
            ms((p) => p.latency.p50),
            ms((p) => p.latency.p99),
            ms((p) => p.latency.p999),
            String(ps.reduce((a, p) => a + p.errors, 0)),
            cores.map((c) => c.toFixed(2)).join("+"),
            formatCount(summaryOf(ps, (p) => p.leaderCpuMicrosPerOp)?.median ?? NaN),
            formatCount(summaryOf(ps, (p) => p.clusterCpuMicrosPerOp)?.median ?? NaN),
            (summaryOf(ps, (p) => p.generatorCores)?.median ?? NaN).toFixed(2),
            formatCount(summaryOf(ps, (p) => p.generatorCpuMicrosPerOp)?.median ?? NaN),
          ]);
        }
      }
      tables.push(
        `${labelOf(s)} through ${PATH_LABEL[path]} (3 members, requests to the leader)\n` +
          renderTable(
            [
              { header: "workload" },
              { header: "clients", align: "right" },
              { header: "ops/s", align: "right" },
              { header: "p50 ms", align: "right" },
              { header: "p99 ms", align: "right" },
              { header: "p99.9 ms", align: "right" },
              { header: "errors", align: "right" },
              { header: "server cores (each)", align: "right" },
              { header: "leader µs/op", align: "right" },
              { header: "cluster µs/op", align: "right" },
              { header: "gen cores", align: "right" },
              { header: "gen µs/op", align: "right" },
            ],
            rows,
          ),
      );
    }
  }
  if (systems.includes("ours") && systems.includes("etcd")) {
    // Like against like: hand-made HTTP/1.1 against etcd's gateway, each client library against etcd3.
    const pairs = pathsOf("ours").flatMap((ours) => {
      const theirs: ClientPath = ours === "http1" ? "http1" : "etcd3";
      return pathsOf("etcd").includes(theirs) ? [[ours, theirs] as const] : [];
    });
    const rows: string[][] = [];
    for (const [ourPath, etcdPath] of pairs) {
      for (const w of plan.workloads) {
        for (const n of plan.clients) {
          const [ours, etcd] = [select("ours", ourPath, w, n), select("etcd", etcdPath, w, n)];
          if (!ours.length || !etcd.length) continue;
          const t = [summaryOf(ours, (p) => p.opsPerSec), summaryOf(etcd, (p) => p.opsPerSec)];
          const p50 = [summaryOf(ours, (p) => p.latency.p50), summaryOf(etcd, (p) => p.latency.p50)];
          const p99 = [summaryOf(ours, (p) => p.latency.p99), summaryOf(etcd, (p) => p.latency.p99)];
          const cpu = [summaryOf(ours, (p) => p.leaderCpuMicrosPerOp), summaryOf(etcd, (p) => p.leaderCpuMicrosPerOp)];
          const gen = [summaryOf(ours, (p) => p.generatorCpuMicrosPerOp), summaryOf(etcd, (p) => p.generatorCpuMicrosPerOp)];
          rows.push([
            `${ourPath} vs ${etcdPath}`,
            w,
            String(n),
            formatSummary(t[0]),
            formatSummary(t[1]),
            formatRatio(ratio(t[0], t[1])),
            formatRatio(ratio(p50[0], p50[1])),
            formatRatio(ratio(p99[0], p99[1])),
            formatRatio(ratio(cpu[0], cpu[1])),
            formatRatio(ratio(gen[0], gen[1])),
          ]);
        }
      }
    }
    tables.push(
      "ours vs etcd, each through its own client (throughput ratio > 1 is better; latency and CPU ratios < 1 are better)\n" +
        renderTable(
          [
            { header: "paths" },
            { header: "workload" },
            { header: "clients", align: "right" },
            { header: "kvraft ops/s", align: "right" },
            { header: "etcd ops/s", align: "right" },
            { header: "throughput ours/etcd", align: "right" },
            { header: "p50 ours/etcd", align: "right" },
            { header: "p99 ours/etcd", align: "right" },
            { header: "leader CPU/op ours/etcd", align: "right" },
            { header: "gen CPU/op ours/etcd", align: "right" },
          ],
          rows,
        ),
    );
  }
  if (overload !== null) tables.push(overload.table);
  for (const s of systems) {
    const mem = memory[s] ?? [];
    if (idle[s]) notes.push(`${labelOf(s)}: idle CPU per member with no load ${idle[s].map((x) => x.toFixed(3)).join(" + ")} cores`);
    notes.push(`${labelOf(s)}: RSS per member ${mem.map((m) => formatBytes(m.rss)).join(", ")} (peak ${mem.map((m) => formatBytes(m.peakRss)).join(", ")})`);
    if (restarts[s] !== undefined) notes.push(`${labelOf(s)}: a follower killed with SIGKILL served again (caught up) ${Math.round(restarts[s])} ms after restart`);
  }
  const categories = plan.clients.map(String);
  // One line per system, path and workload; a system's client libraries are drawn dashed.
  const seriesFor = (pick: (p: PointRun) => number) =>
    systems.flatMap((s, si) =>
      pathsOf(s).flatMap((path) =>
        plan.workloads.map((w) => ({
          name: `${labelOf(s)} ${path} ${w}`,
          color: SERIES_COLORS[si][WORKLOADS.indexOf(w)],
          dashed: path !== "http1",
          points: plan.clients.map((n) => summaryOf(select(s, path, w, n), pick)),
        })),
      ),
    );
  const subtitle = `3 members on 127.0.0.1, fsync on, ${plan.seconds} s per point (after ${plan.warmupSeconds} s unmeasured), median of ${plan.runs} run(s)`;
  const charts = [
    {
      file: "cluster-throughput.svg",
      svg: lineChart({ title: "Cluster throughput by concurrency", subtitle, xLabel: "concurrent clients", yLabel: "operations per second", categories, series: seriesFor((p) => p.opsPerSec) }),
    },
    {
      file: "cluster-latency.svg",
      svg: lineChart({
        title: "Cluster p99 latency by concurrency",
        subtitle,
        xLabel: "concurrent clients",
        yLabel: "p99 latency, ms",
        log: true,
        format: formatMillis,
        tickFormat: formatCount,
        categories,
        series: seriesFor((p) => p.latency.p99),
      }),
    },
  ];
  return {
    suite: "cluster",
    title: `Cluster: closed-loop Put/Get/mix, ${systems.map(labelOf).join(" vs ")}`,
    tables,
    notes,
    charts,
    data: { plan, points, restartsMs: restarts, memory, idleCores: idle, overload: overload?.runs ?? null },
  };
}

/** Blues for ours, oranges for etcd; one shade per workload. */
const SERIES_COLORS = [
  ["#1f4fa8", "#2f6fdf", "#7fa6ee"],
  ["#b5530f", "#e0782f", "#f0b07f"],
];
