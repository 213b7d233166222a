// One peer hop taken apart: two processes bounce a message back and forth over one-way HTTP/2
// streams, each direction on its own connection as Raft's peer links are, with the sending side
// (node:http2's client, or bare DATA frames on a socket) and the receiving side (node:http2's
// server, or the engine) chosen separately; round-trip p50/p99 and CPU per round trip per process.
// Usage: bun bench/peer-hop.ts [--trips N] [--gap-ms G]   (`side` is the children's mode). A tool, not a suite.

import * as fs from "node:fs";
import * as http2 from "node:http2";
import * as net from "node:net";
import { H2Connection, DEFAULT_ENGINE_OPTIONS } from "../src/rpc/h2/connection.ts";
import { CLIENT_PREFACE, FLAG_ACK, FLAG_END_HEADERS, FrameType, dataFrame, frameHeader, settingsFrame } from "../src/rpc/h2/frames.ts";
import { encodeHeaders } from "../src/rpc/h2/hpack-encoder.ts";
import { cpuSeconds, spawnTracked, stopChild } from "./proc.ts";
import { Histogram, latencyMillis } from "./stats.ts";

/** node-emit: node:http2 given each socket by a net.Server, as RpcServer hands peers over. */
type Receiver = "node" | "node-emit" | "engine";
type Sender = "node" | "raw";

/** An AppendEntries with one 100-byte Put is ~200 bytes; its answer ~30. */
const OUT_BYTES = 200;
const BACK_BYTES = 30;
const MARK = Buffer.alloc(1);

function envelope(bytes: number): Buffer {
  const out = Buffer.alloc(5 + bytes, 1);
  out[0] = 0;
  out.writeUInt32BE(bytes, 1);
  return out;
}

/** Takes each message (one envelope per chunk, as one message is in flight at a time). */
async function listen(kind: Receiver, onMessage: () => void): Promise<number> {
  let server: net.Server | http2.Http2Server;
  if (kind === "engine") {
    server = net.createServer((socket) => {
      socket.setNoDelay(true);
      const connection = new H2Connection(socket, {
        ...DEFAULT_ENGINE_OPTIONS,
        onStream(stream) {
          stream.onData = () => onMessage();
        },
        onOversizeHeaders(stream) {
          stream.reset();
        },
      });
      connection.start(Buffer.alloc(0));
    });
  } else if (kind === "node-emit") {
    const h2 = http2.createServer();
    h2.on("stream", (stream: http2.ServerHttp2Stream) => stream.on("data", () => onMessage()));
    server = net.createServer((socket) => {
      socket.setNoDelay(true);
      socket.once("data", (first: Buffer) => {
        socket.pause();
        socket.unshift(first);
        h2.emit("connection", socket);
        socket.resume();
      });
    });
  } else {
    server = http2.createServer();
    server.on("stream", (stream: http2.ServerHttp2Stream) => stream.on("data", () => onMessage()));
  }
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return (server.address() as net.AddressInfo).port;
}

/** A write function for one long-lived client stream to `port`. */
async function dial(kind: Sender, port: number): Promise<(frame: Buffer) => void> {
  const headers = { ":method": "POST", ":path": "/raftpb.RaftService/Stream", "content-type": "application/connect+proto", "connect-protocol-version": "1" };
  if (kind === "node") {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    await new Promise<void>((resolve) => session.once("connect", () => resolve()));
    const stream = session.request(headers, { endStream: false });
    return (frame) => void stream.write(frame);
  }
  // Bare frames: preface, SETTINGS, one HEADERS, then one DATA frame per message; the server's
  // SETTINGS are acknowledged, everything else it sends is read and dropped (its window updates
  // keep up, as one message is in flight at a time).
  const socket = net.connect({ host: "127.0.0.1", port });
  socket.setNoDelay(true);
  await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
  let buffered: Buffer = Buffer.alloc(0);
  socket.on("data", (chunk: Buffer) => {
    buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
    while (buffered.length >= 9) {
      const length = buffered.readUIntBE(0, 3);
      if (buffered.length < 9 + length) break;
      if (buffered[3] === FrameType.SETTINGS && !(buffered[4]! & FLAG_ACK)) socket.write(settingsAck());
      buffered = buffered.subarray(9 + length);
    }
  });
  const block = encodeHeaders([[":scheme", "http"], [":authority", "127.0.0.1"], ...Object.entries(headers)]);
  const head = Buffer.alloc(9 + block.length);
  frameHeader(head, 0, block.length, FrameType.HEADERS, FLAG_END_HEADERS, 1);
  head.set(block, 9);
  socket.write(Buffer.concat([CLIENT_PREFACE, settingsFrame([]), head]));
  return (frame) => void socket.write(dataFrame(1, frame, false));
}

function settingsAck(): Buffer {
  const out = Buffer.alloc(9);
  frameHeader(out, 0, 0, FrameType.SETTINGS, FLAG_ACK, 0);
  return out;
}

/**
 * A child: "origin" sends and times round trips, "echo" answers each message. With `gapMs` > 0 the
 * origin waits that long between trips, so both processes sleep in the kernel when a message
 * arrives, as the nodes do around a lone Put (the follower's fsync, the client's think time).
 */
