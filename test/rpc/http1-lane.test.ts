// The HTTP/1.1 fast lane answers exactly what the standard path (node:http + connect-node) answers:
// the same status and body for successes and every error, over pipelined, split and mixed
// connections; requests it does not take move the connection to node:http without losing a byte.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as net from "node:net";
import { create, toBinary } from "@bufbuild/protobuf";
import { CommandRequestSchema, Op } from "../../src/gen/kvraftpb/kvraft_pb.ts";
import { OverloadedError } from "../../src/kv/errors.ts";
import { registerKVService, type KVServiceBackend } from "../../src/kv/service.ts";
import { RpcServer } from "../../src/rpc/server/server.ts";
import { statusDouble } from "./kv-double.ts";

function backend(): KVServiceBackend {
  const data = new Map<string, string>();
  return {
    async command(args) {
      if (args.key === "slow") await Bun.sleep(200);
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

interface RawResponse {
  status: number;
  headers: Map<string, string>;
  body: Buffer;
}

/** A raw HTTP/1.1 connection: write any bytes, read responses by Content-Length or chunked framing. */
class RawConnection {
  private buffer = Buffer.alloc(0);
  private waiting: (() => void) | null = null;
  closed = false;

  private constructor(private readonly socket: net.Socket) {
    socket.on("data", (chunk: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      this.waiting?.();
    });
    socket.on("close", () => {
      this.closed = true;
      this.waiting?.();
    });
    socket.on("error", () => {});
  }

  static open(port: number): Promise<RawConnection> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, "127.0.0.1", () => resolve(new RawConnection(socket)));
      socket.once("error", reject);
    });
  }

  write(data: string | Uint8Array): void {
    this.socket.write(data);
  }

  close(): void {
    this.socket.destroy();
  }

  async read(): Promise<RawResponse> {
    const deadline = Date.now() + 5_000;
    for (;;) {
      const parsed = this.tryParse();
      if (parsed !== null) return parsed;
      if (this.closed) throw new Error("connection closed before a full response");
      if (Date.now() > deadline) throw new Error("no response within 5 s");
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 100);
        this.waiting = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.waiting = null;
    }
  }

  private tryParse(): RawResponse | null {
    const end = this.buffer.indexOf("\r\n\r\n");
    if (end < 0) return null;
    const lines = this.buffer.toString("latin1", 0, end).split("\r\n");
    const status = Number(lines[0]!.split(" ")[1]);
    const headers = new Map<string, string>();
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(":");
      headers.set(line.slice(0, colon).toLowerCase(), line.slice(colon + 1).trim());
    }
    let rest = this.buffer.subarray(end + 4);
    if (headers.has("content-length")) {
      const length = Number(headers.get("content-length"));
      if (rest.length < length) return null;
      this.buffer = rest.subarray(length);
      return { status, headers, body: Buffer.from(rest.subarray(0, length)) };
    }
    if (headers.get("transfer-encoding") === "chunked") {
      const parts: Buffer[] = [];
      for (;;) {
        const lineEnd = rest.indexOf("\r\n");
        if (lineEnd < 0) return null;
        const size = parseInt(rest.toString("latin1", 0, lineEnd), 16);
        if (rest.length < lineEnd + 2 + size + 2) return null;
        parts.push(rest.subarray(lineEnd + 2, lineEnd + 2 + size));
        rest = rest.subarray(lineEnd + 2 + size + 2);
        if (size === 0) break;
      }
      this.buffer = rest;
      return { status, headers, body: Buffer.concat(parts) };
    }
    this.buffer = rest;
    return { status, headers, body: Buffer.alloc(0) };
  }
}

const PATH = "/kvraftpb.KVService/Command";

function post(body: string | Uint8Array, headers: Record<string, string> = {}, path = PATH): Buffer {
  const bytes = typeof body === "string" ? Buffer.from(body) : Buffer.from(body);
  const all = { "Content-Type": "application/json", ...headers };
  let head = `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n`;
  for (const [name, value] of Object.entries(all)) head += `${name}: ${value}\r\n`;
  head += `Content-Length: ${bytes.length}\r\n\r\n`;
  return Buffer.concat([Buffer.from(head, "latin1"), bytes]);
}

