// Admission control on a real RpcServer: with its calls full, one more KV call is refused at once
// with resource_exhausted and a retry-after-ms hint, over every path (HTTP/2 Connect, gRPC,
// HTTP/1.1, the adapter), a gRPC Command gets eRaft's ErrTimeout instead, GetStatus and the peers
// are never counted, the Clerk waits the hint and then gets through; the Admission class's bounds.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as http2 from "node:http2";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { CommandRequestSchema, CommandResponseSchema, KVService, Op } from "../../src/gen/kvraftpb/kvraft_pb.ts";
import { Clerk } from "../../src/kv/client.ts";
import { admittedKVMethod, eRaftOverloadAnswers, registerKVService, type KVServiceBackend } from "../../src/kv/service.ts";
import { Admission } from "../../src/rpc/server/admission.ts";
import { RpcServer } from "../../src/rpc/server/server.ts";
import { statusDouble } from "./kv-double.ts";

const MAX_CALLS = 4;

/** A backend whose writes wait until released: they hold admission slots as long as a test wants. */
function heldBackend(): { backend: KVServiceBackend; release(): void; held(): number } {
  let waiting: (() => void)[] = [];
  const data = new Map<string, string>();
  return {
    backend: {
      async command(args) {
        if (args.key.startsWith("hold")) await new Promise<void>((resolve) => waiting.push(resolve));
        if (args.op === "Get") return data.has(args.key) ? { err: "OK", value: data.get(args.key)! } : { err: "ErrNoKey", value: "" };
        data.set(args.key, args.value);
        return { err: "OK", value: "" };
      },
      async registerSession() {
        return { err: "OK" as const, clientId: 7n };
      },
      async getStatus() {
        return statusDouble();
      },
    },
    release() {
      const w = waiting;
      waiting = [];
      for (const resolve of w) resolve();
    },
    held: () => waiting.length,
  };
}

const servers: RpcServer[] = [];
let fast: RpcServer;
let adapterOnly: RpcServer;
const fastKv = heldBackend();
const adapterKv = heldBackend();

async function start(kv: ReturnType<typeof heldBackend>, fastLane: boolean): Promise<RpcServer> {
  const server = await RpcServer.start({
    port: 0,
    fastLane,
    routes: (router) => registerKVService(router, kv.backend),
    admission: { maxCalls: MAX_CALLS, covers: admittedKVMethod, grpcAnswers: eRaftOverloadAnswers() },
  });
  servers.push(server);
  return server;
}

beforeAll(async () => {
  fast = await start(fastKv, true);
  adapterOnly = await start(adapterKv, false);
});

afterAll(async () => {
  for (const s of servers) await s.close();
});

/** Fills the server's calls with held writes; returns their promise. */
async function fill(server: RpcServer, kv: ReturnType<typeof heldBackend>): Promise<unknown[]> {
  const client = createClient(KVService, createConnectTransport({ baseUrl: server.url, httpVersion: "2", useBinaryFormat: true }));
  const calls = Array.from({ length: MAX_CALLS }, (_, i) => client.command({ key: `hold-${i}`, value: "x", op: Op.PUT }));
  for (let i = 0; i < 1000 && kv.held() < MAX_CALLS; i++) await Bun.sleep(5);
  expect(kv.held()).toBe(MAX_CALLS);
  return Promise.all(calls);
}

function refusedWithHint(error: unknown): number {
  const e = ConnectError.from(error);
  expect(e.code).toBe(Code.ResourceExhausted);
  expect(e.rawMessage).toContain("overloaded");
  const hint = Number(e.metadata.get("retry-after-ms"));
  expect(hint).toBeGreaterThanOrEqual(10);
  return hint;
}

