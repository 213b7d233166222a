// The HTTP/2 fast lane answers exactly what the standard path (node:http2 compat + connect-node's
// adapter) answers: the same status, headers, body bytes and trailers, for successes and every
// error, in Connect (binary, JSON), gRPC and gRPC-Web, both on the node's HTTP/2 engine and on
// node:http2's raw stream (h2Engine: false, and the peers' path); connect-node and @grpc/grpc-js
// clients see the same results; calls the lane does not take still work through the adapter.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as http2 from "node:http2";
import * as os from "node:os";
import * as path from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { CommandRequestSchema, KVService, Op } from "../../src/gen/kvraftpb/kvraft_pb.ts";
import { OverloadedError } from "../../src/kv/errors.ts";
import { registerKVService, type KVServiceBackend } from "../../src/kv/service.ts";
import { makeDevCertificates } from "../../src/cli/dev-certs.ts";
import { RpcServer } from "../../src/rpc/server/server.ts";
import { statusDouble } from "./kv-double.ts";

const BIG = "b".repeat(5000);

function backend(): KVServiceBackend {
  const data = new Map<string, string>([["big", BIG]]);
  return {
    async command(args) {
      if (args.key === "follower") return { err: "ErrWrongLeader", value: "", leaderId: 2 };
      if (args.key === "busy") throw new OverloadedError("too many commands in flight; retry");
      if (args.key === "bug") throw new Error("boom");
      if (args.op === "Get") return data.has(args.key) ? { err: "OK", value: data.get(args.key)! } : { err: "ErrNoKey", value: "" };
      data.set(args.key, args.value);
      return { err: "OK", value: "" };
    },
    async registerSession() {
      return { err: "OK" as const, clientId: 1n };
    },
    async getStatus() {
      return statusDouble();
    },
  };
}

let fast: RpcServer;
let fastNode: RpcServer;
let standard: RpcServer;

beforeAll(async () => {
  const routes = (router: Parameters<typeof registerKVService>[0]) => registerKVService(router, backend());
  const corsOrigins = ["http://app.example"];
  fast = await RpcServer.start({ port: 0, routes, readMaxBytes: 16 * 1024, corsOrigins });
  fastNode = await RpcServer.start({ port: 0, routes, readMaxBytes: 16 * 1024, corsOrigins, h2Engine: false });
  standard = await RpcServer.start({ port: 0, routes, readMaxBytes: 16 * 1024, corsOrigins, fastLane: false });
});
afterAll(async () => {
  await Promise.all([fast.close(), fastNode.close(), standard.close()]);
});

interface Raw {
  status: number;
  headers: Record<string, string>;
  body: string;
  trailers: Record<string, string>;
}

/** One raw HTTP/2 request; the answer with `date` left out (it is the only field that may differ). */
async function raw(url: string, headers: Record<string, string>, body: Uint8Array | string, ca?: Buffer): Promise<Raw> {
  const session = http2.connect(url, ca === undefined ? {} : { ca });
  try {
    return await new Promise<Raw>((resolve, reject) => {
      const stream = session.request({ ":method": "POST", ":path": "/kvraftpb.KVService/Command", ...headers });
      const result: Raw = { status: 0, headers: {}, body: "", trailers: {} };
      const chunks: Buffer[] = [];
      const pick = (h: http2.IncomingHttpHeaders, into: Record<string, string>) => {
        for (const [k, v] of Object.entries(h)) if (k !== "date" && k !== ":status" && v !== undefined) into[k] = String(v);
      };
      stream.on("response", (h) => {
        result.status = Number(h[":status"]);
        pick(h, result.headers);
      });
      stream.on("trailers", (h) => pick(h, result.trailers));
      stream.on("data", (c: Buffer) => chunks.push(c));
      stream.on("end", () => {
        result.body = Buffer.concat(chunks).toString("hex");
        resolve(result);
      });
      stream.on("error", reject);
      stream.end(body);
    });
  } finally {
    session.close();
  }
}

