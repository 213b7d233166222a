// The node's HTTP/2 engine on real sockets: real clients (connect-node, node:http2, curl) get their
// answers; answers larger than the client's windows wait for its WINDOW_UPDATEs; many streams in
// flight; streams the engine does not serve (odd requests, plain HTTP routes) are relayed to
// node:http2; peers' tagged connections land on node:http2; and malformed frames, prefaces and
// header blocks end in GOAWAY or RST_STREAM with the RFC's code while the server serves on.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as http2 from "node:http2";
import * as net from "node:net";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { CommandRequestSchema, CommandResponseSchema, KVService, Op } from "../../src/gen/kvraftpb/kvraft_pb.ts";
import { registerKVService, type KVServiceBackend } from "../../src/kv/service.ts";
import { RpcServer } from "../../src/rpc/server/server.ts";
import { PEER_TAG } from "../../src/rpc/server/peer-tag.ts";
import { dialPeer } from "../../src/rpc/peers/peer-session.ts";
import { ConnectTransport } from "../../src/rpc/peers/connect-transport.ts";
import { CLIENT_PREFACE, ErrorCode, FLAG_END_HEADERS, FLAG_END_STREAM, FLAG_PADDED, FrameType, dataFrame, frameHeader, settingsFrame } from "../../src/rpc/h2/frames.ts";
import { encodeHeaders } from "../../src/rpc/h2/hpack-encoder.ts";
import { statusDouble } from "./kv-double.ts";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { X509Certificate } from "node:crypto";
import { makeDevCertificates } from "../../src/cli/dev-certs.ts";
import { clientGate } from "../../src/rpc/server/client-auth.ts";

const HUGE = "h".repeat(300_000);
const PAGE = "p".repeat(200_000);

function backend(): KVServiceBackend {
  const data = new Map<string, string>([["huge", HUGE]]);
  return {
    async command(args) {
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

let server: RpcServer;
beforeAll(async () => {
  server = await RpcServer.start({
    port: 0,
    routes: (router) => registerKVService(router, backend()),
    httpRoutes: (request, response) => {
      if (request.url !== "/page") return false;
      (response as unknown as { writeHead(s: number, h: object): void; end(b: string): void }).writeHead(200, { "content-type": "text/plain" });
      (response as unknown as { end(b: string): void }).end(PAGE);
      return true;
    },
  });
});
afterAll(async () => {
  await server.close();
});

const CONNECT_PROTO = { "content-type": "application/proto", "connect-protocol-version": "1" };
const getHuge = () => toBinary(CommandRequestSchema, create(CommandRequestSchema, { key: "huge", op: Op.GET }));

/** One request on a node:http2 session: status, body, and the stream's close code. */
function request(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders, body?: Uint8Array): Promise<{ status: number; body: Buffer; rstCode: number }> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ":method": "POST", ":path": "/kvraftpb.KVService/Command", ...headers });
    let status = 0;
    const chunks: Buffer[] = [];
    stream.on("response", (h) => {
      status = Number(h[":status"]);
    });
    stream.on("data", (c: Buffer) => chunks.push(c));
    stream.on("error", reject);
    stream.on("close", () => resolve({ status, body: Buffer.concat(chunks), rstCode: stream.rstCode ?? 0 }));
    stream.end(body);
  });
}

