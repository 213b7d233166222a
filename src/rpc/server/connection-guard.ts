// Connection hygiene for the node's port: limits on open connections (in all and per remote
// address), deadlines for each stage a client can stall in (first bytes and TLS/HTTP/2 handshakes,
// HTTP/1.1 request heads and bodies, HTTP/2 request bodies) and idle timeouts, all checked by one
// coarse sweep. At a limit the oldest connection that never completed a request is evicted, so
// a flood of half-open sockets (slowloris) cannot lock out a new client. See src/rpc/DESIGN.md.

import * as http2 from "node:http2";
import type * as http from "node:http";
import type * as net from "node:net";
import type { Http1Lane } from "./http1-lane.ts";
import type { H2Stream } from "../h2/stream.ts";
import { ErrorCode } from "../h2/frames.ts";

/** What the guard needs of a connection served by the HTTP/2 engine (h2-engine-lane.ts). */
export interface GuardedEngine {
  readonly settingsSeen: boolean;
  readonly openStreams: number;
  readonly closing: boolean;
  /** GOAWAY: no new streams, the connection ends when the last one does. */
  close(): void;
}

export interface ConnectionLimits {
  /** First bytes, the HTTP/2 preface and SETTINGS, and a TLS handshake must arrive within this (ms). */
  handshakeTimeoutMs: number;
  /** An HTTP/1.1 request head must be complete this long after its first byte (ms). */
  headerTimeoutMs: number;
  /** A request body must be complete this long after its head (ms); streaming uploads are exempt. */
  bodyTimeoutMs: number;
  /** An HTTP/1.1 connection with no request in progress is closed after this long (ms). */
  keepAliveTimeoutMs: number;
  /** An HTTP/2 connection without open streams gets GOAWAY after this long (ms); peers are exempt. */
  idleTimeoutMs: number;
  /** Open connections at most; past it the oldest that never completed a request is evicted. */
  maxConnections: number;
  /** Open connections from one remote address at most; same eviction rule within that address. */
  maxConnectionsPerAddress: number;
}

export const DEFAULT_CONNECTION_LIMITS: Readonly<ConnectionLimits> = {
  handshakeTimeoutMs: 5_000,
  headerTimeoutMs: 10_000,
  bodyTimeoutMs: 30_000,
  keepAliveTimeoutMs: 5_000,
  idleTimeoutMs: 300_000,
  maxConnections: 4096,
  maxConnectionsPerAddress: 2048,
};

/** Counters and the open-connection gauge for /metrics. */
export interface ConnectionStats {
  accepted: number;
  open: number;
  /** Connections closed to make room for a new one (they never completed a request). */
  evicted: number;
  /** New connections closed at once: at a limit with nothing evictable. */
  refused: number;
  handshakeTimeouts: number;
  headerTimeouts: number;
  bodyTimeouts: number;
  /** Idle connections closed (HTTP/1.1 keep-alive, HTTP/2 GOAWAY). */
  idleClosed: number;
  /** HTTP/2 streams answered before their request ended, then reset with NO_ERROR. */
  streamsCut: number;
  /** Sweeps skipped because the process had been stopped or starved (deadlines re-checked next sweep). */
  sweepsSkipped: number;
}

const trustedSessions = new WeakSet<http2.Http2Session>();

/**
 * Marks an HTTP/2 connection as an authenticated peer's (peer-auth.ts): it is never evicted,
 * idle-closed or held to body deadlines, whatever its streams do.
 */
export function trustSession(session: http2.Http2Session): void {
  trustedSessions.add(session);
}

type Stage = "sniff" | "tls" | "h1-lane" | "h1" | "h2" | "h2-engine";

