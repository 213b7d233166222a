// The HTTP/2 frame lane of RpcServer: envelopes cut from raw DATA chunks however they are split,
// Connect-compatible answers (success, limit and protocol errors as end-stream records), calls it
// does not take reaching the Connect adapter, and the Raft Stream method served through it for a
// stock connect-node client.
import * as http2 from "node:http2";
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { MessageBatchSchema, RaftService } from "../../src/gen/raftpb/raft_pb.ts";
import { ConnectTransport } from "../../src/rpc/peers/connect-transport.ts";
import { frameRoutesOf } from "../../src/rpc/server/frame-lane.ts";
import { encodeMessage } from "../../src/rpc/peers/raft-codec.ts";
import { handshakeProof } from "../../src/rpc/peers/peer-auth.ts";
import { RpcServer } from "../../src/rpc/server/server.ts";
import type { Message } from "../../src/raft/types.ts";

/** Peers authenticated by a shared secret, as kvserver's nodes are by default. */
const SECURITY = { clusterId: "test-cluster", secret: new TextEncoder().encode("a test secret of some length"), peerCa: null };

const PATH = "/test.Frames/Push";
const LIMIT = 64;

let server: RpcServer;
const received: string[] = [];

beforeAll(async () => {
  server = await RpcServer.start({
    port: 0,
    routes: (router) => {
      frameRoutesOf(router)!.add(PATH, {
        readMaxBytes: LIMIT,
        onFrame(payload) {
          const text = new TextDecoder().decode(payload);
          if (text === "boom") throw new Error("the sink refused");
          received.push(text);
        },
      });
    },
  });
});

afterAll(async () => {
  await server.close();
});

function envelope(flags: number, text: string): Uint8Array {
  const payload = new TextEncoder().encode(text);
  const out = new Uint8Array(5 + payload.length);
  out[0] = flags;
  new DataView(out.buffer).setUint32(1, payload.length);
  out.set(payload, 5);
  return out;
}

interface Answer {
  status: number;
  envelopes: { flags: number; payload: string }[];
}

/** One raw call: writes `chunks` as separate DATA writes, half-closes, collects the answer. */
async function call(chunks: Uint8Array[], headers: http2.OutgoingHttpHeaders = {}): Promise<Answer> {
  const session = http2.connect(server.url);
  try {
    const stream = session.request({
      ":method": "POST",
      ":path": PATH,
      "content-type": "application/connect+proto",
      "connect-protocol-version": "1",
      ...headers,
    });
    let status = 0;
    const parts: Buffer[] = [];
    stream.on("response", (h) => (status = Number(h[":status"])));
    stream.on("data", (chunk: Buffer) => parts.push(chunk));
    const ended = new Promise<void>((resolve) => {
      stream.on("close", () => resolve());
      stream.on("error", () => resolve());
    });
    for (const chunk of chunks) {
      stream.write(chunk);
      await Bun.sleep(1); // separate DATA frames
    }
    stream.end();
    await ended;
    const body = Buffer.concat(parts);
    const envelopes: Answer["envelopes"] = [];
    for (let at = 0; at + 5 <= body.length; ) {
      const length = body.readUInt32BE(at + 1);
      envelopes.push({ flags: body[at]!, payload: body.subarray(at + 5, at + 5 + length).toString() });
      at += 5 + length;
    }
    return { status, envelopes };
  } finally {
    session.close();
  }
}

function endError(answer: Answer): { code?: string; message?: string } | undefined {
  const end = answer.envelopes.find((e) => (e.flags & 2) !== 0);
  expect(end).toBeDefined();
  return (JSON.parse(end!.payload) as { error?: { code?: string; message?: string } }).error;
}

describe("frame lane", () => {
  test("envelopes arrive in order however the bytes are split; the answer is one empty message and {}", async () => {
    received.length = 0;
    const all = new Uint8Array([...envelope(0, "one"), ...envelope(0, ""), ...envelope(0, "three"), ...envelope(0, "four")]);
    // Byte by byte for the first two envelopes, then the rest in one write.
    const chunks = [...[...all.subarray(0, 13)].map((b) => new Uint8Array([b])), all.subarray(13)];
    const answer = await call(chunks);
    expect(received).toEqual(["one", "", "three", "four"]);
    expect(answer.status).toBe(200);
    expect(answer.envelopes).toEqual([
      { flags: 0, payload: "" },
      { flags: 2, payload: "{}" },
    ]);
  });

  test("an envelope over readMaxBytes ends the call with resource_exhausted, after what came before", async () => {
    received.length = 0;
    const answer = await call([envelope(0, "ok"), envelope(0, "x".repeat(LIMIT + 1)), envelope(0, "never")]);
    expect(received).toEqual(["ok"]);
    expect(answer.status).toBe(200);
    expect(endError(answer)?.code).toBe("resource_exhausted");
  });

  test("compressed or unknown flags, a throwing sink and a cut-off message are errors, not crashes", async () => {
    expect(endError(await call([envelope(1, "zip")]))?.code).toBe("internal");
    expect(endError(await call([envelope(2, "{}")]))?.code).toBe("invalid_argument");
    const refused = endError(await call([envelope(0, "boom")]));
    expect(refused?.code).toBe("unknown");
    expect(refused?.message).toContain("the sink refused");
    expect(endError(await call([envelope(0, "cut").subarray(0, 6)]))?.code).toBe("invalid_argument");
    // The server still serves afterwards.
    received.length = 0;
    await call([envelope(0, "after")]);
    expect(received).toEqual(["after"]);
  });

  test("calls the lane does not take (JSON, a deadline) reach the Connect adapter", async () => {
    received.length = 0;
    const json = await call([envelope(0, "{}")], { "content-type": "application/connect+json" });
    const timed = await call([envelope(0, "x")], { "connect-timeout-ms": "1000" });
    // No Connect service is registered at PATH: the adapter answers 404 for both.
    expect(json.status).toBe(404);
    expect(timed.status).toBe(404);
    expect(received).toEqual([]);
  });
});