function envelope(payload: Uint8Array, flags = 0): Uint8Array {
  const out = new Uint8Array(5 + payload.length);
  out[0] = flags;
  new DataView(out.buffer).setUint32(1, payload.length);
  out.set(payload, 5);
  return out;
}

const proto = (fields: Parameters<typeof create<typeof CommandRequestSchema>>[1]) => toBinary(CommandRequestSchema, create(CommandRequestSchema, fields));
const json = (fields: object) => JSON.stringify(fields);

const CONNECT_PROTO = { "content-type": "application/proto", "connect-protocol-version": "1" };
const CONNECT_JSON = { "content-type": "application/json", "connect-protocol-version": "1" };
const GRPC = { "content-type": "application/grpc+proto", te: "trailers" };
const GRPC_JSON = { "content-type": "application/grpc+json", te: "trailers" };
const GRPC_WEB = { "content-type": "application/grpc-web+proto", "x-grpc-web": "1" };

const enc = new TextEncoder();
const cases: [string, Record<string, string>, Uint8Array | string][] = [
  ["Connect binary Put", CONNECT_PROTO, proto({ key: "a", value: "1", op: Op.PUT })],
  ["Connect binary Get of a big value, gzip accepted", { ...CONNECT_PROTO, "accept-encoding": "gzip" }, proto({ key: "big", op: Op.GET })],
  ["Connect binary Get of a big value, br preferred", { ...CONNECT_PROTO, "accept-encoding": "br, gzip" }, proto({ key: "big", op: Op.GET })],
  ["Connect JSON Get miss", CONNECT_JSON, json({ key: "nope", op: "GET" })],
  ["Connect JSON wrong leader with a hint", CONNECT_JSON, json({ key: "follower", op: "GET" })],
  ["Connect JSON overload", CONNECT_JSON, json({ key: "busy", op: "PUT" })],
  ["Connect JSON internal error", CONNECT_JSON, json({ key: "bug", op: "PUT" })],
  ["Connect JSON unknown op", CONNECT_JSON, json({ key: "x", op: 9 })],
  ["Connect JSON malformed", CONNECT_JSON, "{not json"],
  ["Connect JSON unknown field", CONNECT_JSON, json({ key: "x", opp: "GET" })],
  ["Connect JSON with a deadline", { ...CONNECT_JSON, "connect-timeout-ms": "5000" }, json({ key: "a", op: "GET" })],
  ["Connect binary, no protocol header", { "content-type": "application/proto" }, proto({ key: "a", op: Op.GET })],
  ["Connect binary garbage", CONNECT_PROTO, new Uint8Array([0xff, 0xff, 0xff])],
  ["Connect JSON over the size limit", CONNECT_JSON, json({ key: "x", value: "v".repeat(20_000), op: "PUT" })],
  ["gRPC Put (registered)", GRPC, envelope(proto({ key: "g", value: "1", op: Op.PUT, registered: true }))],
  ["gRPC Get, gzip accepted", { ...GRPC, "grpc-accept-encoding": "gzip" }, envelope(proto({ key: "g", op: Op.GET }))],
  ["gRPC Get of a big value, gzip accepted", { ...GRPC, "grpc-accept-encoding": "gzip,br" }, envelope(proto({ key: "big", op: Op.GET }))],
  ["gRPC overload (registered)", GRPC, envelope(proto({ key: "busy", op: Op.PUT, registered: true }))],
  ["gRPC internal error (registered)", GRPC, envelope(proto({ key: "bug", op: Op.PUT, registered: true }))],
  ["gRPC eRaft-shaped refusal (an answer, not an error)", GRPC, envelope(proto({ key: "x", op: 9 as Op }))],
  ["gRPC with a deadline", { ...GRPC, "grpc-timeout": "5S" }, envelope(proto({ key: "g", op: Op.GET }))],
  ["gRPC JSON", GRPC_JSON, envelope(enc.encode(json({ key: "g", op: "GET" })))],
  ["gRPC empty body", GRPC, new Uint8Array(0)],
  ["gRPC two messages", GRPC, new Uint8Array([...envelope(proto({ key: "g", op: Op.GET })), ...envelope(proto({ key: "g", op: Op.GET }))])],
  ["gRPC a compressed flag without compression", GRPC, envelope(proto({ key: "g", op: Op.GET }), 1)],
  ["gRPC truncated envelope", GRPC, envelope(proto({ key: "g", op: Op.GET })).subarray(0, 8)],
  ["gRPC garbage message", GRPC, envelope(new Uint8Array([0xff, 0xff]))],
  ["gRPC over the size limit", GRPC, envelope(proto({ key: "x", value: "v".repeat(20_000), op: Op.PUT }))],
  ["gRPC-Web Put", GRPC_WEB, envelope(proto({ key: "w", value: "1", op: Op.PUT }))],
  ["gRPC-Web overload", GRPC_WEB, envelope(proto({ key: "busy", op: Op.PUT }))],
  ["gRPC-Web Get of a big value, gzip accepted", { ...GRPC_WEB, "grpc-accept-encoding": "gzip" }, envelope(proto({ key: "big", op: Op.GET }))],
  ["gRPC-Web empty body", GRPC_WEB, new Uint8Array(0)],
  ["Connect JSON from an allowed browser origin", { ...CONNECT_JSON, origin: "http://app.example" }, json({ key: "a", op: "GET" })],
  ["Connect JSON refusal from an allowed browser origin", { ...CONNECT_JSON, origin: "http://app.example" }, json({ key: "busy", op: "PUT" })],
  ["gRPC-Web from an allowed browser origin", { ...GRPC_WEB, origin: "http://app.example" }, envelope(proto({ key: "w", op: Op.GET }))],
  ["gRPC-Web empty body from an allowed browser origin", { ...GRPC_WEB, origin: "http://app.example" }, new Uint8Array(0)],
  ["Connect JSON from an origin not on the list", { ...CONNECT_JSON, origin: "http://evil.example" }, json({ key: "a", op: "GET" })],
];

