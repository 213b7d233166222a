// Range, DeleteRange, Txn (compare-and-swap) and Watch against three real kvserver processes:
// revisions, pagination, prefixes, exactly-once through the Clerk, and clear Connect errors for
// inverted ranges, huge limits and too many Txn operations.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { KVService } from "../../src/gen/kvraftpb/kvraft_pb.ts";
import { TestCluster } from "./harness.ts";

setDefaultTimeout(60_000);

let cluster: TestCluster;
const enc = new TextEncoder();

beforeAll(async () => {
  cluster = await TestCluster.start();
  await cluster.waitForLeader();
});

afterAll(async () => {
  await cluster?.destroy();
});

function rawClient(id: number) {
  return createClient(KVService, createConnectTransport({ baseUrl: `http://${cluster.addrs[id]}`, httpVersion: "2" }));
}

async function refusal(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (error) {
    return ConnectError.from(error);
  }
  throw new Error("the call was not refused");
}

describe("range, delete range, txn", () => {
  test("revisions, prefix scan, pagination, serializable reads on a follower", async () => {
    const clerk = cluster.clerk();
    for (const k of ["app/a", "app/b", "app/c", "other"]) await clerk.put(k, `v-${k}`);
    await clerk.put("app/a", "v2");
    const all = await clerk.range("app/", "app0");
    expect(all.kvs.map((kv) => [kv.key, kv.value, kv.version])).toEqual([
      ["app/a", "v2", 2],
      ["app/b", "v-app/b", 1],
      ["app/c", "v-app/c", 1],
    ]);
    const a = all.kvs[0]!;
    expect(a.modRevision).toBeGreaterThan(a.createRevision);
    expect(all.revision).toBeGreaterThanOrEqual(a.modRevision);
    const page = await clerk.range("app/", "app0", { limit: 2 });
    expect([page.kvs.length, page.more, page.count, page.nextKey]).toEqual([2, true, 3, "app/c"]);
    expect((await clerk.scan("app/", { limit: 1 })).map((kv) => kv.key)).toEqual(["app/a", "app/b", "app/c"]);
    // Every replica applies the same entries: a serializable read anywhere sees the same revisions.
    const leader = await cluster.waitForLeader();
    const follower = (leader + 1) % 3;
    const deadline = Date.now() + 5_000;
    let local = await rawClient(follower).range({ key: enc.encode("app/a"), serializable: true });
    while (local.kvs[0]?.version !== 2n && Date.now() < deadline) {
      await Bun.sleep(50);
      local = await rawClient(follower).range({ key: enc.encode("app/a"), serializable: true });
    }
    expect(Number(local.kvs[0]!.modRevision)).toBe(a.modRevision);
  });

  test("compare-and-swap and delete range through the Clerk", async () => {
    const clerk = cluster.clerk();
    expect((await clerk.cas("lock", null, "alice")).succeeded).toBe(true);
    const lost = await clerk.cas("lock", null, "bob");
    expect([lost.succeeded, lost.previous?.value]).toEqual([false, "alice"]);
    const swapped = await clerk.cas("lock", "alice", "carol");
    expect([swapped.succeeded, swapped.previous?.value]).toEqual([true, "alice"]);
    expect(await clerk.get("lock")).toBe("carol");
    for (const k of ["tmp/1", "tmp/2", "tmp/3"]) await clerk.put(k, "x");
    const removed = await clerk.deleteRange("tmp/", "tmp0", true);
    expect([removed.deleted, removed.prevKvs.map((kv) => kv.key)]).toEqual([3, ["tmp/1", "tmp/2", "tmp/3"]]);
    expect((await clerk.range("tmp/", "tmp0")).count).toBe(0);
  });

  test("bad input gets clear Connect errors: inverted range, huge limit, too many Txn ops", async () => {
    const leader = await cluster.waitForLeader();
    const client = rawClient(leader);
    const inverted = await refusal(client.range({ key: enc.encode("z"), rangeEnd: enc.encode("a") }));
    expect(inverted.code).toBe(Code.InvalidArgument);
    expect(inverted.rawMessage).toContain("inverted or empty");
    const huge = await refusal(client.range({ key: enc.encode("a"), rangeEnd: Uint8Array.of(0), limit: 1_000_000_000n }));
    expect(huge.code).toBe(Code.InvalidArgument);
    expect(huge.rawMessage).toContain("above this cluster's maximum");
    const ops = Array.from({ length: 129 }, (_, i) => ({ request: { case: "requestPut" as const, value: { key: enc.encode(`k${i}`), value: enc.encode("v") } } }));
    const many = await refusal(client.txn({ success: ops }));
    expect(many.code).toBe(Code.InvalidArgument);
    expect(many.rawMessage).toContain("129 success operations; at most 128");
    const empty = await refusal(client.deleteRange({}));
    expect(empty.code).toBe(Code.InvalidArgument);
    // The node is still up and answering.
    expect((await cluster.clerk().range("a", "b")).kvs).toBeDefined();
  });
});