describe("admission control", () => {
  test("a full node refuses HTTP/2 Connect, gRPC and HTTP/1.1 calls at once with a hint; GetStatus still answers", async () => {
    const held = fill(fast, fastKv);
    await Bun.sleep(20);
    const connect = createClient(KVService, createConnectTransport({ baseUrl: fast.url, httpVersion: "2", useBinaryFormat: true }));
    const json = createClient(KVService, createConnectTransport({ baseUrl: fast.url, httpVersion: "1.1" }));
    const grpc = createClient(KVService, createGrpcTransport({ baseUrl: fast.url }));
    const started = performance.now();
    refusedWithHint(await connect.command({ key: "k", value: "v", op: Op.PUT }).catch((e) => e));
    refusedWithHint(await json.command({ key: "k", value: "v", op: Op.PUT }).catch((e) => e));
    refusedWithHint(await grpc.batch({ commands: [{ key: "k", value: "v", op: Op.PUT }] }).catch((e) => e));
    refusedWithHint(await connect.batch({ commands: [{ key: "k", value: "v", op: Op.PUT }] }).catch((e) => e));
    expect(performance.now() - started).toBeLessThan(2_000);
    expect((await connect.getStatus({})).id).toBe(0n);
    expect(fast.admission!.stats.refusedCalls).toBeGreaterThanOrEqual(4);
    fastKv.release();
    await held;
    expect(fast.admission!.inFlightCalls).toBe(0);
    expect((await connect.command({ key: "after", value: "v", op: Op.PUT })).err).toBe("OK");
  });

  test("a refused eRaft-shaped gRPC Command gets ErrTimeout (after a pause); a registered one the error", async () => {
    const held = fill(fast, fastKv);
    await Bun.sleep(20);
    const session = http2.connect(fast.url);
    try {
      const body = toBinary(CommandRequestSchema, create(CommandRequestSchema, { key: "k", value: "v", op: Op.PUT }));
      const envelope = Buffer.alloc(5 + body.length);
      envelope.writeUInt32BE(body.length, 1);
      envelope.set(body, 5);
      const { data, trailers } = await new Promise<{ data: Buffer; trailers: http2.IncomingHttpHeaders }>((resolve, reject) => {
        const stream = session.request({ ":method": "POST", ":path": "/kvraftpb.KVService/Command", "content-type": "application/grpc", te: "trailers" });
        const chunks: Buffer[] = [];
        let trailers: http2.IncomingHttpHeaders = {};
        stream.on("data", (c: Buffer) => chunks.push(c));
        stream.on("trailers", (t) => (trailers = t));
        stream.on("end", () => resolve({ data: Buffer.concat(chunks), trailers }));
        stream.on("error", reject);
        stream.end(envelope);
      });
      expect(trailers["grpc-status"]).toBe("0");
      expect(fromBinary(CommandResponseSchema, data.subarray(5)).err).toBe("ErrTimeout");
    } finally {
      session.destroy();
    }
    // kvraft's own Clerk over gRPC (a registered session) gets the proper error instead.
    const grpc = createClient(KVService, createGrpcTransport({ baseUrl: fast.url }));
    refusedWithHint(await grpc.command({ key: "k", value: "v", op: Op.PUT, clientId: 7n, commandId: 1n, registered: true }).catch((e) => e));
    fastKv.release();
    await held;
  });

  test("the adapter path (no fast lane) refuses the same way", async () => {
    const held = fill(adapterOnly, adapterKv);
    await Bun.sleep(20);
    const connect = createClient(KVService, createConnectTransport({ baseUrl: adapterOnly.url, httpVersion: "2", useBinaryFormat: true }));
    refusedWithHint(await connect.command({ key: "k", value: "v", op: Op.PUT }).catch((e) => e));
    expect((await connect.getStatus({})).id).toBe(0n);
    adapterKv.release();
    await held;
    expect(adapterOnly.admission!.inFlightCalls).toBe(0);
  });

  test("the Clerk waits out the hint on the same node and then gets through", async () => {
    // A server of its own: the others' refusals have lengthened their hints.
    const kv = heldBackend();
    const server = await start(kv, true);
    const held = fill(server, kv);
    for (let i = 0; i < 1000 && kv.held() < MAX_CALLS; i++) await Bun.sleep(5);
    const clerk = new Clerk({ addrs: [server.url.replace("http://", "")], transport: (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true }), batch: false });
    const put = clerk.put("through", "yes");
    for (let i = 0; i < 1000 && server.admission!.stats.refusedCalls === 0; i++) await Bun.sleep(5);
    expect(server.admission!.stats.refusedCalls).toBeGreaterThan(0);
    kv.release();
    await put;
    await held;
    expect(await clerk.get("through")).toBe("yes");
  }, 15_000);
});

describe("Admission", () => {
  const covers = () => true;

  test("admits up to its bound on calls, then refuses with resource_exhausted and a hint; release frees a slot", () => {
    const a = new Admission({ maxCalls: 3, covers });
    const tickets = [a.admit(10), a.admit(10), a.admit(10)];
    for (const t of tickets) expect(t).not.toBeInstanceOf(ConnectError);
    expect(a.full).toBe(true);
    const refused = a.admit(10);
    expect(refused).toBeInstanceOf(ConnectError);
    expect((refused as ConnectError).code).toBe(Code.ResourceExhausted);
    expect(Number((refused as ConnectError).metadata.get("retry-after-ms"))).toBeGreaterThanOrEqual(10);
    a.release(tickets[0] as never);
    expect(a.full).toBe(false);
    expect(a.inFlightBytes).toBe(20);
    expect(a.stats).toEqual({ admitted: 3, refusedCalls: 1, refusedBytes: 0 });
  });

  test("bounds request bytes in flight, but always lets one call in", () => {
    const a = new Admission({ maxCalls: 100, maxBytes: 1000, covers });
    const big = a.admit(5000);
    expect(big).not.toBeInstanceOf(ConnectError);
    expect(a.admit(1)).toBeInstanceOf(ConnectError);
    expect(a.stats.refusedBytes).toBe(1);
    a.release(big as never);
    expect(a.admit(600)).not.toBeInstanceOf(ConnectError);
    expect(a.admit(600)).toBeInstanceOf(ConnectError);
  });

  test("the bound on calls starts low and follows the answer rate up to maxCalls", async () => {
    const a = new Admission({ maxCalls: 10_000, covers });
    expect(a.callLimit).toBe(128);
    // Answer 128 calls every few ms for a while: the measured rate raises the bound.
    const until = Date.now() + 400;
    while (Date.now() < until) {
      const tickets = Array.from({ length: 128 }, () => a.admit(1));
      await Bun.sleep(2);
      for (const t of tickets) if (!(t instanceof ConnectError)) a.release(t);
    }
    expect(a.callLimit).toBeGreaterThan(128);
    expect(a.callLimit).toBeLessThanOrEqual(10_000);
  });

  test("covers only the KV methods that do work, not GetStatus or the peers", () => {
    expect(admittedKVMethod("/kvraftpb.KVService/Command")).toBe(true);
    expect(admittedKVMethod("/kvraftpb.KVService/Batch")).toBe(true);
    expect(admittedKVMethod("/kvraftpb.KVService/GetStatus")).toBe(false);
    expect(admittedKVMethod("/raftpb.RaftService/Stream")).toBe(false);
    expect(admittedKVMethod("/grpc.health.v1.Health/Check")).toBe(false);
  });
});
