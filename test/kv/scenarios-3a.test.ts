// MIT 6.824 kvraft part A scenarios (as eRaft ports them), in simulated time on real KVServers:
// every history is checked for linearizability and every client's appends audited for loss,
// duplication and order (checkClntAppends).
import { describe, expect, test } from "bun:test";
import { checkHistory, type Operation } from "../../src/sim/check/index.ts";
import { KvSimClerk } from "../../src/sim/kv/clerk.ts";
import { KvSimCluster } from "../../src/sim/kv/cluster.ts";
import { checkClientAppends } from "../../src/sim/kv/workload.ts";
import { TIMEOUT, generic } from "./workload.ts";

describe("kvraft 3A", () => {
  test("Basic: one client", () => generic({ seed: 11 }, 100), TIMEOUT);
  test("Concurrent: many clients", () => generic({ seed: 12, clients: 5 }, 200), TIMEOUT);
  test("Unreliable: many clients", () => generic({ seed: 13, clients: 5, unreliable: true }, 100), TIMEOUT);

  test("UnreliableOneKey: concurrent appends to one key, each applied exactly once", async () => {
    const cluster = await KvSimCluster.start({ servers: 5, seed: 14, unreliable: true });
    const history: Operation[] = [];
    try {
      const appends = 10;
      const clients = Array.from({ length: 5 }, async (_, client) => {
        const clerk = new KvSimClerk(cluster, BigInt(client + 1), history);
        for (let j = 0; j < appends; j++) await clerk.append("k", `x ${client} ${j} y`);
      });
      await cluster.until(Promise.all(clients));
      const reader = new KvSimClerk(cluster, 100n, history);
      const value = (await cluster.until(reader.get("k"))).value;
      // checkConcurrentAppends: every client's tokens present once and in its order.
      for (let client = 0; client < 5; client++) {
        const own = value.match(new RegExp(`x ${client} \\d+ y`, "g"))!.join("");
        expect(checkClientAppends(client, own, appends)).toEqual([]);
      }
      expect(value.length).toBe(Array.from({ length: 5 }, (_, c) => Array.from({ length: appends }, (_, j) => `x ${c} ${j} y`).join("")).join("").length);
      expect(checkHistory(history).result).toBe("ok");
    } finally {
      await cluster.close();
    }
  }, TIMEOUT);

  test("OnePartition: progress in the majority, none in the minority, completion after heal", async () => {
    const cluster = await KvSimCluster.start({ servers: 5, seed: 15 });
    const history: Operation[] = [];
    try {
      const clerk = new KvSimClerk(cluster, 1n, history);
      await cluster.until(clerk.put("1", "13"));
      const leader = await cluster.until(findLeader(cluster));
      const majority = [leader, ...[0, 1, 2, 3, 4].filter((i) => i !== leader).slice(0, 2)];
      const minority = [0, 1, 2, 3, 4].filter((i) => !majority.includes(i));
      cluster.partition([majority, minority]);

      // Progress in the majority.
      const majorityClerk = new KvSimClerk(cluster, 2n, history, 60_000, majority);
      await cluster.until(majorityClerk.put("1", "14"));
      expect((await cluster.until(majorityClerk.get("1"))).value).toBe("14");

      // No progress in the minority: its writes and reads stay unanswered.
      const minorityClerk1 = new KvSimClerk(cluster, 3n, history, 60_000, minority);
      const minorityClerk2 = new KvSimClerk(cluster, 4n, history, 60_000, minority);
      let putDone = false;
      let getDone = false;
      const put = minorityClerk1.put("1", "15").then((r) => ((putDone = true), r));
      const get = minorityClerk2.get("1").then((r) => ((getDone = true), r));
      await cluster.run(1000);
      expect(putDone).toBe(false);
      expect(getDone).toBe(false);

      // Completion after heal.
      cluster.heal();
      minorityClerk1.reach();
      minorityClerk2.reach();
      await cluster.until(Promise.all([put, get]));
      expect((await cluster.until(clerk.get("1"))).value).toBe("15");
      expect(checkHistory(history).result).toBe("ok");
    } finally {
      await cluster.close();
    }
  }, TIMEOUT);

  test("ManyPartitionsOneClient", () => generic({ seed: 16, partitions: true }, 30), TIMEOUT);
  test("ManyPartitionsManyClients", () => generic({ seed: 17, clients: 5, partitions: true }, 60), TIMEOUT);
});

/** The id of the server that says it leads (waits for one). */
async function findLeader(cluster: KvSimCluster): Promise<number> {
  for (;;) {
    for (const [i, server] of cluster.servers.entries()) {
      if (server !== null && (await server.getStatus()).state === "Leader") return i;
    }
    await cluster.sleep(10);
  }
}
