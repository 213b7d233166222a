// Server CPU per unary call by protocol, with no Raft or storage behind the handlers: an RpcServer
// in its own process whose KV backend answers at once, driven by connect-node clients (Connect
// binary/JSON over HTTP/2, gRPC, gRPC-Web), the Clerk's lean transport (createClerkTransport) and
// the HTTP/1.1 JSON client of the cluster suite; client CPU per call beside it.
// Usage: bun bench/unary-cost.ts [--calls N] [--concurrency C] [--rate R] [--no-fast-lane] [--no-h2-engine] [--tls] [--cpu-prof DIR] [--only A,B]
// (--only A,B: just the paths whose name contains A or B, e.g. --only "binary,lean")
// (--rate R: every path offers the same R calls/s, so server CPU per call compares at one load: a server
// spends less per call the faster it is driven, and connect-node's clients drive it slower than the lane's)
// (--no-h2-engine: HTTP/2 through node:http2 and the raw-stream lane, as before the engine;
// --tls: the server speaks TLS (dev certificates), HTTP/2 by ALPN; the HTTP/1.1 lane is left out)
// (a tool for profiling the RPC layer; `serve` is the child's mode).

import * as fs from "node:fs";
import * as http2 from "node:http2";
import * as path from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { CommandRequestSchema, KVService, Op } from "../src/gen/kvraftpb/kvraft_pb.ts";
import { Clerk } from "../src/kv/client.ts";
import type { KVServiceBackend } from "../src/kv/service.ts";
import { registerKVService } from "../src/kv/service.ts";
import { RpcServer } from "../src/rpc/server/server.ts";
import { createClerkTransport } from "../src/rpc/client/clerk-transport.ts";
import { HttpConnection } from "./http1.ts";
import { cpuSeconds, makeTempDir, removeTempDir, spawnTracked, stopChild } from "./proc.ts";
import { makeDevCertificates } from "../src/cli/dev-certs.ts";

/** A backend that answers every call at once: what is left is the RPC layer's own cost. */
function instantBackend(): KVServiceBackend {
  return {
    async command(args) {
      return args.op === "Get" ? { err: "OK", value: "v".repeat(100) } : { err: "OK", value: "" };
    },
    async registerSession() {
      return { err: "OK" as const, clientId: 1n };
    },
    async getStatus() {
      throw new Error("not served by the cost bench");
    },
  } as KVServiceBackend;
}

async function serve(fastLane: boolean, h2Engine: boolean, certDir: string | undefined): Promise<void> {
  const tls = certDir === undefined ? undefined : { cert: fs.readFileSync(path.join(certDir, "node-0.crt")), key: fs.readFileSync(path.join(certDir, "node-0.key")), ca: [] };
  const server = await RpcServer.start({ port: 0, host: tls === undefined ? "127.0.0.1" : "localhost", fastLane, h2Engine, ...(tls === undefined ? {} : { tls }), routes: (router) => registerKVService(router, instantBackend()) });
  process.stdout.write(`${server.port}\n`);
  process.on("SIGTERM", () => void server.close().then(() => process.exit(0)));
}

interface Options {
  calls: number;
  concurrency: number;
  fastLane: boolean;
  h2Engine: boolean;
  tls: boolean;
  cpuProf: string | null;
  /** Calls per second offered on every path (0: as fast as the clients go). */
  rate: number;
  /** Run only paths whose name contains one of these (empty: all). */
  only: string[];
}

function parse(argv: string[]): Options {
  const o: Options = { calls: 20_000, concurrency: 16, fastLane: true, h2Engine: true, tls: false, cpuProf: null, rate: 0, only: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--calls") o.calls = Math.max(100, Math.min(1_000_000, Number(argv[++i])));
    else if (a === "--concurrency") o.concurrency = Math.max(1, Math.min(1024, Number(argv[++i])));
    else if (a === "--rate") o.rate = Math.max(0, Math.min(1_000_000, Number(argv[++i]) || 0));
    else if (a === "--no-fast-lane") o.fastLane = false;
    else if (a === "--no-h2-engine") o.h2Engine = false;
    else if (a === "--tls") o.tls = true;
    else if (a === "--only") o.only = (argv[++i] ?? "").split(",").filter((w) => w !== "");
    else if (a === "--cpu-prof") o.cpuProf = path.resolve(argv[++i] ?? "prof");
    else throw new Error(`unknown argument ${a}`);
  }
  return o;
}

const VALUE = "x".repeat(100);

