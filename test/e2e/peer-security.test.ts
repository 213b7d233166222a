// An outsider against a real 3-node cluster whose peers share a secret: the forged messages of
// issue 11 (a vote with the transfer flag, a heartbeat at the leader's term, divergent
// AppendEntries, InstallSnapshot, TimeoutNow) over every protocol the port speaks are refused and
// change nothing; a wrong secret, another cluster's id and a non-member fail the handshake; a node
// of another cluster is refused with a line in both logs; without peer authentication kvserver
// does not start. A control run shows the same forgery does move an --insecure-peers cluster.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { Http2SessionManager, createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { handshakeProof } from "../../src/rpc/peers/peer-auth.ts";
import { MessageBatchSchema, RaftService, SnapshotChunkSchema } from "../../src/gen/raftpb/raft_pb.ts";
import type { Message } from "../../src/raft/types.ts";
import type { NodeStatus } from "../../src/kv/client.ts";
import { encodeMessage, encodeBatchBytes, encodeMessageBytes } from "../../src/rpc/peers/raft-codec.ts";
import { dialPeer } from "../../src/rpc/peers/peer-session.ts";
import { PeerLinkError } from "../../src/rpc/peers/peer-link.ts";
import { CLUSTER_ID_FILE } from "../../src/cli/cluster-id.ts";
import { TestCluster, freePorts } from "./harness.ts";

setDefaultTimeout(60_000);

let cluster: TestCluster;
let secretFile: string;

beforeAll(async () => {
  cluster = await TestCluster.start();
  secretFile = path.join(cluster.root, "peer-secret");
  await cluster.clerk().put("guarded", "original");
});
afterAll(async () => {
  await cluster?.destroy();
});

/** What must not move: each node's role, term and log position, and the data. */
async function snapshotState(c: TestCluster): Promise<{ nodes: { id: number; state: string; term: number; commitIndex: number; lastApplied: number }[]; value: string | null }> {
  const status: NodeStatus[] = await c.clerk({ statusTimeoutMs: 2000 }).getStatus();
  const nodes = status.map((node) => {
    if (!node.online) throw new Error(`node ${node.id} is offline: ${node.error}`);
    return { id: node.id, state: node.state, term: Number(node.term), commitIndex: Number(node.commitIndex), lastApplied: Number(node.lastApplied) };
  });
  return { nodes, value: await c.clerk().get("guarded") };
}

/** The state once every node has applied what the leader committed (followers learn it a heartbeat later). */
async function settledState(c: TestCluster): Promise<Awaited<ReturnType<typeof snapshotState>>> {
  for (let i = 0; ; i++) {
    const state = await snapshotState(c);
    const leaders = state.nodes.filter((n) => n.state === "Leader");
    if (leaders.length === 1 && state.nodes.every((n) => n.commitIndex === leaders[0]!.commitIndex && n.lastApplied === n.commitIndex)) return state;
    if (i >= 100) throw new Error(`the cluster did not settle: ${JSON.stringify(state)}`);
    await Bun.sleep(100);
  }
}

/** Every client of the port that can reach RaftService, by protocol. */
function protocols(baseUrl: string): [string, Transport][] {
  return [
    ["Connect binary over HTTP/2 (the frame lane)", createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true })],
    ["Connect binary over HTTP/2 with a deadline (the adapter)", createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true, defaultTimeoutMs: 5000 })],
    ["Connect JSON over HTTP/2", createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: false })],
    ["Connect binary over HTTP/1.1", createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: true })],
    ["Connect JSON over HTTP/1.1 (as a browser or curl)", createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: false })],
    ["gRPC", createGrpcTransport({ baseUrl })],
    ["gRPC-Web over HTTP/2", createGrpcWebTransport({ baseUrl, httpVersion: "2" })],
    ["gRPC-Web over HTTP/1.1", createGrpcWebTransport({ baseUrl, httpVersion: "1.1" })],
  ];
}

/** The forgeries of issue 11, aimed at the current leader and a follower. */
function forgeries(leader: number, follower: number, term: number, commit: number): Message[] {
  return [
    { type: "RequestVote", from: follower, to: (follower + 1) % 3 === leader ? (follower + 2) % 3 : (follower + 1) % 3, term: term + 1000, lastLogIndex: 1e9, lastLogTerm: term + 999, preVote: false, transfer: true },
    { type: "Heartbeat", from: follower, to: leader, term, commitIndex: commit, readContext: 0 },
    {
      type: "AppendEntries",
      from: leader,
      to: follower,
      term,
      prevLogIndex: commit,
      prevLogTerm: term,
      entries: [{ index: commit + 1, term, type: 0, data: new Uint8Array([1, 2, 3]) }],
      leaderCommit: commit + 1,
    },
    { type: "TimeoutNow", from: leader, to: follower, term },
  ];
}

function refusedCode(error: unknown): Code | "accepted" {
  return error === null ? "accepted" : ConnectError.from(error).code;
}