describe("the HTTP/2 lane answers as the Connect adapter does", () => {
  for (const [lane, server] of [
    ["engine", () => fast],
    ["node:http2", () => fastNode],
  ] as const) {
    for (const [name, headers, body] of cases) {
      test(`${lane}: ${name}`, async () => {
        const before = server().stats.h2Calls;
        const [a, b] = [await raw(server().url, headers, body), await raw(standard.url, headers, body)];
        expect(a).toEqual(b);
        expect(server().stats.h2Calls).toBe(before + 1);
      });
    }
  }

  test("calls it does not take (compressed requests, GET) reach the adapter and are answered", async () => {
    const before = fast.stats.h2Calls;
    const gz = new Uint8Array(Bun.gzipSync(enc.encode(json({ key: "a", op: "GET" }))));
    const a = await raw(fast.url, { ...CONNECT_JSON, "content-encoding": "gzip" }, gz);
    const b = await raw(standard.url, { ...CONNECT_JSON, "content-encoding": "gzip" }, gz);
    expect(a).toEqual(b);
    expect(a.status).toBe(200);
    expect(fast.stats.h2Calls).toBe(before);
    expect(standard.stats.h2Calls).toBe(0);
  });
});

describe("over TLS", () => {
  test("the lane serves h2 over TLS and answers as the adapter does there", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvraft-h2lane-"));
    try {
      const certs = await makeDevCertificates(dir, 1);
      const tls = { cert: fs.readFileSync(certs.nodes[0]!.cert), key: fs.readFileSync(certs.nodes[0]!.key), ca: [] };
      const ca = fs.readFileSync(certs.ca);
      const routes = (router: Parameters<typeof registerKVService>[0]) => registerKVService(router, backend());
      const [secureFast, secureStandard] = await Promise.all([
        RpcServer.start({ port: 0, routes, tls, host: "localhost" }),
        RpcServer.start({ port: 0, routes, tls, host: "localhost", fastLane: false }),
      ]);
      try {
        for (const [headers, body] of [
          [CONNECT_PROTO, proto({ key: "t", value: "1", op: Op.PUT })],
          [GRPC, envelope(proto({ key: "busy", op: Op.PUT, registered: true }))],
        ] as const) {
          const a = await raw(secureFast.url, headers, body, ca);
          const b = await raw(secureStandard.url, headers, body, ca);
          expect(a).toEqual(b);
        }
        expect(secureFast.stats.h2Calls).toBe(2);
        expect(secureFast.url.startsWith("https://")).toBe(true);
      } finally {
        await Promise.all([secureFast.close(), secureStandard.close()]);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("clients over the lane", () => {
  const transports = {
    "Connect binary": (url: string) => createConnectTransport({ baseUrl: url, httpVersion: "2", useBinaryFormat: true }),
    "Connect JSON": (url: string) => createConnectTransport({ baseUrl: url, httpVersion: "2" }),
    gRPC: (url: string) => createGrpcTransport({ baseUrl: url }),
    "gRPC-Web": (url: string) => createGrpcWebTransport({ baseUrl: url, httpVersion: "2" }),
  };
  for (const [name, transport] of Object.entries(transports)) {
    test(`connect-node ${name}: values, hints and errors with codes`, async () => {
      const client = createClient(KVService, transport(fast.url));
      expect((await client.command({ key: `c-${name}`, value: "x", op: Op.PUT, registered: true })).err).toBe("OK");
      expect(await client.command({ key: `c-${name}`, op: Op.GET })).toMatchObject({ err: "OK", value: "x" });
      expect(await client.command({ key: "big", op: Op.GET })).toMatchObject({ err: "OK", value: BIG });
      expect(await client.command({ key: "follower", op: Op.GET })).toMatchObject({ err: "ErrWrongLeader", leader: { case: "leaderId", value: 2n } });
      const error = await client.command({ key: "busy", op: Op.PUT, registered: true }, { timeoutMs: 3000 }).catch((e) => ConnectError.from(e));
      expect(error).toBeInstanceOf(ConnectError);
      expect((error as ConnectError).code).toBe(Code.ResourceExhausted);
    });
  }

  test("@grpc/grpc-js: the same answers and status codes from both paths", async () => {
    const definition = protoLoader.loadSync(path.join(import.meta.dir, "../../proto/kvraftpb/kvraft.proto"), { longs: String, enums: String, defaults: true });
    const loaded = grpc.loadPackageDefinition(definition) as any;
    const run = async (port: number) => {
      const client = new loaded.kvraftpb.KVService(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
      const call = (request: object) =>
        new Promise<unknown>((resolve) =>
          client.Command(request, (error: grpc.ServiceError | null, response: unknown) => resolve(error ? { code: error.code, details: error.details } : response)),
        );
      try {
        return [
          await call({ key: "gj", value: "v", op: "PUT", client_id: 9, command_id: 1 }),
          await call({ key: "gj", op: "GET" }),
          await call({ key: "big", op: "GET" }),
          await call({ key: "busy", op: "PUT", registered: true }),
          await call({ key: "bug", op: "PUT", registered: true }),
          await call({ key: "x", op: "DELETE", registered: true }),
        ];
      } finally {
        client.close();
      }
    };
    const before = fast.stats.h2Calls;
    const [a, b] = [await run(fast.port), await run(standard.port)];
    expect(a).toEqual(b);
    expect((a[3] as { code: number }).code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(fast.stats.h2Calls).toBe(before + 6);
  });
});
