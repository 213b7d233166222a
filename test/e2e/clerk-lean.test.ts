// The Clerk on its lean transport (createClerkTransport) against three real kvserver processes:
// writes and reads, concurrent writes coalesced into Batch RPCs, a watch (the delegated stream),
// and the leader killed under it (the next node is tried, the restarted node reconnected to).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Clerk } from "../../src/kv/client.ts";
import { createClerkTransport } from "../../src/rpc/index.ts";
import { TestCluster } from "./harness.ts";

let cluster: TestCluster;
let clerk: Clerk;

beforeAll(async () => {
  cluster = await TestCluster.start({ clerkDefaults: { transport: (baseUrl) => createClerkTransport({ baseUrl }) } });
  await cluster.waitForLeader();
  clerk = cluster.clerk({ backoffMs: 10 });
});
afterAll(async () => {
  await cluster.destroy();
});

describe("the Clerk on the lean transport", () => {
  test("put, append, get, delete; 200 concurrent puts, each applied once", async () => {
    await clerk.put("hello", "world");
    await clerk.append("hello", "!");
    expect(await clerk.get("hello")).toBe("world!");
    expect(await clerk.delete("hello")).toBe(true);
    expect(await clerk.get("hello")).toBeNull();
    await Promise.all(Array.from({ length: 200 }, (_, i) => clerk.append(`c${i % 10}`, `${i},`)));
    for (let k = 0; k < 10; k++) {
      const parts = (await clerk.get(`c${k}`))!.split(",").filter((p) => p !== "");
      expect(parts.map(Number).sort((a, b) => a - b)).toEqual(Array.from({ length: 20 }, (_, j) => k + 10 * j));
    }
  });

  test("a watch sees the writes made after it started", async () => {
    const abort = new AbortController();
    const seen: string[] = [];
    const watching = (async () => {
      for await (const batch of clerk.watch("w/", { prefix: true, signal: abort.signal })) {
        for (const event of batch.events) seen.push(event.kv.value);
        if (seen.length >= 3) abort.abort();
      }
    })().catch(() => {});
    await Bun.sleep(200);
    for (const v of ["1", "2", "3"]) await clerk.put(`w/${v}`, v);
    const deadline = Date.now() + 10_000;
    while (seen.length < 3 && Date.now() < deadline) await Bun.sleep(25);
    abort.abort();
    await watching;
    expect(seen).toEqual(["1", "2", "3"]);
  });

  test("the leader killed: writes go on through another node; restarted, it is reached again", async () => {
    const leader = await cluster.waitForLeader();
    await clerk.put("before", "1");
    await cluster.kill(leader, "SIGKILL");
    await clerk.put("during", "2");
    expect(await clerk.get("before")).toBe("1");
    await cluster.restart(leader);
    const status = await clerk.getStatus();
    expect(status.find((s) => s.id === leader)?.online).toBe(true);
    expect(await clerk.get("during")).toBe("2");
  });
});
