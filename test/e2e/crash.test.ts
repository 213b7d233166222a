// Crashes of real kvserver processes (kill -9): the leader during concurrent writes, then all three
// nodes; and a follower that falls behind a compacted log and catches up by InstallSnapshot.
// Every acknowledged write must survive, exactly once, and the whole history be linearizable.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { checkHistory, type Operation } from "../../src/sim/check/index.ts";
import type { NodeStatus } from "../../src/kv/client.ts";
import { TestCluster } from "./harness.ts";
import { checkAppends, runWorkload } from "./workload.ts";

setDefaultTimeout(90_000);

const KEYS = ["k0", "k1", "k2", "k3"];
let cluster: TestCluster;
/** Every operation of every phase, for one linearizability check at the end. */
const history: Operation[] = [];

beforeAll(async () => {
  cluster = await TestCluster.start({ extraArgs: ["--snapshot-threshold", "100"] });
  await cluster.waitForLeader();
});
afterAll(async () => {
  await cluster?.destroy();
});

/** Reads every key through a fresh Clerk, recording the reads in the history. */
async function readAll(): Promise<Map<string, string | null>> {
  const clerk = cluster.clerk({ operationTimeoutMs: 20_000 });
  const values = new Map<string, string | null>();
  for (const key of KEYS) {
    const call = performance.now();
    const value = await clerk.get(key);
    history.push({ clientId: -1, input: { op: "Get", key, value: "" }, output: value === null ? { err: "ErrNoKey", value: "" } : { err: "OK", value }, call, return: performance.now() });
    values.set(key, value);
  }
  return values;
}

const acked = new Map<string, string[]>();
const unknown = new Map<string, string[]>();
function merge(into: Map<string, string[]>, from: Map<string, string[]>) {
  for (const [k, v] of from) into.set(k, [...(into.get(k) ?? []), ...v]);
}

describe("crashes", () => {
  test("kill -9 the leader during concurrent writes, restart it: acknowledged writes survive", async () => {
    const leader = await cluster.waitForLeader();
    const clerks = [0, 1, 2, 3].map(() => cluster.clerk({ operationTimeoutMs: 10_000 }));
    let finish!: () => void;
    const stop = new Promise<void>((resolve) => (finish = resolve));
    const progress = { acked: 0 };
    const work = runWorkload({ clerks, keys: KEYS, stop, maxOpsPerClient: 150, progress });
    // Phases advance on progress, not on time: the machine may be slow, the test must not be.
    let workFailed: unknown = null;
    work.catch((error: unknown) => (workFailed = error ?? new Error("workload failed")));
    const waitForAcks = async (target: number, phase: string) => {
      for (let i = 0; i < 300 && progress.acked < target; i++) {
        if (workFailed !== null) throw workFailed;
        await Bun.sleep(100);
      }
      if (progress.acked < target) throw new Error(`${phase}: only ${progress.acked} of ${target} appends acknowledged within 30 s`);
    };
    try {
      await waitForAcks(15, "before the crash");
      expect(await cluster.kill(leader, "SIGKILL")).not.toBe(0);
      await waitForAcks(progress.acked + 15, "with the leader dead");
      await cluster.restart(leader);
      await waitForAcks(progress.acked + 10, "after the restart");
    } finally {
      finish();
    }
    const result = await work;
    history.push(...result.history);
    merge(acked, result.acked);
    merge(unknown, result.unknown);
    const problems = checkAppends(await readAll(), { ...result, acked, unknown });
    expect(problems).toEqual([]);
  });

  test("kill -9 all three nodes and restart: nothing acknowledged is lost", async () => {
    const clerk = cluster.clerk();
    for (let i = 0; i < 20; i++) {
      const token = `<all.${i}>`;
      const key = KEYS[i % KEYS.length]!;
      const call = performance.now();
      await clerk.append(key, token);
      history.push({ clientId: -2, input: { op: "Append", key, value: token }, output: { err: "OK", value: "" }, call, return: performance.now() });
      acked.set(key, [...(acked.get(key) ?? []), token]);
    }
    await Promise.all([0, 1, 2].map((id) => cluster.kill(id, "SIGKILL")));
    for (const id of [0, 1, 2]) cluster.spawn(id);
    await Promise.all(cluster.nodes.map((n) => n!.serving));
    await cluster.waitForLeader();
    const problems = checkAppends(await readAll(), { history: [], acked, unknown, errors: [] });
    expect(problems).toEqual([]);
  });

  test("a follower behind a compacted log catches up by InstallSnapshot", async () => {
    const leader = await cluster.waitForLeader();
    const follower = (leader + 1) % 3;
    await cluster.kill(follower, "SIGKILL");
    const clerk = cluster.clerk();
    // Well past the snapshot threshold (100): the leader compacts what the follower lacks.
    for (let i = 0; i < 250; i++) {
      const key = `snap-${i % 10}`;
      await clerk.put(key, `v${i}`);
    }
    const statusOf = async (id: number): Promise<NodeStatus> => (await cluster.clerk({ statusTimeoutMs: 1000 }).getStatus())[id]!;
    const leaderStatus = await statusOf(leader);
    if (!leaderStatus.online) throw new Error(`leader ${leader} went offline: ${leaderStatus.error}`);
    expect(Number(leaderStatus.snapshotIndex)).toBeGreaterThan(0);
    await cluster.restart(follower);
    let caughtUp: NodeStatus | null = null;
    for (let i = 0; i < 150 && caughtUp === null; i++) {
      const [mine, theirs] = [await statusOf(follower), await statusOf(leader)];
      if (mine.online && theirs.online && mine.lastApplied >= leaderStatus.commitIndex && mine.snapshotIndex > 0n) caughtUp = mine;
      else await Bun.sleep(100);
    }
    expect(caughtUp).not.toBeNull();
    expect(cluster.output(follower)).not.toContain("Error");
    // The data arrived: with the old leader gone, the recovered follower and the third node serve it.
    await cluster.kill(leader, "SIGKILL");
    const reader = cluster.clerk({ operationTimeoutMs: 20_000 });
    for (let k = 0; k < 10; k++) expect(await reader.get(`snap-${k}`)).toBe(`v${240 + k}`);
    await cluster.restart(leader);
  });

  test("the whole history is linearizable", () => {
    const verdict = checkHistory(history, { timeoutMs: 20_000 });
    if (verdict.result !== "ok") console.error(JSON.stringify(verdict, (_, v) => (typeof v === "bigint" ? String(v) : v === Infinity ? "Infinity" : v), 2).slice(0, 4000));
    expect(verdict.result).toBe("ok");
  });
});
