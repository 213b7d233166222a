// The port's deadlines, one stage at a time, on an RpcServer with short timeouts: a half-sent head
// or body on the HTTP/1.1 lane gets 408, a stalled chunked body on node:http is cut, an HTTP/2
// stream whose body never ends is reset while its connection serves on, and a call that runs
// longer than every deadline is never cut.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as http2 from "node:http2";
import * as net from "node:net";
import { registerKVService, type KVServiceBackend } from "../../src/kv/service.ts";
import { RpcServer } from "../../src/rpc/server/server.ts";
import { statusDouble } from "./kv-double.ts";

const backend: KVServiceBackend = {
  async command(args) {
    // A call that runs past every deadline below.
    if (args.key === "slow") await Bun.sleep(1_200);
    return { err: "ErrNoKey", value: "" };
  },
  async registerSession() {
    return { err: "OK" as const, clientId: 1n };
  },
  async getStatus() {
    return statusDouble({ id: 1, state: "Leader", term: 1, lastApplied: 1, commitIndex: 1, storageSize: 0, leaderId: 1, members: [1], snapshotIndex: 0, keyCount: 0 });
  },
};

let server: RpcServer;

beforeAll(async () => {
  server = await RpcServer.start({
    port: 0,
    routes: (router) => registerKVService(router, backend),
    connections: { handshakeTimeoutMs: 400, headerTimeoutMs: 400, bodyTimeoutMs: 400, keepAliveTimeoutMs: 2_000, idleTimeoutMs: 2_000 },
  });
});

afterAll(async () => {
  await server.close();
});

/** A raw socket that collects what the server sends and notes when it closes. */
async function raw(): Promise<{ socket: net.Socket; text: () => string; closed: Promise<number> }> {
  const socket = net.connect({ port: server.port, host: "127.0.0.1" });
  let text = "";
  const opened = Date.now();
  socket.on("data", (chunk) => (text += String(chunk)));
  socket.on("error", () => {});
  const closed = new Promise<number>((resolve) => socket.once("close", () => resolve(Date.now() - opened)));
  await new Promise((resolve) => socket.once("connect", resolve));
  return { socket, text: () => text, closed };
}

const body = JSON.stringify({ key: "a", op: "GET" });
/** A request head: whole (ending in its blank line) when `extra` (a header) is given, else half-sent. */
const head = (extra?: string) => `POST /kvraftpb.KVService/Command HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n${extra === undefined ? "" : `${extra}\r\n\r\n`}`;

describe("HTTP/1.1", () => {
  test("a head never finished gets 408 and is closed (the fast lane)", async () => {
    const before = server.connectionStats.headerTimeouts;
    const client = await raw();
    client.socket.write(head());
    await client.closed;
    expect(client.text()).toStartWith("HTTP/1.1 408");
    expect(server.connectionStats.headerTimeouts).toBe(before + 1);
  });

  test("a body never finished gets 408 and is closed (the fast lane)", async () => {
    const before = server.connectionStats.bodyTimeouts;
    const client = await raw();
    client.socket.write(`${head(`Content-Length: ${body.length}`)}${body.slice(0, 5)}`);
    await client.closed;
    expect(client.text()).toStartWith("HTTP/1.1 408");
    expect(server.connectionStats.bodyTimeouts).toBe(before + 1);
  });

  test("a chunked body that stalls (node:http's path) is cut by the body deadline", async () => {
    const before = server.connectionStats.bodyTimeouts;
    const client = await raw();
    client.socket.write(`${head("Transfer-Encoding: chunked")}5\r\n${body.slice(0, 5)}\r\n`);
    await client.closed;
    expect(server.connectionStats.bodyTimeouts).toBe(before + 1);
  });

  test("a call running longer than every deadline is answered, and the connection serves on", async () => {
    const client = await raw();
    const slow = JSON.stringify({ key: "slow", op: "GET" });
    client.socket.write(`${head(`Content-Length: ${slow.length}`)}${slow}`);
    while (!client.text().includes("ErrNoKey")) {
      expect(client.socket.destroyed).toBe(false);
      await Bun.sleep(50);
    }
    client.socket.write(`${head(`Content-Length: ${body.length}`)}${body}`);
    while (client.text().split("ErrNoKey").length < 3) await Bun.sleep(20);
    client.socket.destroy();
  });

  test("node:http's path: a call running longer than every deadline is answered", async () => {
    const client = await raw();
    const slow = JSON.stringify({ key: "slow", op: "GET" });
    // A Connect-Timeout-Ms header sends the call the adapter's way.
    client.socket.write(`${head(`Content-Length: ${slow.length}\r\nConnect-Timeout-Ms: 10000`)}${slow}`);
    while (!client.text().includes("ErrNoKey")) {
      expect(client.socket.destroyed).toBe(false);
      await Bun.sleep(50);
    }
    client.socket.destroy();
  });
});

describe("HTTP/2", () => {
  test("a stream whose body never ends is reset; its connection serves the next call", async () => {
    const before = server.connectionStats.bodyTimeouts;
    const session = http2.connect(server.url);
    session.on("error", () => {});
    try {
      const stalled = session.request({ ":method": "POST", ":path": "/kvraftpb.KVService/Command", "content-type": "application/json" });
      stalled.on("error", () => {});
      stalled.write(body.slice(0, 5));
      const code = await new Promise<number>((resolve) => stalled.once("close", () => resolve(stalled.rstCode ?? -1)));
      expect(code).toBe(http2.constants.NGHTTP2_CANCEL);
      expect(server.connectionStats.bodyTimeouts).toBe(before + 1);
      const next = session.request({ ":method": "POST", ":path": "/kvraftpb.KVService/Command", "content-type": "application/json" });
      let answer = "";
      next.on("data", (chunk) => (answer += String(chunk)));
      next.end(body);
      await new Promise((resolve) => next.once("close", resolve));
      expect(answer).toContain("ErrNoKey");
    } finally {
      session.destroy();
    }
  });

  test("a call running longer than every deadline is answered", async () => {
    const session = http2.connect(server.url);
    try {
      const call = session.request({ ":method": "POST", ":path": "/kvraftpb.KVService/Command", "content-type": "application/json" });
      let answer = "";
      call.on("data", (chunk) => (answer += String(chunk)));
      call.end(JSON.stringify({ key: "slow", op: "GET" }));
      await new Promise((resolve) => call.once("close", resolve));
      expect(call.rstCode).toBe(http2.constants.NGHTTP2_NO_ERROR);
      expect(answer).toContain("ErrNoKey");
    } finally {
      session.destroy();
    }
  });

  test("a connection that sends the preface but no SETTINGS is closed by the handshake deadline", async () => {
    const before = server.connectionStats.handshakeTimeouts;
    const client = await raw();
    client.socket.write("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    await client.closed;
    expect(server.connectionStats.handshakeTimeouts).toBe(before + 1);
  });
});

describe("clients that never close", () => {
  test("a half-open client (it never sends FIN) does not keep a timed-out socket on the server", async () => {
    const before = server.connectionStats.open;
    const socket = net.connect({ port: server.port, host: "127.0.0.1", allowHalfOpen: true });
    socket.on("error", () => {});
    socket.resume();
    await new Promise((resolve) => socket.once("connect", resolve));
    socket.write(head());
    while (server.connectionStats.open > before) await Bun.sleep(50);
    socket.destroy();
  });
});