describe("real clients", () => {
  test("connect-node over the engine; the connection is the engine's", async () => {
    const before = server.stats.h2Calls;
    const client = createClient(KVService, createConnectTransport({ baseUrl: server.url, httpVersion: "2", useBinaryFormat: true }));
    expect((await client.command({ key: "a", value: "1", op: Op.PUT })).err).toBe("OK");
    expect((await client.command({ key: "a", op: Op.GET })).value).toBe("1");
    expect(server.stats.h2Calls).toBe(before + 2);
    expect(server.stats.h2EngineConnections).toBeGreaterThan(0);
  });

  test("curl --http2-prior-knowledge: a Connect JSON call", async () => {
    // Asynchronous: the server answers from this very process.
    const child = Bun.spawn([
      "curl", "-sS", "--http2-prior-knowledge", "-H", "content-type: application/json", "-H", "connect-protocol-version: 1",
      "--data", JSON.stringify({ key: "a", op: "GET" }), `${server.url}/kvraftpb.KVService/Command`, "-w", "\\n%{http_version} %{http_code}",
    ], { stdout: "pipe" });
    const out = await new Response(child.stdout).text();
    await child.exited;
    const [body, status] = out.split("\n");
    expect(JSON.parse(body!)).toMatchObject({ err: "OK", value: "1" });
    expect(status).toBe("2 200");
  });

  test("an answer larger than the client's windows arrives whole (engine and relayed)", async () => {
    // 16 KiB stream window: the 300 KB answer needs ~18 WINDOW_UPDATEs from the client.
    const session = http2.connect(server.url, { settings: { initialWindowSize: 16_384 } });
    try {
      const calls = await Promise.all([request(session, CONNECT_PROTO, getHuge()), request(session, CONNECT_PROTO, getHuge())]);
      for (const call of calls) {
        expect(call.status).toBe(200);
        expect(fromBinary(CommandResponseSchema, call.body).value).toBe(HUGE);
      }
      const page = await new Promise<Buffer>((resolve, reject) => {
        const stream = session.request({ ":method": "GET", ":path": "/page" });
        const chunks: Buffer[] = [];
        stream.on("data", (c: Buffer) => chunks.push(c));
        stream.on("end", () => resolve(Buffer.concat(chunks)));
        stream.on("error", reject);
      });
      expect(page.toString()).toBe(PAGE);
    } finally {
      session.close();
    }
  });

  test("300 calls at once on one connection, before the client has our SETTINGS: none refused", async () => {
    const session = http2.connect(server.url);
    try {
      const calls = await Promise.all(
        Array.from({ length: 300 }, (_, i) => request(session, CONNECT_PROTO, toBinary(CommandRequestSchema, create(CommandRequestSchema, { key: `k${i}`, value: String(i), op: Op.PUT })))),
      );
      expect(calls.every((c) => c.status === 200)).toBe(true);
    } finally {
      session.close();
    }
  });

  test("a compressed request is relayed to node:http2 and answered there", async () => {
    const session = http2.connect(server.url);
    try {
      const gz = Bun.gzipSync(new TextEncoder().encode(JSON.stringify({ key: "a", op: "GET" })));
      const [before, relayed] = [server.stats.h2Calls, server.stats.h2Relayed];
      const call = await request(session, { "content-type": "application/json", "connect-protocol-version": "1", "content-encoding": "gzip" }, gz);
      expect(call.status).toBe(200);
      expect(JSON.parse(call.body.toString())).toMatchObject({ value: "1" });
      expect([server.stats.h2Calls, server.stats.h2Relayed]).toEqual([before, relayed + 1]);
    } finally {
      session.close();
    }
  });

  test("a peer's tagged connection is served by node:http2, not the engine (with and without the fast lanes)", async () => {
    const slow = await RpcServer.start({ port: 0, fastLane: false, routes: (router) => registerKVService(router, backend()) });
    try {
      for (const target of [server, slow]) {
        const engines = target.stats.h2EngineConnections;
        const session = http2.connect(target.url, {
          createConnection: () => {
            const socket = net.connect({ host: "127.0.0.1", port: target.port });
            socket.write(PEER_TAG);
            return socket;
          },
        });
        try {
          const call = await request(session, CONNECT_PROTO, toBinary(CommandRequestSchema, create(CommandRequestSchema, { key: "huge", op: Op.GET })));
          expect(call.status).toBe(200);
          expect(target.stats.h2EngineConnections).toBe(engines);
        } finally {
          session.close();
        }
      }
    } finally {
      await slow.close();
    }
  });
});

