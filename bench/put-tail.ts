// What the slow single-client Puts are: a 3-node kvraft cluster with KVRAFT_TRACE_DIR set (each
// node writes a timeline: log fsyncs and saves, zero fills, segment rollovers, applies, state
// machine flushes, LSM jobs, event-loop stalls; src/util/trace.ts), one Clerk doing sequential
// Puts, and each Put slower than --slow-ms matched with what every node was doing meanwhile.
// Then the same client count against etcd, with etcd's own WAL fsync histogram beside its tail.
// Usage: bun bench/put-tail.ts [--puts N] [--slow-ms M] [--path clerk-h2|clerk-grpc] [--no-etcd]
// A tool, not a suite.

import * as fs from "node:fs";
import * as path from "node:path";
import { startEtcd, startKvraft } from "./clusters.ts";
import { type ClientPath, openNativeClient } from "./native-clients.ts";
import { killAllChildren, makeTempDir, removeTempDir } from "./proc.ts";

const args = process.argv.slice(2);
const arg = (name: string, fallback: string) => (args.includes(name) ? args[args.indexOf(name) + 1]! : fallback);
const puts = Math.min(Number(arg("--puts", "3000")), 100_000);
const slowMs = Number(arg("--slow-ms", "3"));
const clientPath = arg("--path", "clerk-h2") as Exclude<ClientPath, "http1">;
const withEtcd = !args.includes("--no-etcd");
const MAX_SECONDS = 120;

interface Event {
  k: string;
  t: number;
  ms: number;
  d?: number | string;
}
interface Put {
  t: number;
  ms: number;
  /** Harness event-loop lateness seen around this Put (ms). */
  clientStall: number;
}

const wallNow = () => performance.timeOrigin + performance.now();
const quantile = (sorted: number[], q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;

/** Sequential Puts of 100-byte values, bounded by count and time; the harness's own stalls noted. */
async function runPuts(put: (key: string, value: string) => Promise<void>, tag: string): Promise<Put[]> {
  const value = "v".repeat(100);
  for (let i = 0; i < 300; i++) await put(`${tag}-warm-${i}`, value);
  const out: Put[] = [];
  const deadline = Date.now() + MAX_SECONDS * 1000;
  for (let i = 0; i < puts && Date.now() < deadline; i++) {
    // A zero-delay timer measures how late this process's loop is before the Put starts.
    const before = wallNow();
    await new Promise((r) => setImmediate(r));
    const clientStall = wallNow() - before;
    const t = wallNow();
    await put(`${tag}-${i % 10_000}`, value);
    out.push({ t, ms: wallNow() - t, clientStall });
  }
  return out;
}

function summary(label: string, samples: Put[]): void {
  const sorted = samples.map((s) => s.ms).sort((a, b) => a - b);
  console.log(`${label}: ${samples.length} Puts, p50 ${quantile(sorted, 0.5).toFixed(2)} ms, p90 ${quantile(sorted, 0.9).toFixed(2)}, p99 ${quantile(sorted, 0.99).toFixed(2)}, max ${sorted.at(-1)!.toFixed(2)}`);
}

function readTrace(dir: string, pid: number): Event[] {
  const file = path.join(dir, `trace-${pid}.jsonl`);
  if (!fs.existsSync(file)) return [];
  return fs.readFileSync(file, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l) as Event);
}

function overlap(e: Event, from: number, to: number): number {
  return Math.max(0, Math.min(e.t + e.ms, to) - Math.max(e.t, from));
}

function distribution(events: Event[], kind: string): string {
  const ms = events.filter((e) => e.k === kind).map((e) => e.ms).sort((a, b) => a - b);
  if (ms.length === 0) return `${kind} none`;
  return `${kind} n ${ms.length} p50 ${quantile(ms, 0.5).toFixed(2)} p99 ${quantile(ms, 0.99).toFixed(2)} max ${ms.at(-1)!.toFixed(2)} ms`;
}

// Which node event explains a slow Put: the kinds below, at least this long, overlapping it.
const NOTABLE: Record<string, number> = {
  fsync: 2,
  stall: 2,
  zerofill: 0,
  "zerofill-sync": 0,
  spare: 0,
  rollover: 0,
  "sm-flush": 0,
  "lsm-flush": 0,
  "lsm-compact": 0,
  "write-sync": 1,
};

