// Overload against three real kvserver processes: floods of 5,000 and 20,000 concurrent raw writes
// to the leader (as many HTTP/2 streams at once), then a Clerk that writes through a flood. The
// leader must keep its leadership (same leader, same term, no leader change counted), every call
// must be answered (OK, resource_exhausted with a retry hint, or ErrTimeout; none hanging), every
// acknowledged write must read back, and the Clerk must get everything through.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as path from "node:path";
import { runBurst, type BurstConfig, type BurstSummary } from "../../bench/overload-burst.ts";
import { TestCluster } from "./harness.ts";

let cluster: TestCluster;

beforeAll(async () => {
  // The defaults, spelled out: the flags are parsed and passed through.
  cluster = await TestCluster.start({ extraArgs: ["--max-in-flight", "1024", "--max-in-flight-mb", "64"] });
});

afterAll(async () => {
  await cluster?.destroy();
});

interface Leadership {
  leader: number;
  term: number;
  /** kvraft_raft_leader_changes_total of each node. */
  changes: number[];
}

async function leadership(): Promise<Leadership> {
  const leader = await cluster.waitForLeader();
  const status = await cluster.clerk({ statusTimeoutMs: 2_000 }).getStatus();
  const terms = new Set(status.filter((s) => s.online).map((s) => Number(s.term)));
  expect(terms.size).toBe(1);
  const changes: number[] = [];
  for (const addr of cluster.addrs) {
    const text = await (await fetch(`http://${addr}/metrics`)).text();
    changes.push(Number(/^kvraft_raft_leader_changes_total\{[^}]*\} (\d+)/m.exec(text)?.[1] ?? NaN));
  }
  return { leader, term: [...terms][0]!, changes };
}

async function refusalsOf(node: number): Promise<number> {
  const text = await (await fetch(`http://${cluster.addrs[node]}/metrics`)).text();
  return Number(/^kvraft_rpc_admission_refused_total\{limit="calls"[^}]*\} (\d+)/m.exec(text)?.[1] ?? NaN);
}

function portOf(node: number): number {
  return Number(cluster.addrs[node]!.split(":")[1]);
}

/** Reads every key back through a Clerk, a few hundred at a time; returns the keys whose value differs. */
async function missing(keys: string[], value: string): Promise<string[]> {
  const clerk = cluster.clerk();
  const lost: string[] = [];
  for (let i = 0; i < keys.length; i += 500) {
    const chunk = keys.slice(i, i + 500);
    const values = await Promise.all(chunk.map((key) => clerk.get(key)));
    values.forEach((v, j) => {
      if (v !== value) lost.push(chunk[j]!);
    });
  }
  return lost;
}

function expectAllAnswered(r: Pick<BurstSummary, "hung" | "other" | "otherSamples" | "wrongLeader" | "ok" | "exhausted" | "timeouts" | "sent">): void {
  expect({ hung: r.hung, other: r.other, samples: r.otherSamples, wrongLeader: r.wrongLeader }).toEqual({ hung: 0, other: 0, samples: [], wrongLeader: 0 });
  expect(r.ok + r.exhausted + r.timeouts).toBe(r.sent);
}

/**
 * A burst from a process of its own (bench/overload-burst.ts's command line): 5,000 streams in
 * this process would starve the test's own event loop, and a Clerk in it would send nothing
 * until the flood is over.
 */
async function burstInChild(config: BurstConfig): Promise<BurstSummary> {
  const proc = Bun.spawn(["bun", path.join(import.meta.dir, "../../bench/overload-burst.ts"), JSON.stringify(config)], { stdout: "pipe", stderr: "inherit" });
  const timer = setTimeout(() => proc.kill("SIGKILL"), 60_000);
  const [out, code] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
  clearTimeout(timer);
  expect(code).toBe(0);
  return JSON.parse(out.trim().split("\n").at(-1)!) as BurstSummary;
}

async function flood(connections: number, prefix: string): Promise<void> {
  const before = await leadership();
  const refusedBefore = await refusalsOf(before.leader);
  const r = await runBurst({ port: portOf(before.leader), connections, streams: 250, keyPrefix: prefix, valueBytes: 100, hangAfterMs: 30_000 });
  expect(r.sent).toBe(connections * 250);
  expectAllAnswered(r);
  // The node was overloaded: it refused at once, with a hint, and counted the refusals.
  expect(r.exhausted).toBeGreaterThan(0);
  expect(r.retryAfterMs).not.toBeNull();
  expect(r.retryAfterMs!.min).toBeGreaterThanOrEqual(10);
  expect(r.retryAfterMs!.max).toBeLessThanOrEqual(2000);
  expect((await refusalsOf(before.leader)) - refusedBefore).toBe(r.exhausted);
  // The leader held: the same leader in the same term, and no node saw a leader change.
  const after = await leadership();
  expect(after).toEqual(before);
  expect(await missing(r.acked, "v".repeat(100))).toEqual([]);
}

describe("overload", () => {
  test("5,000 concurrent writes: the leader holds, every call is answered, acknowledged writes read back", async () => {
    await flood(20, "five");
  }, 60_000);

  test("20,000 concurrent writes: the leader holds, every call is answered, acknowledged writes read back", async () => {
    await flood(80, "twenty");
  }, 90_000);

  test("a bad --max-in-flight is a usage error (exit 2)", async () => {
    const proc = Bun.spawn(["bun", path.join(import.meta.dir, "../../src/cli/kvserver.ts"), "--insecure-peers", "--max-in-flight", "0"], { stdout: "pipe", stderr: "pipe" });
    const timer = setTimeout(() => proc.kill("SIGKILL"), 20_000);
    const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
    clearTimeout(timer);
    expect(code).toBe(2);
    expect(stderr).toContain('--max-in-flight must be a positive integer, got "0"');
  }, 30_000);

  test("a Clerk writing through a flood follows the retry hints and gets every write through", async () => {
    const before = await leadership();
    const refusedBefore = await refusalsOf(before.leader);
    // A flood that keeps the leader full for its whole duration, and a Clerk's writes meanwhile:
    // one RPC per write, more at once than the node admits.
    const flooding = burstInChild({ port: portOf(before.leader), connections: 20, streams: 250, keyPrefix: "flood", valueBytes: 100, hangAfterMs: 30_000, durationMs: 3_000 });
    const clerk = cluster.clerk({ batch: false, maxConcurrency: 512 });
    const keys = Array.from({ length: 400 }, (_, i) => `clerk-${i}`);
    // The Clerk starts once the flood fills the leader (its first refusals), bounded in time.
    const deadline = Date.now() + 20_000;
    while ((await refusalsOf(before.leader)) === refusedBefore && Date.now() < deadline) await Bun.sleep(20);
    await Promise.all(keys.map((key) => clerk.put(key, `value-${key}`)));
    const r = await flooding;
    expectAllAnswered(r);
    expect(r.exhausted).toBeGreaterThan(0);
    expect(await refusalsOf(before.leader)).toBeGreaterThan(refusedBefore + r.exhausted);
    for (const key of keys) expect(await clerk.get(key)).toBe(`value-${key}`);
    expect(await leadership()).toEqual(before);
  }, 90_000);
});