describe("over TLS with client certificates", () => {
  test("served and relayed calls both see the connection's verified certificate", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvraft-h2engine-"));
    try {
      const certs = await makeDevCertificates(dir, 1);
      const ca = fs.readFileSync(certs.ca);
      const tls = { cert: fs.readFileSync(certs.nodes[0]!.cert), key: fs.readFileSync(certs.nodes[0]!.key), ca: [ca] };
      const gate = clientGate({ trustedCa: [new X509Certificate(ca)], token: null });
      const secure = await RpcServer.start({ port: 0, host: "localhost", tls, gate, routes: (router) => registerKVService(router, backend()) });
      try {
        const outcomes = async (withCertificate: boolean) => {
          const session = http2.connect(secure.url, { ca, ...(withCertificate ? { cert: fs.readFileSync(certs.client.cert), key: fs.readFileSync(certs.client.key) } : {}) });
          try {
            const served = await request(session, CONNECT_PROTO, getHuge());
            const gz = Bun.gzipSync(new TextEncoder().encode(JSON.stringify({ key: "huge", op: "GET" })));
            const relayed = await request(session, { "content-type": "application/json", "connect-protocol-version": "1", "content-encoding": "gzip" }, gz);
            return [served.status, relayed.status];
          } finally {
            session.close();
          }
        };
        const before = secure.stats.h2Calls;
        expect(await outcomes(true)).toEqual([200, 200]);
        expect(await outcomes(false)).toEqual([401, 401]);
        expect(secure.stats.h2Calls).toBe(before + 2);
        expect(secure.stats.h2EngineConnections).toBe(2);
      } finally {
        await secure.close();
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("peers", () => {
  test("a peer of an older build (no tag) still completes the handshake: the engine relays it to node:http2", async () => {
    const security = { clusterId: "c", secret: new TextEncoder().encode("a test secret of some length"), peerCa: null };
    const port = await new Promise<number>((resolve) => {
      const probe = net.createServer().listen(0, "127.0.0.1", () => {
        const p = (probe.address() as net.AddressInfo).port;
        probe.close(() => resolve(p));
      });
    });
    const peers = new Map([
      [0, `http://127.0.0.1:${port}`],
      [1, "http://127.0.0.1:1"],
    ]);
    const transport = new ConnectTransport({ security, id: 0, peers });
    transport.listen({ onMessages() {}, async onSnapshot() { throw new Error("not here"); } });
    const node = await RpcServer.start({ port, routes: (router) => transport.registerRoutes(router) });
    try {
      for (const tagged of [false, true]) {
        const [engines, relayed] = [node.stats.h2EngineConnections, node.stats.h2Relayed];
        const session = await dialPeer({ url: `http://127.0.0.1:${port}`, self: 1, peer: 0, security, timeoutMs: 3000, tagged });
        session.close();
        // Untagged: the engine's connection, Challenge and Authenticate relayed; tagged: node:http2's.
        expect([node.stats.h2EngineConnections - engines, node.stats.h2Relayed - relayed]).toEqual(tagged ? [0, 0] : [1, 2]);
      }
    } finally {
      await transport.close();
      await node.close();
    }
  });

  test("dialing a node of an older build (no tag handling): the tagged dial breaks, the untagged one binds", async () => {
    // The old node: every socket straight to node:http2; every call answered 200 with an empty message.
    const old = http2.createServer();
    old.on("stream", (stream: http2.ServerHttp2Stream) => {
      stream.resume();
      stream.on("end", () => {
        stream.respond({ ":status": 200, "content-type": "application/proto" });
        stream.end();
      });
    });
    old.on("sessionError", () => {});
    const firstBytes: string[] = [];
    const tcp = net.createServer((socket) => {
      socket.once("data", (chunk: Buffer) => {
        firstBytes.push(chunk.subarray(0, 3).toString("latin1"));
        socket.pause();
        socket.unshift(chunk);
        old.emit("connection", socket);
        socket.resume();
      });
    });
    await new Promise<void>((resolve) => tcp.listen(0, "127.0.0.1", resolve));
    try {
      const url = `http://127.0.0.1:${(tcp.address() as net.AddressInfo).port}`;
      const session = await dialPeer({ url, self: 1, peer: 2, security: { clusterId: "c", secret: null, peerCa: null }, timeoutMs: 3000 });
      session.close();
      expect(firstBytes).toEqual(["KVR", "PRI"]);
    } finally {
      tcp.close();
    }
  });
});

interface Frame {
  type: number;
  flags: number;
  streamId: number;
  payload: Buffer;
}

/** A hand-driven HTTP/2 client connection: writes raw bytes, collects the server's frames. */
async function rawConnection(): Promise<{ socket: net.Socket; frames: Frame[]; closed: Promise<void>; until(p: (f: Frame) => boolean): Promise<Frame> }> {
  const socket = net.connect({ host: "127.0.0.1", port: server.port });
  await new Promise<void>((resolve) => socket.once("connect", resolve));
  const frames: Frame[] = [];
  const waiters: [(f: Frame) => boolean, (f: Frame) => void][] = [];
  let buffered = Buffer.alloc(0);
  socket.on("data", (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk]);
    while (buffered.length >= 9) {
      const length = buffered.readUIntBE(0, 3);
      if (buffered.length < 9 + length) break;
      const frame = { type: buffered[3]!, flags: buffered[4]!, streamId: buffered.readUInt32BE(5) & 0x7fffffff, payload: buffered.subarray(9, 9 + length) };
      buffered = buffered.subarray(9 + length);
      frames.push(frame);
      for (const [p, resolve] of waiters) if (p(frame)) resolve(frame);
    }
  });
  socket.on("error", () => {});
  const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  const until = (p: (f: Frame) => boolean) =>
    new Promise<Frame>((resolve, reject) => {
      const found = frames.find(p);
      if (found) return resolve(found);
      waiters.push([p, resolve]);
      setTimeout(() => reject(new Error(`no such frame; got ${frames.map((f) => f.type).join(",")}`)), 3000);
    });
  return { socket, frames, closed, until };
}

function frame(type: number, flags: number, streamId: number, payload: Uint8Array): Buffer {
  const out = Buffer.alloc(9 + payload.length);
  frameHeader(out, 0, payload.length, type, flags, streamId);
  out.set(payload, 9);
  return out;
}

const requestBlock = (extra: [string, string][] = []) =>
  encodeHeaders([
    [":method", "POST"],
    [":scheme", "http"],
    [":path", "/kvraftpb.KVService/Command"],
    [":authority", "localhost"],
    ["content-type", "application/json"],
    ...extra,
  ]);
const BODY = new TextEncoder().encode(JSON.stringify({ key: "a", op: "GET" }));
const isGoaway = (f: Frame) => f.type === FrameType.GOAWAY;
const goawayCode = (f: Frame) => f.payload.readUInt32BE(4);

describe("raw frames", () => {
  test("CONTINUATION, padding and PING are understood", async () => {
    const c = await rawConnection();
    const block = requestBlock();
    const padded = Buffer.concat([Buffer.from([3]), BODY, Buffer.alloc(3)]);
    c.socket.write(
      Buffer.concat([
        CLIENT_PREFACE,
        settingsFrame([]),
        frame(FrameType.PING, 0, 0, Buffer.from("12345678")),
        frame(FrameType.HEADERS, 0, 1, block.subarray(0, 10)),
        frame(FrameType.CONTINUATION, FLAG_END_HEADERS, 1, block.subarray(10)),
        frame(FrameType.DATA, FLAG_END_STREAM | FLAG_PADDED, 1, padded),
      ]),
    );
    const ping = await c.until((f) => f.type === FrameType.PING);
    expect(ping.payload.toString()).toBe("12345678");
    const data = await c.until((f) => f.type === FrameType.DATA && f.streamId === 1 && f.payload.length > 0);
    expect(JSON.parse(data.payload.toString())).toMatchObject({ err: "OK" });
    c.socket.destroy();
  });

  for (const [name, bytes, code] of [
    ["the first frame not SETTINGS", () => Buffer.concat([CLIENT_PREFACE, frame(FrameType.PING, 0, 0, Buffer.alloc(8))]), ErrorCode.PROTOCOL_ERROR],
    ["HEADERS on stream 0", () => Buffer.concat([CLIENT_PREFACE, settingsFrame([]), frame(FrameType.HEADERS, FLAG_END_HEADERS, 0, requestBlock())]), ErrorCode.PROTOCOL_ERROR],
    ["a header block that is not HPACK", () => Buffer.concat([CLIENT_PREFACE, settingsFrame([]), frame(FrameType.HEADERS, FLAG_END_HEADERS, 1, Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]))]), ErrorCode.COMPRESSION_ERROR],
    ["a frame over the maximum size", () => Buffer.concat([CLIENT_PREFACE, settingsFrame([]), frame(FrameType.DATA, 0, 1, Buffer.alloc(20_000))]), ErrorCode.FRAME_SIZE_ERROR],
    ["DATA on a stream never opened", () => Buffer.concat([CLIENT_PREFACE, settingsFrame([]), dataFrame(7, Buffer.from("x"), true)]), ErrorCode.PROTOCOL_ERROR],
    ["CONTINUATION without HEADERS", () => Buffer.concat([CLIENT_PREFACE, settingsFrame([]), frame(FrameType.CONTINUATION, FLAG_END_HEADERS, 1, requestBlock())]), ErrorCode.PROTOCOL_ERROR],
    ["padding longer than the frame", () => Buffer.concat([CLIENT_PREFACE, settingsFrame([]), frame(FrameType.HEADERS, FLAG_END_HEADERS | FLAG_PADDED, 1, Buffer.from([200, 1, 2]))]), ErrorCode.PROTOCOL_ERROR],
    ["a window update past 2^31-1", () => Buffer.concat([CLIENT_PREFACE, settingsFrame([]), frame(FrameType.WINDOW_UPDATE, 0, 0, Buffer.from([0x7f, 0xff, 0xff, 0xff]))]), ErrorCode.FLOW_CONTROL_ERROR],
  ] as const) {
    test(`${name}: GOAWAY(${code}) and the connection ends; the server serves on`, async () => {
      const c = await rawConnection();
      c.socket.write(bytes());
      expect(goawayCode(await c.until(isGoaway))).toBe(code);
      await c.closed;
      const session = http2.connect(server.url);
      try {
        expect((await request(session, CONNECT_PROTO, getHuge())).status).toBe(200);
      } finally {
        session.close();
      }
    });
  }

  test("a malformed request (upper-case name, missing :path) is RST_STREAM(PROTOCOL_ERROR); the connection serves on", async () => {
    const c = await rawConnection();
    const upper = encodeHeaders([[":method", "POST"], [":scheme", "http"], [":path", "/x"], ["Bad-Name", "1"]]);
    const noPath = encodeHeaders([[":method", "POST"], [":scheme", "http"]]);
    c.socket.write(
      Buffer.concat([
        CLIENT_PREFACE,
        settingsFrame([]),
        frame(FrameType.HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, upper),
        frame(FrameType.HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 3, noPath),
        frame(FrameType.HEADERS, FLAG_END_HEADERS, 5, requestBlock()),
        dataFrame(5, BODY, true),
      ]),
    );
    for (const id of [1, 3]) {
      const reset = await c.until((f) => f.type === FrameType.RST_STREAM && f.streamId === id);
      expect(reset.payload.readUInt32BE(0)).toBe(ErrorCode.PROTOCOL_ERROR);
    }
    await c.until((f) => f.type === FrameType.DATA && f.streamId === 5);
    expect(c.frames.some(isGoaway)).toBe(false);
    c.socket.destroy();
  });

  test("once the client acknowledged our SETTINGS, the 257th open stream is REFUSED_STREAM", async () => {
    const c = await rawConnection();
    const opens = Array.from({ length: 257 }, (_, i) => frame(FrameType.HEADERS, FLAG_END_HEADERS, 2 * i + 1, requestBlock()));
    c.socket.write(Buffer.concat([CLIENT_PREFACE, settingsFrame([]), frame(FrameType.SETTINGS, 0x1, 0, Buffer.alloc(0)), ...opens]));
    const reset = await c.until((f) => f.type === FrameType.RST_STREAM);
    expect([reset.streamId, reset.payload.readUInt32BE(0)]).toEqual([2 * 256 + 1, ErrorCode.REFUSED_STREAM]);
    c.socket.destroy();
  });

  test("random frames after a valid start (a seeded fuzz, 150 connections) never take the server down", async () => {
    let seed = 12345;
    const random = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed / 0x7fffffff;
    };
    for (let i = 0; i < 150; i++) {
      const c = await rawConnection();
      const parts: Buffer[] = [CLIENT_PREFACE, settingsFrame([])];
      for (let f = 0; f < 4; f++) {
        // A plausible header (type 0-9, small length, odd stream id), then bytes that may or may not fit.
        const length = Math.floor(random() * 40);
        const payload = Buffer.from(Array.from({ length }, () => Math.floor(random() * 256)));
        if (random() < 0.3) payload.set(requestBlock().subarray(0, Math.min(length, 20)));
        parts.push(frame(Math.floor(random() * 10), Math.floor(random() * 256), random() < 0.2 ? 0 : 1 + 2 * Math.floor(random() * 3), payload));
      }
      c.socket.write(Buffer.concat(parts));
      await Promise.race([c.closed, Bun.sleep(20)]);
      c.socket.destroy();
    }
    const session = http2.connect(server.url);
    try {
      expect((await request(session, CONNECT_PROTO, getHuge())).status).toBe(200);
    } finally {
      session.close();
    }
  });

  test("opening and resetting streams at once past 1000 a second ends the connection (rapid reset)", async () => {
    const c = await rawConnection();
    const frames: Buffer[] = [CLIENT_PREFACE, settingsFrame([])];
    const rst = Buffer.from([0, 0, 0, ErrorCode.CANCEL]);
    for (let i = 0; i < 1100; i++) frames.push(frame(FrameType.HEADERS, FLAG_END_HEADERS, 2 * i + 1, requestBlock()), frame(FrameType.RST_STREAM, 0, 2 * i + 1, rst));
    c.socket.write(Buffer.concat(frames));
    expect(goawayCode(await c.until(isGoaway))).toBe(ErrorCode.ENHANCE_YOUR_CALM);
    c.socket.destroy();
  });

  test("a body longer than its content-length is RST_STREAM(PROTOCOL_ERROR)", async () => {
    const c = await rawConnection();
    c.socket.write(Buffer.concat([CLIENT_PREFACE, settingsFrame([]), frame(FrameType.HEADERS, FLAG_END_HEADERS, 1, requestBlock([["content-length", "2"]])), dataFrame(1, BODY, true)]));
    const reset = await c.until((f) => f.type === FrameType.RST_STREAM && f.streamId === 1);
    expect(reset.payload.readUInt32BE(0)).toBe(ErrorCode.PROTOCOL_ERROR);
    c.socket.destroy();
  });
});

describe("answers", () => {
  test("the engine's answers carry a date, as node:http2's do", async () => {
    const session = http2.connect(server.url);
    try {
      const date = await new Promise<string | undefined>((resolve, reject) => {
        const stream = session.request({ ":method": "POST", ":path": "/kvraftpb.KVService/Command", ...CONNECT_PROTO });
        stream.on("response", (h) => resolve(h.date as string | undefined));
        stream.on("error", reject);
        stream.resume();
        stream.end(getHuge());
      });
      expect(Math.abs(Date.parse(date ?? "") - Date.now())).toBeLessThan(5_000);
    } finally {
      session.close();
    }
  });
});
