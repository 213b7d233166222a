// The Clerk's lean transport against connect-node's Connect transport on real servers on
// 127.0.0.1: every case runs through both and must come out the same (answers, codes, messages,
// details, metadata), plus what only the lean one owns (stream limit queue, reconnects, close).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { X509Certificate } from "node:crypto";
import * as fs from "node:fs";
import * as http2 from "node:http2";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { CommandResponseSchema, KVService, Op, WatchResponseSchema } from "../../src/gen/kvraftpb/kvraft_pb.ts";
import { makeDevCertificates, type DevCertFiles } from "../../src/cli/dev-certs.ts";
import { createClerkTransport, type ClerkTransportOptions } from "../../src/rpc/client/clerk-transport.ts";
import { CLIENT_PREFACE, ErrorCode, SETTINGS_ACK, goaway, rstStream, settingsFrame } from "../../src/rpc/h2/frames.ts";
import { clientGate } from "../../src/rpc/server/client-auth.ts";
import { RpcServer } from "../../src/rpc/server/server.ts";

/** Every code a handler can refuse with, each with a detail and a header the refusal carries. */
const CODES = [Code.InvalidArgument, Code.NotFound, Code.FailedPrecondition, Code.ResourceExhausted, Code.PermissionDenied, Code.Unavailable, Code.Internal, Code.Aborted, Code.Unimplemented];

/** A KVService whose Command does what its key says. */
function routes(router: Parameters<Parameters<typeof RpcServer.start>[0]["routes"]>[0]): void {
  router.service(KVService, {
    async command(request, context) {
      const [what, arg] = request.key.split(":");
      if (what === "refuse") {
        const code = Number(arg) as Code;
        throw new ConnectError(`refused with ${Code[code]}`, code, { "retry-after-ms": "40" }, [{ desc: CommandResponseSchema, value: { err: "detail", value: String(code) } }]);
      }
      if (what === "slow") {
        // Held `arg` ms or until the client goes away (bounded: a test that fails must not hang).
        await new Promise((resolve) => {
          const timer = setTimeout(resolve, Math.min(Number(arg ?? 5_000), 5_000));
          context.signal.addEventListener("abort", () => (clearTimeout(timer), resolve(null)));
        });
        return create(CommandResponseSchema, { err: "OK", value: "late" });
      }
      if (what === "big") return create(CommandResponseSchema, { err: "OK", value: "v".repeat(Number(arg)) });
      if (what === "echo-auth") return create(CommandResponseSchema, { err: "OK", value: context.requestHeader.get("authorization") ?? "" });
      if (what === "headers") {
        context.responseHeader.set("x-answer", "header");
        context.responseTrailer.set("x-answer", "trailer");
      }
      return create(CommandResponseSchema, { err: "OK", value: `${Op[request.op]} ${request.key}=${request.value}` });
    },
    async *watch(request) {
      for (let i = 1; i <= 3; i++) yield create(WatchResponseSchema, { created: i === 1, cancelReason: `${new TextDecoder().decode(request.key)} ${i}` });
    },
  });
}

let dir: string;
let certs: DevCertFiles;
let plain: RpcServer;
let tokenServer: RpcServer;
let tlsServer: RpcServer;
const TOKEN = "tok-tok-tok-tok-tok";

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvraft-clerk-transport-"));
  certs = await makeDevCertificates(dir, 1);
  plain = await RpcServer.start({ port: 0, routes });
  tokenServer = await RpcServer.start({ port: 0, routes, gate: clientGate({ trustedCa: null, token: TOKEN }) });
  const ca = fs.readFileSync(certs.ca);
  tlsServer = await RpcServer.start({
    port: 0,
    host: "localhost",
    routes,
    tls: { cert: fs.readFileSync(certs.nodes[0]!.cert), key: fs.readFileSync(certs.nodes[0]!.key), ca: [ca] },
    gate: clientGate({ trustedCa: [new X509Certificate(ca)], token: null }),
  });
});
afterAll(async () => {
  await Promise.all([plain.close(), tokenServer.close(), tlsServer.close()]);
  fs.rmSync(dir, { recursive: true, force: true });
});

type Make = (options: ClerkTransportOptions) => Transport;
/** Per protocol: the lean transport, then connect-node's transport of that protocol. */
const PAIRS: Record<"connect" | "grpc", [string, Make][]> = {
  connect: [
    ["lean", (o) => createClerkTransport(o)],
    ["connect-node", (o) => createConnectTransport({ ...o, httpVersion: "2", useBinaryFormat: true })],
  ],
  grpc: [
    ["lean gRPC", (o) => createClerkTransport({ ...o, protocol: "grpc" })],
    ["connect-node gRPC", (o) => createGrpcTransport(o)],
  ],
};
let TRANSPORTS: [string, Make][] = PAIRS.connect;

