// The HTTP/2 fast lane: unary calls in Connect (binary, JSON), gRPC and gRPC-Web served on the raw
// node:http2 stream, through the same invokeUnary as the HTTP/1.1 lane, skipping the compat layer
// (Http2ServerRequest/Response) and the universal handler. Headers decide at once: anything not
// plain (compressed requests, preflights, GET, text encodings, bad timeouts) reaches the adapter
// untouched; a body that is not exactly one plain message goes to the library's handler as bytes.
// Why: that path costs ~300-450 µs of server CPU per call under Bun (see bench/README.md).

import type * as http2 from "node:http2";
import { isPlainConnectStream, serveFrameStream, type FrameRoutes } from "./frame-lane.ts";
import type * as net from "node:net";
import { createContextValues } from "@connectrpc/connect";
import { createAsyncIterable, type Compression } from "@connectrpc/connect/protocol";
import { parseTimeout as parseConnectTimeout } from "@connectrpc/connect/protocol-connect";
import { grpcStatusOk, parseTimeout as parseGrpcTimeout, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { trailerFlag, trailerSerialize } from "@connectrpc/connect/protocol-grpc-web";
import { Code } from "@connectrpc/connect";
import { log } from "../../obs/log.ts";
import { RETRY_AFTER_HEADER, type Admission } from "./admission.ts";
import { connectionKey, connectionOf } from "./connection.ts";
import {
  COMPRESS_MIN_BYTES,
  connectAnswer,
  invokeUnary,
  responseCompression,
  unaryContentType,
  type CallSource,
  type UnaryOutcome,
  type UnaryProtocol,
  type UnaryRoute,
  type UnaryRoutes,
} from "./unary-routes.ts";

/** What the lane decided from a stream's headers: how to serve it. */
export interface H2Call {
  route: UnaryRoute;
  protocol: UnaryProtocol;
  binary: boolean;
  timeoutMs: number | undefined;
  /** Response compression negotiated from the client's accept header. */
  compression: Compression | null;
  /** CORS headers of the answer (a browser's call from an allowed origin); null: none. */
  cors: Record<string, string> | null;
}

const GRPC_TYPES = new Map<string, boolean>([
  ["application/grpc", true],
  ["application/grpc+proto", true],
  ["application/grpc+json", false],
]);
const GRPC_WEB_TYPES = new Map<string, boolean>([
  ["application/grpc-web", true],
  ["application/grpc-web+proto", true],
  ["application/grpc-web+json", false],
]);

function header(headers: http2.IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name];
  return typeof v === "string" ? v : undefined;
}

/** The call the lane serves for these request headers, or null: the Connect adapter's. */
export function h2CallOf(headers: http2.IncomingHttpHeaders, routes: UnaryRoutes, cors: (origin: string) => Record<string, string> | null): H2Call | null {
  if (headers[":method"] !== "POST") return null;
  const path = headers[":path"];
  const route = typeof path === "string" ? routes.get(path) : undefined;
  if (route === undefined) return null;
  // A browser's call: the answer carries the server's CORS headers (preflights are OPTIONS: not here).
  const origin = headers.origin;
  if (origin !== undefined && typeof origin !== "string") return null;
  const corsHeaders = origin === undefined ? null : cors(origin);
  const type = header(headers, "content-type");
  if (type === undefined) return null;
  const length = header(headers, "content-length");
  if (length !== undefined && !(Number(length) <= route.readMaxBytes + 5)) return null;
  const connect = unaryContentType(type);
  if (connect !== null) {
    const encoding = header(headers, "content-encoding");
    if (encoding !== undefined && encoding !== "identity") return null;
    const version = header(headers, "connect-protocol-version");
    if (version !== undefined && version !== "1") return null;
    const timeout = parseConnectTimeout(header(headers, "connect-timeout-ms") ?? null, Number.MAX_SAFE_INTEGER);
    if (timeout.error !== undefined) return null;
    return { route, protocol: "connect", binary: connect === "proto", timeoutMs: timeout.timeoutMs, compression: responseCompression(header(headers, "accept-encoding")), cors: corsHeaders };
  }
  const lower = type.length <= 40 ? type.toLowerCase() : "";
  const grpc = GRPC_TYPES.get(lower);
  const grpcWeb = grpc === undefined ? GRPC_WEB_TYPES.get(lower) : undefined;
  if (grpc === undefined && grpcWeb === undefined) return null;
  const encoding = header(headers, "grpc-encoding");
  if (encoding !== undefined && encoding !== "identity") return null;
  const timeout = parseGrpcTimeout(header(headers, "grpc-timeout") ?? null, Number.MAX_SAFE_INTEGER);
  if (timeout.error !== undefined) return null;
  return {
    route,
    protocol: grpc !== undefined ? "grpc" : "grpc_web",
    binary: (grpc ?? grpcWeb)!,
    timeoutMs: timeout.timeoutMs,
    compression: responseCompression(header(headers, "grpc-accept-encoding")),
    cors: corsHeaders,
  };
}

