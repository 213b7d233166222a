// The node's own HTTP/2 for client connections (h2c and TLS with ALPN h2): the engine (src/rpc/h2)
// frames the connection; plain unary calls are served as h2-lane.ts decides and answers them
// (the same invokeUnary, Replies and refusals); every other stream (streaming, health, reflection,
// the peer service, the status page, odd requests) is relayed to the node:http2 server over one
// in-memory connection per client connection, made on first need, so it behaves as before.
// Why: node:http2 under Bun costs 25-55 µs per stream before any work (see src/rpc/DESIGN.md).

import * as http2 from "node:http2";
import type * as net from "node:net";
import { duplexPair } from "node:stream";
import { H2Connection, DEFAULT_ENGINE_OPTIONS, type EngineCounters } from "../h2/connection.ts";
import { ErrorCode } from "../h2/frames.ts";
import { dateField, encodeHeaders } from "../h2/hpack-encoder.ts";
import type { H2Stream } from "../h2/stream.ts";
import { log } from "../../obs/log.ts";
import { bindSession, connectionOf, type ConnectionInfo } from "./connection.ts";
import { callAbort, clientClosed, earlyRefusal, h2CallOf, requestPairs, unaryReply, UnaryBody, type H2Call, type H2LaneHost, type Reply } from "./h2-lane.ts";
import type { CallSource, UnaryRoutes } from "./unary-routes.ts";

export interface EngineHost extends H2LaneHost {
  unary: UnaryRoutes;
  stats: { h2Calls: number; h2LibraryCalls: number; h2Relayed: number; h2Engine: EngineCounters };
  maxConcurrentStreams: number;
  /**
   * Opens an in-memory connection to the node:http2 server for `socket`'s other streams; calls
   * there see `socket`'s ConnectionInfo (TLS, client certificate, address).
   */
  openInternal(socket: net.Socket): http2.ClientHttp2Session;
}

/** Paths the engine never answers itself: the peer service binds to node:http2 sessions. */
const PEER_SERVICE_PREFIX = "/raftpb.RaftService/";

export class EngineLane {
  readonly connection: H2Connection;
  private internal: http2.ClientHttp2Session | null = null;
  private info: ConnectionInfo | null = null;
  /** Each new stream, before it is served (the connection guard's deadlines). */
  onStreamStarted: ((stream: H2Stream) => void) | null = null;

  constructor(
    readonly socket: net.Socket,
    private readonly host: EngineHost,
  ) {
    this.connection = new H2Connection(socket, {
      ...DEFAULT_ENGINE_OPTIONS,
      maxConcurrentStreams: host.maxConcurrentStreams,
      counters: host.stats.h2Engine,
      onStream: (stream) => this.onStream(stream),
      onOversizeHeaders: (stream) => stream.sendHeaders(encodeHeaders([[":status", "431"]]), true),
    });
    socket.once("close", () => {
      this.internal?.destroy();
      this.internal = null;
    });
  }

  start(initial: Buffer): void {
    this.connection.start(initial);
  }

  /** What calls on this connection know of it. */
  private connectionInfo(): ConnectionInfo {
    this.info ??= connectionOf(this.socket, null);
    return this.info;
  }

  private onStream(stream: H2Stream): void {
    this.host.pulse();
    this.onStreamStarted?.(stream);
    const headers = stream.headers;
    const path = headers[":path"];
    if (typeof path === "string" && !path.startsWith(PEER_SERVICE_PREFIX)) {
      const call = h2CallOf(headers, this.host.unary, this.host.cors);
      if (call !== null) {
        this.serveUnary(stream, call);
        return;
      }
    }
    this.relay(stream);
  }

  /** One unary call: the body collected, invokeUnary, the Reply framed. As serveH2Unary does on node:http2. */
  private serveUnary(stream: H2Stream, call: H2Call): void {
    const host = this.host;
    host.stats.h2Calls++;
    const admission = call.route.admission;
    if (admission !== null && admission.full) {
      const refusal = earlyRefusal(call, admission);
      if (refusal !== null) {
        // The body, if any, is not wanted: dropped as it comes (the window refills).
        writeReply(stream, refusal);
        return;
      }
    }
    const body = new UnaryBody(call);
    let answered = false;
    let abort: AbortController | null = null;
    const source: CallSource = {
      url: () => `${this.connectionInfo().encrypted ? "https" : "http"}://${typeof stream.headers[":authority"] === "string" ? stream.headers[":authority"] : "localhost"}${stream.headers[":path"]}`,
      headers: () => requestPairs(stream.headers),
      connection: () => this.connectionInfo(),
      signal: () => {
        abort ??= callAbort(stream.closed, host.shutdownSignal);
        return abort.signal;
      },
      timeoutMs: call.timeoutMs,
    };
    const finish = async () => {
      if (answered) return;
      answered = true;
      stream.onData = null;
      try {
        const reply = await unaryReply(stream.headers, call, body, source, host);
        writeReply(stream, reply);
      } catch (error) {
        stream.reset(ErrorCode.INTERNAL_ERROR);
        log.error(`kvraft rpc: http/2 engine lane failed: ${(error as Error).stack ?? error}`);
      }
    };
    stream.onData = (chunk) => {
      if (body.add(chunk)) void finish();
    };
    stream.onEnd = () => void finish();
    stream.onClose = (code) => {
      if (code !== null) {
        answered = true;
        abort?.abort(clientClosed());
      }
    };
  }