let fast: RpcServer;
let standard: RpcServer;

beforeAll(async () => {
  const routes = (router: Parameters<typeof registerKVService>[0]) => registerKVService(router, backend());
  fast = await RpcServer.start({ port: 0, routes, readMaxBytes: 16 * 1024, corsOrigins: ["http://app.example"], keepAliveTimeoutMs: 300 });
  standard = await RpcServer.start({ port: 0, routes, readMaxBytes: 16 * 1024, corsOrigins: ["http://app.example"], fastLane: false });
});
afterAll(async () => {
  await Promise.all([fast.close(), standard.close()]);
});

async function exchange(server: RpcServer, request: Buffer): Promise<RawResponse> {
  const connection = await RawConnection.open(server.port);
  try {
    connection.write(request);
    return await connection.read();
  } finally {
    connection.close();
  }
}

describe("the fast lane answers as the standard path does", () => {
  const proto = toBinary(CommandRequestSchema, create(CommandRequestSchema, { key: "p", value: "bin", op: Op.PUT, clientId: 3n, commandId: 1n }));
  const cases: [string, Buffer][] = [
    ["a Put", post(JSON.stringify({ key: "a", value: "1", op: "PUT", clientId: "5", commandId: "1" }))],
    ["a Get of a missing key", post(JSON.stringify({ key: "nothing-here", op: "GET" }))],
    ["a leader hint", post(JSON.stringify({ key: "follower", op: "GET" }))],
    ["charset in the content type", post(JSON.stringify({ key: "a", op: "GET" }), { "Content-Type": "application/json; charset=utf-8" })],
    ["binary protobuf", post(proto, { "Content-Type": "application/proto" })],
    ["malformed JSON", post("{not json")],
    ["an unknown field", post(JSON.stringify({ key: "a", op: "GET", extra: 1 }))],
    ["an unknown op", post(JSON.stringify({ key: "a", op: 7 }))],
    ["malformed protobuf", post(new Uint8Array([0x0a, 0x50, 0x01]), { "Content-Type": "application/proto" })],
    ["a typed KV error", post(JSON.stringify({ key: "busy", op: "PUT" }))],
    ["an internal error", post(JSON.stringify({ key: "bug", op: "PUT" }))],
    ["a request over readMaxBytes", post(JSON.stringify({ key: "a", value: "v".repeat(20 * 1024), op: "PUT" }))],
    ["an unknown method", post("{}", {}, "/kvraftpb.KVService/Nope")],
    ["a streaming content type", post("{}", { "Content-Type": "application/connect+json" })],
    ["an unsupported protocol version", post(JSON.stringify({ key: "a", op: "GET" }), { "Connect-Protocol-Version": "2" })],
  ];
  const laneTakes = new Set(["a Put", "a Get of a missing key", "a leader hint", "charset in the content type", "binary protobuf", "malformed JSON", "an unknown field", "an unknown op", "malformed protobuf", "a typed KV error", "an internal error"]);
  for (const [name, request] of cases) {
    test(name, async () => {
      const before = { ...fast.stats };
      const [ours, theirs] = await Promise.all([exchange(fast, request), exchange(standard, request)]);
      // Each case is answered by the path it is meant to exercise.
      if (laneTakes.has(name)) expect(fast.stats.laneCalls).toBe(before.laneCalls + 1);
      else expect(fast.stats.laneHandovers).toBe(before.laneHandovers + 1);
      expect(standard.stats.laneCalls).toBe(0);
      expect(ours.status).toBe(theirs.status);
      expect(ours.headers.get("content-type")).toBe(theirs.headers.get("content-type"));
      expect(ours.body.toString("latin1")).toBe(theirs.body.toString("latin1"));
    });
  }
});