export interface H2LaneHost {
  shutdownSignal: AbortSignal;
  /** The CORS headers of a call from `origin`, or null when the origin is not allowed. */
  cors(origin: string): Record<string, string> | null;
  stats: { h2Calls: number; h2LibraryCalls: number };
  /** Called as each stream starts (RpcServerOptions.pulse). */
  pulse(): void;
}

/** Serves one unary call on `stream`: reads the body, runs the call, writes the answer. */
export function serveH2Unary(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, call: H2Call, host: H2LaneHost): void {
  host.stats.h2Calls++;
  const admission = call.route.admission;
  if (admission !== null && admission.full && refuseEarly(stream, call, admission)) return;
  const body = new UnaryBody(call);
  let abort: AbortController | null = null;
  let answered = false;
  const onData = (chunk: Buffer) => {
    if (body.add(chunk)) void finish();
  };
  const source: CallSource = {
    url: () => `${(stream.session?.socket as { encrypted?: boolean } | undefined)?.encrypted ? "https" : "http"}://${header(headers, ":authority") ?? "localhost"}${headers[":path"]}`,
    headers: () => requestPairs(headers),
    connection: () => connectionOf(stream.session!.socket as unknown as net.Socket, stream.session!),
    signal: () => {
      if (abort === null) {
        const a = (abort = callAbort(stream.closed || stream.destroyed, host.shutdownSignal));
        if (!a.signal.aborted) stream.once("close", () => a.abort(clientClosed()));
      }
      return abort.signal;
    },
    timeoutMs: call.timeoutMs,
  };
  const finish = async () => {
    if (answered) return;
    answered = true;
    stream.off("data", onData);
    try {
      const reply = await unaryReply(headers, call, body, source, host);
      if (alive(stream)) writeReply(stream, reply);
    } catch (error) {
      // The stream went away while answering: nobody is left to tell.
      if (!stream.destroyed) stream.destroy();
      if (!(error instanceof Error && /stream|closed|destroyed/i.test(error.message))) log.error(`kvraft rpc: http/2 lane failed: ${(error as Error).stack ?? error}`);
    }
  };
  stream.on("data", onData);
  stream.once("end", () => void finish());
  stream.on("error", () => {
    answered = true;
  });
}

/**
 * The answer to a call refused from its headers alone when admission control is full: ready-made,
 * no body read, no parse, no context (an overloaded node must spend on a refusal as little as it
 * can: node:http2 under Bun already costs ~50 µs per stream). Null: the call takes the ordinary
 * path (gRPC-Web, and gRPC calls whose refusal is a held answer), where invokeUnary refuses it.
 */