describe("an unauthenticated caller", () => {
  test("every forged message over every protocol is refused and changes nothing", async () => {
    const before = await settledState(cluster);
    const leader = before.nodes.find((n) => n.state === "Leader")!;
    const follower = before.nodes.find((n) => n.state !== "Leader")!;
    const messages = forgeries(leader.id, follower.id, leader.term, leader.commitIndex);
    const outcomes: string[] = [];
    for (const target of [leader.id, follower.id]) {
      for (const [name, transport] of protocols(`http://${cluster.addrs[target]}`)) {
        const client = createClient(RaftService, transport);
        for (const message of messages) {
          async function* one() {
            yield create(MessageBatchSchema, { messages: [encodeMessage({ ...message, to: target })] });
          }
          const error = await client.stream(one()).then(() => null, (e: unknown) => e);
          outcomes.push(`${name} → node ${target}: ${message.type}: ${refusedCode(error)}`);
          expect([Code.Unauthenticated, Code.PermissionDenied]).toContain(refusedCode(error) as Code);
        }
        const header = encodeMessage({ type: "InstallSnapshot", from: leader.id, to: target, term: leader.term + 1, snapshot: { index: 1_000_000, term: leader.term + 1, members: [0, 1, 2] } });
        async function* snapshot() {
          yield create(SnapshotChunkSchema, { header, data: new Uint8Array(1024).fill(9) });
        }
        const error = await client.installSnapshot(snapshot()).then(() => null, (e: unknown) => e);
        expect([Code.Unauthenticated, Code.PermissionDenied]).toContain(refusedCode(error) as Code);
        // The handshake itself answers nothing useful without the secret (see below); a unary
        // Challenge over HTTP/1.1 or JSON is refused outright.
      }
    }
    expect(outcomes.length).toBe(2 * 8 * 4);
    // Give any accepted message time to act, then compare.
    await Bun.sleep(1500);
    expect(await snapshotState(cluster)).toEqual(before);
  });

  test("a raw HTTP/2 stream of peer frames without the handshake is refused", async () => {
    const before = await settledState(cluster);
    const leader = before.nodes.find((n) => n.state === "Leader")!;
    const follower = before.nodes.find((n) => n.state !== "Leader")!;
    const http2 = await import("node:http2");
    const session = http2.connect(`http://${cluster.addrs[follower.id]}`);
    try {
      const payload = encodeBatchBytes([encodeMessageBytes({ type: "TimeoutNow", from: leader.id, to: follower.id, term: leader.term })]);
      const frame = new Uint8Array(5 + payload.length);
      new DataView(frame.buffer).setUint32(1, payload.length);
      frame.set(payload, 5);
      const stream = session.request({ ":method": "POST", ":path": "/raftpb.RaftService/Stream", "content-type": "application/connect+proto", "connect-protocol-version": "1" });
      stream.end(frame);
      const chunks: Buffer[] = [];
      for await (const chunk of stream) chunks.push(chunk as Buffer);
      expect(Buffer.concat(chunks).toString("latin1")).toContain('"code":"unauthenticated"');
    } finally {
      session.close();
    }
    await Bun.sleep(1000);
    expect(await snapshotState(cluster)).toEqual(before);
  });

  test("the handshake with a wrong secret, another cluster's id or as a non-member fails", async () => {
    const clusterId = fs.readFileSync(path.join(cluster.dataDir(0), CLUSTER_ID_FILE), "utf8").trim();
    const secret = new TextEncoder().encode(fs.readFileSync(secretFile, "utf8").trim());
    const url = `http://${cluster.addrs[1]}`;
    const attempt = (self: number, security: { clusterId: string; secret: Uint8Array | null }) =>
      dialPeer({ url, self, peer: 1, security: { ...security, peerCa: null }, timeoutMs: 5000 }).then(
        (session) => {
          session.close();
          return "accepted";
        },
        (error: PeerLinkError) => `${error.code}: ${error.message}`,
      );
    // The right secret works (this is how a member dials), so the refusals below are about what changed.
    expect(await attempt(0, { clusterId, secret })).toBe("accepted");
    // Mutual: the dialer sees at once that the node does not prove the secret it holds.
    expect(await attempt(0, { clusterId, secret: new TextEncoder().encode("not the cluster secret at all") })).toMatch(/^unauthenticated: .*did not prove it holds the cluster secret/);
    expect(await attempt(0, { clusterId, secret: null })).toMatch(/^unauthenticated/);
    // And the node refuses a proof made with another secret (a dialer that sends it anyway).
    const sessionManager = new Http2SessionManager(url);
    try {
      const client = createClient(RaftService, createConnectTransport({ baseUrl: url, httpVersion: "2", useBinaryFormat: true, sessionManager }));
      const clientNonce = new Uint8Array(32).fill(1);
      const challenge = await client.challenge({ from: 0n, to: 1n, clusterId, clientNonce });
      const wrong = handshakeProof(new TextEncoder().encode("not the cluster secret at all"), "client", { serverNonce: challenge.serverNonce, clientNonce, from: 0, to: 1, clusterId });
      const refused = await client.authenticate({ clientProof: wrong }).then(() => null, (e: unknown) => e);
      expect(refusedCode(refused)).toBe(Code.Unauthenticated);
      // And the connection stays unauthenticated: a stream on it is refused.
      async function* one() {
        yield create(MessageBatchSchema, { messages: [encodeMessage({ type: "TimeoutNow", from: 0, to: 1, term: 1 })] });
      }
      expect(refusedCode(await client.stream(one()).then(() => null, (e: unknown) => e))).toBe(Code.Unauthenticated);
    } finally {
      sessionManager.abort();
    }
    expect(await attempt(0, { clusterId: "0123456789abcdef", secret })).toMatch(/^failed_precondition: .*belongs to cluster 0123456789abcdef/);
    expect(await attempt(7, { clusterId, secret })).toMatch(/^permission_denied: .*not a member/);
    expect(cluster.output(1)).toContain("does not match the cluster secret");
  });

  test("a node of another cluster is refused, with a line in both logs", async () => {
    const [port] = (await freePorts(1)) as [number];
    const dir = path.join(cluster.root, "stranger");
    // Same secret and peers, but its own bootstrap (another token): another cluster id.
    const addrs = [`127.0.0.1:${port}`, cluster.addrs[1], cluster.addrs[2]].join(",");
    const proc = Bun.spawn(
      ["bun", path.join(import.meta.dir, "../../src/cli/kvserver.ts"), "-id", "0", "-addrs", addrs, "-db", dir, "--peer-secret-file", secretFile, "--initial-cluster-token", "another"],
      { stdout: "pipe", stderr: "pipe" },
    );
    let output = "";
    const collect = async (stream: ReadableStream<Uint8Array>) => {
      for await (const chunk of stream) output += new TextDecoder().decode(chunk);
    };
    void collect(proc.stdout);
    void collect(proc.stderr);
    try {
      for (let i = 0; i < 100 && !(output.includes("refused") && cluster.output(1).includes("belongs to cluster")); i++) await Bun.sleep(100);
      expect(output).toMatch(/peer 1 at .* refused messages: .*belongs to cluster/);
      expect(cluster.output(1)).toMatch(/node 0 at .* belongs to cluster [0-9a-f]{16}, this node 1 to cluster [0-9a-f]{16}: refused/);
    } finally {
      proc.kill("SIGKILL");
      await proc.exited;
    }
  });

  test("kvserver without peer authentication refuses to start (exit 2) unless --insecure-peers", async () => {
    const [port] = (await freePorts(1)) as [number];
    const run = Bun.spawn(["bun", path.join(import.meta.dir, "../../src/cli/kvserver.ts"), "-id", "0", "-addrs", `127.0.0.1:${port},127.0.0.1:1`, "-db", path.join(cluster.root, "unauth")], {
      stdout: "pipe",
      stderr: "pipe",
    });
    const [stderr, code] = await Promise.all([new Response(run.stderr).text(), run.exited]);
    expect(code).toBe(2);
    expect(stderr).toContain("peers are not authenticated");
    expect(stderr).toContain("--insecure-peers");
  });
});

