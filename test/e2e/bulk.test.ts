// A bulk load through the Clerk's batch API (appendMany: concurrent writes coalesced into Batch
// RPCs, which the leader logs as batch entries) on three real kvserver processes, with the leader
// killed by SIGKILL in the middle: every acknowledged append is there exactly once, none twice,
// and the killed node (whose state machine writes no LSM WAL: it lost its unflushed applies and
// replayed them from its Raft log) holds the same state as the others.
import { afterAll, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
import { Code, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { BulkWriteError } from "../../src/kv/client.ts";
import { KVService } from "../../src/gen/kvraftpb/kvraft_pb.ts";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { TestCluster, kvclient } from "./harness.ts";

setDefaultTimeout(120_000);

const WRITES = 4_000;
const KEYS = 40;

let cluster: TestCluster;
beforeAll(async () => {
  cluster = await TestCluster.start();
  await cluster.waitForLeader();
});
afterAll(async () => {
  await cluster?.destroy();
});

test("putMany writes every pair once through few Batch RPCs; a refused pair stops the load with how many were written", async () => {
  let batches = 0;
  let commands = 0;
  const counter: Interceptor = (next) => async (request) => {
    if (request.method.name === "Batch") {
      batches++;
      commands += (request.message as unknown as { commands: unknown[] }).commands.length;
    }
    return next(request);
  };
  const clerk = cluster.clerk({
    maxConcurrency: 300,
    transport: (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true, interceptors: [counter] }),
  });
  const seen: string[] = [];
  const written = await clerk.putMany(
    Array.from({ length: 1000 }, (_, i) => [`pm${i}`, `v${i}`] as [string, string]),
    { onWritten: (key) => seen.push(key) },
  );
  expect(written).toBe(1000);
  expect(new Set(seen).size).toBe(1000);
  expect(commands).toBe(1000); // no write sent twice on a healthy cluster
  expect(batches).toBeLessThan(40);
  const reader = cluster.clerk();
  for (const i of [0, 499, 999]) expect(await reader.get(`pm${i}`)).toBe(`v${i}`);
  // Without batching (or with an unregistered clientId) each pair goes through put()'s own path.
  expect(await cluster.clerk({ batch: false }).putMany([["plain1", "a"], ["plain2", "b"]])).toBe(2);
  expect(await reader.get("plain2")).toBe("b");
  // A pair over the Clerk's request limit: refused before it is sent; the pairs after it are not taken.
  const pairs = [["ok1", "1"], ["big", "x".repeat(2000)], ["never", "2"]] as [string, string][];
  const failure = await cluster.clerk({ maxRequestBytes: 1000 }).putMany(pairs, { concurrency: 1 }).then(
    () => null,
    (error: unknown) => error,
  );
  expect(failure).toBeInstanceOf(BulkWriteError);
  expect((failure as BulkWriteError).written).toBe(1);
  expect((failure as BulkWriteError).code).toBe(Code.InvalidArgument);
  expect(await reader.get("never")).toBeNull();
});

test("kvclient load: a file of key<TAB>value lines, checked whole first, loaded once", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvraft-load-"));
  try {
    const file = path.join(dir, "pairs.tsv");
    const lines = Array.from({ length: 3000 }, (_, i) => `load${i}\tvalue ${i}`);
    lines.push("", "tabbed\tx\ty", "empty\t", "crlf\tz\r");
    fs.writeFileSync(file, lines.join("\n"));
    const ok = await kvclient(["load", "-addrs", cluster.addrs.join(","), "-file", file, "-concurrency", "256"]);
    expect({ code: ok.code, stderr: ok.stderr }).toEqual({ code: 0, stderr: "" });
    expect(ok.stdout).toMatch(/^loaded 3003 of 3003 pairs in /);
    const reader = cluster.clerk();
    expect(await reader.get("load2999")).toBe("value 2999");
    expect([await reader.get("tabbed"), await reader.get("empty"), await reader.get("crlf")]).toEqual(["x\ty", "", "z"]);
    // A bad line anywhere: nothing is written, exit 2 naming the line.
    fs.writeFileSync(file, "first\t1\nno tab here\n");
    const bad = await kvclient(["load", "-addrs", cluster.addrs.join(","), "-file", file]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("line 2 has no TAB");
    expect(await reader.get("first")).toBeNull();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("a bulk load survives kill -9 of the leader: every acknowledged append exactly once, no append twice", async () => {
  const leader = await cluster.waitForLeader();
  const clerk = cluster.clerk({ maxConcurrency: 512, operationTimeoutMs: 30_000 });
  // Token i goes to key i mod KEYS: many writes per key, so batch entries are cut at repeated keys.
  const pairs = function* (): Generator<[string, string]> {
    for (let i = 0; i < WRITES; i++) yield [`bulk${i % KEYS}`, `${i};`];
  };
  const acked = new Set<string>();
  let failure: unknown = null;
  // The leader dies the moment a quarter of the load is acknowledged (the signal is sent
  // synchronously, inside the callback): mid-load whatever the machine's speed.
  let killed: Promise<number | null> | null = null;
  const load = clerk
    .appendMany(pairs(), {
      onWritten: (_key, value) => {
        acked.add(value);
        if (acked.size === WRITES / 4) killed = cluster.kill(leader, "SIGKILL");
      },
    })
    .catch((error: unknown) => {
      failure = error;
      return -1;
    });
  // Phases advance on progress, not on time: the machine may be slow.
  const waitFor = async (count: number, phase: string) => {
    for (let i = 0; i < 600 && acked.size < count && failure === null; i++) await Bun.sleep(50);
    if (failure === null && acked.size < count) throw new Error(`${phase}: only ${acked.size} of ${count} appends acknowledged within 30 s`);
  };
  await waitFor(WRITES / 4, "before the crash");
  expect(killed).not.toBeNull();
  expect(await killed!).not.toBe(0);
  const atCrash = acked.size;
  await waitFor(Math.min(WRITES, atCrash + 200), "with the leader dead");
  await cluster.restart(leader);
  const written = await load;
  // The Clerk rides out a leader change: the load completes. Were it to stop, the check below
  // still holds for what it acknowledged.
  if (failure !== null) expect(failure).toBeInstanceOf(BulkWriteError);
  else expect(written).toBe(WRITES);
  expect(atCrash).toBeLessThan(WRITES);

  const reader = cluster.clerk({ operationTimeoutMs: 30_000 });
  const seen = new Map<string, number>();
  for (let k = 0; k < KEYS; k++) {
    const value = (await reader.get(`bulk${k}`)) ?? "";
    for (const token of value.split(";").filter((t) => t !== "")) {
      expect(Number(token) % KEYS).toBe(k); // only this key's own tokens
      seen.set(`${token};`, (seen.get(`${token};`) ?? 0) + 1);
    }
  }
  const twice = [...seen].filter(([, n]) => n > 1).map(([token]) => token);
  const missing = [...acked].filter((token) => !seen.has(token));
  expect({ twice, missing }).toEqual({ twice: [], missing: [] });
  if (failure === null) expect(seen.size).toBe(WRITES);

  // Every replica's own state (serializable reads, no ReadIndex), the restarted one included:
  // the same keys, values and revisions once each has applied the same index.
  const local = async (id: number) => {
    const client = createClient(KVService, createConnectTransport({ baseUrl: `http://${cluster.addrs[id]}`, httpVersion: "2" }));
    const r = await client.range({ key: new TextEncoder().encode("bulk"), rangeEnd: new TextEncoder().encode("bulk\xff"), serializable: true });
    const kvs = r.kvs.map((kv) => `${new TextDecoder().decode(kv.key)}@${kv.modRevision}/${kv.version}=${new TextDecoder().decode(kv.value)}`);
    return { revision: r.header?.revision ?? 0n, kvs };
  };
  let states = await Promise.all([0, 1, 2].map(local));
  for (let i = 0; i < 200 && new Set(states.map((st) => st.revision)).size > 1; i++) {
    await Bun.sleep(50);
    states = await Promise.all([0, 1, 2].map(local));
  }
  expect(states[leader]!.kvs.length).toBe(KEYS);
  expect(states.map((st) => st.revision)).toEqual([states[0]!.revision, states[0]!.revision, states[0]!.revision]);
  for (const st of states) expect(st.kvs).toEqual(states[0]!.kvs);
});