/** One accepted socket and what the guard knows about it. */
export class GuardedConnection {
  stage: Stage = "sniff";
  /** Completed a request at least once (or authenticated as a peer): never evicted. */
  served = false;
  lane: Http1Lane | null = null;
  session: http2.Http2Session | null = null;
  engine: GuardedEngine | null = null;
  /** Engine streams whose request body counts, and when each began. */
  readonly engineBodies = new Map<H2Stream, number>();
  settingsSeen = false;
  /** HTTP/2 streams open now; and, of those whose request body counts, when each began. */
  openStreams = 0;
  readonly bodies = new Map<http2.ServerHttp2Stream, number>();
  /** node:http side: requests in progress, when the oldest body began (0: none pending). */
  h1Requests = 0;
  h1BodySince = 0;
  /** Last time the connection went quiet (no request or stream in progress). */
  idleSince: number;
  released = false;

  constructor(
    readonly socket: net.Socket,
    readonly address: string,
    readonly acceptedAt: number,
  ) {
    this.idleSince = acceptedAt;
  }

  get trusted(): boolean {
    return this.session !== null && trustedSessions.has(this.session);
  }
}

interface AddressEntry {
  count: number;
  /** Connections of this address that never completed a request, oldest first. */
  unserved: Set<GuardedConnection>;
}

export class ConnectionGuard {
  readonly stats: ConnectionStats = {
    accepted: 0,
    open: 0,
    evicted: 0,
    refused: 0,
    handshakeTimeouts: 0,
    headerTimeouts: 0,
    bodyTimeouts: 0,
    idleClosed: 0,
    streamsCut: 0,
    sweepsSkipped: 0,
  };
  private readonly connections = new Set<GuardedConnection>();
  /** Every connection that never completed a request, oldest first (insertion order). */
  private readonly unserved = new Set<GuardedConnection>();
  private readonly byAddress = new Map<string, AddressEntry>();
  /**
   * node:http hands requests a socket object of its own (cleartext, under Bun): found again by
   * remote address and port; a TLS socket handed over is found as itself.
   */
  private readonly byPeerKey = new Map<string, GuardedConnection>();
  private readonly bySocket = new WeakMap<object, GuardedConnection>();
  private readonly sessionIndex = new WeakMap<http2.Http2Session, GuardedConnection>();
  private handingOver: GuardedConnection | null = null;
  private timer: ReturnType<typeof setInterval> | null = null;
  private lastSweep = Date.now();
  /** After a stop, no connection is judged before this time (ms). */
  private quietUntil = 0;
  readonly sweepIntervalMs: number;

  constructor(
    readonly limits: ConnectionLimits,
    /** Paths of client- and bidi-streaming methods: their request bodies may last forever. */
    private readonly streamingPaths: () => ReadonlySet<string>,
  ) {
    for (const [name, value] of Object.entries(limits)) {
      if (!(Number.isInteger(value) && value > 0)) throw new RangeError(`connection limit ${name} must be a positive integer, got ${value}`);
    }
    const shortest = Math.min(limits.handshakeTimeoutMs, limits.headerTimeoutMs, limits.bodyTimeoutMs, limits.keepAliveTimeoutMs, limits.idleTimeoutMs);
    this.sweepIntervalMs = Math.max(25, Math.min(1_000, Math.floor(shortest / 4)));
  }

