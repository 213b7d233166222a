// Server CPU per HTTP/2 stream of a fixed answer: node:http2 under Bun against the engine's own
// framing (src/rpc/h2), same node:http2 client, same run. The go/no-go measurement of the engine.
// Usage: bun bench/h2-floor.ts [--streams N] [--concurrency C]   (`serve` is the child's mode)

import * as http2 from "node:http2";
import * as net from "node:net";
import { H2Connection, DEFAULT_ENGINE_OPTIONS } from "../src/rpc/h2/connection.ts";
import { encodeHeaders } from "../src/rpc/h2/hpack-encoder.ts";
import { cpuSeconds, spawnTracked, stopChild } from "./proc.ts";

const BODY = Buffer.alloc(20, 7);

async function serve(kind: string): Promise<void> {
  let port = 0;
  if (kind === "engine") {
    const head = encodeHeaders([[":status", "200"], ["content-type", "application/grpc+proto"]]);
    const trailers = encodeHeaders([["grpc-status", "0"]]);
    const server = net.createServer((socket) => {
      const connection = new H2Connection(socket, {
        ...DEFAULT_ENGINE_OPTIONS,
        onStream(stream) {
          stream.onEnd = () => stream.respond(head, BODY, trailers);
        },
        onOversizeHeaders(stream) {
          stream.reset();
        },
      });
      connection.start(Buffer.alloc(0));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    port = (server.address() as net.AddressInfo).port;
  } else {
    const server = http2.createServer({ settings: { maxConcurrentStreams: 256 } });
    server.on("stream", (stream: http2.ServerHttp2Stream) => {
      stream.on("data", () => {});
      stream.on("end", () => {
        if (kind === "node-429") {
          stream.respond({ ":status": 429 }, { endStream: true });
          return;
        }
        stream.respond({ ":status": 200, "content-type": "application/grpc+proto" }, { waitForTrailers: true });
        stream.once("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
        stream.end(BODY);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    port = (server.address() as net.AddressInfo).port;
  }
  process.stdout.write(`${port}\n`);
  // For profiling (--cpu-prof writes on exit): stop after this long.
  const exitMs = Number(process.env.H2_FLOOR_EXIT_MS ?? 0);
  if (exitMs > 0) setTimeout(() => process.exit(0), exitMs);
}

async function drive(port: number, streams: number, concurrency: number): Promise<void> {
  const session = http2.connect(`http://127.0.0.1:${port}`);
  let next = 0;
  const one = () =>
    new Promise<void>((resolve, reject) => {
      const stream = session.request({ ":method": "POST", ":path": "/kvraftpb.KVService/Command", "content-type": "application/grpc+proto", te: "trailers" });
      stream.on("data", () => {});
      stream.on("error", reject);
      stream.on("close", () => resolve());
      stream.end(BODY);
    });
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < streams) {
        next++;
        await one();
      }
    }),
  );
  session.close();
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const streams = Number(argv[argv.indexOf("--streams") + 1] || 20_000) || 20_000;
  const concurrency = Number(argv[argv.indexOf("--concurrency") + 1] || 16) || 16;
  for (const kind of ["node-429", "node-trailers", "engine"]) {
    const child = spawnTracked([process.execPath, import.meta.path, "serve", kind], { stdout: "pipe", output: "inherit" });
    const { value } = await (child.stdout as ReadableStream<Uint8Array>).getReader().read();
    const port = Number(new TextDecoder().decode(value).trim());
    await drive(port, 2_000, concurrency);
    const cpu0 = cpuSeconds(child.pid)!;
    const t0 = performance.now();
    await drive(port, streams, concurrency);
    const wall = (performance.now() - t0) / 1000;
    const cpu = cpuSeconds(child.pid)! - cpu0;
    console.log(`${kind.padEnd(14)} server ${((cpu * 1e6) / streams).toFixed(1).padStart(6)} µs/stream   ${Math.round(streams / wall)} streams/s`);
    await stopChild(child);
  }
  process.exit(0);
}

if (process.argv[2] === "serve") await serve(process.argv[3]!);
else await main();
