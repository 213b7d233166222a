// The raft suite: proposals committed (and applied on the leader) per second on 3 and 5 in-process
// RaftNodes on the real clock, each with a real FileLogStore (fsync) in a temp dir, linked by an
// in-process transport; 1, 16 and 256 concurrent proposers; entries per fsync from the stores.

import * as path from "node:path";
import type { BenchOptions } from "./args.ts";
import { makeTempDir, removeTempDir, sleep, waitFor } from "./proc.ts";
import type { Progress } from "./progress.ts";
import type { SuiteResult } from "./report.ts";
import { Histogram, latencyMillis, summarize, type LatencySummary, type Summary } from "./stats.ts";
import { lineChart } from "./svg.ts";
import { formatCount, formatMillis, formatSummary, renderTable } from "./table.ts";
import type { Entry, Message, NodeId, SnapshotMeta, StateMachine, Transport, TransportHandler } from "../src/raft/index.ts";

type RaftModule = typeof import("../src/raft/index.ts");
type InstallSnapshot = Extract<Message, { type: "InstallSnapshot" }>;
type InstallSnapshotResponse = Extract<Message, { type: "InstallSnapshotResponse" }>;

const RAFT_INDEX = path.resolve(import.meta.dir, "../src/raft/index.ts");
const PAYLOAD_BYTES = 100;
const MAX_PROPOSERS = 4096;

/**
 * Delivers messages between nodes of one process on the real clock. Delivery is deferred to a
 * macrotask, as a socket would be, so each side batches what arrives meanwhile into one cycle.
 */
class DirectHub {
  private readonly handlers = new Map<NodeId, TransportHandler>();
  private readonly queues = new Map<NodeId, Message[]>();
  private scheduled = false;
  messages = 0;

  transport(id: NodeId): Transport {
    const hub = this;
    return {
      send(messages: Message[]) {
        hub.route(messages);
      },
      sendSnapshot(message: InstallSnapshot, chunks: AsyncIterable<Uint8Array>): Promise<InstallSnapshotResponse> {
        const handler = hub.handlers.get(message.to);
        if (!handler) return Promise.reject(new Error(`node ${message.to} is not listening`));
        return handler.onSnapshot(message, chunks);
      },
      listen(handler: TransportHandler) {
        hub.handlers.set(id, handler);
      },
      async close() {
        hub.handlers.delete(id);
      },
    };
  }

  private route(messages: Message[]): void {
    for (const m of messages) {
      let q = this.queues.get(m.to);
      if (!q) this.queues.set(m.to, (q = []));
      q.push(m);
      this.messages++;
    }
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
  }

  private flush(): void {
    this.scheduled = false;
    const queues = [...this.queues];
    this.queues.clear();
    for (const [to, messages] of queues) this.handlers.get(to)?.onMessages(messages);
  }
}

/**
 * A state machine that keeps nothing but the applied position and wakes proposers waiting for
 * their index: the suite measures Raft and its log, not a store.
 */
class ProbeStateMachine implements StateMachine {
  private applied = 0;
  private appliedTerm = 0;
  private readonly waiters = new Map<number, () => void>();

  constructor(private readonly members: NodeId[]) {}

  async apply(entries: Entry[]): Promise<void> {
    for (const e of entries) {
      this.applied = e.index;
      this.appliedTerm = e.term;
      const w = this.waiters.get(e.index);
      if (w) {
        this.waiters.delete(e.index);
        w();
      }
    }
  }
  /** Resolves once `index` is applied here. */
  waitApplied(index: number): Promise<void> {
    if (index <= this.applied) return Promise.resolve();
    return new Promise((resolve) => this.waiters.set(index, resolve));
  }
  lastApplied(): number {
    return this.applied;
  }
  lastAppliedTerm(): number {
    return this.appliedTerm;
  }
  durableAppliedIndex(): number {
    return this.applied; // Nothing is kept, so nothing is lost: every applied index is "durable".
  }
  async sync(): Promise<number> {
    return this.applied;
  }
  async snapshot(): Promise<{ meta: SnapshotMeta; chunks: AsyncIterable<Uint8Array> }> {
    const meta = { index: this.applied, term: this.appliedTerm, members: [...this.members] };
    return { meta, chunks: (async function* () {})() };
  }
  async restore(meta: SnapshotMeta, chunks: AsyncIterable<Uint8Array>): Promise<void> {
    for await (const _ of chunks);
    this.applied = meta.index;
    this.appliedTerm = meta.term;
  }
}