/** What a call came to, in a form both transports must agree on. */
async function outcome(promise: Promise<unknown>): Promise<unknown> {
  try {
    return { ok: await promise };
  } catch (error) {
    const e = ConnectError.from(error);
    return { code: Code[e.code], message: e.rawMessage, details: e.details, retryAfter: e.metadata.get("retry-after-ms") };
  }
}

/** Runs `run` with each transport and expects both outcomes equal; returns the lean one's. */
async function same(options: ClerkTransportOptions, run: (client: ReturnType<typeof createClient<typeof KVService>>) => Promise<unknown>): Promise<unknown> {
  const results = [];
  for (const [, make] of TRANSPORTS) results.push(await outcome(run(createClient(KVService, make(options)))));
  expect(results[0]).toEqual(results[1]);
  return results[0];
}

const put = (key: string, value = "v") => ({ key, value, op: Op.PUT });

/**
 * A bare HTTP/2 server on a socket: SETTINGS, SETTINGS ACK, and for each request's HEADERS the
 * bytes `answer(streamId)` gives (a RST_STREAM, a GOAWAY): what node:http2's server cannot be made to send.
 */
async function frameStub(answer: (streamId: number) => Buffer): Promise<{ port: number; connections(): number; close(): void }> {
  let connections = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    connections++;
    sockets.add(socket);
    socket.on("error", () => {});
    socket.on("close", () => sockets.delete(socket));
    socket.write(settingsFrame([]));
    let pending = Buffer.alloc(0);
    let prefaceSeen = false;
    socket.on("data", (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      if (!prefaceSeen) {
        if (pending.length < CLIENT_PREFACE.length) return;
        pending = pending.subarray(CLIENT_PREFACE.length);
        prefaceSeen = true;
      }
      while (pending.length >= 9) {
        const length = pending.readUIntBE(0, 3);
        if (pending.length < 9 + length) return;
        const type = pending[3]!;
        const flags = pending[4]!;
        const streamId = pending.readUInt32BE(5) & 0x7fffffff;
        pending = pending.subarray(9 + length);
        if (type === 4 /* SETTINGS */ && (flags & 1) === 0) socket.write(SETTINGS_ACK);
        if (type === 1 /* HEADERS */) socket.write(answer(streamId));
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    connections: () => connections,
    close() {
      for (const socket of sockets) socket.destroy();
      server.close();
    },
  };
}

for (const protocol of ["connect", "grpc"] as const)
describe(`the Clerk's lean transport, beside connect-node's (${protocol})`, () => {
  beforeAll(() => {
    TRANSPORTS = PAIRS[protocol];
  });

  test("an answer, with its response header and trailer", async () => {
    const baseUrl = `http://127.0.0.1:${plain.port}`;
    for (const [name, make] of TRANSPORTS) {
      const client = createClient(KVService, make({ baseUrl }));
      let header: Headers | undefined;
      let trailer: Headers | undefined;
      const response = await client.command(put("headers", "x"), { onHeader: (h) => (header = h), onTrailer: (t) => (trailer = t), timeoutMs: 2_000 });
      expect([name, response.err, response.value]).toEqual([name, "OK", "PUT headers=x"]);
      expect([name, header?.get("x-answer"), trailer?.get("x-answer")]).toEqual([name, "header", "trailer"]);
    }
  });

  test("each refusal: code, message, details and metadata as connect-node reads them", async () => {
    const baseUrl = `http://127.0.0.1:${plain.port}`;
    for (const code of CODES) {
      const result = (await same({ baseUrl }, (client) => client.command(put(`refuse:${code}`)))) as { code: string; details: unknown[]; retryAfter: string };
      expect(result.code).toBe(Code[code]);
      expect(result.details.length).toBe(1);
      expect(result.retryAfter).toBe("40");
    }
  });

  test("a deadline: DeadlineExceeded; an abort: Canceled", async () => {
    const baseUrl = `http://127.0.0.1:${plain.port}`;
    expect(await same({ baseUrl }, (client) => client.command(put("slow"), { timeoutMs: 100 }))).toMatchObject({ code: "DeadlineExceeded" });
    expect(await same({ baseUrl, defaultTimeoutMs: 100 }, (client) => client.command(put("slow")))).toMatchObject({ code: "DeadlineExceeded" });
    expect(
      await same({ baseUrl }, (client) => {
        const controller = new AbortController();
        setTimeout(() => controller.abort(), 50);
        return client.command(put("slow"), { signal: controller.signal, timeoutMs: 5_000 });
      }),
    ).toMatchObject({ code: "Canceled" });
    const aborted = new AbortController();
    aborted.abort();
    expect(await same({ baseUrl }, (client) => client.command(put("k"), { signal: aborted.signal }))).toMatchObject({ code: "Canceled" });
  });

  test("an interceptor's header reaches the server; without it the gate refuses", async () => {
    const baseUrl = `http://127.0.0.1:${tokenServer.port}`;
    const bearer: Interceptor = (next) => (request) => {
      request.header.set("Authorization", `Bearer ${TOKEN}`);
      return next(request);
    };
    expect(await same({ baseUrl, interceptors: [bearer] }, (client) => client.command(put("echo-auth"), { timeoutMs: 2_000 }))).toEqual({ ok: expect.objectContaining({ value: `Bearer ${TOKEN}` }) });
    expect(await same({ baseUrl }, (client) => client.command(put("echo-auth")))).toMatchObject({ code: "Unauthenticated" });
    // Headers given per call take the same path.
    expect(await same({ baseUrl }, (client) => client.command(put("echo-auth"), { headers: { authorization: `Bearer ${TOKEN}` } }))).toMatchObject({ ok: { value: `Bearer ${TOKEN}` } });
  });

  test("TLS with a client certificate; refused without one where the server requires it", async () => {
    const baseUrl = `https://localhost:${tlsServer.port}`;
    const ca = fs.readFileSync(certs.ca);
    const withCert = { ca, cert: fs.readFileSync(certs.client.cert), key: fs.readFileSync(certs.client.key) };
    expect(await same({ baseUrl, nodeOptions: withCert }, (client) => client.command(put("k", "tls")))).toMatchObject({ ok: { value: "PUT k=tls" } });
    expect(await same({ baseUrl, nodeOptions: { ca } }, (client) => client.command(put("k")))).toMatchObject({ code: "Unauthenticated" });
    // A server certificate from no CA the client trusts: the connection fails, a node to skip.
    const lean = await outcome(createClient(KVService, createClerkTransport({ baseUrl, protocol })).command(put("k")));
    expect(lean).toMatchObject({ code: "Unavailable" });
  });

  test("a response over readMaxBytes: ResourceExhausted", async () => {
    const baseUrl = `http://127.0.0.1:${plain.port}`;
    // (connect-node's message adds "after decompression"; the code is the same)
    for (const [, make] of TRANSPORTS) {
      expect(await outcome(createClient(KVService, make({ baseUrl, readMaxBytes: 64 * 1024 })).command(put("big:200000")))).toMatchObject({ code: "ResourceExhausted" });
    }
    expect(await same({ baseUrl, readMaxBytes: 64 * 1024 }, (client) => client.command(put("big:1000")))).toMatchObject({ ok: { err: "OK" } });
  });

  test("a server that answers HTTP 503 in plain text: Unavailable from the status", async () => {
    const stub = http2.createServer((_request, response) => {
      response.writeHead(503, { "content-type": "text/plain" });
      response.end("down for maintenance");
    });
    await new Promise<void>((resolve) => stub.listen(0, "127.0.0.1", resolve));
    const baseUrl = `http://127.0.0.1:${(stub.address() as { port: number }).port}`;
    try {
      expect(await same({ baseUrl }, (client) => client.command(put("k")))).toMatchObject({ code: "Unavailable", message: "HTTP 503" });
    } finally {
      stub.close();
    }
  });

  // connect-node under Bun reports each of these as Internal (Bun's stream error comes before the
  // close that carries the code); the lean transport maps the code as connect-node means to.
  test("a stream reset by the server: REFUSED_STREAM Unavailable, CANCEL Canceled, ENHANCE_YOUR_CALM ResourceExhausted", async () => {
    for (const [rstCode, code] of [[ErrorCode.REFUSED_STREAM, "Unavailable"], [ErrorCode.CANCEL, "Canceled"], [ErrorCode.ENHANCE_YOUR_CALM, "ResourceExhausted"], [ErrorCode.INTERNAL_ERROR, "Internal"]] as const) {
      const stub = await frameStub((streamId) => rstStream(streamId, rstCode));
      try {
        const client = createClient(KVService, createClerkTransport({ baseUrl: `http://127.0.0.1:${stub.port}`, protocol }));
        expect(await outcome(client.command(put("k"), { timeoutMs: 5_000 }))).toMatchObject({ code });
      } finally {
        stub.close();
      }
    }
  });

  test("GOAWAY before the answer (the stream past its last stream id): Unavailable; the next call opens a new connection", async () => {
    const stub = await frameStub(() => goaway(0, ErrorCode.NO_ERROR, "going away"));
    try {
      const client = createClient(KVService, createClerkTransport({ baseUrl: `http://127.0.0.1:${stub.port}` }));
      expect(await outcome(client.command(put("k"), { timeoutMs: 5_000 }))).toMatchObject({ code: "Unavailable" });
      expect(await outcome(client.command(put("k"), { timeoutMs: 5_000 }))).toMatchObject({ code: "Unavailable" });
      expect(stub.connections()).toBe(2);
    } finally {
      stub.close();
    }
  });

  test("a Watch goes through the delegated stream", async () => {
    const transport = createClerkTransport({ baseUrl: `http://127.0.0.1:${plain.port}`, protocol });
    const seen: string[] = [];
    for await (const response of createClient(KVService, transport).watch({ key: new TextEncoder().encode("w") }, { timeoutMs: 5_000 })) seen.push(response.cancelReason);
    expect(seen).toEqual(["w 1", "w 2", "w 3"]);
  });
});

describe("the lean transport's own connection handling", () => {
  test("many calls at once beyond the server's stream limit wait their turn; all are answered", async () => {
    const narrow = await RpcServer.start({ port: 0, routes, maxStreamsPerConnection: 4 });
    try {
      const transport = createClerkTransport({ baseUrl: `http://127.0.0.1:${narrow.port}` });
      const client = createClient(KVService, transport);
      await client.command(put("warm")); // SETTINGS known
      const answers = await Promise.all(Array.from({ length: 400 }, (_, i) => client.command(put(`k${i}`, String(i)), { timeoutMs: 10_000 })));
      expect(answers.map((a) => a.value)).toEqual(Array.from({ length: 400 }, (_, i) => `PUT k${i}=${i}`));
    } finally {
      await narrow.close();
    }
  });

  test("more waiting calls than maxWaitingCalls: the excess is refused with ResourceExhausted", async () => {
    const narrow = await RpcServer.start({ port: 0, routes, maxStreamsPerConnection: 1 });
    try {
      const client = createClient(KVService, createClerkTransport({ baseUrl: `http://127.0.0.1:${narrow.port}`, maxWaitingCalls: 5 }));
      await client.command(put("warm"));
      const results = await Promise.all(Array.from({ length: 20 }, (_, i) => outcome(client.command(put(`k${i}`)))));
      const refused = results.filter((r) => (r as { code?: string }).code === "ResourceExhausted").length;
      expect(refused).toBeGreaterThan(0);
      expect(results.length - refused).toBeGreaterThanOrEqual(6);
    } finally {
      await narrow.close();
    }
  });

  test("a server that closes (GOAWAY): the call in flight is answered, the next is Unavailable; restarted, the next reconnects", async () => {
    let server = await RpcServer.start({ port: 0, routes });
    const port = server.port;
    const transport = createClerkTransport({ baseUrl: `http://127.0.0.1:${port}` });
    const client = createClient(KVService, transport);
    expect((await client.command(put("a"))).err).toBe("OK");
    // A call in flight when the server starts closing: it lets the call finish.
    const inFlight = outcome(client.command(put("slow:300"), { timeoutMs: 5_000 }));
    await Bun.sleep(50);
    await server.close();
    expect(await inFlight).toMatchObject({ ok: { value: "late" } });
    expect(await outcome(client.command(put("b"), { timeoutMs: 2_000 }))).toMatchObject({ code: "Unavailable" });
    server = await RpcServer.start({ port, routes });
    try {
      expect((await client.command(put("c"), { timeoutMs: 2_000 })).value).toBe("PUT c=v");
    } finally {
      await server.close();
    }
  });

  test("an idle session does not keep the process alive", async () => {
    const child = Bun.spawn([process.execPath, path.join(import.meta.dir, "clerk-transport-child.ts"), `http://127.0.0.1:${plain.port}`], { stdout: "pipe", stderr: "inherit" });
    // Bounded: a session that kept the child alive is killed here and the test fails.
    const guard = setTimeout(() => child.kill("SIGKILL"), 15_000);
    const code = await child.exited;
    clearTimeout(guard);
    expect([code, (await new Response(child.stdout).text()).trim()]).toEqual([0, "PUT k=child"]);
  }, 20_000);

  test("close(): later calls fail with Unavailable", async () => {
    const transport = createClerkTransport({ baseUrl: `http://127.0.0.1:${plain.port}` });
    const client = createClient(KVService, transport);
    expect((await client.command(put("a"))).err).toBe("OK");
    transport.close();
    expect(await outcome(client.command(put("b")))).toMatchObject({ code: "Unavailable" });
  });
});
