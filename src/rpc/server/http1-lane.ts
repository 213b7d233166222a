// The HTTP/1.1 fast lane: reads requests straight off the socket and answers plain Connect unary
// POSTs itself (one write per response). The first request it does not take — any other method,
// path, content type, compression, timeout header, chunked body, CORS, HTTP/1.0, anything odd —
// hands the connection, with every byte not yet answered, to the node:http server for good.
// Why: under Bun, node:http on a socket passed in by `emit("connection")` runs a JS fallback
// parser with two writes per response, and the universal handler adds ~200 µs per call;
// this lane costs ~20 µs of framing per call (measurements in the RPC server's report).

import type * as http from "node:http";
import type * as net from "node:net";
import { STATUS_CODES } from "node:http";
import { connectionOf } from "./connection.ts";
import { callUnary, unaryContentType, type CallSource, type UnaryAnswer, type UnaryRoutes } from "./unary-routes.ts";
import { log } from "../../obs/log.ts";

/** Largest request head the lane parses; a longer one goes to node:http (which answers 431). */
const MAX_HEAD_BYTES = 16 * 1024;
/** Bytes a client may send ahead while a call runs before the lane stops reading from it. */
const MAX_BUFFERED_WHILE_BUSY = 1024 * 1024;
const CRLFCRLF = Buffer.from("\r\n\r\n", "latin1");

export interface LaneHost {
  routes: UnaryRoutes;
  /** The node:http server that takes connections the lane gives up. */
  fallback: http.Server;
  /** Aborted when the server stops: handlers that watch their signal see it. */
  shutdownSignal: AbortSignal;
  /** True once the server is closing: answers say Connection: close. */
  closing(): boolean;
  /** Counters the server exposes: calls the lane answered, connections it gave to node:http. */
  stats: { laneCalls: number; laneHandovers: number };
}

/** A request the lane parsed and will answer. */
interface Parsed {
  headEnd: number;
  total: number;
  path: string;
  format: "json" | "proto";
  close: boolean;
  head: string;
}

/** "HTTP/1.1 <status> <reason>\r\nContent-Type: <type>\r\nContent-Length: " by status and type. */
const headPrefixes = new Map<string, string>();
/** Bounds the cache: statuses × content types the routes answer with are a handful. */
const MAX_HEAD_PREFIXES = 64;