interface RaftPoint {
  nodes: number;
  proposers: number;
  run: number;
  opsPerSec: number;
  latency: LatencySummary;
  errors: number;
  leaderEntriesPerFsync: number | null;
  followerEntriesPerFsync: number | null;
  cpuMicrosPerOp: number;
}

async function measure(raft: RaftModule, nodes: number, proposerCounts: number[], seconds: number, run: number, progress: Progress): Promise<RaftPoint[]> {
  const dir = makeTempDir(`raft${nodes}`);
  const ids = Array.from({ length: nodes }, (_, i) => i);
  const hub = new DirectHub();
  const stores = await Promise.all(ids.map((id) => raft.FileLogStore.open(path.join(dir, `n${id}`))));
  const machines = ids.map(() => new ProbeStateMachine(ids));
  const started: Awaited<ReturnType<RaftModule["RaftNode"]["start"]>>[] = [];
  const points: RaftPoint[] = [];
  try {
    for (const id of ids) {
      started.push(await raft.RaftNode.start({ id, peers: ids, logStore: stores[id], transport: hub.transport(id), stateMachine: machines[id] }));
    }
    progress.start(`[raft] ${nodes} nodes: electing a leader`, 0, "ms");
    const leader = await waitFor("a raft leader", 15_000, async () => started.find((n) => n.status().role === "Leader") ?? null);
    progress.finish(`node ${leader.id} leads`);
    const payload = new Uint8Array(PAYLOAD_BYTES).fill(0x61);
    for (const proposers of proposerCounts) {
      if (proposers > MAX_PROPOSERS) throw new RangeError(`at most ${MAX_PROPOSERS} proposers`);
      const before = stores.map((s) => s.stats().fsyncs);
      const beforeIndex = leader.status().lastIndex;
      const histogram = new Histogram();
      let ops = 0;
      let errors = 0;
      const label = `[raft] ${nodes} nodes, ${proposers} proposer(s)`;
      progress.start(label, seconds * 1000, "ms");
      const cpu0 = process.cpuUsage();
      const t0 = performance.now();
      const deadline = t0 + seconds * 1000;
      const ticker = setInterval(() => progress.tick(performance.now() - t0), 200);
      const proposer = async () => {
        while (performance.now() < deadline) {
          const start = performance.now();
          try {
            const { index } = await leader.propose(payload);
            await machines[leader.id].waitApplied(index);
            histogram.record((performance.now() - start) * 1000);
            ops++;
          } catch {
            // Backpressure or a lost leadership: count it and let the loop retry after a pause.
            errors++;
            await sleep(5);
          }
        }
      };
      await Promise.all(Array.from({ length: proposers }, proposer));
      clearInterval(ticker);
      const elapsed = (performance.now() - t0) / 1000;
      const cpu = process.cpuUsage(cpu0);
      const entries = leader.status().lastIndex - beforeIndex;
      const fsyncs = stores.map((s, i) => s.stats().fsyncs - before[i]);
      const followerSyncs = fsyncs.filter((_, i) => i !== leader.id).reduce((a, b) => a + b, 0);
      const point: RaftPoint = {
        nodes,
        proposers,
        run,
        opsPerSec: ops / elapsed,
        latency: latencyMillis(histogram),
        errors,
        leaderEntriesPerFsync: fsyncs[leader.id] > 0 ? entries / fsyncs[leader.id] : null,
        followerEntriesPerFsync: followerSyncs > 0 ? (entries * (nodes - 1)) / followerSyncs : null,
        cpuMicrosPerOp: ops > 0 ? (cpu.user + cpu.system) / ops : NaN,
      };
      points.push(point);
      progress.finish(
        `${formatCount(point.opsPerSec)} commits/s, p50 ${formatMillis(point.latency.p50)} ms, ${point.leaderEntriesPerFsync?.toFixed(1) ?? "?"} entries/fsync on the leader${errors ? `, ${errors} errors` : ""}`,
      );
    }
  } finally {
    for (const n of started) await n.stop();
    for (const s of stores) await s.close();
    removeTempDir(dir);
  }
  return points;
}

