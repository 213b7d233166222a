// One port per node serving every Connect-RPC client: it sniffs the first bytes of each accepted
// socket: a TLS handshake goes through TLS (when configured) and then by ALPN to node:http2 or
// node:http; cleartext goes by the HTTP/2 connection preface to node:http2 (h2c: gRPC, Connect,
// gRPC-Web) or to node:http (HTTP/1.1: browsers, curl), all running the same routes. Also owns CORS,
// the client gate and graceful shutdown. See DESIGN.md §5, src/rpc/DESIGN.md and anchors/README.md.

import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";
import type * as tls from "node:tls";
import { ConnectError, cors, createContextValues, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { FrameRoutes } from "./frame-lane.ts";
import { Http1Lane, type LaneHost } from "./http1-lane.ts";
import { routeStreams } from "./h2-lane.ts";
import { EngineLane, openInternalSession, type EngineHost } from "./h2-engine-lane.ts";
import { engineCounters, type EngineCounters } from "../h2/connection.ts";
import { PEER_TAG, tagPrefix } from "./peer-tag.ts";
import { ACCEPT_COMPRESSION, COMPRESS_MIN_BYTES, UnaryRoutes, streamingPathsOf } from "./unary-routes.ts";
import { connectionKey, connectionOf, type CallGate } from "./connection.ts";
import { Admission, type AdmissionOptions } from "./admission.ts";
import { ConnectionGuard, DEFAULT_CONNECTION_LIMITS, type ConnectionLimits, type ConnectionStats, type GuardedConnection } from "./connection-guard.ts";
import { TLS_HANDSHAKE_BYTE, refuseCleartext, refuseTls, secureContextOf, startTls, type TlsOptions } from "./tls-port.ts";
import { log } from "../../obs/log.ts";
import { ListenError, listenError } from "./listen-error.ts";

export { ListenError };

/** The bytes every HTTP/2 client sends first (RFC 9113 §3.4). */
const HTTP2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

/** Default per-message limit for requests: the client API never needs more. */
export const DEFAULT_READ_MAX_BYTES = 4 * 1024 * 1024;

export interface RpcServerOptions {
  /** Interface to bind ("127.0.0.1", "::", "localhost", ...). Default 127.0.0.1. */
  host?: string;
  /** TCP port; 0 picks a free one (read it back from `port`). */
  port: number;
  /** Connect routes, shared by the HTTP/1.1 and the HTTP/2 side. */
  routes: (router: ConnectRouter) => void;
  /** Browser origins allowed by CORS, e.g. "http://localhost:8080"; "*" allows any. Empty: no CORS. */
  corsOrigins?: readonly string[] | ReadonlySet<string>;
  /** How long browsers may cache a preflight answer. */
  corsMaxAgeSeconds?: number;
  /** Per-message request limit for routes that set none of their own. */
  readMaxBytes?: number;
  /**
   * Deadlines and connection limits (connection-guard.ts); unset fields take DEFAULT_CONNECTION_LIMITS.
   * The three fields below are older names for some of them and win when given.
   */
  connections?: Partial<ConnectionLimits>;
  /** A socket that has not sent its first bytes (or finished its TLS handshake) within this time is closed. */
  firstBytesTimeoutMs?: number;
  /** How long close() lets in-flight calls finish before cutting connections. */
  shutdownGraceMs?: number;
  /** Open connections at most: past it the oldest that never completed a request is evicted (else the new one refused). */
  maxConnections?: number;
  /** Concurrent calls per HTTP/2 connection (SETTINGS_MAX_CONCURRENT_STREAMS). */
  maxStreamsPerConnection?: number;
  /**
   * The fast lanes (default true): plain Connect unary calls over HTTP/1.1 answered in the
   * server's own lane (http1-lane.ts), plain unary calls over HTTP/2 in Connect, gRPC and gRPC-Web
   * served on the raw stream (h2-lane.ts), and frame routes read straight off HTTP/2 streams
   * (frame-lane.ts). False sends every call through node:http / node:http2 and the Connect
   * adapter (kvserver --no-fast-lane; `bun bench cluster --no-fast-lane` measures the difference).
   */
  fastLane?: boolean;
  /**
   * Client HTTP/2 connections (h2c and TLS with ALPN h2) are framed by the node's own HTTP/2 engine
   * (src/rpc/h2, h2-engine-lane.ts) instead of node:http2 (default: with fastLane). Peer connections
   * (they send PEER_TAG first) always reach node:http2.
   */
  h2Engine?: boolean;
  /** An HTTP/1.1 connection of the fast lane with no call running is closed after this long quiet. */
  keepAliveTimeoutMs?: number;
  /** Serve TLS only (HTTP/2 by ALPN and HTTP/1.1); cleartext connections get a 400 saying so. */
  tls?: TlsOptions;
  /** Plain HTTP routes (metrics, health, status page: src/obs) tried before the Connect routes. */
  httpRoutes?: (request: NodeRequest, response: NodeResponse) => boolean;
  /** Client authorization of every call (Connect adapter and fast lane alike); none: every call runs. */
  gate?: CallGate;
  /** Admission control of client calls (admission.ts); none: calls are never refused for load. */
  admission?: AdmissionOptions;
  /**
   * Called as each request starts, before anything else is done with it: the Raft node's pulse(),
   * which sends a busy leader's overdue heartbeats (a flood of calls holds the thread for long).
   */
  pulse?: () => void;
}

/** Counters of the server's paths (for tests and /metrics). */
export interface RpcServerStats {
  /** Calls the HTTP/1.1 lane answered, and connections it handed to node:http. */
  laneCalls: number;
  laneHandovers: number;
  /** Unary calls answered on the HTTP/2 fast path (node:http2's raw stream or the engine). */
  h2Calls: number;
  h2LibraryCalls: number;
  /** Client HTTP/2 connections served by the engine, and streams it relayed to node:http2. */
  h2EngineConnections: number;
  h2Relayed: number;
  /** The engine's GOAWAYs by code and rapid-reset refusals. */
  h2Engine: EngineCounters;
  refusedTls: number;
  refusedCleartext: number;
}

const ALLOW_METHODS = cors.allowedMethods.join(", ");
const ALLOW_HEADERS = [...cors.allowedHeaders, "Authorization"].join(", ");
const EXPOSE_HEADERS = cors.exposedHeaders.join(", ");

type NodeRequest = http.IncomingMessage | http2.Http2ServerRequest;
type NodeResponse = http.ServerResponse | http2.Http2ServerResponse;

export class RpcServer {
  private readonly sockets = new Set<net.Socket>();
  private readonly sessions = new Set<http2.ServerHttp2Session>();
  private readonly lanes = new Set<Http1Lane>();
  private readonly engines = new Set<EngineLane>();
  private readonly laneHost: LaneHost;
  private readonly engineHost: EngineHost | null;
  private readonly secureContext: tls.SecureContext | null;
  private readonly guard: ConnectionGuard;
  private closing: Promise<void> | null = null;

  private constructor(
    private readonly tcp: net.Server,
    private readonly h1: http.Server,
    private readonly h2: http2.Http2Server,
    readonly host: string,
    readonly port: number,
    private readonly options: RpcServerOptions,
    private readonly shutdown: AbortController,
    unary: UnaryRoutes,
    /** Admission control of client calls, when configured (its counters go to /metrics). */
    readonly admission: Admission | null,
    /** Calls the fast lanes answered (HTTP/1.1, HTTP/2), connections handed to node:http, refusals. */
    readonly stats: RpcServerStats,
    limits: ConnectionLimits,
    streamingPaths: ReadonlySet<string>,
    engineHost: Omit<EngineHost, "openInternal"> | null,
  ) {
    this.laneHost = { routes: unary, fallback: h1, shutdownSignal: shutdown.signal, closing: () => this.closing !== null, stats: this.stats, pulse: options.pulse ?? (() => {}) };
    this.engineHost = engineHost === null ? null : { ...engineHost, openInternal: (socket) => openInternalSession(this.h2, socket) };
    this.secureContext = options.tls === undefined ? null : secureContextOf(options.tls);
    this.guard = new ConnectionGuard(limits, () => streamingPaths);
  }

  /** Connection counters and the open-connection gauge (for /metrics). */
  get connectionStats(): Readonly<ConnectionStats> {
    return this.guard.stats;
  }

  /** Binds the port and starts serving. Rejects with ListenError when the port cannot be bound. */
  static async start(options: RpcServerOptions): Promise<RpcServer> {
    const limits = connectionLimitsOf(options);
    let registered: ConnectRouter | null = null;
    const host = options.host ?? "127.0.0.1";
    const shutdown = new AbortController();
    const readMaxBytes = options.readMaxBytes ?? DEFAULT_READ_MAX_BYTES;
    // A misspelled field or enum name must fail loudly: ignoring it would turn {"op":"TRUNCATE"}
    // into the default op, PUT.
    const jsonOptions = { ignoreUnknownFields: false };
    const admission = options.admission === undefined ? null : new Admission(options.admission);
    const unary = new UnaryRoutes({ readMaxBytes, jsonOptions, gate: options.gate, ...(admission !== null ? { admission } : {}) });
    const gate = options.gate;
    const interceptors: Interceptor[] = [];
    if (admission !== null) {
      // The adapter's unary calls (compressed, GET, the --no-fast-lane server) count as the lanes' do.
      interceptors.push((next) => async (request) => {
        if (request.stream || !admission.covers(`/${request.service.typeName}/${request.method.name}`)) return next(request);
        const ticket = admission.admit(0);
        if (ticket instanceof ConnectError) throw ticket;
        try {
          return await next(request);
        } finally {
          admission.release(ticket);
        }
      });
    }
    if (gate !== undefined) {
      interceptors.push((next) => async (request) => {
        const denied = gate({
          path: `/${request.service.typeName}/${request.method.name}`,
          header: (name) => request.header.get(name),
          connection: request.contextValues.get(connectionKey),
        });
        if (denied) throw denied;
        return next(request);
      });
    }
    const frames = new FrameRoutes();
    const adapter = connectNodeAdapter({
      // The fast lane answers the unary methods registered here, the frame lane the frame routes
      // registered through frameRoutesOf(router); everything else runs through the adapter.
      routes: (router) => {
        registered = router;
        options.routes(frames.exposeOn(unary.recording(router)));
      },
      readMaxBytes,
      shutdownSignal: shutdown.signal,
      jsonOptions,
      interceptors,
      // Explicit, so that the fast lanes negotiate response compression exactly as the adapter does.
      acceptCompression: [...ACCEPT_COMPRESSION],
      compressMinBytes: COMPRESS_MIN_BYTES,
      contextValues: (request) => {
        const session = "stream" in request ? request.stream.session ?? null : null;
        return createContextValues().set(connectionKey, connectionOf(request.socket, session));
      },
    });
    // A set given is used as it is: its owner may allow more origins later (new cluster members).
    const allowed: ReadonlySet<string> = options.corsOrigins instanceof Set ? options.corsOrigins : new Set(options.corsOrigins ?? []);
    const maxAge = String(options.corsMaxAgeSeconds ?? 7200);
    let server: RpcServer | null = null;

    const pulse = options.pulse ?? (() => {});
    const handle = (request: NodeRequest, nodeResponse: NodeResponse): void => {
      pulse();
      // http and http2 responses share the calls used here; TS cannot call through their union.
      const response = nodeResponse as http.ServerResponse;
      const origin = request.headers.origin;
      if (typeof origin === "string" && (allowed.has("*") || allowed.has(origin))) {
        response.setHeader("Access-Control-Allow-Origin", origin);
        response.setHeader("Vary", "Origin");
        response.setHeader("Access-Control-Expose-Headers", EXPOSE_HEADERS);
        if (request.method === "OPTIONS") {
          response.setHeader("Access-Control-Allow-Methods", ALLOW_METHODS);
          response.setHeader("Access-Control-Allow-Headers", ALLOW_HEADERS);
          response.setHeader("Access-Control-Max-Age", maxAge);
          response.writeHead(204);
          response.end();
          return;
        }
      } else if (request.method === "OPTIONS" && typeof origin === "string") {
        // A preflight from an origin not on the list: say so instead of a bare 404.
        response.writeHead(403, { "Content-Type": "text/plain; charset=utf-8" });
        response.end(`origin ${origin} is not allowed; start the server with --cors-origin ${origin}\n`);
        return;
      }
      // While closing, tell HTTP/1.1 clients not to reuse the connection.
      if (server?.closing && "shouldKeepAlive" in response) response.shouldKeepAlive = false;
      if (options.httpRoutes?.(request, nodeResponse)) return;
      adapter(request, nodeResponse);
    };

    const h1 = http.createServer(handle);
    h1.on("clientError", (error: NodeJS.ErrnoException, socket: net.Socket) => {
      if (socket.writable && error.code !== "ECONNRESET") {
        socket.end("HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
      }
      socket.destroy();
    });
    const h2 = http2.createServer({ settings: { maxConcurrentStreams: options.maxStreamsPerConnection ?? 256 } }, handle);
    const stats: RpcServerStats = { laneCalls: 0, laneHandovers: 0, h2Calls: 0, h2LibraryCalls: 0, h2EngineConnections: 0, h2Relayed: 0, h2Engine: engineCounters(), refusedTls: 0, refusedCleartext: 0 };
    // The headers handle() sets for a call from an allowed origin, for the HTTP/2 lane to send alike.
    const corsHeaders = new Map<string, Record<string, string> | null>();
    const cors = (origin: string): Record<string, string> | null => {
      if (!(allowed.has("*") || allowed.has(origin))) return null;
      let headers = corsHeaders.get(origin);
      if (headers === undefined) {
        headers = { "access-control-allow-origin": origin, vary: "Origin", "access-control-expose-headers": EXPOSE_HEADERS };
        // Bounded: with "*" any origin may come; past the bound each call builds its own.
        if (corsHeaders.size < 256) corsHeaders.set(origin, headers);
      }
      return headers;
    };
    if (options.fastLane !== false) routeStreams(h2, frames, unary, { shutdownSignal: shutdown.signal, stats, cors, pulse });
    // No tcp.maxConnections: the guard admits past the limit by evicting a stalled connection.
    const tcp = net.createServer();

    await new Promise<void>((resolve, reject) => {
      const onError = (error: NodeJS.ErrnoException) => {
        tcp.off("listening", onListening);
        reject(listenError(error, host, options.port));
      };
      const onListening = () => {
        tcp.off("error", onError);
        resolve();
      };
      tcp.once("error", onError);
      tcp.once("listening", onListening);
      tcp.listen({ host, port: options.port, exclusive: true });
    });

    const address = tcp.address();
    const port = typeof address === "object" && address !== null ? address.port : options.port;
    const engineHost =
      options.fastLane !== false && options.h2Engine !== false
        ? { unary, maxConcurrentStreams: options.maxStreamsPerConnection ?? 256, shutdownSignal: shutdown.signal, stats, cors, pulse }
        : null;
    server = new RpcServer(tcp, h1, h2, host, port, options, shutdown, unary, admission, stats, limits, streamingPathsOf(registered), engineHost);
    server.wire();
    return server;
  }

  private wire(): void {
    this.tcp.on("connection", (socket) => this.accept(socket));
    this.tcp.on("error", (error) => log.error(`kvraft rpc: listener error: ${error.message}`));
    this.h2.on("session", (session) => {
      this.guard.sessionStarted(session);
      this.sessions.add(session);
      session.once("close", () => this.sessions.delete(session));
      if (this.closing) session.close();
    });
    // Before any route: the guard counts the stream and starts its body deadline.
    this.h2.prependListener("stream", (stream, headers) => this.guard.streamStarted(stream as http2.ServerHttp2Stream, headers));
    this.h1.prependListener("request", (request, response) => this.guard.requestStarted(request, response));
    // One coarse sweep of every connection's deadlines instead of a timer per connection.
    this.guard.start();
  }

  /** Reads just enough of a new connection to tell HTTP/2 from HTTP/1.1, then hands it over. */
  private accept(socket: net.Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    socket.on("error", () => socket.destroy());
    // At a connection limit this evicts a stalled connection, or refuses this one.
    const guarded = this.guard.admit(socket);
    if (guarded === null) return;
    this.sockets.add(socket);
    socket.once("close", () => this.sockets.delete(socket));
    // The sniffing stage's deadline (first bytes, the whole HTTP/2 preface) is the guard's.
    let seen: Buffer = Buffer.alloc(0);
    let tagged = false;
    const onData = (chunk: Buffer) => {
      seen = seen.length === 0 ? chunk : Buffer.concat([seen, chunk]);
      if (!tagged && (seen[0] === TLS_HANDSHAKE_BYTE || this.secureContext !== null)) {
        socket.off("data", onData);
        socket.pause();
        this.guard.startedTls(guarded);
        this.acceptTls(socket, seen, guarded);
        return;
      }
      // A peer's connection: its tag first, then the HTTP/2 preface, for node:http2.
      if (!tagged && tagPrefix(seen)) {
        if (seen.length < PEER_TAG.length) return;
        tagged = true;
        seen = seen.subarray(PEER_TAG.length);
        if (seen.length === 0) return;
      }
      const n = Math.min(seen.length, HTTP2_PREFACE.length);
      const isHttp2 = seen.subarray(0, n).equals(HTTP2_PREFACE.subarray(0, n));
      if (isHttp2 && seen.length < HTTP2_PREFACE.length) return; // a prefix so far: read on
      socket.off("data", onData);
      if (isHttp2 && !tagged && this.engineHost !== null) {
        this.startEngine(socket, seen, guarded);
        return;
      }
      if (!isHttp2 && !tagged && this.options.fastLane !== false) {
        const lane = new Http1Lane(socket, this.laneHost, (done) => {
          this.lanes.delete(done);
          if (!socket.destroyed) this.guard.leftLane(guarded);
        });
        lane.onRequest = () => this.guard.markServed(guarded);
        this.lanes.add(lane);
        this.guard.startedLane(guarded, lane);
        lane.start(seen);
        return;
      }
      socket.pause();
      socket.unshift(seen);
      this.guard.handOver(guarded, isHttp2 || tagged ? "h2" : "h1", () => (isHttp2 || tagged ? this.h2 : this.h1).emit("connection", socket));
      socket.resume();
    };
    socket.on("data", onData);
  }

  /** Serves a client HTTP/2 connection with the engine; `seen`: the bytes read so far (the preface). */
  private startEngine(socket: net.Socket, seen: Buffer, guarded: GuardedConnection): void {
    const lane = new EngineLane(socket, this.engineHost!);
    const connection = lane.connection;
    this.stats.h2EngineConnections++;
    this.engines.add(lane);
    socket.once("close", () => this.engines.delete(lane));
    this.guard.startedEngine(guarded, connection);
    connection.onRequestEnded = (stream) => this.guard.engineRequestEnded(guarded, stream);
    connection.onStreamClosed = (stream) => this.guard.engineStreamClosed(guarded, stream, connection.openStreams);
    connection.onStreamCut = () => this.guard.engineStreamCut();
    lane.onStreamStarted = (stream) => this.guard.engineStreamStarted(guarded, stream);
    lane.start(seen);
    if (this.closing) connection.close();
  }

  /** A connection whose first bytes are TLS, or any connection when the port speaks TLS. */
  private acceptTls(socket: net.Socket, seen: Buffer, guarded: GuardedConnection): void {
    const context = this.secureContext;
    const isTls = seen[0] === TLS_HANDSHAKE_BYTE;
    if (context === null || !isTls) {
      // A mismatch is answered at once (it used to hang until the first-bytes timeout).
      if (context === null) {
        if (this.stats.refusedTls++ === 0) log.warn(`kvraft rpc: a TLS client (${socket.remoteAddress}) reached the cleartext port ${this.port}: use http://, or start the node with --cert-file/--key-file`);
        refuseTls(socket);
      } else {
        this.stats.refusedCleartext++;
        refuseCleartext(socket, this.port);
      }
      return;
    }
    // The handshake's deadline is the guard's (it runs from the accept, as the sniffing stage's).
    startTls(socket, seen, context, this.options.tls!.ca.length > 0, 0, (secure) => {
      if (this.closing) {
        secure.destroy();
        return;
      }
      const h2 = secure.alpnProtocol === "h2";
      if (h2 && this.engineHost !== null) {
        this.sniffSecure(secure, guarded);
        return;
      }
      this.guard.handOver(guarded, h2 ? "h2" : "h1", () => (h2 ? this.h2 : this.h1).emit("connection", secure), secure);
    });
    socket.resume();
  }

  /** A TLS connection that chose h2: a peer's (tagged) goes to node:http2, a client's to the engine. */
  private sniffSecure(secure: tls.TLSSocket, guarded: GuardedConnection): void {
    let seen: Buffer = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      seen = seen.length === 0 ? chunk : Buffer.concat([seen, chunk]);
      const maybeTag = tagPrefix(seen);
      if (maybeTag && seen.length < PEER_TAG.length) return;
      secure.off("data", onData);
      if (maybeTag) {
        secure.pause();
        secure.unshift(seen.subarray(PEER_TAG.length));
        this.guard.handOver(guarded, "h2", () => this.h2.emit("connection", secure), secure);
        secure.resume();
        return;
      }
      this.startEngine(secure as unknown as net.Socket, seen, guarded);
    };
    secure.on("data", onData);
  }

  /** The URL clients use to reach this server, e.g. "http://127.0.0.1:5001" or "https://...". */
  get url(): string {
    const host = this.host.includes(":") ? `[${this.host}]` : this.host;
    return `${this.secureContext === null ? "http" : "https"}://${host}:${this.port}`;
  }

  /**
   * Graceful stop: no new connections, in-flight calls finish (HTTP/2 sessions get GOAWAY,
   * HTTP/1.1 connections close after their current response), and after `shutdownGraceMs`
   * whatever is left is aborted and its sockets destroyed. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    const listenerClosed = new Promise<void>((resolve) => this.tcp.close(() => resolve()));
    this.guard.stop();
    for (const session of this.sessions) session.close();
    for (const engine of this.engines) engine.connection.close();
    for (const lane of this.lanes) lane.closeIfIdle();
    this.h1.closeIdleConnections();
    const drained = this.waitForSockets();
    const grace = this.options.shutdownGraceMs ?? 5_000;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const expired = new Promise<"expired">((resolve) => {
      timer = setTimeout(() => resolve("expired"), grace);
    });
    const outcome = await Promise.race([drained.then(() => "drained" as const), expired]);
    clearTimeout(timer);
    if (outcome === "expired") {
      this.shutdown.abort();
      for (const session of this.sessions) session.destroy();
      for (const socket of this.sockets) socket.destroy();
    }
    await listenerClosed;
  }

  private async waitForSockets(): Promise<void> {
    // Bounded: close() races this against the grace timer.
    while (this.sockets.size > 0) {
      this.h1.closeIdleConnections();
      for (const lane of this.lanes) lane.closeIfIdle();
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
}

/** The guard's limits: the options' fields over the defaults. */
function connectionLimitsOf(options: RpcServerOptions): ConnectionLimits {
  const limits: ConnectionLimits = { ...DEFAULT_CONNECTION_LIMITS, ...options.connections };
  if (options.firstBytesTimeoutMs !== undefined) limits.handshakeTimeoutMs = options.firstBytesTimeoutMs;
  if (options.keepAliveTimeoutMs !== undefined) limits.keepAliveTimeoutMs = options.keepAliveTimeoutMs;
  if (options.maxConnections !== undefined) limits.maxConnections = options.maxConnections;
  return limits;
}
