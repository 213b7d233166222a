// The catchup suite: how fast a follower that fell behind the compacted log catches up by a
// streamed InstallSnapshot, and how much memory that takes. Three real kvserver processes; one
// follower is stopped, N keys are written, the leader compacts, the follower restarts and is timed
// until it has applied the leader's commit index. Snapshot bytes are counted by the receiver.

import * as fs from "node:fs";
import * as path from "node:path";
import type { Subprocess } from "bun";
import type { BenchOptions } from "./args.ts";
import { createConnectTransport } from "@connectrpc/connect-node";
import { Clerk } from "../src/kv/client.ts";
import { KVSERVER, ROOT, kvStatus, kvserverMissing } from "./clusters.ts";
import { preloadKey } from "./loadgen.ts";
import { cpuSeconds, freePorts, makeTempDir, memoryOf, removeTempDir, sleep, spawnTracked, stopChild, waitFor } from "./proc.ts";
import type { Progress } from "./progress.ts";
import type { SuiteResult } from "./report.ts";
import { summarize } from "./stats.ts";
import { formatBytes, formatSummary, renderTable } from "./table.ts";

const HOST = "127.0.0.1";
const VALUE_BYTES = 100;
/** Per pair in a version-3 stream beyond key and value: two u32 lengths and the 24-byte revision header. */
const PAIR_OVERHEAD_BYTES = 8 + 24;
/** Entries past the compaction point before the leader compacts: low, so the follower falls behind. */
const SNAPSHOT_THRESHOLD = 1_000;
/** Puts (one entry each) written while the follower is down before every timed restart. */
const NUDGE_KEYS = 4 * SNAPSHOT_THRESHOLD;
/** Puts per Txn while loading (the server's default maxTxnOps is 128), and Txns in flight. */
const LOAD_TXN_PUTS = 128;
const LOAD_IN_FLIGHT = 16;
const LOAD_ATTEMPTS = 5;
const START_TIMEOUT_MS = 30_000;
const CATCHUP_TIMEOUT_MS = 300_000;
const POLL_MS = 50;

export interface CatchupRun {
  keys: number;
  /** Bytes of snapshot stream the follower read in this catch-up. */
  snapshotBytes: number;
  /** The state's logical size: what it takes as pairs (a version-3 stream), whatever the wire carried. */
  stateBytes: number;
  /** From spawning the follower to applied ≥ the leader's commit index. */
  totalMs: number;
  /** From the first snapshot byte seen (polled) to caught up: the transfer and install alone. */
  transferMs: number;
  /** From the first to the last snapshot byte seen (polled): the stream alone. */
  streamMs: number;
  /** Receiver's peak RSS (VmHWM) over its whole life, and its RSS once caught up. */
  peakRss: number;
  rssAfter: number;
  /** MB/s (10^6 bytes) of state over the transfer window and over the whole catch-up. */
  transferMBps: number;
  /** MB/s of snapshot stream (wire bytes) over the transfer window. */
  wireMBps: number;
  totalMBps: number;
  keysPerSec: number;
  /** CPU seconds (user + system) from the first snapshot byte seen to caught up: receiver, leader. */
  receiverCpu: number;
  leaderCpu: number;
}

interface Node {
  id: number;
  port: number;
  process: Subprocess | null;
}

async function metric(port: number, name: string): Promise<number> {
  const r = await fetch(`http://${HOST}:${port}/metrics`);
  const text = await r.text();
  const m = text.match(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, "m"));
  return m ? Number(m[1]) : 0;
}

