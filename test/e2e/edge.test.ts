// The node's port against hostile or careless clients (issue 18, items 2 and 6), with real kvserver
// processes: 5,000 slowloris sockets plus stalled HTTP/2 prefaces do not stop a new client and are
// closed by their deadlines; stalled TLS handshakes alike; a quiet Watch outlives every idle
// timeout; an 8 MB gRPC request ends at once with resource_exhausted; a request sent while the
// node was stopped (SIGSTOP) is answered after SIGCONT, not cut by the idle sweep.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as fs from "node:fs";
import * as http2 from "node:http2";
import * as net from "node:net";
import * as path from "node:path";
import * as tls from "node:tls";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { KVService } from "../../src/gen/kvraftpb/kvraft_pb.ts";
import { Clerk } from "../../src/kv/client.ts";
import { makeDevCertificates } from "../../src/cli/dev-certs.ts";
import { TestCluster } from "./harness.ts";

setDefaultTimeout(60_000);

const SLOWLORIS = 5_000;
const HALF_HEAD = "POST /kvraftpb.KVService/Command HTTP/1.1\r\nHost: victim\r\nContent-Type: application/json\r\n";
const PREFACE = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/** Raw sockets the test opened; every one is destroyed at the end. */
const opened: net.Socket[] = [];

/** Opens `count` sockets to `port`, `batch` at a time, each writing `first` (if any) once connected. */
async function openSockets(port: number, count: number, first: string | Buffer | null, batch = 500): Promise<net.Socket[]> {
  const sockets: net.Socket[] = [];
  for (let done = 0; done < count; done += batch) {
    const wave = Array.from({ length: Math.min(batch, count - done) }, () => {
      const socket = net.connect({ port, host: "127.0.0.1" });
      socket.on("error", () => {});
      // Read (and drop) what the server sends, so that its close is seen.
      socket.resume();
      opened.push(socket);
      sockets.push(socket);
      return new Promise<void>((resolve) => {
        socket.once("connect", () => {
          if (first !== null) socket.write(first);
          resolve();
        });
        socket.once("close", () => resolve());
      });
    });
    await Promise.all(wave);
  }
  return sockets;
}

function stillOpen(sockets: net.Socket[]): number {
  return sockets.filter((s) => !s.destroyed && s.readyState === "open").length;
}

async function waitFor(what: string, condition: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(100);
  }
}

