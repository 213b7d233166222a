// MIT 6.824 kvraft part A persistence scenarios: every iteration ends by crashing all servers
// (the Raft log keeps only what was fsynced) and restarting them from their LSM and log.
import { describe, test } from "bun:test";
import { TIMEOUT, generic } from "./workload.ts";

describe("kvraft 3A persistence", () => {
  test("PersistOneClient", () => generic({ seed: 21, crash: true }, 50), TIMEOUT);
  test("PersistConcurrent", () => generic({ seed: 22, clients: 5, crash: true }, 100), TIMEOUT);
  test("PersistConcurrentUnreliable", () => generic({ seed: 23, clients: 5, crash: true, unreliable: true }, 50), TIMEOUT);
  test("PersistPartition", () => generic({ seed: 24, clients: 5, crash: true, partitions: true }, 50), TIMEOUT);
  test("PersistPartitionUnreliable", () => generic({ seed: 25, clients: 5, crash: true, partitions: true, unreliable: true }, 30), TIMEOUT);
  test(
    "PersistPartitionUnreliableLinearizable",
    () => generic({ seed: 26, servers: 7, clients: 15, crash: true, partitions: true, unreliable: true, randomKeys: true }, 50),
    TIMEOUT,
  );
});