  /** The node:http2 session this connection's other streams go to (made on first need). */
  private internalSession(): http2.ClientHttp2Session {
    if (this.internal === null || this.internal.closed || this.internal.destroyed) {
      const session = this.host.openInternal(this.socket);
      session.once("close", () => {
        if (this.internal === session) this.internal = null;
      });
      this.internal = session;
    }
    return this.internal;
  }

  /** Relays one stream to node:http2 and its answer back, with flow control both ways. */
  private relay(stream: H2Stream): void {
    this.host.stats.h2Relayed++;
    let request: http2.ClientHttp2Stream;
    try {
      request = this.internalSession().request(relayHeaders(stream.headers));
    } catch (error) {
      log.error(`kvraft rpc: http/2 engine could not relay a stream: ${(error as Error).message}`);
      stream.reset(ErrorCode.INTERNAL_ERROR);
      return;
    }
    let trailers: http2.IncomingHttpHeaders | null = null;
    let responded = false;
    let ended = false;
    // Listeners first: the in-memory connection may answer within request()'s own writes.
    request.on("response", (headers) => {
      responded = true;
      stream.sendHeaders(encodeHeaders(responseFields(headers)), request.endAfterHeaders === true);
    });
    request.on("data", (chunk: Buffer) => {
      if (!stream.write(chunk)) request.pause();
    });
    request.on("trailers", (headers) => {
      trailers = headers;
    });
    request.on("end", () => {
      ended = true;
      if (!responded) return stream.reset(ErrorCode.INTERNAL_ERROR);
      stream.end(trailers === null ? null : encodeHeaders(responseFields(trailers)));
    });
    request.on("error", () => {});
    request.on("close", () => {
      if (!ended && !stream.closed) stream.reset(request.rstCode === http2.constants.NGHTTP2_NO_ERROR ? ErrorCode.CANCEL : ((request.rstCode as ErrorCode | undefined) ?? ErrorCode.CANCEL));
    });
    stream.onDrain = () => request.resume();
    // The client may send as fast as node:http2 takes the bytes: while the relayed stream's buffer
    // is full, the client's window is not refilled (bounded by the window we granted).
    stream.manualFlow = true;
    let held = 0;
    request.on("drain", () => {
      const bytes = held;
      held = 0;
      if (bytes > 0) stream.consumed(bytes);
    });
    stream.onData = (chunk) => {
      if (request.destroyed) return stream.consumed(chunk.length);
      if (request.write(chunk) && held === 0) stream.consumed(chunk.length);
      else held += chunk.length;
    };
    stream.onEnd = () => {
      if (!request.destroyed) request.end();
    };
    stream.onClose = (code) => {
      if (code !== null && !request.closed) request.close(code === ErrorCode.NO_ERROR ? http2.constants.NGHTTP2_CANCEL : code);
    };
    if (stream.endAfterHeaders) request.end();
  }
}

/** Writes a Reply (h2-lane.ts) on an engine stream: one socket write when the windows allow. */
function writeReply(stream: H2Stream, reply: Reply): void {
  // With a date, as node:http2 and the HTTP/1.1 lane answer.
  const head = encodeHeaders(responseFields(reply.headers), dateField());
  if (reply.body === null && reply.trailers === null) return stream.sendHeaders(head, true);
  stream.respond(head, reply.body, reply.trailers === null ? null : encodeHeaders(responseFields(reply.trailers)));
}

/** A header object as HPACK fields, ":status" first; repeated values as separate fields. */
function responseFields(headers: http2.OutgoingHttpHeaders | http2.IncomingHttpHeaders): [string, string][] {
  const fields: [string, string][] = [];
  const status = headers[":status"];
  if (status !== undefined) fields.push([":status", String(status)]);
  for (const name in headers) {
    if (name.charCodeAt(0) === 58) continue;
    const value = headers[name];
    if (value === undefined) continue;
    if (Array.isArray(value)) for (const v of value) fields.push([name, String(v)]);
    else fields.push([name, String(value)]);
  }
  return fields;
}

/** The request's headers for node:http2's client (it sets :scheme and :authority as given). */
function relayHeaders(headers: http2.IncomingHttpHeaders): http2.OutgoingHttpHeaders {
  const out: http2.OutgoingHttpHeaders = {};
  for (const name in headers) {
    const value = headers[name];
    if (value !== undefined) out[name] = value;
  }
  return out;
}

/**
 * An in-memory connection into the node:http2 server `h2` for the streams an engine connection
 * relays; calls on it see `socket`'s ConnectionInfo (TLS, client certificate, address).
 */
export function openInternalSession(h2: http2.Http2Server, socket: net.Socket): http2.ClientHttp2Session {
  const [inner, outer] = duplexPair();
  // Address facts the compat layer and handlers may ask of their socket.
  for (const name of ["remoteAddress", "remotePort", "remoteFamily", "localAddress", "localPort", "encrypted"] as const) {
    Object.defineProperty(inner, name, { get: () => (socket as unknown as Record<string, unknown>)[name] });
  }
  let session: http2.ServerHttp2Session | null = null;
  const capture = (s: http2.ServerHttp2Session) => {
    session = s;
  };
  // node:http2 announces the session synchronously inside emit("connection").
  h2.prependOnceListener("session", capture);
  h2.emit("connection", inner);
  h2.off("session", capture);
  if (session !== null) bindSession(session, socket);
  const client = http2.connect("http://kvraft.internal", { createConnection: () => outer as unknown as net.Socket });
  client.on("error", () => {});
  socket.once("close", () => {
    client.destroy();
    inner.destroy();
  });
  return client;
}