/** One complete HTTP/1.1 request on a fresh socket, as curl sends it; resolves with the raw answer. */
function curlLike(port: number, body = JSON.stringify({ key: "edge", op: "GET" })): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: "127.0.0.1" }, () => {
      socket.write(`POST /kvraftpb.KVService/Command HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
    });
    let answer = "";
    socket.on("data", (chunk) => (answer += String(chunk)));
    socket.on("close", () => resolve(answer));
    socket.on("error", () => {});
  });
}

/** The value of one sample of /metrics, with `label` (e.g. `stage="header"`) among its labels if given. */
async function metric(port: number, name: string, label = ""): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split("\n").find((l) => (l.startsWith(`${name}{`) || l.startsWith(`${name} `)) && l.includes(label));
  if (line === undefined) throw new Error(`no metric ${name} ${label}`);
  return Number(line.slice(line.lastIndexOf(" ") + 1));
}

function portOf(cluster: TestCluster, id = 0): number {
  return Number(cluster.addrs[id]!.split(":")[1]);
}

afterAll(() => {
  for (const socket of opened) socket.destroy();
});

describe("slowloris and stalled handshakes (cleartext)", () => {
  let cluster: TestCluster;
  beforeAll(async () => {
    // The per-address cap is raised so that the node-wide limit (the default 4,096) is what fills.
    cluster = await TestCluster.start({
      size: 1,
      extraArgs: ["--header-timeout", "8000", "--handshake-timeout", "3000", "--max-connections-per-ip", "100000"],
    });
    await cluster.waitForLeader();
  });
  afterAll(async () => {
    await cluster.destroy();
  });

  test("5,000 half-sent heads and stalled HTTP/2 prefaces: a new client is served; the deadlines close them all", async () => {
    const port = portOf(cluster);
    const slowloris = await openSockets(port, SLOWLORIS, HALF_HEAD);
    const halfPrefaces = await openSockets(port, 50, PREFACE.slice(0, 10));
    const noSettings = await openSockets(port, 50, PREFACE);
    const flood = [...slowloris, ...halfPrefaces, ...noSettings];
    // The port is full of stalled connections, most of them still open.
    expect(stillOpen(flood)).toBeGreaterThan(3_000);

    // A Clerk and a curl-like request get through: each evicts the oldest stalled connection.
    const clerk = cluster.clerk({ operationTimeoutMs: 5_000 });
    await clerk.put("edge", "served");
    expect(await clerk.get("edge")).toBe("served");
    expect(await curlLike(port)).toMatch(/^HTTP\/1\.1 200[\s\S]*"value":"served"/);
    expect(stillOpen(slowloris)).toBeGreaterThan(2_000);
    expect(await metric(port, "kvraft_rpc_connections_evicted_total")).toBeGreaterThanOrEqual(SLOWLORIS + 100 - 4096);

    // The handshake deadline (3 s) ends the stalled prefaces, the head deadline (8 s) the heads.
    await waitFor("the stalled prefaces to be closed", () => stillOpen([...halfPrefaces, ...noSettings]) === 0, 10_000);
    await waitFor("the slowloris sockets to be closed", () => stillOpen(slowloris) === 0, 15_000);
    // Left open: the /metrics fetch itself.
    expect(await metric(port, "kvraft_rpc_connections")).toBeLessThan(5);
    expect(await metric(port, "kvraft_rpc_connection_timeouts_total", 'stage="header"')).toBeGreaterThan(0);
    expect(await metric(port, "kvraft_rpc_connection_timeouts_total", 'stage="handshake"')).toBeGreaterThan(0);
    // A head timed out is answered 408 before the close, as node:http would.
    await clerk.put("edge", "after");
    expect(await clerk.get("edge")).toBe("after");
  });

  test("one address past --max-connections-per-ip evicts its own stalled connections first", async () => {
    const local = await TestCluster.start({ size: 1, extraArgs: ["--max-connections-per-ip", "20"] });
    try {
      const port = portOf(local);
      const stalled = await openSockets(port, 40, HALF_HEAD, 40);
      await waitFor("evictions", () => stillOpen(stalled) <= 20, 5_000);
      expect(await curlLike(port)).toMatch(/^HTTP\/1\.1 200/);
      // The metrics fetch itself is one more connection from this address.
      expect(await metric(port, "kvraft_rpc_connections_evicted_total")).toBeGreaterThanOrEqual(20);
    } finally {
      await local.destroy();
    }
  });
});

describe("stalled TLS handshakes", () => {
  test("a TLS node: 200 stalled ClientHellos do not stop a TLS client and are closed by the handshake deadline", async () => {
    const scratch = fs.mkdtempSync(path.join(process.env.TMPDIR ?? "/tmp", "kvraft-edge-tls-"));
    const certs = await makeDevCertificates(path.join(scratch, "ca"), 1);
    const ca = fs.readFileSync(certs.ca);
    const cluster = await TestCluster.start({
      size: 1,
      nodeArgs: () => ["--cert-file", certs.nodes[0]!.cert, "--key-file", certs.nodes[0]!.key],
      extraArgs: ["--handshake-timeout", "2000", "--max-connections", "100", "--keepalive-timeout", "1000", "--header-timeout", "1000", "--body-timeout", "1000"],
    });
    try {
      const port = portOf(cluster);
      const url = `https://localhost:${port}`;
      cluster.clerkDefaults = { addrs: [url], transport: (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "2", nodeOptions: { ca } }) };
      // The first bytes of a ClientHello (a handshake record header and a little more), then nothing.
      const partialHello = Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]);
      const stalled = await openSockets(port, 200, partialHello, 100);
      const clerk = cluster.clerk({ operationTimeoutMs: 10_000 });
      await clerk.put("tls-edge", "served");
      expect(await clerk.get("tls-edge")).toBe("served");
      // An HTTP/1.1 TLS client too (node:http behind TLS), one request on a fresh connection.
      const answer = await new Promise<string>((resolve, reject) => {
        const socket = tls.connect({ port, host: "127.0.0.1", servername: "localhost", ca, ALPNProtocols: ["http/1.1"] }, () => {
          const body = JSON.stringify({ key: "tls-edge", op: "GET" });
          socket.write(`POST /kvraftpb.KVService/Command HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
        });
        let text = "";
        socket.on("data", (chunk) => (text += String(chunk)));
        socket.on("close", () => resolve(text));
        socket.on("error", reject);
      });
      expect(answer).toMatch(/^HTTP\/1\.1 200[\s\S]*"value":"served"/);
      await waitFor("the stalled handshakes to be closed", () => stillOpen(stalled) === 0, 8_000);
      // A browser's Watch over https and HTTP/1.1 (node:http behind TLS) outlives 1 s timeouts.
      const watcher = createClient(KVService, createConnectTransport({ baseUrl: url, httpVersion: "1.1", nodeOptions: { ca } }));
      const abort = new AbortController();
      const seen: string[] = [];
      const watching = (async () => {
        try {
          for await (const response of watcher.watch({ key: new TextEncoder().encode("tls-quiet") }, { signal: abort.signal })) {
            for (const event of response.events) seen.push(new TextDecoder().decode(event.kv?.value));
          }
          return "ended";
        } catch (error) {
          return abort.signal.aborted ? "aborted" : `failed: ${(error as Error).message}`;
        }
      })();
      await Bun.sleep(2_500);
      await clerk.put("tls-quiet", "still-watched");
      await waitFor("the watch event", () => seen.includes("still-watched"), 5_000);
      abort.abort();
      expect(await watching).toBe("aborted");
    } finally {
      await cluster.destroy();
      fs.rmSync(scratch, { recursive: true, force: true });
    }
  });
});

describe("long-lived streams and short timeouts", () => {
  let cluster: TestCluster;
  beforeAll(async () => {
    cluster = await TestCluster.start({
      size: 3,
      extraArgs: [
        ...["--idle-timeout", "1000", "--keepalive-timeout", "1000", "--body-timeout", "1000", "--header-timeout", "1000", "--handshake-timeout", "1000"],
        ...["--max-connections", "64"],
      ],
    });
    await cluster.waitForLeader();
  });
  afterAll(async () => {
    await cluster.destroy();
  });

  test("Watches over HTTP/2 and HTTP/1.1 stay open through 3 s of quiet; peers keep their links; an idle HTTP/2 connection gets GOAWAY", async () => {
    const leader = await cluster.waitForLeader();
    const changesBefore = await metric(portOf(cluster, leader), "kvraft_raft_leader_changes_total");
    const base = `http://${cluster.addrs[leader]}`;
    const watchOn = async (httpVersion: "1.1" | "2") => {
      const client = createClient(KVService, createConnectTransport({ baseUrl: base, httpVersion }));
      const abort = new AbortController();
      const events: string[] = [];
      const stream = client.watch({ key: new TextEncoder().encode(`quiet-${httpVersion}`) } as never, { signal: abort.signal });
      const done = (async () => {
        try {
          for await (const response of stream as AsyncIterable<{ events?: { kv?: { value?: Uint8Array } }[] }>) {
            for (const event of response.events ?? []) events.push(new TextDecoder().decode(event.kv?.value ?? new Uint8Array()));
          }
          return "ended";
        } catch (error) {
          return abort.signal.aborted ? "aborted" : `failed: ${(error as Error).message}`;
        }
      })();
      return { abort, events, done };
    };
    const h2Watch = await watchOn("2");
    const h1Watch = await watchOn("1.1");
    // An HTTP/2 connection with no stream: GOAWAY after the idle timeout.
    const idle = http2.connect(base);
    const idleClosed = new Promise<string>((resolve) => {
      idle.once("goaway", () => resolve("goaway"));
      idle.once("close", () => resolve("closed"));
    });
    await Bun.sleep(3_000);
    expect(await Promise.race([idleClosed, Bun.sleep(2_000).then(() => "open")])).not.toBe("open");
    const clerk = cluster.clerk({ operationTimeoutMs: 10_000 });
    await clerk.put("quiet-2", "event-2");
    await clerk.put("quiet-1.1", "event-1.1");
    await waitFor("both watches to see their event", () => h2Watch.events.includes("event-2") && h1Watch.events.includes("event-1.1"), 5_000);
    h2Watch.abort.abort();
    h1Watch.abort.abort();
    expect(await h2Watch.done).toBe("aborted");
    expect(await h1Watch.done).toBe("aborted");
    // Peer links are authenticated: no idle or body timeout touched them (no election happened).
    expect(await metric(portOf(cluster, leader), "kvraft_raft_leader_changes_total")).toBe(changesBefore);
    idle.destroy();
  });

  test("a flood of stalled sockets at a full port never evicts the authenticated peer links", async () => {
    const leader = await cluster.waitForLeader();
    const port = portOf(cluster, leader);
    const changesBefore = await metric(port, "kvraft_raft_leader_changes_total");
    const evictedBefore = await metric(port, "kvraft_rpc_connections_evicted_total");
    const clerk = cluster.clerk({ operationTimeoutMs: 10_000 });
    const flood = await openSockets(port, 300, HALF_HEAD, 100);
    for (let i = 0; i < 5; i++) await clerk.put(`flood-${i}`, "ok");
    expect(await clerk.get("flood-4")).toBe("ok");
    expect(await metric(port, "kvraft_rpc_connections_evicted_total")).toBeGreaterThan(evictedBefore + 200);
    // The two peers' inbound links (authenticated) were never among the evicted: no election.
    expect(await metric(port, "kvraft_raft_leader_changes_total")).toBe(changesBefore);
    for (const socket of flood) socket.destroy();
  });
});

describe("oversized gRPC messages and stopped nodes", () => {
  let cluster: TestCluster;
  beforeAll(async () => {
    cluster = await TestCluster.start({ size: 1, extraArgs: ["--keepalive-timeout", "1000", "--handshake-timeout", "1000", "--idle-timeout", "1000"] });
    await cluster.waitForLeader();
  });
  afterAll(async () => {
    await cluster.destroy();
  });

  test("an 8 MB gRPC request ends at once with resource_exhausted (grpc-js unary and Watch, raw HTTP/2)", async () => {
    const port = portOf(cluster);
    const definition = protoLoader.loadSync(path.join(import.meta.dir, "../../proto/kvraftpb/kvraft.proto"), { longs: String, enums: String, defaults: true });
    const loaded = grpc.loadPackageDefinition(definition) as any;
    const client = new loaded.kvraftpb.KVService(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), { "grpc.max_send_message_length": 64 << 20 });
    try {
      // A 4 s deadline: without the reset the call would end DEADLINE_EXCEEDED instead.
      const error = await new Promise<grpc.ServiceError | null>((resolve) =>
        client.Command({ key: "big", value: "x".repeat(8 << 20), op: "PUT", client_id: 7, command_id: 1 }, { deadline: Date.now() + 4_000 }, (e: grpc.ServiceError | null) => resolve(e)),
      );
      expect(error?.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
      // A server-streaming method runs through the Connect adapter, which stops reading at the limit.
      const watchError = await new Promise<grpc.ServiceError | null>((resolve) => {
        const call = client.Watch({ key: Buffer.alloc(8 << 20, 97) }, { deadline: Date.now() + 4_000 });
        call.on("data", () => {});
        call.on("error", (e: grpc.ServiceError) => resolve(e));
        call.on("end", () => resolve(null));
      });
      expect(watchError?.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    } finally {
      client.close();
    }
    // The adapter's path (a server-streaming method) used to leave the stream open on flow control.
    const session = http2.connect(`http://127.0.0.1:${port}`);
    try {
      const envelope = Buffer.alloc(5 + (8 << 20));
      envelope.writeUInt32BE(8 << 20, 1);
      const outcome = await new Promise<string>((resolve) => {
        const stream = session.request({ ":method": "POST", ":path": "/kvraftpb.KVService/Watch", "content-type": "application/grpc", te: "trailers" });
        let status = "no trailers";
        stream.on("trailers", (trailers) => (status = `grpc-status ${trailers["grpc-status"]}`));
        stream.on("close", () => resolve(status));
        stream.on("error", () => {});
        stream.resume();
        stream.end(envelope);
        setTimeout(() => resolve("still open after 4 s"), 4_000).unref();
      });
      expect(outcome).toBe(`grpc-status ${grpc.status.RESOURCE_EXHAUSTED}`);
    } finally {
      session.destroy();
    }
  });

  test("malformed protobuf, invalid UTF-8 and the compressed flag get their codes from a real node", async () => {
    const port = portOf(cluster);
    const session = http2.connect(`http://127.0.0.1:${port}`);
    const call = (flags: number, payload: Buffer) =>
      new Promise<string>((resolve) => {
        const stream = session.request({ ":method": "POST", ":path": "/kvraftpb.KVService/Command", "content-type": "application/grpc", te: "trailers" });
        let status = "none";
        stream.on("trailers", (t) => (status = String(t["grpc-status"])));
        stream.on("response", (h) => {
          if (h["grpc-status"] !== undefined) status = String(h["grpc-status"]);
        });
        stream.on("close", () => resolve(status));
        stream.on("error", () => {});
        stream.resume();
        const envelope = Buffer.alloc(5 + payload.length);
        envelope[0] = flags;
        envelope.writeUInt32BE(payload.length, 1);
        payload.copy(envelope, 5);
        stream.end(envelope);
      });
    try {
      expect(await call(0, Buffer.from([0x0a, 0x7f, 0x61]))).toBe(String(grpc.status.INVALID_ARGUMENT)); // key says 127 bytes, has 1
      expect(await call(0, Buffer.from([0x0a, 0x02, 0xc3, 0x28]))).toBe(String(grpc.status.INVALID_ARGUMENT)); // key is not UTF-8
      expect(await call(1, Buffer.from([0x0a, 0x01, 0x61]))).toBe(String(grpc.status.INTERNAL)); // compressed, no grpc-encoding
    } finally {
      session.destroy();
    }
  });

  test("a request sent while the node is stopped (SIGSTOP) past every timeout is answered after SIGCONT", async () => {
    const port = portOf(cluster);
    const pid = cluster.nodes[0]!.proc.pid;
    const body = JSON.stringify({ key: "stopped", op: "GET" });
    const request = `POST /kvraftpb.KVService/Command HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
    // A keep-alive connection that has completed one request (idle), and a fresh one (sniffing).
    const kept = net.connect({ port, host: "127.0.0.1" });
    const fresh = net.connect({ port, host: "127.0.0.1" });
    const answers = new Map<net.Socket, string>();
    const closed = new Set<net.Socket>();
    for (const socket of [kept, fresh]) {
      opened.push(socket);
      answers.set(socket, "");
      socket.on("data", (chunk) => answers.set(socket, answers.get(socket)! + String(chunk)));
      socket.on("close", () => closed.add(socket));
      socket.on("error", () => {});
      await new Promise((resolve) => socket.once("connect", resolve));
    }
    // And an HTTP/2 connection that has served one call (idle timeout 1 s).
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on("error", () => {});
    const h2Call = () =>
      new Promise<string>((resolve) => {
        const stream = session.request({ ":method": "POST", ":path": "/kvraftpb.KVService/Command", "content-type": "application/json" });
        let text = "";
        stream.on("data", (chunk) => (text += String(chunk)));
        stream.on("close", () => resolve(text || `closed (rst ${stream.rstCode})`));
        stream.on("error", () => {});
        stream.end(body);
      });
    expect(await h2Call()).toContain("ErrNoKey");
    kept.write(request);
    await waitFor("the first answer", () => answers.get(kept)!.includes("ErrNoKey"), 5_000);
    answers.set(kept, "");
    await Bun.sleep(200);
    process.kill(pid, "SIGSTOP");
    let h2Answer: Promise<string>;
    try {
      kept.write(request);
      fresh.write(request);
      h2Answer = h2Call();
      await Bun.sleep(3_000); // three times the keep-alive, idle and handshake timeouts
    } finally {
      process.kill(pid, "SIGCONT");
    }
    await waitFor("both answers", () => answers.get(kept)!.includes("ErrNoKey") && answers.get(fresh)!.includes("ErrNoKey"), 5_000);
    expect(await h2Answer).toContain("ErrNoKey");
    session.destroy();
    expect(answers.get(kept)).toMatch(/^HTTP\/1\.1 200/);
    expect(answers.get(fresh)).toMatch(/^HTTP\/1\.1 200/);
    // And once quiet again, the keep-alive timeout still closes them.
    await waitFor("the idle connections to close", () => closed.has(kept) && closed.has(fresh), 5_000);
  });
});

describe("flags", () => {
  test("a bad connection flag is a usage error (exit 2) that names the flag", async () => {
    for (const args of [["--max-connections", "0"], ["--header-timeout", "soon"], ["--max-connections-per-ip", "1.5"]]) {
      const proc = Bun.spawn(["bun", path.join(import.meta.dir, "../../src/cli/kvserver.ts"), "--insecure-peers", ...args], { stdout: "pipe", stderr: "pipe" });
      const [code, stderr] = await Promise.all([proc.exited, new Response(proc.stderr).text()]);
      expect(code).toBe(2);
      expect(stderr).toContain(`${args[0]} must be a positive integer`);
    }
  });
});