export function earlyRefusal(call: H2Call, admission: Admission): Reply | null {
  if (call.protocol === "grpc_web") return null;
  if (call.protocol === "grpc" && call.binary && admission.grpcAnswer(call.route.path) !== undefined) return null;
  const answer = admission.refusalAnswer();
  admission.refusedEarly();
  if (call.protocol === "connect") {
    return {
      headers: { ":status": 429, "content-type": "application/json", "content-length": answer.json.byteLength, [RETRY_AFTER_HEADER]: String(answer.retryAfterMs), ...call.cors },
      body: answer.json,
      trailers: null,
    };
  }
  // gRPC: a trailers-only answer (status in the one HEADERS frame).
  return {
    headers: {
      ":status": 200,
      "content-type": call.binary ? "application/grpc+proto" : "application/grpc+json",
      "grpc-status": String(Code.ResourceExhausted),
      "grpc-message": encodeURIComponent(answer.message),
      [RETRY_AFTER_HEADER]: String(answer.retryAfterMs),
      ...call.cors,
    },
    body: null,
    trailers: null,
  };
}

function refuseEarly(stream: http2.ServerHttp2Stream, call: H2Call, admission: Admission): boolean {
  const reply = earlyRefusal(call, admission);
  if (reply === null) return false;
  stream.on("error", () => {});
  // The body, if any, is not wanted: read and dropped so the stream's window stays open.
  stream.resume();
  if (alive(stream)) writeReply(stream, reply);
  return true;
}

/**
 * One complete answer, protocol framing done: the HEADERS (":status" first), the body (null: a
 * trailers-only or empty answer, END_STREAM on the headers) and the trailers (gRPC).
 */
export interface Reply {
  headers: http2.OutgoingHttpHeaders;
  body: Uint8Array | null;
  trailers: http2.OutgoingHttpHeaders | null;
}

/** Writes a Reply on a node:http2 stream (trailers go out from its wantTrailers event). */
function writeReply(stream: http2.ServerHttp2Stream, reply: Reply): void {
  if (reply.trailers === null) {
    if (reply.body === null) stream.respond(reply.headers, { endStream: true });
    else {
      stream.respond(reply.headers);
      stream.end(reply.body);
    }
    return;
  }
  const trailers = reply.trailers;
  stream.respond(reply.headers, { waitForTrailers: true });
  stream.once("wantTrailers", () => stream.sendTrailers(trailers));
  stream.end(reply.body ?? undefined);
}

/** The payload of a body that is exactly one uncompressed envelope, else null. */
export function singleEnvelope(body: Buffer): Uint8Array | null {
  if (body.length < 5 || body[0] !== 0) return null;
  const length = body.readUInt32BE(1);
  return length === body.length - 5 ? body.subarray(5) : null;
}

export function requestPairs(headers: http2.IncomingHttpHeaders): [string, string][] {
  const pairs: [string, string][] = [];
  for (const name in headers) {
    if (name.startsWith(":")) continue;
    const value = headers[name];
    if (typeof value === "string") pairs.push([name, value]);
    else if (Array.isArray(value)) for (const v of value) pairs.push([name, v]);
  }
  return pairs;
}

function alive(stream: http2.ServerHttp2Stream): boolean {
  return !stream.destroyed && !stream.closed;
}

function addHeaders(out: http2.OutgoingHttpHeaders, headers: Headers | null): void {
  headers?.forEach((value, name) => {
    if (name === "content-length") return;
    const prior = out[name];
    out[name] = prior === undefined ? value : `${prior}, ${value}`;
  });
}

/** The Connect unary answer of an outcome (compressed when negotiated and large enough). */
export async function connectReply(call: H2Call, outcome: UnaryOutcome): Promise<Reply> {
  const answer = connectAnswer(call.route, call.binary, outcome);
  let body = answer.body;
  const out: http2.OutgoingHttpHeaders = { ":status": answer.status, ...call.cors };
  addHeaders(out, answer.headers);
  out["content-type"] = answer.contentType;
  if (call.compression !== null && body.byteLength >= COMPRESS_MIN_BYTES) {
    body = await call.compression.compress(body);
    out["content-encoding"] = call.compression.name;
  }
  out["content-length"] = body.byteLength;
  return { headers: out, body, trailers: null };
}

