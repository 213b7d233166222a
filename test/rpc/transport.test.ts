// Two ConnectTransports talking over 127.0.0.1: batches as frames of one long-lived stream per peer
// multi-chunk snapshot streams, refusal of misaddressed messages,
// dropping (not queueing) towards a dead peer, reconnecting after a peer restarts, draining on close.
import * as net from "node:net";
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { ConnectTransport } from "../../src/rpc/peers/connect-transport.ts";
import { RpcServer } from "../../src/rpc/server/server.ts";
import type { Message, TransportHandler } from "../../src/raft/types.ts";

/** Peers authenticated by a shared secret, as kvserver's nodes are by default. */
const SECURITY = { clusterId: "test-cluster", secret: new TextEncoder().encode("a test secret of some length"), peerCa: null };

type InstallSnapshot = Extract<Message, { type: "InstallSnapshot" }>;

/** A receiving side that records what arrives and reassembles snapshot streams. */
class Recorder implements TransportHandler {
  readonly messages: Message[] = [];
  readonly snapshots: { header: InstallSnapshot; bytes: Uint8Array; chunks: number }[] = [];
  failSnapshot = false;
  onMessages(messages: Message[]): void {
    this.messages.push(...messages);
  }
  async onSnapshot(header: InstallSnapshot, chunks: AsyncIterable<Uint8Array>) {
    const parts: Uint8Array[] = [];
    for await (const chunk of chunks) parts.push(chunk);
    if (this.failSnapshot) throw new Error("disk full while restoring");
    const bytes = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let offset = 0;
    for (const part of parts) {
      bytes.set(part, offset);
      offset += part.length;
    }
    this.snapshots.push({ header, bytes, chunks: parts.length });
    return { type: "InstallSnapshotResponse" as const, from: header.to, to: header.from, term: header.term, success: true, matchIndex: header.snapshot.index };
  }
}