export async function runRaftSuite(o: BenchOptions, progress: Progress): Promise<SuiteResult> {
  const raft = (await import(RAFT_INDEX)) as RaftModule;
  const seconds = o.seconds ?? (o.quick ? 1 : 5);
  const clusterSizes = o.quick ? [3] : [3, 5];
  const proposerCounts = [1, 16, 256];
  progress.log(`[raft] in-process RaftNodes with FileLogStore (fsync), ${seconds} s per point, ${o.runs} run(s)`);
  const points: RaftPoint[] = [];
  for (let run = 0; run < o.runs; run++) {
    for (const nodes of clusterSizes) points.push(...(await measure(raft, nodes, proposerCounts, seconds, run, progress)));
  }
  const pick = (nodes: number, proposers: number, f: (p: RaftPoint) => number | null): Summary | null => {
    const v = points.filter((p) => p.nodes === nodes && p.proposers === proposers).map(f).filter((x): x is number => x !== null && Number.isFinite(x));
    return v.length ? summarize(v) : null;
  };
  const rows: string[][] = [];
  for (const nodes of clusterSizes) {
    for (const proposers of proposerCounts) {
      const ms = (f: (p: RaftPoint) => number) => formatSummary(pick(nodes, proposers, f), formatMillis);
      const num = (f: (p: RaftPoint) => number | null) => pick(nodes, proposers, f)?.median.toFixed(1) ?? "—";
      rows.push([
        String(nodes),
        String(proposers),
        formatSummary(pick(nodes, proposers, (p) => p.opsPerSec)),
        ms((p) => p.latency.p50),
        ms((p) => p.latency.p99),
        num((p) => p.leaderEntriesPerFsync),
        num((p) => p.followerEntriesPerFsync),
        formatCount(pick(nodes, proposers, (p) => p.cpuMicrosPerOp)?.median ?? NaN),
        String(points.filter((p) => p.nodes === nodes && p.proposers === proposers).reduce((a, p) => a + p.errors, 0)),
      ]);
    }
  }
  const table = renderTable(
    [
      { header: "nodes", align: "right" },
      { header: "proposers", align: "right" },
      { header: "commits/s", align: "right" },
      { header: "p50 ms", align: "right" },
      { header: "p99 ms", align: "right" },
      { header: "entries/fsync leader", align: "right" },
      { header: "entries/fsync follower", align: "right" },
      { header: "CPU µs/commit (all nodes)", align: "right" },
      { header: "errors", align: "right" },
    ],
    rows,
  );
  const chart = lineChart({
    title: "Raft: proposals committed and applied per second",
    subtitle: `in-process RaftNodes, FileLogStore with fsync, ${PAYLOAD_BYTES}-byte entries, ${seconds} s per point, median of ${o.runs} run(s)`,
    xLabel: "concurrent proposers",
    yLabel: "commits per second",
    categories: proposerCounts.map(String),
    series: clusterSizes.map((nodes) => ({ name: `${nodes} nodes`, points: proposerCounts.map((n) => pick(nodes, n, (p) => p.opsPerSec)) })),
  });
  return {
    suite: "raft",
    title: "Raft: committed proposals per second (in process, real log stores)",
    tables: [table],
    notes: [
      "a commit counts when the leader has applied the entry (majority durable with fsync); the transport is in-process (no serialization), so this is the ceiling of the Raft driver and its log store",
    ],
    charts: [{ file: "raft-throughput.svg", svg: chart }],
    data: { seconds, points },
  };
}
