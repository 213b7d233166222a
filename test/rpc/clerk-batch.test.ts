// The Clerk's coalescing against in-process nodes: concurrent operations leave as Batch calls,
// a refusal of one command fails that operation alone (the others complete), a busy command is
// retried alone, and a node without Batch (an older server) gets Command calls instead.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Code, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { KVService } from "../../src/gen/kvraftpb/kvraft_pb.ts";
import { Clerk, ClerkError } from "../../src/kv/client.ts";
import { createClerkTransport } from "../../src/rpc/client/clerk-transport.ts";
import { InvalidArgumentError, OverloadedError } from "../../src/kv/errors.ts";
import { registerKVService, type KVServiceBackend } from "../../src/kv/service.ts";
import { RpcServer } from "../../src/rpc/server/server.ts";
import { statusDouble } from "./kv-double.ts";

const data = new Map<string, string>();
let busyOnce = new Set<string>();
let nextSession = 1n;

const backend: KVServiceBackend = {
  async command(args) {
    if (args.key.startsWith("bad")) throw new InvalidArgumentError(`key ${args.key} is refused`);
    if (busyOnce.delete(args.key)) throw new OverloadedError("busy; retry");
    if (args.op === "Get") return data.has(args.key) ? { err: "OK", value: data.get(args.key)! } : { err: "ErrNoKey", value: "" };
    data.set(args.key, (data.get(args.key) ?? "") + args.value);
    return { err: "OK", value: "" };
  },
  async registerSession() {
    return { err: "OK" as const, clientId: nextSession++ };
  },
  async getStatus() {
    return statusDouble();
  },
};

let withBatch: RpcServer;
let withoutBatch: RpcServer;

beforeAll(async () => {
  withBatch = await RpcServer.start({ port: 0, routes: (router) => registerKVService(router, backend) });
  // An older server: KVService without Batch (connect-es answers it unimplemented).
  withoutBatch = await RpcServer.start({
    port: 0,
    routes: (router: ConnectRouter) => {
      router.service(KVService, {
        command: async (request) => ({ err: (await backend.command({ ...request, op: "Put" })).err, value: "" }),
        registerSession: async () => ({ err: "OK", clientId: nextSession++ }),
      });
    },
  });
});
afterAll(async () => {
  await Promise.all([withBatch.close(), withoutBatch.close()]);
});

/** The scenarios run on connect-node's transport, then on the Clerk's lean one. */
let lean = false;

function clerkOn(server: RpcServer, methods: string[]): Clerk {
  const counting: Interceptor = (next) => (request) => {
    methods.push(request.method.name);
    return next(request);
  };
  return new Clerk({
    addrs: [server.url],
    transport: (baseUrl) => (lean ? createClerkTransport({ baseUrl, interceptors: [counting] }) : createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true, interceptors: [counting] })),
    maxConcurrency: 32,
    backoffMs: 1,
  });
}

for (const transport of ["connect-node", "lean"])
describe(`Clerk coalescing (${transport} transport)`, () => {
  beforeAll(() => {
    lean = transport === "lean";
    data.clear(); // the double's writes append: each transport starts from nothing
  });
  test("a refused command fails alone; a busy one is retried; the rest complete in batches", async () => {
    busyOnce = new Set(["k7"]);
    const methods: string[] = [];
    const clerk = clerkOn(withBatch, methods);
    const results = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => clerk.put(i === 3 ? "bad3" : `k${i}`, "v")));
    const failed = results.flatMap((r, i) => (r.status === "rejected" ? [[i, r.reason] as const] : []));
    expect(failed.map(([i]) => i)).toEqual([3]);
    expect(failed[0]![1]).toBeInstanceOf(ClerkError);
    expect((failed[0]![1] as ClerkError).code).toBe(Code.InvalidArgument);
    expect(data.get("k7")).toBe("v"); // retried after its refusal, applied once
    expect(methods.filter((m) => m === "Batch").length).toBeGreaterThan(0);
    expect(methods.filter((m) => m === "Batch" || m === "Command").length).toBeLessThan(20);
  });

  test("a node without Batch gets Command calls, and every operation completes", async () => {
    const methods: string[] = [];
    const clerk = clerkOn(withoutBatch, methods);
    await Promise.all(Array.from({ length: 12 }, (_, i) => clerk.put(`old${i}`, "x")));
    for (let i = 0; i < 12; i++) expect(data.get(`old${i}`)).toBe("x");
    // At most one Batch call is tried; after its unimplemented, only Commands.
    expect(methods.filter((m) => m === "Batch").length).toBe(1);
    expect(methods.filter((m) => m === "Command").length).toBe(12);
  });
});
