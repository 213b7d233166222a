// A body that does not parse (truncated protobuf, invalid UTF-8 in a string, a lone surrogate in
// JSON) is answered invalid_argument in every protocol and on both paths, and the server stays up.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as http2 from "node:http2";
import { registerKVService, type KVServiceBackend } from "../../src/kv/service.ts";
import { RpcServer } from "../../src/rpc/server/server.ts";
import { statusDouble } from "./kv-double.ts";

let calls = 0;
const backend: KVServiceBackend = {
  async command() {
    calls++;
    return { err: "OK", value: "" };
  },
  async registerSession() {
    return { err: "OK", clientId: 1n };
  },
  async getStatus() {
    return statusDouble();
  },
};

const PATH = "/kvraftpb.KVService/Command";
const TRUNCATED = Uint8Array.of(0x0a, 0x05, 0x61); // key: 5 bytes promised, 1 sent
const BAD_UTF8 = Uint8Array.of(0x0a, 0x02, 0xff, 0xfe); // key: not UTF-8
const GOOD = Uint8Array.of(0x0a, 0x01, 0x6b); // key "k"

function envelope(message: Uint8Array): Uint8Array {
  const out = new Uint8Array(5 + message.length);
  new DataView(out.buffer).setUint32(1, message.length, false);
  out.set(message, 5);
  return out;
}

/** One HTTP/2 request; the answer's status, headers, trailers and body. */
function h2(port: number, headers: Record<string, string>, body: Uint8Array): Promise<{ headers: http2.IncomingHttpHeaders; trailers: http2.IncomingHttpHeaders; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on("error", reject);
    const stream = session.request({ ":method": "POST", ":path": PATH, ...headers });
    let head: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    stream.on("response", (h) => (head = h));
    stream.on("trailers", (t) => (trailers = t));
    stream.on("data", (chunk: Buffer) => chunks.push(chunk));
    stream.on("end", () => {
      session.close();
      resolve({ headers: head, trailers, body: Buffer.concat(chunks) });
    });
    stream.on("error", reject);
    stream.end(body);
  });
}

let fast: RpcServer;
let standard: RpcServer;
beforeAll(async () => {
  fast = await RpcServer.start({ port: 0, routes: (router) => registerKVService(router, backend) });
  standard = await RpcServer.start({ port: 0, routes: (router) => registerKVService(router, backend), fastLane: false });
});
afterAll(async () => {
  await Promise.all([fast.close(), standard.close()]);
});

describe("a body that does not parse is invalid_argument", () => {
  for (const [name, body, message] of [
    ["truncated protobuf", TRUNCATED, /premature EOF/],
    ["invalid UTF-8", BAD_UTF8, /not valid for encoding utf-8/],
  ] as const) {
    test(`${name}: Connect over HTTP/1.1 (both paths) and HTTP/2`, async () => {
      for (const server of [fast, standard]) {
        const response = await fetch(`${server.url}${PATH}`, { method: "POST", headers: { "content-type": "application/proto" }, body });
        expect(response.status).toBe(400);
        const json = (await response.json()) as { code: string; message: string };
        expect(json.code).toBe("invalid_argument");
        expect(json.message).toMatch(message);
      }
      const answer = await h2(fast.port, { "content-type": "application/proto" }, body);
      expect(Number(answer.headers[":status"])).toBe(400);
      expect(JSON.parse(answer.body.toString()).code).toBe("invalid_argument");
    });

    test(`${name}: gRPC and gRPC-Web`, async () => {
      const grpc = await h2(fast.port, { "content-type": "application/grpc", te: "trailers" }, envelope(body));
      expect(grpc.trailers["grpc-status"] ?? grpc.headers["grpc-status"]).toBe("3");
      expect(decodeURIComponent(String(grpc.trailers["grpc-message"] ?? grpc.headers["grpc-message"]))).toMatch(message);
      const web = await fetch(`${fast.url}${PATH}`, { method: "POST", headers: { "content-type": "application/grpc-web+proto" }, body: envelope(body) });
      const text = Buffer.from(await web.arrayBuffer()).toString("latin1");
      expect(text).toMatch(/grpc-status: ?3/);
    });
  }

  test("a lone surrogate in JSON: the fast lane refuses it as the library does", async () => {
    for (const server of [fast, standard]) {
      const response = await fetch(`${server.url}${PATH}`, { method: "POST", headers: { "content-type": "application/json" }, body: '{"key":"\\udc00","op":"PUT"}' });
      expect(response.status).toBe(400);
      expect(((await response.json()) as { code: string }).code).toBe("invalid_argument");
    }
  });

  test("a gRPC message with the compressed flag but no grpc-encoding is refused, not taken (INTERNAL, as the gRPC spec says)", async () => {
    const before = calls;
    const flagged = envelope(GOOD);
    flagged[0] = 1;
    const grpc = await h2(fast.port, { "content-type": "application/grpc", te: "trailers" }, flagged);
    expect(grpc.trailers["grpc-status"]).toBe("13");
    expect(decodeURIComponent(String(grpc.trailers["grpc-message"]))).toMatch(/compressed/);
    expect(calls).toBe(before);
  });

  test("well-formed binary requests still reach the handler on every path", async () => {
    const before = calls;
    expect((await fetch(`${standard.url}${PATH}`, { method: "POST", headers: { "content-type": "application/proto" }, body: GOOD })).status).toBe(200);
    const grpc = await h2(fast.port, { "content-type": "application/grpc", te: "trailers" }, envelope(GOOD));
    expect(grpc.trailers["grpc-status"]).toBe("0");
    expect(calls).toBe(before + 2);
  });
});