/** Writes keys 0..count-1 as Txns of LOAD_TXN_PUTS puts each, LOAD_IN_FLIGHT at a time: the bulk path. */
async function load(ports: number[], count: number): Promise<number> {
  const clerk = new Clerk({
    addrs: ports.map((p) => `${HOST}:${p}`),
    transport: (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true }),
    maxConcurrency: LOAD_IN_FLIGHT,
  });
  // Half text, half bytes of a per-key generator: as compressible as ordinary data, no more (one
  // value repeated for every key would let the tables' LZ4 shrink the files several times over).
  const valueOf = (key: number): Uint8Array => {
    const value = new Uint8Array(VALUE_BYTES);
    let x = (key + 1) * 0x9e3779b1;
    for (let i = 0; i < VALUE_BYTES; i++) {
      x = (x ^ (x << 13)) >>> 0;
      x = (x ^ (x >>> 17)) >>> 0;
      x = (x ^ (x << 5)) >>> 0;
      value[i] = i < VALUE_BYTES / 2 ? 97 + (x % 26) : x & 0xff;
    }
    return value;
  };
  const encoder = new TextEncoder();
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const from = next;
      next = Math.min(count, next + LOAD_TXN_PUTS);
      const success = [];
      for (let i = from; i < next; i++) success.push({ request: { case: "requestPut" as const, value: { key: encoder.encode(preloadKey(i)), value: valueOf(i) } } });
      // A loaded machine may change leaders mid-load; the puts are idempotent, so a Txn the Clerk
      // gave up on is sent again, a bounded number of times.
      for (let attempt = 1; ; attempt++) {
        try {
          await clerk.txn({ success });
          break;
        } catch (error) {
          if (attempt >= LOAD_ATTEMPTS) throw error;
        }
      }
    }
  };
  const t0 = performance.now();
  // The Clerk holds no sockets past its calls' HTTP/2 sessions, which close when idle.
  await Promise.all(Array.from({ length: LOAD_IN_FLIGHT }, worker));
  return (performance.now() - t0) / 1000;
}