/**
 * Runs `calls` calls, `concurrency` at a time; each slot gets its own caller from `slot()`. With a
 * rate, call i starts no earlier than i/rate seconds after the first (a slot sleeps until then).
 */
async function runCalls(calls: number, concurrency: number, callers: ((i: number) => Promise<unknown>)[], rate = 0): Promise<void> {
  let next = 0;
  const start = performance.now();
  await Promise.all(
    callers.slice(0, concurrency).map(async (one) => {
      while (next < calls) {
        const i = next++;
        if (rate > 0) {
          const wait = start + (i * 1000) / rate - performance.now();
          if (wait > 0) await Bun.sleep(wait);
        }
        await one(i);
      }
    }),
  );
}

/**
 * Put calls on one shared node:http2 session, in Connect binary or gRPC (or gzip-compressed Connect
 * JSON), with nothing else around them.
 */
function raw(base: string, ca: Buffer | undefined, grpc: boolean, gzip = false): () => Promise<(i: number) => Promise<unknown>> {
  const session = http2.connect(base, ca === undefined ? {} : { ca });
  const headers = grpc
    ? { ":method": "POST", ":path": "/kvraftpb.KVService/Command", "content-type": "application/grpc+proto", te: "trailers" }
    : gzip
      ? { ":method": "POST", ":path": "/kvraftpb.KVService/Command", "content-type": "application/json", "connect-protocol-version": "1", "content-encoding": "gzip" }
      : { ":method": "POST", ":path": "/kvraftpb.KVService/Command", "content-type": "application/proto", "connect-protocol-version": "1" };
  const call = (i: number) =>
    new Promise<void>((resolve, reject) => {
      const message = gzip
        ? Bun.gzipSync(JSON.stringify({ key: `k${i % 1000}`, value: VALUE, op: "PUT", clientId: 1, commandId: i + 1 }))
        : toBinary(CommandRequestSchema, create(CommandRequestSchema, { key: `k${i % 1000}`, value: VALUE, op: Op.PUT, clientId: 1n, commandId: BigInt(i + 1) }));
      let body: Uint8Array = message;
      if (grpc) {
        const envelope = Buffer.allocUnsafe(5 + message.length);
        envelope[0] = 0;
        envelope.writeUInt32BE(message.length, 1);
        envelope.set(message, 5);
        body = envelope;
      }
      const stream = session.request(headers);
      let status = 0;
      stream.on("response", (h) => {
        status = Number(h[":status"]);
      });
      stream.on("data", () => {});
      stream.on("error", reject);
      stream.on("close", () => (status === 200 ? resolve() : reject(new Error(`HTTP ${status}`))));
      stream.end(body);
    });
  return async () => call;
}