async function side(role: string, receiver: Receiver, sender: Sender, gapMs: number): Promise<void> {
  let write: ((frame: Buffer) => void) | null = null;
  const back = envelope(BACK_BYTES);
  const out = envelope(OUT_BYTES);
  let histogram = new Histogram();
  let trips = 0;
  let target = 0;
  let sentAt = 0;
  let done: (() => void) | null = null;
  // As the Raft driver does: a message that arrives is answered from the next macrotask.
  const send = (frame: Buffer) => setImmediate(() => write!(frame));
  // PEER_HOP_MARK=1: the echo writes one byte to /dev/null as each message reaches it, so that
  // `perf trace` shows the receiving side's wall time (its socket read to that write).
  const markFd = role === "echo" && process.env.PEER_HOP_MARK === "1" ? fs.openSync("/dev/null", "w") : -1;
  const onMessage =
    role === "echo"
      ? () => {
          if (markFd >= 0) fs.writeSync(markFd, MARK);
          send(back);
        }
      : () => {
          histogram.record(Math.round((performance.now() - sentAt) * 1000));
          if (++trips >= target) return done?.();
          const next = () => {
            sentAt = performance.now();
            write!(out);
          };
          if (gapMs > 0) setTimeout(next, gapMs);
          else setImmediate(next);
        };
  const port = await listen(receiver, onMessage);
  process.stdout.write(`${port}\n`);
  for await (const line of console) {
    const [command, arg] = line.trim().split(" ");
    if (command === "peer") {
      write = await dial(sender, Number(arg));
      process.stdout.write("dialed\n");
    } else if (command === "run") {
      histogram = new Histogram();
      trips = 0;
      target = Number(arg);
      await new Promise<void>((resolve) => {
        done = resolve;
        sentAt = performance.now();
        write!(out);
      });
      process.stdout.write(`${JSON.stringify(histogram.toJSON())}\n`);
    }
  }
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const trips = Number(argv[argv.indexOf("--trips") + 1] || 5_000) || 5_000;
  const gapMs = argv.includes("--gap-ms") ? Number(argv[argv.indexOf("--gap-ms") + 1]) : 0;
  const combos: [Sender, Receiver][] = [
    ["node", "node"],
    ["node", "node-emit"],
    ["node", "engine"],
    ["raw", "node"],
    ["raw", "engine"],
  ];
  let perf: import("bun").Subprocess | null = null;
  for (const [sender, receiver] of combos) {
    const spawn = (role: string) => spawnTracked([process.execPath, import.meta.path, "side", role, receiver, sender, String(gapMs)], { stdout: "pipe", stdin: "pipe", output: "inherit" });
    const children = [spawn("origin"), spawn("echo")];
    const lines = children.map((child) => lineReader(child.stdout as ReadableStream<Uint8Array>));
    const ports = await Promise.all(lines.map((next) => next()));
    for (const [i, child] of children.entries()) {
      (child.stdin as import("bun").FileSink).write(`peer ${ports[1 - i]}\n`);
      await lines[i]!();
    }
    const origin = children[0]!.stdin as import("bun").FileSink;
    if (process.env.PEER_HOP_PERF) {
      // Trace the echo's syscalls during the measured run (see PEER_HOP_MARK).
      perf = Bun.spawn(["perf", "trace", "-p", String(children[1]!.pid), "-o", `${process.env.PEER_HOP_PERF}.${sender}-${receiver}`], { stdout: "ignore", stderr: "inherit" });
      await Bun.sleep(500);
    }
    origin.write(`run ${gapMs > 0 ? 200 : 1000}\n`); // warm-up
    await lines[0]!();
    const cpu0 = children.map((c) => cpuSeconds(c.pid)!);
    const t0 = performance.now();
    origin.write(`run ${trips}\n`);
    const histogram = Histogram.fromJSON(JSON.parse(await lines[0]!()));
    const wall = (performance.now() - t0) / 1000;
    const cpu = children.map((c, i) => ((cpuSeconds(c.pid)! - cpu0[i]!) * 1e6) / trips);
    const lat = latencyMillis(histogram);
    if (perf !== null) {
      perf.kill("SIGINT");
      await perf.exited;
      perf = null;
    }
    console.log(
      `send ${sender.padEnd(4)} recv ${receiver.padEnd(6)} round trip p50 ${(lat.p50 * 1000).toFixed(0).padStart(4)} µs  p99 ${(lat.p99 * 1000).toFixed(0).padStart(5)} µs  ` +
        `CPU/trip origin ${cpu[0]!.toFixed(0).padStart(3)} µs, echo ${cpu[1]!.toFixed(0).padStart(3)} µs  (${Math.round(trips / wall)} trips/s)`,
    );
    for (const child of children) await stopChild(child, 1000);
  }
  process.exit(0);
}

/** Reads a child's stdout line by line. */
function lineReader(stream: ReadableStream<Uint8Array>): () => Promise<string> {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  return async () => {
    for (;;) {
      const at = pending.indexOf("\n");
      if (at >= 0) {
        const line = pending.slice(0, at);
        pending = pending.slice(at + 1);
        return line;
      }
      const { value, done } = await reader.read();
      if (done) throw new Error("a child ended early");
      pending += decoder.decode(value, { stream: true });
    }
  };
}

if (process.argv[2] === "side") await side(process.argv[3]!, process.argv[4] as Receiver, process.argv[5] as Sender, Number(process.argv[6] ?? 0));
else await main();