export async function runCatchupSuite(o: BenchOptions, progress: Progress): Promise<SuiteResult> {
  const missing = kvserverMissing();
  if (missing) throw new Error(missing);
  const keys = o.lsmKeys ?? (o.quick ? 30_000 : 300_000);
  const runs = o.runs;
  const ports = await freePorts(3);
  const root = makeTempDir("catchup");
  const secretFile = path.join(root, "peer-secret");
  fs.writeFileSync(secretFile, `${crypto.randomUUID()}\n`, { mode: 0o600 });
  const addrs = ports.map((p) => `${HOST}:${p}`).join(",");
  const nodes: Node[] = ports.map((port, id) => ({ id, port, process: null }));
  const spawn = (n: Node, profile: boolean) => {
    const prof = profile && o.cpuProf ? ["--cpu-prof", `--cpu-prof-dir=${path.resolve(o.cpuProf)}`] : [];
    n.process = spawnTracked(
      [process.execPath, ...prof, KVSERVER, "-id", String(n.id), "-addrs", addrs, "-db", path.join(root, `n${n.id}`), "--peer-secret-file", secretFile, "--snapshot-threshold", String(SNAPSHOT_THRESHOLD), ...(o.snapshotFormat ? ["--snapshot-format", o.snapshotFormat] : [])],
      { cwd: ROOT, output: path.join(root, `n${n.id}.log`) },
    );
  };
  const leaderOf = () =>
    waitFor("a kvraft leader", START_TIMEOUT_MS, async () => {
      for (const n of nodes) {
        if (n.process === null) continue;
        const s = await kvStatus(n.port).catch(() => null);
        if (s?.state === "Leader") return n;
      }
      return null;
    });
  // Single-entry puts through a Clerk, which follows a leader change (a loaded machine has them).
  const nudge = async (count: number) => {
    const clerk = new Clerk({
      addrs: nodes.filter((n) => n.process !== null).map((n) => `${HOST}:${n.port}`),
      transport: (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true }),
      maxConcurrency: 64,
      batch: false,
    });
    const value = "n".repeat(VALUE_BYTES);
    let next = 0;
    const worker = async () => {
      while (next < count) await clerk.put(preloadKey(next++), value);
    };
    await Promise.all(Array.from({ length: 64 }, worker));
  };

  const results: CatchupRun[] = [];
  try {
    for (const n of nodes) spawn(n, true);
    let leader = await leaderOf();
    let follower = nodes.find((n) => n !== leader)!;
    let behind = (await kvStatus(follower.port)).lastApplied;
    await stopChild(follower.process!);
    follower.process = null;
    progress.start(`[catchup] load ${keys} keys (Txns of ${LOAD_TXN_PUTS} puts, follower ${follower.id} down)`, 0, "ms");
    const seconds = await load(nodes.filter((n) => n.process !== null).map((n) => n.port), keys);
    progress.finish(`${keys} keys in ${seconds.toFixed(1)} s`);
    for (let run = 0; run < runs; run++) {
      if (run > 0) {
        // The same follower again, now holding the full state: it falls behind and gets the whole image again.
        leader = await leaderOf();
        follower = nodes.find((n) => n !== leader)!;
        behind = (await kvStatus(follower.port)).lastApplied;
        await stopChild(follower.process!);
        follower.process = null;
      }
      // Single-entry puts so the log moves well past the threshold and the leader compacts.
      await nudge(NUDGE_KEYS);
      leader = await leaderOf();
      const before = await kvStatus(leader.port);
      await waitFor("the leader to compact its log", START_TIMEOUT_MS, async () => ((await metric(leader.port, "kvraft_raft_snapshot_index")) > behind ? true : null));
      const bytesBefore = 0; // a fresh process: its counter starts at 0
      progress.start(`[catchup] run ${run + 1}/${runs}: follower ${follower.id} catching up to index ${before.commitIndex}`, 0, "ms");
      const t0 = performance.now();
      spawn(follower, run === runs - 1);
      let firstByteAt = 0;
      let receiverCpuAt = 0;
      let leaderCpuAt = 0;
      let lastByteAt = 0;
      let lastBytes = 0;
      let peak = 0;
      const target = follower;
      await waitFor("the follower to catch up", CATCHUP_TIMEOUT_MS, async () => {
        if (target.process!.exitCode !== null) throw new Error(`follower ${target.id} exited with status ${target.process!.exitCode}`);
        peak = Math.max(peak, memoryOf(target.process!.pid)?.peakRss ?? 0);
        const b = await metric(target.port, "kvraft_raft_snapshot_received_bytes_total").catch(() => 0);
        if (b > bytesBefore && firstByteAt === 0) {
          firstByteAt = performance.now();
          receiverCpuAt = cpuSeconds(target.process!.pid) ?? 0;
          leaderCpuAt = cpuSeconds(leader.process!.pid) ?? 0;
        }
        if (b > lastBytes) {
          lastBytes = b;
          lastByteAt = performance.now();
        }
        const s = await kvStatus(target.port).catch(() => null);
        await sleep(POLL_MS);
        return s && s.lastApplied >= before.commitIndex ? true : null;
      });
      const doneAt = performance.now();
      const receiverCpu = (cpuSeconds(target.process!.pid) ?? 0) - receiverCpuAt;
      const leaderCpu = (cpuSeconds(leader.process!.pid) ?? 0) - leaderCpuAt;
      const mem = memoryOf(target.process!.pid);
      const snapshotBytes = (await metric(target.port, "kvraft_raft_snapshot_received_bytes_total")) - bytesBefore;
      if (snapshotBytes === 0) throw new Error("the follower caught up without a snapshot: the leader did not compact past it");
      const stateBytes = keys * (PAIR_OVERHEAD_BYTES + 16 + VALUE_BYTES);
      const totalMs = doneAt - t0;
      const transferMs = doneAt - (firstByteAt || t0);
      const r: CatchupRun = {
        keys: keys + NUDGE_KEYS,
        streamMs: (lastByteAt || doneAt) - (firstByteAt || t0),
        snapshotBytes,
        stateBytes,
        totalMs,
        transferMs,
        peakRss: Math.max(peak, mem?.peakRss ?? 0),
        rssAfter: mem?.rss ?? 0,
        transferMBps: stateBytes / 1e6 / (transferMs / 1000),
        wireMBps: snapshotBytes / 1e6 / (transferMs / 1000),
        totalMBps: stateBytes / 1e6 / (totalMs / 1000),
        keysPerSec: keys / (transferMs / 1000),
        receiverCpu,
        leaderCpu,
      };
      results.push(r);
      progress.finish(`${formatBytes(stateBytes)} of state (${formatBytes(snapshotBytes)} streamed) in ${(transferMs / 1000).toFixed(2)} s (stream ${(r.streamMs / 1000).toFixed(2)} s) (${r.transferMBps.toFixed(1)} MB/s; CPU receiver ${receiverCpu.toFixed(2)} s, leader ${leaderCpu.toFixed(2)} s), peak RSS ${formatBytes(r.peakRss)}`);
    }
  } finally {
    await Promise.all(nodes.map((n) => (n.process ? stopChild(n.process) : Promise.resolve())));
    removeTempDir(root);
  }

  const s = (f: (r: CatchupRun) => number) => summarize(results.map(f));
  const fixed1 = (n: number) => n.toFixed(1);
  const table = renderTable(
    [{ header: "measure" }, { header: `median of ${results.length} (min–max)`, align: "right" }],
    [
      ["snapshot bytes (the wire)", formatSummary(s((r) => r.snapshotBytes), formatBytes)],
      ["state bytes (as pairs)", formatSummary(s((r) => r.stateBytes), formatBytes)],
      ["transfer + install (first byte → caught up)", formatSummary(s((r) => r.transferMs / 1000), (n) => `${n.toFixed(2)} s`)],
      ["MB/s of state, transfer + install", formatSummary(s((r) => r.transferMBps), fixed1)],
      ["MB/s of snapshot stream, transfer + install", formatSummary(s((r) => r.wireMBps), fixed1)],
      ["of which the stream (first → last byte seen)", formatSummary(s((r) => r.streamMs / 1000), (n) => `${n.toFixed(2)} s`)],
      ["restart → caught up", formatSummary(s((r) => r.totalMs / 1000), (n) => `${n.toFixed(2)} s`)],
      ["MB/s of state, restart → caught up", formatSummary(s((r) => r.totalMBps), fixed1)],
      ["keys/s installed", formatSummary(s((r) => r.keysPerSec))],
      ["receiver CPU, first byte → caught up", formatSummary(s((r) => r.receiverCpu), (n) => `${n.toFixed(2)} s`)],
      ["leader CPU, first byte → caught up", formatSummary(s((r) => r.leaderCpu), (n) => `${n.toFixed(2)} s`)],
      ["MB/s of state per CPU-second of the busier side", formatSummary(s((r) => r.stateBytes / 1e6 / Math.max(r.receiverCpu, r.leaderCpu, 0.01)), fixed1)],
      ["receiver peak RSS (VmHWM)", formatSummary(s((r) => r.peakRss), formatBytes)],
      ["receiver RSS once caught up", formatSummary(s((r) => r.rssAfter), formatBytes)],
    ],
  );
  return {
    suite: "catchup",
    title: `Catch-up by InstallSnapshot: 3 kvservers, ${keys.toLocaleString("en")} keys (16-byte keys, ${VALUE_BYTES}-byte values)`,
    tables: [table],
    notes: [
      "the issue's target: ≥ 100 MB/s of state transferred and installed, receiver RSS ≤ 256 MB",
      "CPU: /proc user + system time of each process over the transfer window (the leader also serves its followers); the per-CPU-second rate is what an idle machine would approach, a shared machine's wall-clock rate is lower",
      `--snapshot-threshold ${SNAPSHOT_THRESHOLD}, --snapshot-format ${o.snapshotFormat ?? "files (default)"}; before each run ${NUDGE_KEYS} single-entry puts while the follower is down, so the leader's log is compacted past it`,
      `MB is 10^6 bytes. State: the keys as pairs, ${PAIR_OVERHEAD_BYTES + 16 + VALUE_BYTES} bytes each (lengths, key, revision header, value), the size of a version-3 stream; stream: the bytes the receiver read (version 4 ships the LZ4-compressed table files). The first-byte time is polled every ~50 ms`,
      ...(o.cpuProf ? [`CPU profiles of every kvserver (the follower: its last run) written to ${o.cpuProf}`] : []),
    ],
    charts: [],
    data: results,
  };
}