describe("Raft Stream over the frame lane", () => {
  test("a stock connect-node client: refused until it runs the handshake, then streams MessageBatch and gets {} back", async () => {
    const got: Message[] = [];
    const transport = new ConnectTransport({ security: SECURITY, id: 1, peers: { 0: "http://127.0.0.1:1", 1: "http://127.0.0.1:1" } });
    transport.listen({ onMessages: (m) => void got.push(...m), onSnapshot: () => Promise.reject(new Error("unused")) });
    const raft = await RpcServer.start({ port: 0, routes: (router) => transport.registerRoutes(router) });
    const sessionManager = new Http2SessionManager(raft.url);
    try {
      const client = createClient(RaftService, createConnectTransport({ baseUrl: raft.url, httpVersion: "2", useBinaryFormat: true, sessionManager }));
      const beat = (term: number): Extract<Message, { type: "Heartbeat" }> => ({ type: "Heartbeat", from: 0, to: 1, term, commitIndex: term, readContext: 0 });
      async function* batches(messages: Message[][]) {
        for (const group of messages) yield create(MessageBatchSchema, { messages: group.map(encodeMessage) });
      }
      const early = await client.stream(batches([[beat(1)]])).then(() => null, (e: ConnectError) => e);
      expect(early?.code).toBe(Code.Unauthenticated);
      // The handshake on this same connection, as a peer holding the secret runs it.
      const clientNonce = new Uint8Array(32).fill(7);
      const challenge = await client.challenge({ from: 0n, to: 1n, clusterId: SECURITY.clusterId, clientNonce });
      const fields = { serverNonce: challenge.serverNonce, clientNonce, from: 0, to: 1, clusterId: SECURITY.clusterId };
      expect(Buffer.compare(challenge.serverProof, handshakeProof(SECURITY.secret, "server", fields))).toBe(0);
      await client.authenticate({ clientProof: handshakeProof(SECURITY.secret, "client", fields) });
      expect(await client.stream(batches([1, 2, 3, 4, 5].map((term) => [beat(term), beat(term + 100)])))).toBeDefined();
      expect(got.map((m) => m.term)).toEqual([1, 101, 2, 102, 3, 103, 4, 104, 5, 105]);
      // A message for another node, or from another than the authenticated sender: dropped and counted.
      await client.stream(batches([[{ ...beat(9), to: 0 }, { ...beat(10), from: 2 }, beat(11)]]));
      expect(got.map((m) => m.term).slice(10)).toEqual([11]);
      expect(transport.gateStats.rejectedMessages).toBe(2);
    } finally {
      sessionManager.abort();
      await transport.close();
      await raft.close();
    }
  });

  test("with the fast lanes off the same Stream is served by the Connect adapter, message for message", async () => {
    const got: Message[] = [];
    const transport = new ConnectTransport({ security: SECURITY, id: 1, peers: { 0: "http://127.0.0.1:1", 1: "http://127.0.0.1:1" } });
    transport.listen({ onMessages: (m) => void got.push(...m), onSnapshot: () => Promise.reject(new Error("unused")) });
    const raft = await RpcServer.start({ port: 0, fastLane: false, routes: (router) => transport.registerRoutes(router) });
    const sender = new ConnectTransport({ security: SECURITY, id: 0, peers: { 0: "http://127.0.0.1:1", 1: raft.url } });
    try {
      for (let term = 1; term <= 3; term++) sender.send([{ type: "Heartbeat", from: 0, to: 1, term, commitIndex: 0, readContext: term }]);
      const deadline = Date.now() + 5_000;
      while (got.length < 3 && Date.now() < deadline) await Bun.sleep(10);
      expect(got.map((m) => m.term)).toEqual([1, 2, 3]);
    } finally {
      await sender.close();
      await transport.close();
      await raft.close();
    }
  });
});