/** The gRPC or gRPC-Web answer of an outcome: a Reply, or a promise of one when compressing. */
export function grpcReply(call: H2Call, outcome: UnaryOutcome): Reply | Promise<Reply> {
  const out: http2.OutgoingHttpHeaders = { ":status": 200, ...call.cors };
  addHeaders(out, outcome.header);
  const web = call.protocol === "grpc_web";
  out["content-type"] = `${web ? "application/grpc-web" : "application/grpc"}${call.binary ? "+proto" : "+json"}`;
  if (call.compression !== null) out["grpc-encoding"] = call.compression.name;
  // The common answer, a success without trailers of its own: its trailers are a constant.
  const plain = outcome.trailer === null && outcome.error === null;
  const trailer = outcome.trailer ?? new Headers();
  if (!plain) {
    if (!trailer.has("grpc-status")) trailer.set("grpc-status", grpcStatusOk);
    if (outcome.error !== null) setTrailerStatus(trailer, outcome.error);
  }
  const parts: [number, Uint8Array][] = [];
  if (outcome.message !== null) parts.push([0, outcome.message]);
  if (web) parts.push([trailerFlag, plain ? GRPC_WEB_OK_TRAILER : trailerSerialize(trailer)]);
  const reply = (body: Uint8Array): Reply => {
    if (web) return { headers: out, body, trailers: null };
    if (plain) return { headers: out, body, trailers: { "grpc-status": grpcStatusOk } };
    const t: http2.OutgoingHttpHeaders = {};
    addHeaders(t, trailer);
    return { headers: out, body, trailers: t };
  };
  // An envelope past the threshold is compressed, as the library does (rare: large values).
  if (call.compression !== null && parts.some(([, p]) => p.byteLength >= COMPRESS_MIN_BYTES)) {
    const compression = call.compression;
    return Promise.all(parts.map(async ([flags, p]) => (p.byteLength >= COMPRESS_MIN_BYTES ? ([flags | 1, await compression.compress(p)] as [number, Uint8Array]) : ([flags, p] as [number, Uint8Array])))).then(
      (compressed) => reply(envelopes(compressed)),
    );
  }
  return reply(envelopes(parts));
}

/** The gRPC-Web trailer block of a plain success, as trailerSerialize writes it. */
const GRPC_WEB_OK_TRAILER = trailerSerialize(new Headers({ "grpc-status": grpcStatusOk }));

function envelopes(parts: [number, Uint8Array][]): Uint8Array {
  let size = 0;
  for (const [, payload] of parts) size += 5 + payload.byteLength;
  const out = Buffer.allocUnsafe(size);
  let pos = 0;
  for (const [flags, payload] of parts) {
    out[pos] = flags;
    out.writeUInt32BE(payload.byteLength, pos + 1);
    out.set(payload, pos + 5);
    pos += 5 + payload.byteLength;
  }
  return out;
}

/**
 * A body that is not one plain message (none, two, compressed, over the limit): the library's own
 * handler of the method judges it from the bytes, so its errors are the library's errors.
 */
export async function libraryReply(headers: http2.IncomingHttpHeaders, call: H2Call, body: Uint8Array, source: CallSource, host: H2LaneHost): Promise<Reply> {
  host.stats.h2LibraryCalls++;
  const header = new Headers();
  for (const [name, value] of requestPairs(headers)) header.append(name, value);
  const response = await call.route.library()({
    httpVersion: "2.0",
    method: "POST",
    url: source.url(),
    header,
    body: createAsyncIterable([body]),
    signal: source.signal(),
    contextValues: createContextValues().set(connectionKey, source.connection()),
  });
  const parts: Uint8Array[] = [];
  if (response.body !== undefined && Symbol.asyncIterator in (response.body as object)) {
    for await (const chunk of response.body as AsyncIterable<Uint8Array>) parts.push(chunk);
  } else if (response.body instanceof Uint8Array) parts.push(response.body);
  const out: http2.OutgoingHttpHeaders = { ":status": response.status, ...call.cors };
  const hdrs = response.header === undefined ? null : new Headers(response.header);
  hdrs?.forEach((value, name) => {
    out[name] = value;
  });
  const bytes = Buffer.concat(parts);
  const trailer = response.trailer === undefined ? null : new Headers(response.trailer);
  if (trailer === null) return { headers: out, body: bytes, trailers: null };
  const t: http2.OutgoingHttpHeaders = {};
  trailer.forEach((value, name) => {
    t[name] = value;
  });
  return { headers: out, body: bytes, trailers: t };
}