async function main(): Promise<void> {
  const o = parse(process.argv.slice(2));
  let certDir: string | undefined;
  let ca: Buffer | undefined;
  if (o.tls) {
    certDir = makeTempDir("kvraft-unary-cost-");
    const files = await makeDevCertificates(certDir, 1);
    // The child reads them by fixed names.
    fs.copyFileSync(files.nodes[0]!.cert, path.join(certDir, "node-0.crt"));
    fs.copyFileSync(files.nodes[0]!.key, path.join(certDir, "node-0.key"));
    ca = fs.readFileSync(files.ca);
  }
  const args = [process.execPath, ...(o.cpuProf ? ["--cpu-prof", `--cpu-prof-dir=${o.cpuProf}`] : []), import.meta.path, "serve", o.fastLane ? "fast" : "slow", o.h2Engine ? "engine" : "node", ...(certDir === undefined ? [] : [certDir])];
  const child = spawnTracked(args, { stdout: "pipe", output: "inherit" });
  const reader = (child.stdout as ReadableStream<Uint8Array>).getReader();
  const { value } = await reader.read();
  const port = Number(new TextDecoder().decode(value).trim());
  const base = ca === undefined ? `http://127.0.0.1:${port}` : `https://localhost:${port}`;
  const nodeOptions = ca === undefined ? {} : { nodeOptions: { ca } };
  const h2 = { httpVersion: "2" as const, baseUrl: base, ...nodeOptions };
  // One transport (one HTTP/2 connection) shared by every slot, as the Clerk's users share one.
  const shared = (t: Transport) => {
    const client = createClient(KVService, t);
    const call = (i: number) => client.command({ key: `k${i % 1000}`, value: VALUE, op: Op.PUT, clientId: 1n, commandId: BigInt(i + 1) });
    return async () => call;
  };
  const all: [string, () => () => Promise<(i: number) => Promise<unknown>>][] = [
    [
      "HTTP/1.1 Connect JSON (lane)",
      () => async () => {
        // One request in flight per connection: each slot owns one.
        const conn = await HttpConnection.open("127.0.0.1", port);
        return (i) => conn.post("/kvraftpb.KVService/Command", JSON.stringify({ key: `k${i % 1000}`, value: VALUE, op: "PUT", clientId: 1, commandId: i + 1 }), "Connect-Protocol-Version: 1\r\n");
      },
    ],
    // A lean client (node:http2 streams, bodies encoded once per call): the server's cost at the
    // rate a cheap client drives it, as the HTTP/1.1 path's hand-made client does.
    ["HTTP/2 Connect binary, raw", () => raw(base, ca, false)],
    ["HTTP/2 gRPC, raw", () => raw(base, ca, true)],
    // Not a plain call (a compressed request): the engine relays it to node:http2.
    ["HTTP/2 Connect JSON gzip, raw", () => raw(base, ca, false, true)],
    ["HTTP/2 Connect binary, lean", () => shared(createClerkTransport({ baseUrl: base, ...nodeOptions }))],
    ["HTTP/2 gRPC, lean", () => shared(createClerkTransport({ baseUrl: base, protocol: "grpc", ...nodeOptions }))],
    ["HTTP/2 Connect binary", () => shared(createConnectTransport({ ...h2, useBinaryFormat: true }))],
    ["HTTP/2 Connect JSON", () => shared(createConnectTransport({ ...h2, useBinaryFormat: false }))],
    ["HTTP/2 gRPC", () => shared(createGrpcTransport(h2))],
    ["HTTP/2 gRPC-Web", () => shared(createGrpcWebTransport({ ...h2, useBinaryFormat: true }))],
    [
      "Clerk, HTTP/2 binary (batched)",
      () => {
        // One Clerk for every slot, as an application shares one; unregistered: no RegisterSession.
        const clerk = new Clerk({ addrs: [base], transport: (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true, ...nodeOptions }), maxConcurrency: o.concurrency });
        return async () => (i: number) => clerk.put(`k${i % 1000}`, VALUE);
      },
    ],
    [
      "Clerk, lean transport (batched)",
      () => {
        const clerk = new Clerk({ addrs: [base], transport: (baseUrl) => createClerkTransport({ baseUrl, ...nodeOptions }), maxConcurrency: o.concurrency });
        return async () => (i: number) => clerk.put(`k${i % 1000}`, VALUE);
      },
    ],
  ];
  // Over TLS the HTTP/1.1 lane does not run (cleartext only): its path is left out.
  const paths = (o.tls ? all.slice(1) : all).filter(([name]) => o.only.length === 0 || o.only.some((w) => name.includes(w)));
  console.log(`server pid ${child.pid}, ${o.calls} Put calls per path, ${o.concurrency} in flight, ${o.rate > 0 ? `offered at ${o.rate} calls/s, ` : ""}fast lane ${o.fastLane ? "on" : "off"}, HTTP/2 ${o.fastLane && o.h2Engine ? "engine" : "node:http2"}${o.tls ? ", TLS" : ""}`);
  for (const [name, make] of paths) {
    const slot = make();
    const callers = await Promise.all(Array.from({ length: o.concurrency }, slot));
    await runCalls(Math.min(2000, o.calls), o.concurrency, callers); // warm-up: JIT, connections
    const cpu0 = cpuSeconds(child.pid)!;
    const self0 = process.cpuUsage();
    const t0 = performance.now();
    await runCalls(o.calls, o.concurrency, callers, o.rate);
    const wall = (performance.now() - t0) / 1000;
    const server = cpuSeconds(child.pid)! - cpu0;
    const self = process.cpuUsage(self0);
    const gen = (self.user + self.system) / 1e6;
    console.log(
      `${name.padEnd(30)} server ${((server * 1e6) / o.calls).toFixed(1).padStart(6)} µs/call   client ${((gen * 1e6) / o.calls).toFixed(1).padStart(6)} µs/call   ${Math.round(o.calls / wall)} calls/s`,
    );
  }
  await stopChild(child);
  if (certDir !== undefined) removeTempDir(certDir);
  if (o.cpuProf) console.log(`server profile written under ${o.cpuProf} (${fs.existsSync(o.cpuProf) ? fs.readdirSync(o.cpuProf).join(", ") : "none"})`);
  process.exit(0);
}

if (process.argv[2] === "serve") await serve(process.argv[3] !== "slow", process.argv[4] !== "node", process.argv[5]);
else await main();