  start(): void {
    this.lastSweep = Date.now();
    this.timer = setInterval(() => this.sweep(Date.now()), this.sweepIntervalMs);
    this.timer.unref?.();
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  /**
   * A new socket: admitted (room made by evicting if needed) or, when every connection at the
   * limit has completed a request, destroyed at once (null).
   */
  admit(socket: net.Socket): GuardedConnection | null {
    const address = socket.remoteAddress ?? "?";
    let entry = this.byAddress.get(address);
    if (entry !== undefined && entry.count >= this.limits.maxConnectionsPerAddress && !this.evictOldest(entry.unserved)) return this.refuse(socket);
    if (this.connections.size >= this.limits.maxConnections && !this.evictOldest(this.unserved)) return this.refuse(socket);
    const connection = new GuardedConnection(socket, address, Date.now());
    this.stats.accepted++;
    this.connections.add(connection);
    this.unserved.add(connection);
    if (entry === undefined) {
      entry = { count: 0, unserved: new Set() };
      this.byAddress.set(address, entry);
    }
    entry.count++;
    entry.unserved.add(connection);
    const key = peerKey(socket);
    if (key !== null) this.byPeerKey.set(key, connection);
    this.stats.open = this.connections.size;
    socket.once("close", () => this.release(connection));
    return connection;
  }

  /** The sniffer handed the socket to TLS: the handshake deadline runs from the accept. */
  startedTls(connection: GuardedConnection): void {
    connection.stage = "tls";
  }

  startedLane(connection: GuardedConnection, lane: Http1Lane): void {
    connection.stage = "h1-lane";
    connection.lane = lane;
  }

  /** The HTTP/1.1 lane gave the connection to node:http. */
  leftLane(connection: GuardedConnection): void {
    connection.lane = null;
    connection.stage = "h1";
    connection.idleSince = Date.now();
  }

  /** Runs `emit` (which hands the socket to node:http or node:http2) bound to this connection. */
  handOver(connection: GuardedConnection, protocol: "h1" | "h2", emit: () => void, socket: object = connection.socket): void {
    connection.stage = protocol;
    this.bySocket.set(socket, connection);
    connection.idleSince = Date.now();
    // node:http2 emits "session" synchronously inside emit("connection"): see sessionStarted.
    this.handingOver = connection;
    try {
      emit();
    } finally {
      this.handingOver = null;
    }
  }

  /** The connection is served by the HTTP/2 engine from now on. */
  startedEngine(connection: GuardedConnection, engine: GuardedEngine): void {
    connection.stage = "h2-engine";
    connection.engine = engine;
    connection.idleSince = Date.now();
  }

  /** A new stream on an engine connection: its body deadline starts unless it streams uploads. */
  engineStreamStarted(connection: GuardedConnection, stream: H2Stream): void {
    const path = stream.headers[":path"];
    if (stream.endAfterHeaders || (typeof path === "string" && this.streamingPaths().has(path))) return;
    connection.engineBodies.set(stream, Date.now());
  }

  /** An engine stream's request ended: its body is in, and the connection is a real client's. */
  engineRequestEnded(connection: GuardedConnection, stream: H2Stream): void {
    connection.engineBodies.delete(stream);
    this.markServed(connection);
  }

  engineStreamClosed(connection: GuardedConnection, stream: H2Stream, openStreams: number): void {
    connection.engineBodies.delete(stream);
    if (openStreams === 0) connection.idleSince = Date.now();
  }

  /** An engine stream was answered before its request ended, and reset with NO_ERROR. */
  engineStreamCut(): void {
    this.stats.streamsCut++;
  }

  /** node:http2's "session" event: binds the session to the connection being handed over. */
  sessionStarted(session: http2.ServerHttp2Session): void {
    const connection = this.handingOver;
    if (connection === null) return;
    connection.session = session;
    this.sessionIndex.set(session, connection);
    session.once("remoteSettings", () => {
      connection.settingsSeen = true;
    });
  }

  /** node:http2's "stream" event, before any route sees the stream. */
  streamStarted(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    const connection = this.connectionOfSession(stream.session);
    if (connection === undefined) return;
    connection.openStreams++;
    const path = headers[":path"];
    const streaming = typeof path === "string" && this.streamingPaths().has(path);
    // A streaming upload (the peer Stream) has no body deadline; it does not count as a completed
    // request either: peers complete Challenge and Authenticate first.
    if (!streaming && !stream.readableEnded && !(stream as { endAfterHeaders?: boolean }).endAfterHeaders) connection.bodies.set(stream, Date.now());
    let requestEnded = false;
    stream.once("end", () => {
      requestEnded = true;
      connection.bodies.delete(stream);
      this.markServed(connection);
    });
    // A complete answer (an error, say a message over the limit) while the request is still
    // coming: RST_STREAM(NO_ERROR) tells the client to stop sending and take the answer
    // (RFC 9113 §8.1). Without it a client blocked on flow control waits for a deadline.
    stream.once("finish", () => {
      if (requestEnded || stream.readableEnded) return;
      setImmediate(() => {
        if (!requestEnded && !stream.destroyed && !stream.closed) {
          this.stats.streamsCut++;
          stream.close(http2.constants.NGHTTP2_NO_ERROR);
        }
      });
    });
    stream.once("close", () => {
      connection.bodies.delete(stream);
      connection.openStreams--;
      if (connection.openStreams === 0) connection.idleSince = Date.now();
    });
  }

  /** node:http's "request" event (the handover path: TLS, --no-fast-lane, calls the lane does not take). */
  requestStarted(request: http.IncomingMessage, response: http.ServerResponse): void {
    const key = peerKey(request.socket);
    const connection = (key === null ? undefined : this.byPeerKey.get(key)) ?? this.bySocket.get(request.socket);
    if (connection === undefined || connection.released) return;
    connection.h1Requests++;
    if (connection.h1BodySince === 0) connection.h1BodySince = Date.now();
    let bodyDone = false;
    const onBody = () => {
      if (bodyDone) return;
      bodyDone = true;
      connection.h1BodySince = 0;
      this.markServed(connection);
    };
    let finished = false;
    const onFinish = () => {
      onBody();
      if (finished) return;
      finished = true;
      connection.h1Requests--;
      if (connection.h1Requests === 0) connection.idleSince = Date.now();
    };
    request.once("end", onBody);
    response.once("finish", onFinish);
    response.once("close", onFinish);
  }

  /** The lane answered or took a complete request: the connection is a real client's. */
  markServed(connection: GuardedConnection): void {
    if (connection.served) return;
    connection.served = true;
    this.unserved.delete(connection);
    this.byAddress.get(connection.address)?.unserved.delete(connection);
  }

  /** Forgets a connection (idempotent): on close, or at once when evicted. */
  private release(connection: GuardedConnection): void {
    if (connection.released) return;
    connection.released = true;
    this.connections.delete(connection);
    this.unserved.delete(connection);
    const entry = this.byAddress.get(connection.address);
    if (entry !== undefined) {
      entry.unserved.delete(connection);
      if (--entry.count === 0) this.byAddress.delete(connection.address);
    }
    const key = peerKey(connection.socket);
    if (key !== null && this.byPeerKey.get(key) === connection) this.byPeerKey.delete(key);
    connection.bodies.clear();
    connection.engineBodies.clear();
    this.stats.open = this.connections.size;
  }

  private refuse(socket: net.Socket): null {
    this.stats.refused++;
    socket.destroy();
    return null;
  }

  /** Closes the oldest of `candidates` (never a trusted peer); false when there is none. */
  private evictOldest(candidates: Set<GuardedConnection>): boolean {
    for (const connection of candidates) {
      if (connection.trusted) {
        this.markServed(connection);
        continue;
      }
      this.stats.evicted++;
      this.release(connection);
      connection.socket.destroy();
      return true;
    }
    return false;
  }

  private connectionOfSession(session: http2.Http2Session | undefined): GuardedConnection | undefined {
    return session === undefined ? undefined : this.sessionIndex.get(session);
  }

  /** One pass over every connection: closes those past a deadline. */
  sweep(now: number): void {
    // A sweep far later than scheduled means the process was stopped (SIGSTOP) or starved: bytes
    // that arrived meanwhile still wait unread in the sockets, so judge nobody until they are read.
    // Judging resumes one whole interval later (a runtime may also run missed ticks back to back).
    const late = now - this.lastSweep > 3 * this.sweepIntervalMs + 250;
    this.lastSweep = now;
    if (late) {
      this.stats.sweepsSkipped++;
      this.quietUntil = now + this.sweepIntervalMs;
    }
    if (now < this.quietUntil) return;
    const limits = this.limits;
    for (const connection of this.connections) {
      const socket = connection.socket;
      if (socket.destroyed) continue;
      // Bytes read off the kernel but not yet handled: the connection is not stalled.
      if (socket.readableLength > 0) continue;
      switch (connection.stage) {
        case "sniff":
        case "tls":
          if (now - connection.acceptedAt > limits.handshakeTimeoutMs) this.drop(connection, "handshake");
          break;
        case "h1-lane": {
          const lane = connection.lane;
          if (lane === null) break;
          if (lane.finished) {
            // The lane closed its side; a client that never closes its own must not hold the socket.
            if (now - lane.lastActive > limits.keepAliveTimeoutMs) socket.destroy();
            break;
          }
          const waiting = lane.waiting;
          if (waiting === "head" && now - lane.waitingSince > limits.headerTimeoutMs) {
            this.stats.headerTimeouts++;
            lane.timeOut();
          } else if (waiting === "body" && now - lane.waitingSince > limits.bodyTimeoutMs) {
            this.stats.bodyTimeouts++;
            lane.timeOut();
          } else if (waiting === null && lane.idle && now - lane.lastActive > limits.keepAliveTimeoutMs) {
            this.stats.idleClosed++;
            lane.closeIfIdle();
          }
          break;
        }
        case "h1":
          if (connection.h1Requests > 0) {
            if (connection.h1BodySince > 0 && now - connection.h1BodySince > limits.bodyTimeoutMs) this.drop(connection, "body");
          } else if (now - connection.idleSince > Math.max(limits.headerTimeoutMs, limits.keepAliveTimeoutMs)) {
            // node:http has no head deadline of its own under Bun: a quiet or half-sent head ends here.
            this.drop(connection, "idle");
          }
          break;
        case "h2":
          this.sweepSession(connection, now);
          break;
        case "h2-engine":
          this.sweepEngine(connection, now);
          break;
      }
    }
  }

  private sweepSession(connection: GuardedConnection, now: number): void {
    const session = connection.session;
    // No session bound (node:http2 did not announce it during the handover): nothing to judge by.
    if (session === null || connection.trusted) return;
    if (!connection.settingsSeen) {
      if (now - connection.acceptedAt > this.limits.handshakeTimeoutMs) this.drop(connection, "handshake");
      return;
    }
    for (const [stream, since] of connection.bodies) {
      if (now - since <= this.limits.bodyTimeoutMs) continue;
      connection.bodies.delete(stream);
      this.stats.bodyTimeouts++;
      if (!stream.destroyed && !stream.closed) stream.close(http2.constants.NGHTTP2_CANCEL);
    }
    if (connection.openStreams === 0 && now - connection.idleSince > this.limits.idleTimeoutMs && !session.closed) {
      this.stats.idleClosed++;
      session.close();
    }
  }

  private sweepEngine(connection: GuardedConnection, now: number): void {
    const engine = connection.engine;
    if (engine === null) return;
    if (!engine.settingsSeen) {
      if (now - connection.acceptedAt > this.limits.handshakeTimeoutMs) this.drop(connection, "handshake");
      return;
    }
    for (const [stream, since] of connection.engineBodies) {
      if (now - since <= this.limits.bodyTimeoutMs) continue;
      connection.engineBodies.delete(stream);
      this.stats.bodyTimeouts++;
      stream.reset(ErrorCode.CANCEL);
    }
    if (engine.openStreams === 0 && !engine.closing && now - connection.idleSince > this.limits.idleTimeoutMs) {
      this.stats.idleClosed++;
      engine.close();
    }
  }

  private drop(connection: GuardedConnection, why: "handshake" | "body" | "idle"): void {
    if (why === "handshake") this.stats.handshakeTimeouts++;
    else if (why === "body") this.stats.bodyTimeouts++;
    else this.stats.idleClosed++;
    connection.session?.destroy();
    connection.socket.destroy();
  }
}

/** "address|port" of a socket's remote end (unique among live connections to one port), or null. */
function peerKey(socket: { remoteAddress?: string | undefined; remotePort?: number | undefined } | null | undefined): string | null {
  if (socket === null || socket === undefined || socket.remoteAddress === undefined || socket.remotePort === undefined) return null;
  return `${socket.remoteAddress}|${socket.remotePort}`;
}
