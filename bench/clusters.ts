// The clusters under test in the cluster suite: three kvserver processes, or a three-member etcd,
// started on 127.0.0.1 with free ports and temp data dirs, their leader found, stopped by PID.

import * as fs from "node:fs";
import * as path from "node:path";
import type { Subprocess } from "bun";
import { HttpConnection } from "./http1.ts";
import type { Protocol } from "./loadgen.ts";
import { etcdBinary } from "./machine.ts";
import { freePorts, makeTempDir, memoryOf, removeTempDir, spawnTracked, stopChild, waitFor } from "./proc.ts";

const HOST = "127.0.0.1";
const START_TIMEOUT_MS = 30_000;
export const ROOT = path.resolve(import.meta.dir, "..");
export const KVSERVER = path.join(ROOT, "src/cli/kvserver.ts");

export interface Member {
  id: number;
  clientPort: number;
  process: Subprocess;
}

export interface Cluster {
  system: "ours" | "etcd";
  label: string;
  protocol: Protocol;
  members: Member[];
  /** The member that leads now (requests go there). */
  leader(): Promise<Member>;
  /** Kills one follower with SIGKILL, starts it again, returns ms until it serves caught up. */
  restartFollower(): Promise<number>;
  stop(): Promise<void>;
}

async function postJson(port: number, urlPath: string, body: unknown, headers = ""): Promise<{ status: number; json: Record<string, unknown> }> {
  const conn = await HttpConnection.open(HOST, port, 3_000);
  try {
    const r = await conn.post(urlPath, JSON.stringify(body), headers);
    let json: Record<string, unknown> = {};
    try {
      json = JSON.parse(r.body || "{}");
    } catch {
      // Non-JSON answers (a proxy's error page) leave json empty; status says what happened.
    }
    return { status: r.status, json };
  } finally {
    conn.close();
  }
}

/** A member that exited on its own ends the wait at once, with its status, instead of at the timeout. */
export class MemberExitedError extends Error {
  readonly code = "BENCH_MEMBER_EXITED";
  readonly fatal = true;
  constructor(what: string, id: number, status: number | null) {
    super(`${what} member ${id} exited (status ${status ?? "signal"}) before the cluster was ready`);
    this.name = "MemberExitedError";
  }
}

function assertRunning(members: Member[], what: string): void {
  for (const m of members) {
    if (m.process.exitCode !== null || m.process.signalCode !== null) throw new MemberExitedError(what, m.id, m.process.exitCode);
  }
}

export function rssOf(members: Member[]): { rss: number; peakRss: number }[] {
  return members.map((m) => memoryOf(m.process.pid) ?? { rss: 0, peakRss: 0 });
}

// ---------------------------------------------------------------------------------------------
// etcd

export async function startEtcd(size = 3): Promise<Cluster> {
  const bin = etcdBinary();
  if (!bin) throw new Error("etcd is not on PATH (Debian: apt-get install etcd-server)");
  const ports = await freePorts(size * 2);
  const root = makeTempDir("etcd");
  const token = `bench-${process.pid}-${Date.now()}`;
  const peerUrl = (i: number) => `http://${HOST}:${ports[size + i]}`;
  const initialCluster = Array.from({ length: size }, (_, i) => `e${i}=${peerUrl(i)}`).join(",");
  const spawnMember = (i: number, state: "new" | "existing") =>
    spawnTracked(
      [
        bin,
        `--name=e${i}`,
        `--data-dir=${path.join(root, `e${i}`)}`,
        `--listen-client-urls=http://${HOST}:${ports[i]}`,
        `--advertise-client-urls=http://${HOST}:${ports[i]}`,
        `--listen-peer-urls=${peerUrl(i)}`,
        `--initial-advertise-peer-urls=${peerUrl(i)}`,
        `--initial-cluster=${initialCluster}`,
        `--initial-cluster-state=${state}`,
        `--initial-cluster-token=${token}`,
        "--logger=zap",
        "--log-level=warn",
      ],
      { output: path.join(root, `e${i}.log`) },
    );
  const members: Member[] = Array.from({ length: size }, (_, i) => ({ id: i, clientPort: ports[i], process: spawnMember(i, "new") }));
  const status = async (m: Member) => {
    const r = await postJson(m.clientPort, "/v3/maintenance/status", {});
    const header = r.json.header as { member_id?: string } | undefined;
    return { memberId: header?.member_id ?? "", leader: String(r.json.leader ?? "0"), raftIndex: Number(r.json.raftIndex ?? 0) };
  };
  const leader = async () =>
    waitFor("an etcd leader", START_TIMEOUT_MS, async () => {
      assertRunning(members, "etcd");
      for (const m of members) {
        const s = await status(m).catch(() => null);
        if (s && s.leader !== "0" && s.leader === s.memberId) return m;
      }
      return null;
    });
  const cluster: Cluster = {
    system: "etcd",
    label: "etcd",
    protocol: "etcd",
    members,
    leader,
    async restartFollower() {
      const lead = await leader();
      const target = members.find((m) => m !== lead)!;
      const before = await status(lead);
      target.process.kill("SIGKILL");
      await target.process.exited;
      const t0 = performance.now();
      target.process = spawnMember(target.id, "existing");
      await waitFor("the restarted etcd member", START_TIMEOUT_MS, async () => {
        const s = await status(target).catch(() => null);
        if (!s || s.leader === "0" || s.raftIndex < before.raftIndex) return null;
        // Serving means answering a linearizable read, not only a status call.
        const r = await postJson(target.clientPort, "/v3/kv/range", { key: Buffer.from("probe").toString("base64") });
        return r.status === 200 ? true : null;
      });
      return performance.now() - t0;
    },
    async stop() {
      await Promise.all(members.map((m) => stopChild(m.process)));
      removeTempDir(root);
    },
  };
  return leaderOrStop(cluster, members.map((m) => path.join(root, `e${m.id}.log`)), "etcd");
}

