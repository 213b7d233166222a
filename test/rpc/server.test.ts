// The preface-sniffing port: every protocol reaches the same handlers, CORS, bad input → Connect
// errors while the server stays up, port-in-use, graceful close. KVService runs over a stand-in typed as KVServer's own calls.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as net from "node:net";
import * as path from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { KVService, Op } from "../../src/gen/kvraftpb/kvraft_pb.ts";
import { InvalidArgumentError, OverloadedError, UnavailableError } from "../../src/kv/errors.ts";
import { registerKVService, type KVServiceBackend } from "../../src/kv/service.ts";
import { ListenError, RpcServer } from "../../src/rpc/server/server.ts";
import { statusDouble } from "./kv-double.ts";

/** A KVServer stand-in: a Map, plus keys that trigger each error path. */
function fakeBackend(): KVServiceBackend & { calls: number } {
  const data = new Map<string, string>();
  return {
    calls: 0,
    async command(args) {
      this.calls++;
      if (args.key === "slow") await Bun.sleep(300);
      if (args.key === "follower") return { err: "ErrWrongLeader", value: "", leaderId: 2 };
      if (args.key === "follower-unknown") return { err: "ErrWrongLeader", value: "" };
      if (args.value.length > 1000) throw new OverloadedError(`value of ${args.value.length} bytes exceeds the 1000-byte limit`);
      if (args.key === "") throw new InvalidArgumentError("key must not be empty");
      if (args.key === "busy") throw new UnavailableError("too many pending proposals; retry");
      if (args.key === "bug") throw new Error("boom");
      switch (args.op) {
        case "Get":
          return data.has(args.key) ? { err: "OK", value: data.get(args.key)! } : { err: "ErrNoKey", value: "" };
        case "Put":
          data.set(args.key, args.value);
          return { err: "OK", value: "" };
        case "Append":
          data.set(args.key, (data.get(args.key) ?? "") + args.value);
          return { err: "OK", value: "" };
        case "Delete":
          return data.delete(args.key) ? { err: "OK", value: "" } : { err: "ErrNoKey", value: "" };
      }
    },
    async registerSession() {
      return { err: "OK" as const, clientId: 1n };
    },
    async getStatus() {
      return statusDouble({
        id: 1, state: "Follower", term: 4, lastApplied: 10, commitIndex: 11, storageSize: 4096,
        leaderId: 2, members: [0, 1, 2], snapshotIndex: 3, keyCount: data.size,
      });
    },
  };
}

const ORIGIN = "http://app.example:8080";
let server: RpcServer;
let backend: ReturnType<typeof fakeBackend>;

beforeAll(async () => {
  backend = fakeBackend();
  server = await RpcServer.start({
    port: 0,
    routes: (router) => registerKVService(router, backend),
    corsOrigins: [ORIGIN],
    readMaxBytes: 64 * 1024,
  });
});
afterAll(async () => {
  await server.close();
});

function postJson(body: string, headers: Record<string, string> = {}) {
  return fetch(`${server.url}/kvraftpb.KVService/Command`, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...headers },
    body,
  });
}