/**
 * A unary call's request body as it arrives, kept up to the route's limit: an envelope adds 5
 * bytes, and one byte past the limit is enough for the library to refuse; the rest is dropped.
 */
export class UnaryBody {
  private readonly chunks: Buffer[] = [];
  private readonly cap: number;
  private size = 0;
  /** The body went past the limit (the call is answered by the library's refusal). */
  over = false;

  constructor(call: H2Call) {
    this.cap = call.route.readMaxBytes + (call.protocol === "connect" ? 1 : 6);
  }

  /** Takes a chunk; true when this one went past the limit (answer now, without the rest). */
  add(chunk: Buffer): boolean {
    if (this.over) return false;
    this.size += chunk.length;
    if (this.size > this.cap) {
      this.over = true;
      this.chunks.push(chunk.subarray(0, chunk.length - (this.size - this.cap)));
      return true;
    }
    this.chunks.push(chunk);
    return false;
  }

  bytes(): Buffer {
    return this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
  }
}

/**
 * The answer to a unary call whose body has arrived, whatever framing carries it: one plain
 * message runs through invokeUnary; anything else (over the limit, not exactly one uncompressed
 * envelope) goes to the library's own handler, so its errors are the library's.
 */
export async function unaryReply(headers: http2.IncomingHttpHeaders, call: H2Call, body: UnaryBody, source: CallSource, host: H2LaneHost): Promise<Reply> {
  const bytes = body.bytes();
  if (body.over) return libraryReply(headers, call, bytes, source, host);
  if (call.protocol === "connect") return connectReply(call, await invokeUnary(call.route, "connect", call.binary, bytes, source));
  const message = singleEnvelope(bytes);
  if (message === null) return libraryReply(headers, call, bytes, source, host);
  return grpcReply(call, await invokeUnary(call.route, call.protocol, call.binary, message, source));
}

/**
 * Puts the HTTP/2 fast lanes in front of node:http2's request handler: a plain Connect stream to a
 * frame route is served on the raw stream, so is a plain unary call in any protocol (h2-lane.ts);
 * every other stream reaches the compat layer and the Connect adapter as before.
 */
export function routeStreams(h2: http2.Http2Server, frames: FrameRoutes, unary: UnaryRoutes, host: H2LaneHost): void {
  const compat = h2.listeners("stream") as ((...args: unknown[]) => void)[];
  h2.removeAllListeners("stream");
  h2.on("stream", (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, ...rest: unknown[]) => {
    host.pulse();
    const path = headers[":path"];
    const route = frames.size > 0 && typeof path === "string" ? frames.get(path) : undefined;
    if (route !== undefined && isPlainConnectStream(headers)) {
      serveFrameStream(stream, headers, route, host.shutdownSignal);
      return;
    }
    const call = h2CallOf(headers, unary, host.cors);
    if (call !== null) {
      serveH2Unary(stream, headers, call, host);
      return;
    }
    for (const listener of compat) listener.call(h2, stream, headers, ...rest);
  });
}

const CLIENT_CLOSED = "the client closed the stream";

/**
 * The AbortController of one call's lazily made signal, already aborted if the stream is gone or
 * the server is shutting down, and aborted when the server shuts down; the lane aborts it when
 * its stream closes (the framing's own close event).
 */
export function callAbort(streamGone: boolean, shutdown: AbortSignal): AbortController {
  const a = new AbortController();
  if (streamGone) a.abort(new Error(CLIENT_CLOSED));
  if (shutdown.aborted) a.abort(shutdown.reason);
  else shutdown.addEventListener("abort", () => a.abort(shutdown.reason), { once: true });
  return a;
}

/** Why a call's signal aborts when its client goes away. */
export function clientClosed(): Error {
  return new Error(CLIENT_CLOSED);
}