/** Returns the cluster once it has a leader; otherwise stops it and throws with its members' logs. */
async function leaderOrStop(cluster: Cluster, logFiles: string[], what: string): Promise<Cluster> {
  try {
    await cluster.leader();
    return cluster;
  } catch (e) {
    const logs = logFiles.map((file) => readTail(file)).join("\n");
    await cluster.stop();
    throw new Error(`${(e as Error).message}\n${what} logs:\n${logs}`);
  }
}

function readTail(file: string, bytes = 1500): string {
  try {
    const text = fs.readFileSync(file, "utf8");
    return text.slice(-bytes);
  } catch {
    return `(no log at ${file})`;
  }
}

// ---------------------------------------------------------------------------------------------
// kvraft

/** Why the kvraft cluster cannot run yet, or null. */
export function kvserverMissing(): string | null {
  return fs.existsSync(KVSERVER) ? null : "src/cli/kvserver.ts does not exist yet (server not landed)";
}

interface KvStatus {
  id: number;
  state: string;
  lastApplied: number;
  commitIndex: number;
}

export async function kvStatus(port: number): Promise<KvStatus> {
  const r = await postJson(port, "/kvraftpb.KVService/GetStatus", {}, "Connect-Protocol-Version: 1\r\n");
  if (r.status !== 200) throw new Error(`GetStatus on port ${port}: HTTP ${r.status}`);
  return {
    id: Number(r.json.id ?? 0),
    state: String(r.json.state ?? ""),
    lastApplied: Number(r.json.lastApplied ?? 0),
    commitIndex: Number(r.json.commitIndex ?? 0),
  };
}

export interface KvraftOptions {
  /** false starts every kvserver with --no-fast-lane. */
  fastLane?: boolean;
  /** Write a CPU profile of every member (bun --cpu-prof) into this directory when it exits. */
  cpuProfDir?: string;
}

export async function startKvraft(size = 3, options: KvraftOptions = {}): Promise<Cluster> {
  const missing = kvserverMissing();
  if (missing) throw new Error(missing);
  const ports = await freePorts(size);
  const root = makeTempDir("kvraft");
  const addrs = ports.map((p) => `${HOST}:${p}`).join(",");
  // Peers authenticated as by default (a shared secret: one handshake per connection, nothing per message).
  const secretFile = path.join(root, "peer-secret");
  fs.writeFileSync(secretFile, `${crypto.randomUUID()}\n`, { mode: 0o600 });
  const extra = ["--peer-secret-file", secretFile, ...(options.fastLane === false ? ["--no-fast-lane"] : [])];
  const spawnMember = (i: number) =>
    spawnTracked([process.execPath, ...(options.cpuProfDir ? ["--cpu-prof", `--cpu-prof-dir=${options.cpuProfDir}`] : []), KVSERVER, "-id", String(i), "-addrs", addrs, "-db", path.join(root, `n${i}`), ...extra], {
      cwd: ROOT,
      output: path.join(root, `n${i}.log`),
    });
  const members: Member[] = Array.from({ length: size }, (_, i) => ({ id: i, clientPort: ports[i], process: spawnMember(i) }));
  const leader = async () =>
    waitFor("a kvraft leader", START_TIMEOUT_MS, async () => {
      assertRunning(members, "kvserver");
      for (const m of members) {
        const s = await kvStatus(m.clientPort).catch(() => null);
        if (s?.state === "Leader") return m;
      }
      return null;
    });
  const cluster: Cluster = {
    system: "ours",
    label: options.fastLane === false ? "kvraft (no fast lane)" : "kvraft",
    protocol: "kvraft",
    members,
    leader,
    async restartFollower() {
      const lead = await leader();
      const target = members.find((m) => m !== lead)!;
      const before = await kvStatus(lead.clientPort);
      target.process.kill("SIGKILL");
      await target.process.exited;
      const t0 = performance.now();
      target.process = spawnMember(target.id);
      await waitFor("the restarted kvserver to catch up", START_TIMEOUT_MS, async () => {
        const s = await kvStatus(target.clientPort).catch(() => null);
        return s && s.lastApplied >= before.commitIndex ? true : null;
      });
      return performance.now() - t0;
    },
    async stop() {
      await Promise.all(members.map((m) => stopChild(m.process)));
      removeTempDir(root);
    },
  };
  return leaderOrStop(cluster, members.map((m) => path.join(root, `n${m.id}.log`)), "kvserver");
}