describe("control: the same forgery against --insecure-peers", () => {
  test("a TimeoutNow from anyone who runs the (proof-less) handshake moves leadership", async () => {
    const open = await TestCluster.start({ peerArgs: ["--insecure-peers"] });
    try {
      const leader = await open.waitForLeader();
      const status = (await open.clerk().getStatus())[leader]!;
      if (!status.online) throw new Error("the leader went offline");
      const before = { term: Number(status.term) };
      const follower = (leader + 1) % 3;
      const clusterId = fs.readFileSync(path.join(open.dataDir(0), CLUSTER_ID_FILE), "utf8").trim();
      // Posing as the leader needs no secret here: this is what authentication prevents.
      const session = await dialPeer({ url: `http://${open.addrs[follower]}`, self: leader, peer: follower, security: { clusterId, secret: null, peerCa: null }, timeoutMs: 5000 });
      try {
        const payload = encodeBatchBytes([encodeMessageBytes({ type: "TimeoutNow", from: leader, to: follower, term: before.term })]);
        const frame = new Uint8Array(5 + payload.length);
        new DataView(frame.buffer).setUint32(1, payload.length);
        frame.set(payload, 5);
        const stream = session.request({ ":method": "POST", ":path": "/raftpb.RaftService/Stream", "content-type": "application/connect+proto", "connect-protocol-version": "1" });
        stream.end(frame);
        for await (const _ of stream) {
          // drain the answer
        }
      } finally {
        session.close();
      }
      let moved = false;
      for (let i = 0; i < 50 && !moved; i++) {
        const status = await open.clerk({ statusTimeoutMs: 1000 }).getStatus();
        moved = status.some((s) => s.online && Number(s.term) > before.term);
        if (!moved) await Bun.sleep(100);
      }
      expect(moved).toBe(true);
    } finally {
      await open.destroy();
    }
  });
});