describe("protocol matrix on one port", () => {
  test("Connect JSON over HTTP/1.1 (plain fetch, as curl does)", async () => {
    const put = await postJson(JSON.stringify({ key: "a", value: "1", op: "PUT", clientId: "5", commandId: "1" }));
    expect(put.status).toBe(200);
    expect(await put.json()).toEqual({ err: "OK" });
    const get = await postJson(JSON.stringify({ key: "a", op: "GET" }));
    expect(await get.json()).toEqual({ err: "OK", value: "1" });
  });

  const transports = {
    "Connect binary over h2c": () => createConnectTransport({ baseUrl: server.url, httpVersion: "2", useBinaryFormat: true }),
    "Connect JSON over h2c": () => createConnectTransport({ baseUrl: server.url, httpVersion: "2", useBinaryFormat: false }),
    "Connect binary over HTTP/1.1": () => createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }),
    "gRPC over h2c": () => createGrpcTransport({ baseUrl: server.url }),
    "gRPC-Web over HTTP/1.1": () => createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1" }),
    "gRPC-Web over h2c": () => createGrpcWebTransport({ baseUrl: server.url, httpVersion: "2" }),
  };
  for (const [name, make] of Object.entries(transports)) {
    test(name, async () => {
      const client = createClient(KVService, make());
      const key = `k-${name}`;
      expect((await client.command({ key, value: "x", op: Op.PUT })).err).toBe("OK");
      expect((await client.command({ key, value: "y", op: Op.APPEND })).err).toBe("OK");
      expect(await client.command({ key, op: Op.GET })).toMatchObject({ err: "OK", value: "xy" });
      expect((await client.command({ key, op: Op.DELETE })).err).toBe("OK");
      expect((await client.command({ key, op: Op.GET })).err).toBe("ErrNoKey");
      const status = await client.getStatus({});
      expect(status).toMatchObject({ id: 1n, state: "Follower", term: 4n, leader: { case: "leaderId", value: 2n }, members: [0n, 1n, 2n] });
    });
  }

  test("@grpc/grpc-js with proto-loader reading proto/kvraftpb/kvraft.proto", async () => {
    const definition = protoLoader.loadSync(path.join(import.meta.dir, "../../proto/kvraftpb/kvraft.proto"), {
      longs: String,
      enums: String,
      defaults: true,
    });
    const loaded = grpc.loadPackageDefinition(definition) as any;
    const client = new loaded.kvraftpb.KVService(`127.0.0.1:${server.port}`, grpc.credentials.createInsecure());
    const call = (request: object) =>
      new Promise<any>((resolve, reject) => client.Command(request, (error: Error | null, response: any) => (error ? reject(error) : resolve(response))));
    try {
      expect((await call({ key: "g", value: "grpc", op: "PUT", client_id: 9, command_id: 1 })).err).toBe("OK");
      expect(await call({ key: "g", op: "GET" })).toMatchObject({ err: "OK", value: "grpc" });
    } finally {
      client.close();
    }
  });

  test("ErrWrongLeader carries the leader hint only when known", async () => {
    const client = createClient(KVService, createConnectTransport({ baseUrl: server.url, httpVersion: "2" }));
    expect(await client.command({ key: "follower", op: Op.GET })).toMatchObject({ err: "ErrWrongLeader", leader: { case: "leaderId", value: 2n } });
    const unknown = await client.command({ key: "follower-unknown", op: Op.GET });
    expect(unknown.err).toBe("ErrWrongLeader");
    expect(unknown.leader.case).toBeUndefined();
  });
});

