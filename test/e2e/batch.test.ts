// The Batch RPC and the Clerk's coalescing on three real kvserver processes: many commands in one
// request, each exactly-once through its own session and command id (a repeated batch applies
// nothing twice), per-command refusals next to answers, and a Clerk whose hundreds of concurrent
// operations leave as a handful of Batch calls yet apply each exactly once.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { KVService, Op } from "../../src/gen/kvraftpb/kvraft_pb.ts";
import { TestCluster } from "./harness.ts";

setDefaultTimeout(60_000);

let cluster: TestCluster;
let leader: number;

beforeAll(async () => {
  cluster = await TestCluster.start();
  leader = await cluster.waitForLeader();
});

afterAll(async () => {
  await cluster?.destroy();
});

function leaderClient() {
  return createClient(KVService, createConnectTransport({ baseUrl: `http://${cluster.addrs[leader]}`, httpVersion: "2", useBinaryFormat: true }));
}

describe("Batch RPC", () => {
  test("answers per command, in order, with per-command refusals; a repeated batch applies nothing twice", async () => {
    const client = leaderClient();
    const sessions = await Promise.all([client.registerSession({}), client.registerSession({})]);
    const [a, b] = sessions.map((s) => s.clientId);
    const batch = {
      commands: [
        { key: "bx", value: "1", op: Op.APPEND, clientId: a, commandId: 1n, registered: true },
        { key: "by", value: "2", op: Op.APPEND, clientId: b, commandId: 1n, registered: true },
        { key: "bz", op: 9 as Op },
        { key: "bnone", op: Op.GET },
      ],
    };
    const first = await client.batch(batch);
    expect(first.results.map((r) => [r.code, r.response?.err])).toEqual([
      [0, "OK"],
      [0, "OK"],
      [Code.InvalidArgument, undefined],
      [0, "ErrNoKey"],
    ]);
    expect(first.results[2]!.message).toContain("unknown op 9");
    // The same batch again (a retry after a lost answer): answered from the sessions, not applied.
    const again = await client.batch(batch);
    expect(again.results[0]!.response?.err).toBe("OK");
    expect(again.results[1]!.response?.err).toBe("OK");
    const read = await client.batch({ commands: [{ key: "bx", op: Op.GET }, { key: "by", op: Op.GET }] });
    expect(read.results.map((r) => r.response?.value)).toEqual(["1", "2"]);
  });

  test("a batch over the command limit is refused whole", async () => {
    const client = leaderClient();
    const commands = Array.from({ length: 4097 }, (_, i) => ({ key: `k${i}`, op: Op.GET }));
    const error = await client.batch({ commands }).catch((e) => e);
    expect(error.code).toBe(Code.InvalidArgument);
    expect(error.rawMessage).toContain("limit is 4096");
  });

  test("over gRPC too", async () => {
    const client = createClient(KVService, createGrpcTransport({ baseUrl: `http://${cluster.addrs[leader]}` }));
    const response = await client.batch({ commands: [{ key: "bg", value: "v", op: Op.PUT }, { key: "bg", op: Op.GET }] });
    expect(response.results.map((r) => r.code)).toEqual([0, 0]);
  });
});

describe("Clerk coalescing", () => {
  test("300 concurrent appends to one key apply exactly once each, in far fewer RPCs", async () => {
    const calls = new Map<string, number>();
    const counting: Interceptor = (next) => (request) => {
      calls.set(request.method.name, (calls.get(request.method.name) ?? 0) + 1);
      return next(request);
    };
    const clerk = cluster.clerk({
      maxConcurrency: 64,
      transport: (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true, interceptors: [counting] }),
    });
    await Promise.all(Array.from({ length: 300 }, (_, i) => clerk.append("coalesced", i % 10 === 0 ? "X" : "x")));
    const value = (await clerk.get("coalesced"))!;
    expect(value.length).toBe(300);
    expect([...value].filter((c) => c === "X").length).toBe(30);
    // A command alone in its turn goes as a plain Command call; the rest ride in batches.
    // 64 sessions registered (each a call, plus one to a follower per call until the Clerk has
    // found the leader, plus a retry of one that timed out on a starved machine), then a handful
    // of Batch calls (6 in a quiet run) rather than 301 Commands.
    expect(calls.get("RegisterSession")).toBeLessThanOrEqual(64 * 3);
    expect(calls.get("Batch")!).toBeGreaterThan(0);
    expect(calls.get("Batch")! + (calls.get("Command") ?? 0)).toBeLessThan(100);
  });

  test("maxConcurrency 1: one Command per operation, in call order", async () => {
    let commands = 0;
    const counting: Interceptor = (next) => (request) => {
      if (request.method.name === "Command") commands++;
      return next(request);
    };
    const clerk = cluster.clerk({
      maxConcurrency: 1,
      transport: (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true, interceptors: [counting] }),
    });
    await Promise.all(Array.from({ length: 20 }, (_, i) => clerk.append("ordered", String(i % 10))));
    expect(await clerk.get("ordered")).toBe("01234567890123456789");
    expect(commands).toBe(21);
  });
});
