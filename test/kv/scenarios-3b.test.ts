// MIT 6.824 kvraft part B scenarios: the Raft log is compacted behind the state machine's durable
// applied index, lagging followers catch up by streamed snapshots, and the log stays bounded.
import { describe, expect, test } from "bun:test";
import { checkHistory, type Operation } from "../../src/sim/check/index.ts";
import { KvSimClerk } from "../../src/sim/kv/clerk.ts";
import { KvSimCluster } from "../../src/sim/kv/cluster.ts";
import { TIMEOUT, generic } from "./workload.ts";

/** 6.824's maxraftstate, in our terms: log entries kept past the durable applied index. */
const THRESHOLD = 20;
/** The log holds at most ~2 thresholds of entries (a sync is forced at 2×) plus what is in flight. */
const MAX_LOG_BYTES = 8 * THRESHOLD * 100;

describe("kvraft 3B", () => {
  test("SnapshotRPC: a partitioned follower catches up by InstallSnapshot", async () => {
    const cluster = await KvSimCluster.start({ servers: 3, seed: 31, snapshotThreshold: THRESHOLD });
    const history: Operation[] = [];
    try {
      const clerk = new KvSimClerk(cluster, 1n, history);
      await cluster.until(clerk.put("a", "A"));
      expect((await cluster.until(clerk.get("a"))).value).toBe("A");

      // A majority without server 2 moves far ahead; its log gets compacted.
      cluster.partition([[0, 1], [2]]);
      const majority = new KvSimClerk(cluster, 2n, history, 60_000, [0, 1]);
      for (let i = 0; i < 50; i++) await cluster.until(majority.put(String(i), String(i)));
      await cluster.run(200);
      expect(Math.max(cluster.logBytes()[0], cluster.logBytes()[1])).toBeLessThanOrEqual(MAX_LOG_BYTES);
      const compactedAt = (await cluster.servers[0]!.getStatus()).snapshotIndex;
      expect(compactedAt).toBeGreaterThan(10);

      // Now a majority that needs server 2: it can only catch up through a snapshot.
      cluster.partition([[0, 2], [1]]);
      const other = new KvSimClerk(cluster, 3n, history, 60_000, [0, 2]);
      await cluster.until(other.put("c", "C"));
      await cluster.until(other.put("d", "D"));
      expect((await cluster.until(other.get("a"))).value).toBe("A");
      expect((await cluster.until(other.get("1"))).value).toBe("1");
      expect((await cluster.until(other.get("49"))).value).toBe("49");
      const lagging = await cluster.servers[2]!.getStatus();
      expect(lagging.snapshotsInstalled).toBeGreaterThanOrEqual(1);
      expect(cluster.servers[2]!.readLocal("49")).toBe("49");

      cluster.heal();
      await cluster.until(clerk.put("e", "E"));
      expect((await cluster.until(clerk.get("c"))).value).toBe("C");
      expect((await cluster.until(clerk.get("e"))).value).toBe("E");
      expect((await cluster.until(clerk.get("1"))).value).toBe("1");
      expect(checkHistory(history).result).toBe("ok");
    } finally {
      await cluster.close();
    }
  }, TIMEOUT);

  test("SnapshotSize: the Raft log stays bounded under many writes to one key", async () => {
    const cluster = await KvSimCluster.start({ servers: 3, seed: 32, snapshotThreshold: THRESHOLD });
    const history: Operation[] = [];
    try {
      const clerk = new KvSimClerk(cluster, 1n, history);
      let maxLog = 0;
      for (let i = 0; i < 200; i++) {
        await cluster.until(clerk.put("x", "0"));
        expect((await cluster.until(clerk.get("x"))).value).toBe("0");
        await cluster.until(clerk.put("x", "1"));
        expect((await cluster.until(clerk.get("x"))).value).toBe("1");
        maxLog = Math.max(maxLog, ...cluster.logBytes());
      }
      expect(maxLog).toBeLessThanOrEqual(MAX_LOG_BYTES);
      // The state machine's own storage does not grow with the history either: one key, a few KiB.
      for (const server of cluster.servers) expect((await server!.getStatus()).storageSize).toBeLessThan(512 << 10);
      expect(checkHistory(history).result).toBe("ok");
    } finally {
      await cluster.close();
    }
  }, TIMEOUT);

  const snap = { snapshotThreshold: THRESHOLD, maxLogBytes: MAX_LOG_BYTES };
  test("SnapshotRecover", () => generic({ seed: 33, crash: true, ...snap }, 50), TIMEOUT);
  test("SnapshotRecoverManyClients", () => generic({ seed: 34, clients: 20, crash: true, ...snap, iterationMs: 1000 }, 100), TIMEOUT);
  test("SnapshotUnreliable", () => generic({ seed: 35, clients: 5, unreliable: true, ...snap }, 50), TIMEOUT);
  test("SnapshotUnreliableRecover", () => generic({ seed: 36, clients: 5, unreliable: true, crash: true, ...snap }, 50), TIMEOUT);
  test(
    "SnapshotUnreliableRecoverConcurrentPartition",
    () => generic({ seed: 37, clients: 5, unreliable: true, crash: true, partitions: true, ...snap }, 30),
    TIMEOUT,
  );
  test(
    "SnapshotUnreliableRecoverConcurrentPartitionLinearizable",
    () => generic({ seed: 38, servers: 7, clients: 15, unreliable: true, crash: true, partitions: true, randomKeys: true, ...snap }, 50),
    TIMEOUT,
  );
});