/** A port the kernel just handed out and released (a tiny race with other processes, fine in tests). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const port = (probe.address() as net.AddressInfo).port;
      probe.close(() => resolve(port));
    });
  });
}

async function until(condition: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(10);
  }
}

interface Node {
  transport: ConnectTransport;
  server: RpcServer;
  recorder: Recorder;
}

const nodes: Node[] = [];

beforeAll(async () => {
  // As in production, every node knows every address before it starts serving.
  const ports = [await freePort(), await freePort()];
  const peers = new Map(ports.map((port, i) => [i, `http://127.0.0.1:${port}`]));
  for (const i of [0, 1]) {
    const transport = new ConnectTransport({ security: SECURITY, id: i, peers, snapshotChunkBytes: 64 * 1024 });
    const recorder = new Recorder();
    transport.listen(recorder);
    const server = await RpcServer.start({ port: ports[i]!, routes: (router) => transport.registerRoutes(router) });
    nodes.push({ transport, server, recorder });
  }
});

afterAll(async () => {
  for (const node of nodes) {
    await node.transport.close();
    await node.server.close();
  }
});

describe("ConnectTransport", () => {
  test("send delivers every message, grouped per destination, in both directions", async () => {
    const [a, b] = nodes as [Node, Node];
    const heartbeats: Message[] = Array.from({ length: 50 }, (_, i) => ({ type: "Heartbeat", from: 0, to: 1, term: 3, commitIndex: i, readContext: i }));
    a.transport.send(heartbeats);
    a.transport.send([{ type: "TimeoutNow", from: 0, to: 1, term: 3 }]);
    b.transport.send([{ type: "HeartbeatResponse", from: 1, to: 0, term: 3, readContext: 49 }]);
    await until(() => b.recorder.messages.length === 51 && a.recorder.messages.length === 1, "delivery");
    expect(b.recorder.messages.slice(0, 50)).toEqual(heartbeats);
    expect(a.recorder.messages[0]).toEqual({ type: "HeartbeatResponse", from: 1, to: 0, term: 3, readContext: 49 });
    expect(a.transport.stats.sentBatches).toBe(2);
  });

  test("a snapshot streams in many chunks and arrives byte for byte", async () => {
    const [a, b] = nodes as [Node, Node];
    const size = 1_000_000;
    const image = new Uint8Array(size).map((_, i) => (i * 7 + (i >> 9)) & 0xff);
    async function* chunks() {
      // Uneven producer chunks, one larger than snapshotChunkBytes, one empty.
      yield image.subarray(0, 1000);
      yield new Uint8Array(0);
      yield image.subarray(1000, 300_000);
      for (let offset = 300_000; offset < size; offset += 50_000) yield image.subarray(offset, Math.min(size, offset + 50_000));
    }
    const header: InstallSnapshot = { type: "InstallSnapshot", from: 0, to: 1, term: 4, snapshot: { index: 1234, term: 4, members: [0, 1] } };
    const response = await a.transport.sendSnapshot(header, chunks());
    expect(response).toEqual({ type: "InstallSnapshotResponse", from: 1, to: 0, term: 4, success: true, matchIndex: 1234 });
    const received = b.recorder.snapshots.at(-1)!;
    expect(received.header).toEqual(header);
    expect(received.chunks).toBeGreaterThan(10);
    expect(received.bytes.length).toBe(size);
    expect(Buffer.compare(received.bytes, image)).toBe(0);
  });

  test("an empty snapshot still carries its header", async () => {
    const [a, b] = nodes as [Node, Node];
    const header: InstallSnapshot = { type: "InstallSnapshot", from: 0, to: 1, term: 5, snapshot: { index: 0, term: 0, members: [0, 1] } };
    await a.transport.sendSnapshot(header, (async function* () {})());
    expect(b.recorder.snapshots.at(-1)).toMatchObject({ header, chunks: 0 });
  });

  test("a failing restore rejects sendSnapshot with the receiver's message", async () => {
    const [a, b] = nodes as [Node, Node];
    b.recorder.failSnapshot = true;
    try {
      const header: InstallSnapshot = { type: "InstallSnapshot", from: 0, to: 1, term: 5, snapshot: { index: 9, term: 5, members: [0, 1] } };
      const error = await a.transport.sendSnapshot(header, (async function* () { yield new Uint8Array([1]); })()).then(() => null, (e: Error) => e);
      expect(error?.message).toContain("disk full while restoring");
    } finally {
      b.recorder.failSnapshot = false;
    }
  });

  test("a message for another node id is refused (swapped -addrs), not delivered", async () => {
    const [a, b] = nodes as [Node, Node];
    // Node 0 believes node 1 lives at its own address: its messages to 1 arrive at node 0.
    const confused = new ConnectTransport({ security: SECURITY, id: 0, peers: { 1: a.server.url } });
    try {
      const before = a.recorder.messages.length;
      confused.send([{ type: "TimeoutNow", from: 0, to: 1, term: 9 }]);
      await until(() => confused.lastError(1) !== null, "refusal");
      expect(confused.lastError(1)).toContain("disagree on -addrs");
      expect(a.recorder.messages.length).toBe(before);
      expect(b.recorder.messages.some((m) => m.term === 9)).toBe(false);
    } finally {
      await confused.close();
    }
  });

  test("towards a dead peer, frames wait only up to maxQueuedBytesPerPeer and the rest are dropped", async () => {
    const dead = await RpcServer.start({ port: 0, routes: () => {} });
    const url = dead.url;
    await dead.close();
    const lonely = new ConnectTransport({ security: SECURITY, id: 0, peers: { 2: url }, maxQueuedBytesPerPeer: 256 });
    try {
      for (let i = 0; i < 100; i++) lonely.send([{ type: "Heartbeat", from: 0, to: 2, term: 1, commitIndex: 0, readContext: 0 }]);
      expect(lonely.stats.sentBatches).toBeLessThan(20);
      expect(lonely.stats.droppedMessages).toBe(100 - lonely.stats.sentBatches);
      await until(() => lonely.stats.failedBatches > 0, "the stream failing");
      expect(lonely.lastError(2)).toMatch(/unavailable|Unavailable|ECONNREFUSED|connect/i);
      // While the link backs off, sends are dropped at once.
      const dropped = lonely.stats.droppedMessages;
      lonely.send([{ type: "Heartbeat", from: 0, to: 2, term: 1, commitIndex: 0, readContext: 0 }]);
      expect(lonely.stats.droppedMessages).toBe(dropped + 1);
      // Messages for a node with no address are dropped, never thrown.
      lonely.send([{ type: "TimeoutNow", from: 0, to: 7, term: 1 }]);
      const error = await lonely.sendSnapshot({ type: "InstallSnapshot", from: 0, to: 2, term: 1, snapshot: { index: 1, term: 1, members: [] } }, (async function* () {})()).then(() => null, (e: Error) => e);
      expect(error).not.toBeNull();
    } finally {
      await lonely.close();
    }
  });

  test("a peer without the Stream route: the link fails with unimplemented and backs off", async () => {
    // Not a kvraft node (or a misconfigured -addrs): nothing serves RaftService there.
    const stranger = await RpcServer.start({ port: 0, routes: () => {} });
    const sender = new ConnectTransport({ security: SECURITY, id: 0, peers: { 1: stranger.url } });
    try {
      sender.send([{ type: "TimeoutNow", from: 0, to: 1, term: 1 }]);
      await until(() => sender.stats.failedBatches > 0, "the stream refused");
      expect(sender.lastError(1)).toMatch(/Unimplemented/);
    } finally {
      await sender.close();
      await stranger.close();
    }
  });

  test("after the peer restarts, the link reopens and delivery resumes; the server drains at once on close", async () => {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const start = async (recorder: Recorder) => {
      const receiver = new ConnectTransport({ security: SECURITY, id: 1, peers: { 0: "http://127.0.0.1:1" } });
      receiver.listen(recorder);
      // A long grace: close() returning promptly proves the open stream was ended, not cut.
      const server = await RpcServer.start({ port, shutdownGraceMs: 60_000, routes: (router) => receiver.registerRoutes(router) });
      return { receiver, server };
    };
    const first = new Recorder();
    let peer = await start(first);
    const sender = new ConnectTransport({ security: SECURITY, id: 0, peers: { 1: url } });
    try {
      const heartbeat = (term: number): Message => ({ type: "Heartbeat", from: 0, to: 1, term, commitIndex: 0, readContext: 0 });
      sender.send([heartbeat(1)]);
      await until(() => first.messages.length === 1, "first delivery");
      await peer.server.close(); // GOAWAY: the sender ends its stream so the server can drain
      await peer.receiver.close();
      const second = new Recorder();
      peer = await start(second);
      for (let term = 2; second.messages.length === 0; term++) {
        if (term > 300) throw new Error("no delivery after the peer restarted");
        sender.send([heartbeat(term)]);
        await Bun.sleep(20);
      }
      expect(second.messages[0]!.type).toBe("Heartbeat");
    } finally {
      await sender.close();
      await peer.server.close();
      await peer.receiver.close();
    }
  }, 20_000);

  test("close() is idempotent and later sends are ignored", async () => {
    const t = new ConnectTransport({ security: SECURITY, id: 0, peers: { 1: nodes[1]!.server.url } });
    await t.close();
    await t.close();
    t.send([{ type: "TimeoutNow", from: 0, to: 1, term: 1 }]);
    expect(t.stats.sentBatches).toBe(0);
  });
});