function headPrefix(status: number, contentType: string): string {
  const key = `${status} ${contentType}`;
  let prefix = headPrefixes.get(key);
  if (prefix === undefined) {
    prefix = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? "Unknown"}\r\nContent-Type: ${contentType}\r\nContent-Length: `;
    if (headPrefixes.size < MAX_HEAD_PREFIXES) headPrefixes.set(key, prefix);
  }
  return prefix;
}

let cachedDate = "";
let cachedDateSecond = -1;
function httpDate(): string {
  const now = Date.now();
  const second = Math.floor(now / 1000);
  if (second !== cachedDateSecond) {
    cachedDateSecond = second;
    cachedDate = new Date(now).toUTCString();
  }
  return cachedDate;
}

export class Http1Lane {
  private buffer: Buffer | null = null;
  private busy = false;
  private handedOver = false;
  private ended = false;
  /** Last time bytes arrived or an answer left (ms); the server's sweep closes idle lanes. */
  lastActive = Date.now();
  /** What the lane waits for of a request it has begun to read (null: nothing), and since when. */
  waiting: "head" | "body" | null = null;
  waitingSince = 0;
  /** Called when the lane takes a complete request (the connection guard stops counting it as stalled). */
  onRequest: (() => void) | null = null;
  private socketAbort: AbortController | null = null;
  private readonly onData = (chunk: Buffer) => this.receive(chunk);
  private readonly onDrain = () => this.pump();

  constructor(
    private readonly socket: net.Socket,
    private readonly host: LaneHost,
    private readonly onRelease: (lane: Http1Lane) => void,
  ) {}

  /** Starts reading, with `first` the bytes the sniffer already took off the socket. */
  start(first: Buffer): void {
    this.socket.on("data", this.onData);
    this.socket.once("close", () => {
      this.ended = true;
      this.socketAbort?.abort(new Error("the client closed the connection"));
      this.onRelease(this);
    });
    this.receive(first);
  }

  /** The lane has closed its side (answered with Connection: close, or closed idle). */
  get finished(): boolean {
    return this.ended && !this.handedOver;
  }

  /** Idle (no call running, no partial request): may be closed without losing an answer. */
  get idle(): boolean {
    return !this.busy && (this.buffer === null || this.buffer.length === 0);
  }

  /** Closes the connection if no call is running; a running call closes it after its answer. */
  closeIfIdle(): void {
    if (this.idle && !this.handedOver && !this.ended) this.end();
  }

  private receive(chunk: Buffer): void {
    this.lastActive = Date.now();
    this.buffer = this.buffer === null || this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    // Bounded: a client that keeps sending while a call runs is paused until the lane catches up.
    if (this.busy && this.buffer.length > MAX_BUFFERED_WHILE_BUSY) this.socket.pause();
    if (!this.busy) this.pump();
  }

  /** Answers every complete request buffered, one at a time and in order. */
  private pump(): void {
    while (!this.busy && !this.handedOver && !this.ended && this.buffer !== null && this.buffer.length > 0) {
      if (this.socket.writableNeedDrain) {
        this.socket.once("drain", this.onDrain);
        return;
      }
      const parsed = this.parse(this.buffer);
      if (parsed === "fallback") {
        this.waiting = null;
        return this.handOver();
      }
      if (parsed === "more" || parsed === "more-body") {
        const waiting = parsed === "more" ? "head" : "body";
        // The deadline of a head runs from its first byte; a body's from the end of its head.
        if (this.waiting !== waiting) {
          this.waiting = waiting;
          this.waitingSince = Date.now();
        }
        if (this.socket.isPaused()) this.socket.resume();
        return;
      }
      this.waiting = null;
      this.onRequest?.();
      const route = this.host.routes.get(parsed.path)!;
      const body = this.buffer.subarray(parsed.headEnd, parsed.total);
      this.buffer = parsed.total === this.buffer.length ? null : this.buffer.subarray(parsed.total);
      this.busy = true;
      this.host.stats.laneCalls++;
      callUnary(route, parsed.format, body, this.source(parsed)).then(
        (answer) => this.answer(answer, parsed.close),
        (error) => {
          // callUnary turns every failure into an answer; this is a bug in the lane itself.
          log.error(`kvraft rpc: http/1.1 lane failed: ${(error as Error).message}`, { error });
          this.socket.destroy();
        },
      );
    }
    if (this.socket.isPaused() && !this.handedOver && !this.ended) this.socket.resume();
  }

  private answer(answer: UnaryAnswer, close: boolean): void {
    this.busy = false;
    if (this.ended) return;
    this.lastActive = Date.now();
    const closeAfter = close || this.host.closing();
    let head = `${headPrefix(answer.status, answer.contentType)}${answer.body.byteLength}\r\nDate: ${httpDate()}\r\n`;
    if (answer.headers !== null) {
      answer.headers.forEach((value, name) => {
        if (name === "content-type" || name === "content-length" || !safeHeader(name, value)) return;
        head += `${name}: ${value}\r\n`;
      });
    }
    head += closeAfter ? "Connection: close\r\n\r\n" : "\r\n";
    const headBytes = Buffer.byteLength(head, "latin1");
    const out = Buffer.allocUnsafe(headBytes + answer.body.byteLength);
    out.write(head, 0, "latin1");
    out.set(answer.body, headBytes);
    if (closeAfter) {
      this.ended = true;
      this.socket.end(out);
      return;
    }
    this.socket.write(out);
    this.pump();
  }

  /**
   * Parses the request at the front of `buffer`: a request the lane answers, "more" when it is not
   * complete yet, or "fallback" when node:http must take the connection.
   */
  private parse(buffer: Buffer): Parsed | "more" | "more-body" | "fallback" {
    const headEnd = buffer.indexOf(CRLFCRLF);
    if (headEnd < 0) return buffer.length > MAX_HEAD_BYTES ? "fallback" : "more";
    if (headEnd > MAX_HEAD_BYTES) return "fallback";
    const head = buffer.toString("latin1", 0, headEnd);
    const lineEnd = head.indexOf("\r\n");
    const requestLine = lineEnd < 0 ? head : head.slice(0, lineEnd);
    // "POST /pkg.Service/Method HTTP/1.1" exactly: no query, no absolute form, no HTTP/1.0.
    if (!requestLine.startsWith("POST /") || !requestLine.endsWith(" HTTP/1.1")) return "fallback";
    const path = requestLine.slice(5, requestLine.length - 9);
    if (path.includes(" ") || path.includes("?") || this.host.routes.get(path) === undefined) return "fallback";
    let contentLength = -1;
    let contentType: string | undefined;
    let close = false;
    let start = lineEnd < 0 ? head.length : lineEnd + 2;
    while (start < head.length) {
      let end = head.indexOf("\r\n", start);
      if (end < 0) end = head.length;
      const colon = head.indexOf(":", start);
      if (colon <= start || colon > end) return "fallback"; // obs-fold, a bare line, an empty name
      const name = head.slice(start, colon).toLowerCase();
      const value = head.slice(colon + 1, end).trim();
      start = end + 2;
      switch (name) {
        case "content-length":
          if (contentLength >= 0 || !/^\d{1,10}$/.test(value)) return "fallback";
          contentLength = Number(value);
          break;
        case "content-type":
          if (contentType !== undefined) return "fallback";
          contentType = value;
          break;
        case "connection": {
          const v = value.toLowerCase();
          if (v === "close") close = true;
          else if (v !== "keep-alive") return "fallback"; // upgrade and friends
          break;
        }
        case "connect-protocol-version":
          if (value !== "1") return "fallback"; // the standard path says what is wrong
          break;
        case "content-encoding":
        case "transfer-encoding":
        case "expect":
        case "origin":
        case "connect-timeout-ms":
        case "upgrade":
          // Compression, chunked bodies, 100-continue, CORS, deadlines: the standard path.
          if (!(name === "content-encoding" && value.toLowerCase() === "identity")) return "fallback";
          break;
        default:
          if (name.includes(" ") || name.includes("\t")) return "fallback";
      }
    }
    const format = unaryContentType(contentType);
    if (format === null || contentLength < 0) return "fallback";
    const route = this.host.routes.get(path)!;
    if (contentLength > route.readMaxBytes) return "fallback"; // the standard path's limit error
    const total = headEnd + 4 + contentLength;
    if (buffer.length < total) return "more-body";
    return { headEnd: headEnd + 4, total, path, format, close, head };
  }

  private source(parsed: Parsed): CallSource {
    return {
      url: () => `http://${this.socket.localAddress ?? "localhost"}:${this.socket.localPort ?? 0}${parsed.path}`,
      headers: () => headerPairs(parsed.head),
      connection: () => connectionOf(this.socket, null),
      signal: () => {
        if (this.socketAbort === null) {
          const abort = new AbortController();
          if (this.ended) abort.abort(new Error("the client closed the connection"));
          const shutdown = this.host.shutdownSignal;
          if (shutdown.aborted) abort.abort(shutdown.reason);
          else shutdown.addEventListener("abort", () => abort.abort(shutdown.reason), { once: true });
          this.socketAbort = abort;
        }
        return this.socketAbort.signal;
      },
    };
  }

  /**
   * A request head or body past its deadline (the connection guard decides): answers 408 and
   * closes, unless a call is running (then nothing is stalled).
   */
  timeOut(): void {
    if (this.busy || this.handedOver || this.ended) return;
    this.ended = true;
    this.buffer = null;
    this.socket.end("HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    this.socket.destroySoon?.();
  }

  /** Gives the connection and every unanswered byte to node:http; the lane is done with it. */
  private handOver(): void {
    this.handedOver = true;
    this.host.stats.laneHandovers++;
    const rest = this.buffer;
    this.buffer = null;
    this.socket.off("data", this.onData);
    this.socket.off("drain", this.onDrain);
    this.onRelease(this);
    this.socket.pause();
    if (rest !== null && rest.length > 0) this.socket.unshift(rest);
    this.host.fallback.emit("connection", this.socket);
    this.socket.resume();
  }

  private end(): void {
    this.ended = true;
    this.socket.end();
  }
}

function* headerPairs(head: string): Generator<[string, string]> {
  let start = head.indexOf("\r\n") + 2;
  while (start > 1 && start < head.length) {
    let end = head.indexOf("\r\n", start);
    if (end < 0) end = head.length;
    const colon = head.indexOf(":", start);
    yield [head.slice(start, colon).toLowerCase(), head.slice(colon + 1, end).trim()];
    start = end + 2;
  }
}

/** A header an implementation set that can be written as is (no CR/LF smuggling). */
function safeHeader(name: string, value: string): boolean {
  return !/[\r\n]/.test(name) && !/[\r\n]/.test(value);
}