async function kvraft(): Promise<void> {
  const traceDir = makeTempDir("put-tail");
  process.env.KVRAFT_TRACE_DIR = traceDir;
  const cluster = await startKvraft(3);
  delete process.env.KVRAFT_TRACE_DIR;
  try {
    const leader = await cluster.leader();
    const client = await openNativeClient(clientPath, cluster.members.map((m) => m.clientPort), leader.clientPort, 1);
    const samples = await runPuts((k, v) => client.put(k, v), "pt");
    client.close();
    await Bun.sleep(1200); // the nodes write their traces every 500 ms
    summary(`kvraft ${clientPath}`, samples);
    const nodes = cluster.members.map((m) => ({ name: `${m === leader ? "L" : "F"}${m.id}`, events: readTrace(traceDir, m.process.pid) }));
    const from = samples[0]!.t;
    const to = samples.at(-1)!.t + samples.at(-1)!.ms;
    for (const n of nodes) {
      const inWindow = n.events.filter((e) => e.t + e.ms >= from && e.t <= to);
      console.log(`  ${n.name}: ${["fsync", "save", "apply", "apply-overlap", "apply-early", "stall", "kv-batch", "kv"].map((k) => distribution(inWindow, k)).join("; ")}`);
      const rare = Object.keys(NOTABLE).filter((k) => !["fsync", "stall"].includes(k));
      const counts = rare.map((k) => `${k} ${inWindow.filter((e) => e.k === k).length}`).join(", ");
      console.log(`     background in window: ${counts}`);
    }
    // The leader's early applies (before its own write synced): how much sooner each one answered.
    const leaderEvents = nodes.find((n) => n.name.startsWith("L"))?.events ?? [];
    const saves = leaderEvents.filter((e) => e.k === "save" && e.t >= from && e.t <= to);
    const early = leaderEvents.filter((e) => e.k === "apply-early" && e.t >= from && e.t <= to);
    const gains: number[] = [];
    for (const a of early) {
      const save = saves.find((sv) => sv.t <= a.t && sv.t + sv.ms >= a.t);
      if (save) gains.push(save.t + save.ms - a.t);
    }
    gains.sort((a, b) => a - b);
    console.log(
      `  leader: ${early.length} early applies in ${samples.length} Puts` +
        (gains.length > 0 ? `; ahead of its own sync by p50 ${quantile(gains, 0.5).toFixed(2)} ms, p90 ${quantile(gains, 0.9).toFixed(2)}, p99 ${quantile(gains, 0.99).toFixed(2)}, max ${gains.at(-1)!.toFixed(2)}` : ""),
    );
    // The slowest 1% and every Put over slowMs, each with its overlapping notable events.
    const sorted = [...samples].sort((a, b) => b.ms - a.ms);
    const worst = sorted.filter((s, i) => i < Math.ceil(samples.length / 100) || s.ms > slowMs);
    const causes = new Map<string, { n: number; ms: number }>();
    const lines: string[] = [];
    for (const s of worst) {
      const tags: string[] = [];
      const seen = new Set<string>();
      for (const n of nodes) {
        for (const e of n.events) {
          const min = NOTABLE[e.k];
          if (min === undefined || e.ms < min) continue;
          const o = overlap(e, s.t, s.t + s.ms);
          if (o <= 0) continue;
          tags.push(`${n.name}:${e.k} ${e.ms.toFixed(1)}${e.d !== undefined ? `(${e.d})` : ""}`);
          const key = `${n.name[0]}:${e.k}`;
          if (!seen.has(key)) {
            seen.add(key);
            const c = causes.get(key) ?? { n: 0, ms: 0 };
            c.n++;
            c.ms += o;
            causes.set(key, c);
          }
        }
      }
      if (s.clientStall > 2) tags.push(`client stall ${s.clientStall.toFixed(1)}`);
      if (tags.length === 0) {
        const c = causes.get("(none seen)") ?? { n: 0, ms: 0 };
        c.n++;
        c.ms += s.ms;
        causes.set("(none seen)", c);
      }
      lines.push(`  ${s.ms.toFixed(2)} ms at +${((s.t - from) / 1000).toFixed(3)} s: ${tags.join(", ") || "-"}`);
    }
    console.log(`slowest 1% and every Put > ${slowMs} ms (${worst.length}):`);
    for (const l of lines.slice(0, 40)) console.log(l);
    console.log(`cause (L leader, F either follower) → Puts among those ${worst.length} → mean ms of overlap`);
    for (const [k, c] of [...causes].sort((a, b) => b[1].n - a[1].n)) console.log(`  ${k.padEnd(18)} ${String(c.n).padStart(4)}  ${(c.ms / c.n).toFixed(2)}`);
  } finally {
    await cluster.stop();
    removeTempDir(traceDir);
  }
}

async function scrapeHistogram(port: number, base: string): Promise<Map<number, number>> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const out = new Map<number, number>();
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${base}_bucket{`)) continue;
    const le = /le="([^"]+)"/.exec(line)?.[1];
    out.set(le === "+Inf" ? Infinity : Number(le), Number(line.slice(line.lastIndexOf(" ") + 1)));
  }
  return out;
}

function bucketSummary(after: Map<number, number>, before: Map<number, number>): string {
  const rows = [...after].map(([le, c]) => [le, c - (before.get(le) ?? 0)] as const).sort((a, b) => a[0] - b[0]);
  const total = rows.at(-1)?.[1] ?? 0;
  if (total === 0) return "no samples";
  const q = (p: number) => rows.find(([, c]) => c >= p * total)?.[0] ?? NaN;
  return `n ${total}, p50 ≤ ${(q(0.5) * 1000).toFixed(1)} ms, p99 ≤ ${(q(0.99) * 1000).toFixed(1)} ms`;
}

async function etcd(): Promise<void> {
  const cluster = await startEtcd(3);
  try {
    const leader = await cluster.leader();
    const client = await openNativeClient("etcd3", cluster.members.map((m) => m.clientPort), leader.clientPort, 1);
    const before = await Promise.all(cluster.members.map((m) => scrapeHistogram(m.clientPort, "etcd_disk_wal_fsync_duration_seconds")));
    const samples = await runPuts((k, v) => client.put(k, v), "pt");
    const after = await Promise.all(cluster.members.map((m) => scrapeHistogram(m.clientPort, "etcd_disk_wal_fsync_duration_seconds")));
    client.close();
    summary("etcd etcd3", samples);
    for (const [i, m] of cluster.members.entries()) {
      console.log(`  ${m === leader ? "L" : "F"}${m.id} WAL fsync: ${bucketSummary(after[i]!, before[i]!)}`);
    }
    const slow = samples.filter((s) => s.ms > slowMs).length;
    console.log(`  Puts > ${slowMs} ms: ${slow}`);
  } finally {
    await cluster.stop();
  }
}

try {
  await kvraft();
  if (withEtcd) await etcd();
} finally {
  killAllChildren();
}
