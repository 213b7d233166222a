// The Clerk's transport for Bun and Node: unary calls in binary Connect (or gRPC) straight over one
// node:http2 session per base URL, without connect-node's per-call machinery; streaming calls
// (Watch) through connect-node's transport of the same protocol, made with the same options.
import type * as http2 from "node:http2";
import { create, fromBinary, isMessage, toBinary, type DescMessage, type DescMethodUnary, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextValues, type ContextValues, type Interceptor, type Transport, type UnaryRequest, type UnaryResponse } from "@connectrpc/connect";
import { runUnaryCall } from "@connectrpc/connect/protocol";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { H2Connection, type H2SessionOptions, type LiveSession, type OpenStream, type StreamWaiter } from "./h2-connection.ts";
import { UNARY_PROTOCOLS, type ProtocolName, type UnaryProtocol } from "./unary-protocols.ts";

export interface ClerkTransportOptions {
  /** "http://host:port" or "https://host:port" (a path prefix is kept). */
  baseUrl: string;
  /** "connect" (default: binary Connect) or "grpc". */
  protocol?: ProtocolName;
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

/** A unary answer whose header and trailer Headers are built only when read. */
class LazyResponse<I extends DescMessage, O extends DescMessage> implements UnaryResponse<I, O> {
  readonly stream = false;
  private built: [Headers, Headers] | null = null;
  constructor(
    readonly service: DescMethodUnary<I, O>["parent"],
    readonly method: DescMethodUnary<I, O>,
    readonly message: MessageShape<O>,
    private readonly protocol: UnaryProtocol,
    private readonly headers: http2.IncomingHttpHeaders,
    private readonly trailers: http2.IncomingHttpHeaders | null,
  ) {}
  get header(): Headers {
    return (this.built ??= this.protocol.metadata(this.headers, this.trailers))[0];
  }
  get trailer(): Headers {
    return (this.built ??= this.protocol.metadata(this.headers, this.trailers))[1];
  }
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
  const protocol = UNARY_PROTOCOLS[options.protocol ?? "connect"];
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
        const bytes = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, received);
        const read = protocol.read(status, responseHeaders!, trailers, bytes);
        if (read instanceof ConnectError) return finish(read);
        let message: MessageShape<O>;
        try {
          message = fromBinary(method.output, read);
        } catch (error) {
          return finish(new ConnectError(`parse binary: ${error instanceof Error ? error.message : String(error)}`, Code.Internal));
        }
        finish(null, new LazyResponse(method.parent, method, message, protocol, responseHeaders!, trailers));
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
          body = protocol.frame(toBinary(method.input, isMessage(input, method.input) ? input : create(method.input, input)));
        } catch (error) {
          return Promise.reject(ConnectError.from(error, Code.Internal));
        }
        const headers: http2.OutgoingHttpHeaders = { ":method": "POST", ":path": pathOf(method), ...protocol.headers };
        if (deadline !== undefined) headers[protocol.timeoutHeader] = protocol.timeoutValue(deadline);
        return call(method, headers, body, signal, deadline);
      }
      // Interceptors see the request connect-node's transport would show them; connect-es runs
      // them and links the caller's signal with the deadline into `request.signal`.
      const requestHeader = new Headers(header);
      if (deadline !== undefined) requestHeader.set(protocol.timeoutHeader, protocol.timeoutValue(deadline));
      for (const [name, value] of Object.entries(protocol.headers)) if (name !== "user-agent" || !requestHeader.has(name)) requestHeader.set(name, value);
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
          return call(method, nodeHeaders(path, request.header), protocol.frame(toBinary(method.input, request.message)), request.signal, undefined);
        },
      });
    },

    stream(method, signal, timeoutMs, header, input, contextValues) {
      const same = {
        baseUrl: options.baseUrl,
        interceptors,
        readMaxBytes,
        ...(options.defaultTimeoutMs !== undefined ? { defaultTimeoutMs: options.defaultTimeoutMs } : {}),
        ...(options.nodeOptions !== undefined ? { nodeOptions: options.nodeOptions } : {}),
      };
      streaming ??= options.protocol === "grpc" ? createGrpcTransport(same) : createConnectTransport({ ...same, httpVersion: "2", useBinaryFormat: true });
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
