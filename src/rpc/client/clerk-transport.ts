// The Clerk's transport for Bun and Node: unary calls in the Connect protocol (binary protobuf)
// straight over one node:http2 session per base URL, without connect-node's per-call machinery;
// streaming calls (Watch) through connect-node's Connect transport made with the same options.
import type * as http2 from "node:http2";
import { create, fromBinary, isMessage, toBinary, type DescMessage, type DescMethodUnary, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextValues, type ContextValues, type Interceptor, type Transport, type UnaryRequest, type UnaryResponse } from "@connectrpc/connect";
import { runUnaryCall } from "@connectrpc/connect/protocol";
import { errorFromJsonBytes, trailerDemux, validateResponse } from "@connectrpc/connect/protocol-connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { H2Connection, type H2SessionOptions, type LiveSession, type OpenStream, type StreamWaiter } from "./h2-connection.ts";

export interface ClerkTransportOptions {
  /** "http://host:port" or "https://host:port" (a path prefix is kept). */
  baseUrl: string;
  /** TLS (ca, cert, key for mTLS, servername, ...) and socket options of node:http2's connect. */
  nodeOptions?: H2SessionOptions;
  /** Run around every call, as connect-node's (e.g. one that adds `Authorization`). */
  interceptors?: Interceptor[];
  /** Deadline of a call that gives none (none by default); a call's timeoutMs ≤ 0 means none. */
  defaultTimeoutMs?: number;
  /** Largest response body accepted (default 64 MiB); a larger one fails with ResourceExhausted. */
  readMaxBytes?: number;
  /** Calls that may wait for a stream slot beyond the server's concurrent-stream limit (default 4096). */
  maxWaitingCalls?: number;
}

/** A Transport whose sessions `close()` ends (idle sessions never keep the process alive anyway). */
export interface ClerkTransport extends Transport {
  close(): void;
}

const DEFAULT_READ_MAX_BYTES = 64 * 1024 * 1024;
const USER_AGENT = "kvraft-clerk";

/** A Connect unary answer whose header and trailer Headers are built only when read. */
class LazyResponse<I extends DescMessage, O extends DescMessage> implements UnaryResponse<I, O> {
  readonly stream = false;
  private demuxed: [Headers, Headers] | null = null;
  constructor(
    readonly service: DescMethodUnary<I, O>["parent"],
    readonly method: DescMethodUnary<I, O>,
    readonly message: MessageShape<O>,
    private readonly raw: http2.IncomingHttpHeaders,
  ) {}
  get header(): Headers {
    return (this.demuxed ??= trailerDemux(webHeaders(this.raw)))[0];
  }
  get trailer(): Headers {
    return (this.demuxed ??= trailerDemux(webHeaders(this.raw)))[1];
  }
}

/** node:http2's response headers as fetch Headers (pseudo-headers left out). */
function webHeaders(raw: http2.IncomingHttpHeaders): Headers {
  const headers = new Headers();
  for (const name in raw) {
    if (name.charCodeAt(0) === 58 /* ':' */) continue;
    const value = raw[name];
    if (Array.isArray(value)) for (const v of value) headers.append(name, v);
    else if (value !== undefined) headers.append(name, String(value));
  }
  return headers;
}

/** A request's Headers as node:http2's header object. */
function nodeHeaders(path: string, header: Headers): http2.OutgoingHttpHeaders {
  const out: http2.OutgoingHttpHeaders = { ":method": "POST", ":path": path };
  header.forEach((value, name) => {
    out[name] = value;
  });
  return out;
}

/** How an HTTP/2 stream reset by the server maps to a Connect code (as connect-node maps it). */
function resetError(authority: string, rstCode: number): ConnectError {
  const c = (code: Code) => new ConnectError(`${authority}: the server reset the stream (HTTP/2 error code ${rstCode})`, code);
  switch (rstCode) {
    case 7: // REFUSED_STREAM: not processed, safe to try again
      return c(Code.Unavailable);
    case 8: // CANCEL
      return c(Code.Canceled);
    case 11: // ENHANCE_YOUR_CALM
      return c(Code.ResourceExhausted);
    case 12: // INADEQUATE_SECURITY
    case 13: // HTTP_1_1_REQUIRED
      return c(Code.PermissionDenied);
    case 1:
    case 2:
    case 3:
    case 4:
    case 6:
    case 9:
    case 10:
      return c(Code.Internal);
    default:
      return c(Code.Unavailable);
  }
}