describe("connections", () => {
  test("pipelined requests in one write are answered in order", async () => {
    const connection = await RawConnection.open(fast.port);
    try {
      const requests = Array.from({ length: 20 }, (_, i) => post(JSON.stringify({ key: `pipe-${i}`, value: `${i}`, op: "PUT" })));
      requests.push(...Array.from({ length: 20 }, (_, i) => post(JSON.stringify({ key: `pipe-${i}`, op: "GET" }))));
      connection.write(Buffer.concat(requests));
      for (let i = 0; i < 20; i++) expect(JSON.parse((await connection.read()).body.toString())).toEqual({ err: "OK" });
      for (let i = 0; i < 20; i++) expect(JSON.parse((await connection.read()).body.toString())).toEqual({ err: "OK", value: `${i}` });
    } finally {
      connection.close();
    }
  });

  test("a request arriving a few bytes at a time is answered once complete", async () => {
    const connection = await RawConnection.open(fast.port);
    try {
      const request = post(JSON.stringify({ key: "split", value: "x".repeat(3000), op: "PUT" }));
      for (let at = 0; at < request.length; at += 7 + (at % 500)) {
        connection.write(request.subarray(at, Math.min(request.length, at + 7 + (at % 500))));
        if (at % 5 === 0) await Bun.sleep(1);
      }
      expect((await connection.read()).status).toBe(200);
      connection.write(post(JSON.stringify({ key: "split", op: "GET" })));
      expect(JSON.parse((await connection.read()).body.toString()).value).toHaveLength(3000);
    } finally {
      connection.close();
    }
  });

  test("a request the lane does not take moves the connection to node:http without losing bytes", async () => {
    const connection = await RawConnection.open(fast.port);
    try {
      connection.write(post(JSON.stringify({ key: "mixed", value: "1", op: "PUT" })));
      expect((await connection.read()).status).toBe(200);
      // A CORS preflight, then a call with an Origin, then a plain call: all on the same connection,
      // the last two sent together with the preflight.
      const preflight =
        `OPTIONS ${PATH} HTTP/1.1\r\nHost: x\r\nOrigin: http://app.example\r\nAccess-Control-Request-Method: POST\r\nContent-Length: 0\r\n\r\n`;
      connection.write(
        Buffer.concat([
          Buffer.from(preflight, "latin1"),
          post(JSON.stringify({ key: "mixed", op: "GET" }), { Origin: "http://app.example" }),
          post(JSON.stringify({ key: "mixed", op: "GET" })),
        ]),
      );
      const answers = [await connection.read(), await connection.read(), await connection.read()];
      expect(answers.map((a) => a.status)).toEqual([204, 200, 200]);
      expect(answers[1]!.headers.get("access-control-allow-origin")).toBe("http://app.example");
      expect(JSON.parse(answers[2]!.body.toString())).toEqual({ err: "OK", value: "1" });
    } finally {
      connection.close();
    }
  });

  test("Connection: close is honoured after the answer", async () => {
    const connection = await RawConnection.open(fast.port);
    connection.write(post(JSON.stringify({ key: "a", op: "GET" }), { Connection: "close" }));
    const answer = await connection.read();
    expect(answer.headers.get("connection")).toBe("close");
    const deadline = Date.now() + 5_000;
    while (!connection.closed && Date.now() < deadline) await Bun.sleep(10);
    expect(connection.closed).toBe(true);
  });

  test("an idle keep-alive connection is closed by the sweep; a busy one is not cut", async () => {
    const idle = await RawConnection.open(fast.port);
    idle.write(post(JSON.stringify({ key: "a", op: "GET" })));
    await idle.read();
    const busy = await RawConnection.open(fast.port);
    busy.write(post(JSON.stringify({ key: "slow", op: "GET" })));
    const deadline = Date.now() + 5_000;
    while (!idle.closed && Date.now() < deadline) await Bun.sleep(20);
    expect(idle.closed).toBe(true);
    expect((await busy.read()).status).toBe(200);
    busy.close();
  });

  test("close() waits for a call running in the lane, then the connection ends", async () => {
    const local = await RpcServer.start({ port: 0, routes: (router) => registerKVService(router, backend()) });
    const connection = await RawConnection.open(local.port);
    connection.write(post(JSON.stringify({ key: "slow", op: "GET" })));
    await Bun.sleep(50);
    const closing = local.close();
    const answer = await connection.read();
    expect(answer.status).toBe(200);
    expect(answer.headers.get("connection")).toBe("close");
    await closing;
  });
});