describe("CORS", () => {
  test("preflight from an allowed origin: 204 with the Connect headers", async () => {
    const response = await fetch(`${server.url}/kvraftpb.KVService/Command`, {
      method: "OPTIONS",
      headers: { Origin: ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type,connect-protocol-version" },
    });
    expect(response.status).toBe(204);
    expect(response.headers.get("access-control-allow-origin")).toBe(ORIGIN);
    expect(response.headers.get("access-control-allow-methods")).toContain("POST");
    const allowHeaders = response.headers.get("access-control-allow-headers")!.toLowerCase();
    for (const header of ["content-type", "connect-protocol-version", "x-grpc-web", "authorization"]) expect(allowHeaders).toContain(header);
    expect(Number(response.headers.get("access-control-max-age"))).toBeGreaterThan(0);
  });

  test("responses to an allowed origin carry Allow-Origin, Vary and Expose-Headers", async () => {
    const response = await postJson(JSON.stringify({ key: "a", op: "GET" }), { Origin: ORIGIN });
    expect(response.status).toBe(200);
    expect(response.headers.get("access-control-allow-origin")).toBe(ORIGIN);
    expect(response.headers.get("vary")).toContain("Origin");
    expect(response.headers.get("access-control-expose-headers")!.toLowerCase()).toContain("grpc-status");
  });

  test("another origin gets no CORS headers and a 403 preflight that says how to allow it", async () => {
    const preflight = await fetch(`${server.url}/kvraftpb.KVService/Command`, {
      method: "OPTIONS",
      headers: { Origin: "http://evil.example", "Access-Control-Request-Method": "POST" },
    });
    expect(preflight.status).toBe(403);
    expect(await preflight.text()).toContain("--cors-origin http://evil.example");
    const response = await postJson(JSON.stringify({ key: "a", op: "GET" }), { Origin: "http://evil.example" });
    expect(response.headers.get("access-control-allow-origin")).toBeNull();
  });
});

describe("bad input → Connect errors, and the server stays up", () => {
  async function expectConnectError(response: Response, code: string | string[], messagePart: RegExp) {
    const body = (await response.json()) as { code: string; message: string };
    expect(Array.isArray(code) ? code : [code]).toContain(body.code);
    expect(body.message).toMatch(messagePart);
    expect(response.status).toBeGreaterThanOrEqual(400);
  }

  test("malformed JSON", async () => {
    await expectConnectError(await postJson("{not json"), "invalid_argument", /json|JSON|parse/);
  });
  test("unknown op by number and by name", async () => {
    await expectConnectError(await postJson(JSON.stringify({ key: "a", op: 7 })), "invalid_argument", /unknown op 7/);
    // Must not fall back to the default op (PUT): that would overwrite "a".
    await expectConnectError(await postJson(JSON.stringify({ key: "a", op: "TRUNCATE" })), "invalid_argument", /TRUNCATE/);
  });
  test("unknown JSON field", async () => {
    await expectConnectError(await postJson(JSON.stringify({ key: "a", op: "GET", extra: 1 })), "invalid_argument", /"extra" is unknown/);
  });
  test("wrong types", async () => {
    await expectConnectError(await postJson(JSON.stringify({ key: 12, op: "GET" })), "invalid_argument", /key/);
    await expectConnectError(await postJson(JSON.stringify({ key: "a", clientId: "x" })), "invalid_argument", /client/i);
    await expectConnectError(await postJson(JSON.stringify([1, 2])), "invalid_argument", /./);
  });
  test("malformed protobuf", async () => {
    const response = await fetch(`${server.url}/kvraftpb.KVService/Command`, {
      method: "POST",
      headers: { "Content-Type": "application/proto" },
      body: new Uint8Array([0x0a, 0x50, 0x01]), // key field claims 80 bytes, has 1
    });
    // connect-es reports undecodable binary as "internal"; the message names the cause.
    await expectConnectError(response, ["invalid_argument", "internal"], /parse binary/);
  });
  test("request over readMaxBytes", async () => {
    const body = JSON.stringify({ key: "a", value: "v".repeat(70 * 1024), op: "PUT" });
    await expectConnectError(await postJson(body), "resource_exhausted", /exceed|max|limit/i);
  });
  test("KVError codes map to Connect codes with their message", async () => {
    const client = createClient(KVService, createConnectTransport({ baseUrl: server.url, httpVersion: "2" }));
    const cases: [object, Code, RegExp][] = [
      [{ key: "big", value: "v".repeat(2000), op: Op.PUT }, Code.ResourceExhausted, /2000 bytes/],
      [{ key: "", op: Op.GET }, Code.InvalidArgument, /key must not be empty/],
      [{ key: "busy", op: Op.PUT }, Code.Unavailable, /pending proposals/],
      [{ key: "bug", op: Op.PUT }, Code.Internal, /boom/],
    ];
    for (const [request, code, message] of cases) {
      const error = await client.command(request).then(() => null, (e: unknown) => ConnectError.from(e));
      expect(error?.code).toBe(code);
      expect(error?.rawMessage).toMatch(message);
    }
  });
  test("a raw non-HTTP peer and a half-sent preface do not disturb the server", async () => {
    await new Promise<void>((resolve) => {
      const socket = net.connect(server.port, "127.0.0.1", () => socket.write("garbage\r\n\r\n"));
      socket.on("close", () => resolve());
      socket.on("error", () => resolve());
      socket.on("data", () => {});
    });
    const half = net.connect(server.port, "127.0.0.1", () => half.write("PRI * HTTP/2.0\r\n"));
    await Bun.sleep(50);
    half.destroy();
    const get = await postJson(JSON.stringify({ key: "a", op: "GET" }));
    expect(await get.json()).toEqual({ err: "OK", value: "1" });
  });
});

describe("lifecycle", () => {
  test("a taken port is a ListenError port_in_use", async () => {
    const error = await RpcServer.start({ port: server.port, routes: () => {} }).then(() => null, (e: unknown) => e);
    expect(error).toBeInstanceOf(ListenError);
    expect((error as ListenError).code).toBe("port_in_use");
    expect((error as ListenError).message).toContain(`${server.port}`);
  });

  test("close() lets in-flight calls finish on both HTTP versions, then refuses connections", async () => {
    const local = await RpcServer.start({ port: 0, routes: (router) => registerKVService(router, fakeBackend()) });
    const h2 = createClient(KVService, createConnectTransport({ baseUrl: local.url, httpVersion: "2" }));
    const h1 = createClient(KVService, createConnectTransport({ baseUrl: local.url, httpVersion: "1.1" }));
    const slow = [h2.command({ key: "slow", op: Op.GET }), h1.command({ key: "slow", op: Op.GET })];
    await Bun.sleep(100);
    await local.close();
    const results = await Promise.all(slow);
    expect(results.map((r) => r.err)).toEqual(["ErrNoKey", "ErrNoKey"]);
    const refused = await fetch(`${local.url}/kvraftpb.KVService/Command`, { method: "POST", body: "{}" }).then(() => false, () => true);
    expect(refused).toBe(true);
  });

  test("a backend getter that is not ready yet answers unavailable", async () => {
    let ready: KVServiceBackend | undefined;
    const local = await RpcServer.start({ port: 0, routes: (router) => registerKVService(router, () => ready) });
    try {
      const client = createClient(KVService, createConnectTransport({ baseUrl: local.url, httpVersion: "1.1" }));
      const error = await client.command({ key: "a", op: Op.GET }).then(() => null, (e: unknown) => ConnectError.from(e));
      expect(error?.code).toBe(Code.Unavailable);
      ready = fakeBackend();
      expect((await client.command({ key: "a", op: Op.GET })).err).toBe("ErrNoKey");
    } finally {
      await local.close();
    }
  });
});

describe("connection limits", () => {
  test("at maxConnections the oldest connection that never completed a request makes room; served ones are kept", async () => {
    const local = await RpcServer.start({ port: 0, routes: (router) => registerKVService(router, fakeBackend()), maxConnections: 2 });
    const held: net.Socket[] = [];
    const closed = new Set<net.Socket>();
    const open = async (): Promise<net.Socket> => {
      const socket = net.connect(local.port, "127.0.0.1");
      socket.on("close", () => closed.add(socket));
      socket.on("error", () => {});
      await new Promise((resolve) => socket.once("connect", resolve));
      held.push(socket);
      return socket;
    };
    const ask = (socket: net.Socket) =>
      new Promise<string>((resolve) => {
        const body = JSON.stringify({ key: "a", op: "GET" });
        socket.write(`POST /kvraftpb.KVService/Command HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
        socket.once("data", (data) => resolve(String(data)));
        socket.once("close", () => resolve("closed"));
      });
    try {
      // Two silent sockets fill the port; a third client evicts the oldest and is served.
      const silent = await open();
      await open();
      await Bun.sleep(50);
      const third = await open();
      expect(await ask(third)).toContain("ErrNoKey");
      await Bun.sleep(50);
      expect(closed.has(silent)).toBe(true);
      expect(local.connectionStats.evicted).toBe(1);
      // Both open connections have now completed a request (the second one asks too): nothing to evict.
      expect(await ask(held[1]!)).toContain("ErrNoKey");
      const fourth = await open();
      expect(await ask(fourth)).toBe("closed");
      expect(local.connectionStats.refused).toBe(1);
      expect(closed.has(third)).toBe(false);
    } finally {
      for (const socket of held) socket.destroy();
      await local.close();
    }
  });
});