export function createClerkTransport(options: ClerkTransportOptions): ClerkTransport {
  const url = new URL(options.baseUrl);
  const prefix = url.pathname.replace(/\/+$/, "");
  const readMaxBytes = options.readMaxBytes ?? DEFAULT_READ_MAX_BYTES;
  const interceptors = options.interceptors ?? [];
  const connection = new H2Connection(url.origin, options.nodeOptions ?? {}, options.maxWaitingCalls ?? 4096);
  const paths = new WeakMap<object, string>();
  let streaming: Transport | null = null;

  const pathOf = (method: DescMethodUnary): string => {
    let path = paths.get(method);
    if (path === undefined) paths.set(method, (path = `${prefix}/${method.parent.typeName}/${method.name}`));
    return path;
  };

  /**
   * One call on one stream: `headers` complete, `body` encoded. Settles once: with the answer, or
   * with the error of the first of: abort of `signal`, the deadline, a refusal, a network failure.
   */
  function call<I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    headers: http2.OutgoingHttpHeaders,
    body: Uint8Array,
    signal: AbortSignal | undefined,
    timeoutMs: number | undefined,
  ): Promise<UnaryResponse<I, O>> {
    return new Promise((resolve, reject) => {
      let settled = false;
      let stream: http2.ClientHttp2Stream | null = null;
      let timer: ReturnType<typeof setTimeout> | undefined;
      let status = 0;
      let responseHeaders: http2.IncomingHttpHeaders | null = null;
      let trailers: http2.IncomingHttpHeaders | null = null;
      const chunks: Buffer[] = [];
      let received = 0;

      const finish = (error: ConnectError | null, response?: UnaryResponse<I, O>) => {
        if (settled) return;
        settled = true;
        if (timer !== undefined) clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        if (error === null) return resolve(response!);
        if (stream === null) connection.cancel(waiter);
        else if (!stream.closed) stream.close(8 /* CANCEL */);
        reject(error);
      };
      const onAbort = () => finish(ConnectError.from(signal!.reason, Code.Canceled));
      const onDeadline = () => finish(new ConnectError("the operation timed out", Code.DeadlineExceeded));

      const complete = () => {
        const raw = trailers === null ? responseHeaders! : { ...responseHeaders!, ...trailers };
        const bytes = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, received);
        const plain = status === 200 && raw["content-type"] === "application/proto" && raw["content-encoding"] === undefined;
        const error = plain ? null : refusal(status, raw, bytes);
        if (error === null) {
          let message: MessageShape<O>;
          try {
            message = fromBinary(method.output, bytes);
          } catch (error) {
            return finish(new ConnectError(`parse binary: ${error instanceof Error ? error.message : String(error)}`, Code.Internal));
          }
          return finish(null, new LazyResponse(method.parent, method, message, raw));
        }
        finish(error);
      };

      const waiter: StreamWaiter = {
        fail: (error) => finish(error),
        start: (live: LiveSession) => {
          if (settled) return connection.release(live);
          let s: http2.ClientHttp2Stream;
          try {
            s = live.session.request(headers);
          } catch (error) {
            connection.release(live);
            return finish(new ConnectError(`${connection.authority}: ${(error as Error).message}`, Code.Unavailable, undefined, undefined, error));
          }
          stream = s;
          const open: OpenStream = {
            get streamId() {
              return s.id ?? 0;
            },
            unprocessed: (reason) => finish(new ConnectError(`${connection.authority}: ${reason} before answering`, Code.Unavailable)),
          };
          live.streams.add(open);
          s.on("response", (h) => {
            responseHeaders = h;
            status = Number(h[":status"]);
            const length = Number(h["content-length"]);
            if (length > readMaxBytes) finish(tooLarge(readMaxBytes));
          });
          s.on("trailers", (t) => {
            trailers = t;
          });
          s.on("data", (chunk: Buffer) => {
            received += chunk.length;
            if (received > readMaxBytes) return finish(tooLarge(readMaxBytes));
            chunks.push(chunk);
          });
          s.on("end", () => {
            if (!settled && responseHeaders !== null) complete();
          });
          s.on("error", (error: Error) => {
            // A RST_STREAM from the server arrives as an error: its code says more than the error does.
            if (s.rstCode !== undefined && s.rstCode !== 0 && live.usable) return finish(resetError(connection.authority, s.rstCode));
            finish(new ConnectError(`${connection.authority}: ${error.message}`, Code.Unavailable, undefined, undefined, error));
          });
          s.on("close", () => {
            live.streams.delete(open);
            connection.release(live);
            if (settled) return;
            if (!live.usable || s.rstCode === 0) {
              finish(new ConnectError(`${connection.authority}: the connection ended before the answer (${live.reason || "stream closed"})`, Code.Unavailable));
            } else finish(resetError(connection.authority, s.rstCode));
          });
          s.end(body);
        },
      };

      if (signal !== undefined) {
        if (signal.aborted) return onAbort();
        signal.addEventListener("abort", onAbort);
      }
      if (timeoutMs !== undefined) timer = setTimeout(onDeadline, timeoutMs);
      connection.run(waiter);
    });
  }

  return {
    unary<I extends DescMessage, O extends DescMessage>(
      method: DescMethodUnary<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: Parameters<Transport["unary"]>[3],
      input: MessageInitShape<I>,
      contextValues?: ContextValues,
    ): Promise<UnaryResponse<I, O>> {
      const deadline = timeoutMs === undefined ? options.defaultTimeoutMs : timeoutMs <= 0 ? undefined : timeoutMs;
      if (interceptors.length === 0 && header === undefined) {
        // The common case: no Headers, no AbortController, no interceptor chain.
        let body: Uint8Array;
        try {
          body = toBinary(method.input, isMessage(input, method.input) ? input : create(method.input, input));
        } catch (error) {
          return Promise.reject(ConnectError.from(error, Code.Internal));
        }
        const headers: http2.OutgoingHttpHeaders = {
          ":method": "POST",
          ":path": pathOf(method),
          "content-type": "application/proto",
          "connect-protocol-version": "1",
          "user-agent": USER_AGENT,
        };
        if (deadline !== undefined) headers["connect-timeout-ms"] = String(deadline);
        return call(method, headers, body, signal, deadline);
      }
      // Interceptors see the request connect-node's transport would show them; connect-es runs
      // them and links the caller's signal with the deadline into `request.signal`.
      const requestHeader = new Headers(header);
      if (deadline !== undefined) requestHeader.set("connect-timeout-ms", String(deadline));
      requestHeader.set("content-type", "application/proto");
      requestHeader.set("connect-protocol-version", "1");
      if (!requestHeader.has("user-agent")) requestHeader.set("user-agent", USER_AGENT);
      const defaultUrl = url.origin + pathOf(method);
      return runUnaryCall<I, O>({
        interceptors,
        signal,
        timeoutMs: deadline,
        req: {
          stream: false,
          service: method.parent,
          method,
          requestMethod: "POST",
          url: defaultUrl,
          header: requestHeader,
          contextValues: contextValues ?? createContextValues(),
          message: input,
        },
        next: (request: UnaryRequest<I, O>) => {
          const path = request.url === defaultUrl ? pathOf(method) : new URL(request.url).pathname;
          return call(method, nodeHeaders(path, request.header), toBinary(method.input, request.message), request.signal, undefined);
        },
      });
    },

    stream(method, signal, timeoutMs, header, input, contextValues) {
      streaming ??= createConnectTransport({
        baseUrl: options.baseUrl,
        httpVersion: "2",
        useBinaryFormat: true,
        interceptors,
        readMaxBytes,
        ...(options.defaultTimeoutMs !== undefined ? { defaultTimeoutMs: options.defaultTimeoutMs } : {}),
        ...(options.nodeOptions !== undefined ? { nodeOptions: options.nodeOptions } : {}),
      });
      return streaming.stream(method, signal, timeoutMs, header, input, contextValues);
    },

    close() {
      connection.close();
    },
  };
}

function tooLarge(readMaxBytes: number): ConnectError {
  return new ConnectError(`message size is larger than configured readMaxBytes ${readMaxBytes}`, Code.ResourceExhausted);
}

/**
 * The error of an answer that is not plainly a binary message (null if it is one after all):
 * connect-es's own reading of it (status, content type, the Connect error JSON with its details),
 * so codes and metadata are what connect-node's transport reports.
 */
function refusal(status: number, raw: http2.IncomingHttpHeaders, body: Uint8Array): ConnectError | null {
  const all = webHeaders(raw);
  try {
    const encoding = all.get("content-encoding");
    if (encoding !== null && encoding.toLowerCase() !== "identity") {
      return new ConnectError(`unsupported response encoding "${encoding}"`, Code.Internal, all);
    }
    const { isUnaryError, unaryError } = validateResponse("unary", true, status, all);
    if (!isUnaryError) return null; // a 200 with a binary unary content type after all
    const [header, trailer] = trailerDemux(all);
    trailer.forEach((value, name) => header.append(name, value));
    return errorFromJsonBytes(body, header, unaryError!);
  } catch (error) {
    return ConnectError.from(error);
  }
}
