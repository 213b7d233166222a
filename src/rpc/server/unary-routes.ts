// The fast lane's view of the routes: records every unary method that routes register, and runs one
// Connect unary call on bytes (decode, implementation, encode, error → Connect JSON) without the
// universal handler's per-call async iterables, abort controllers and header objects.
// Decoding, encoding and error bodies use connect-es's own functions, so answers match the
// standard path byte for byte; anything outside the plain case is left to that path.

import { create, isMessage, type DescMessage, type Message, type DescMethod, type DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextValues, type ConnectRouter, type ContextValues, type HandlerContext } from "@connectrpc/connect";
import {
  createMethodSerializationLookup,
  mergeNonProtocolHeaders,
  validateReadWriteMaxBytes,
  type MethodSerializationLookup,
  type UniversalHandlerOptions,
} from "@connectrpc/connect/protocol";
import { codeToHttpStatus, errorToJsonBytes, trailerMux } from "@connectrpc/connect/protocol-connect";
import { flatJson, type FlatJson } from "./flat-json.ts";
import { connectionKey, type CallGate, type ConnectionInfo } from "./connection.ts";

type JsonWriteOptions = NonNullable<UniversalHandlerOptions["jsonOptions"]>;

/** One registered unary method, ready to call without the universal handler. */
export interface UnaryRoute {
  readonly path: string;
  readonly service: DescService;
  readonly method: DescMethod & { methodKind: "unary" };
  readonly readMaxBytes: number;
  readonly serialization: MethodSerializationLookup<DescMessage, DescMessage>;
  readonly jsonOptions: JsonWriteOptions | undefined;
  /** JSON without reflection for flat request/response messages (null: the library's codec only). */
  readonly flatInput: FlatJson | null;
  readonly flatOutput: FlatJson | null;
  readonly impl: (request: unknown, context: HandlerContext) => unknown;
  /** Client authorization, checked before impl (as the adapter's interceptor does). */
  readonly gate: CallGate | undefined;
}

/** What one fast call produced: a complete Connect unary response. */
export interface UnaryAnswer {
  status: number;
  /** "application/json" or "application/proto". */
  contentType: string;
  body: Uint8Array;
  /** Headers the implementation or its error set (trailers muxed as trailer-*); null when none. */
  headers: Headers | null;
}

/** Request facts an implementation may look at through its HandlerContext, produced on demand. */
export interface CallSource {
  /** The request URL, built only if an implementation asks (it costs socket address lookups). */
  url(): string;
  /** Request headers as name/value pairs (names lower-case). */
  headers(): Iterable<[string, string]>;
  /** Aborted when the client goes away or the server shuts down. */
  signal(): AbortSignal;
  /** The connection the call came on. */
  connection(): ConnectionInfo | null;
}

const utf8 = new TextDecoder();
const utf8Out = new TextEncoder();

/**
 * JSON bytes of frozen output messages (an implementation's constant answers, such as a write's
 * bare OK): a frozen message cannot change, so its encoding is made once. Weak: no growth.
 */
const frozenJson = new WeakMap<object, Uint8Array>();

export const CONTENT_TYPE_JSON = "application/json";
export const CONTENT_TYPE_PROTO = "application/proto";

/**
 * The request Content-Type of a Connect unary call: "json", "proto", or null for anything else
 * (streaming types, gRPC, gRPC-Web, unknown charsets), which the standard path answers.
 */
export function unaryContentType(value: string | undefined): "json" | "proto" | null {
  if (value === undefined) return null;
  const v = value.length <= 40 ? value.toLowerCase() : "";
  if (v === CONTENT_TYPE_JSON || v === "application/json; charset=utf-8" || v === "application/json;charset=utf-8") return "json";
  if (v === CONTENT_TYPE_PROTO) return "proto";
  return null;
}

export class UnaryRoutes {
  private readonly routes = new Map<string, UnaryRoute>();

  constructor(private readonly defaults: { readMaxBytes: number; jsonOptions?: JsonWriteOptions; gate?: CallGate }) {}

  get(path: string): UnaryRoute | undefined {
    return this.routes.get(path);
  }

  /** Wraps a router so that registrations reach it unchanged and are recorded here too. */
  recording(router: ConnectRouter): ConnectRouter {
    const wrapper = {
      get handlers() {
        return router.handlers;
      },
      service: (service: DescService, implementation: Record<string, unknown>, options?: Partial<UniversalHandlerOptions>) => {
        router.service(service, implementation as never, options);
        for (const method of service.methods) {
          const fn = implementation[method.localName];
          if (typeof fn === "function") this.add(service, method, fn.bind(implementation) as UnaryRoute["impl"], options);
        }
        return wrapper;
      },
      rpc: (method: DescMethod, impl: unknown, options?: Partial<UniversalHandlerOptions>) => {
        router.rpc(method, impl as never, options);
        if (typeof impl === "function") this.add(method.parent, method, impl as UnaryRoute["impl"], options);
        return wrapper;
      },
    };
    return wrapper as unknown as ConnectRouter;
  }

  private add(service: DescService, method: DescMethod, impl: UnaryRoute["impl"], options: Partial<UniversalHandlerOptions> | undefined): void {
    if (method.methodKind !== "unary") return;
    // Options that change the protocol's behaviour (interceptors, gates, required headers,
    // compression limits) are the standard path's business: such methods never take the lane.
    if (options !== undefined) {
      const allowed = new Set(["readMaxBytes", "jsonOptions"]);
      if (Object.keys(options).some((k) => !allowed.has(k) && (options as Record<string, unknown>)[k] !== undefined)) return;
    }
    const readMaxBytes = options?.readMaxBytes ?? this.defaults.readMaxBytes;
    const jsonOptions = options?.jsonOptions ?? this.defaults.jsonOptions;
    const limits = validateReadWriteMaxBytes(readMaxBytes, undefined, undefined);
    const path = `/${service.typeName}/${method.name}`;
    this.routes.set(path, {
      path,
      service,
      method: method as UnaryRoute["method"],
      readMaxBytes,
      serialization: createMethodSerializationLookup(method, undefined, jsonOptions, limits),
      jsonOptions,
      flatInput: flatJson(method.input),
      // Write options (emit defaults, enum numbers, proto names) change the output: the library's job.
      flatOutput: Object.keys(jsonOptions ?? {}).every((k) => k === "ignoreUnknownFields") ? flatJson(method.output) : null,
      impl,
      gate: this.defaults.gate,
    });
  }
}

/**
 * The request message. A body that does not parse is the client's error: invalid_argument (the
 * library's binary codec calls it internal, which would send clients to retry a hopeless request).
 */
function parseInput(route: UnaryRoute, binary: boolean, body: Uint8Array): unknown {
  try {
    const flat = binary ? null : route.flatInput?.parse(utf8.decode(body));
    // A lone surrogate escape ("\udc00") is not a string protobuf can hold: the library refuses it.
    if (flat && Object.values(flat).every((v) => typeof v !== "string" || v.isWellFormed())) return flat;
    return route.serialization.getI(binary).parse(body);
  } catch (e) {
    const cause = ConnectError.from(e);
    throw new ConnectError(cause.rawMessage, Code.InvalidArgument, undefined, undefined, e);
  }
}

/** Runs one unary call the way connect-es's Connect handler does, on a complete request body. */
export async function callUnary(route: UnaryRoute, format: "json" | "proto", body: Uint8Array, source: CallSource): Promise<UnaryAnswer> {
  const binary = format === "proto";
  const context = new LaneContext(route, source);
  try {
    const denied = route.gate?.({
      path: route.path,
      header: (name) => context.requestHeader.get(name),
      connection: source.connection(),
    });
    if (denied) throw denied;
    const input = parseInput(route, binary, body);
    const output = await route.impl(input, context);
    const message = isMessage(output, route.method.output as DescMessage) ? output : create(route.method.output, output as never);
    const encoded = !binary && route.flatOutput !== null ? flatBytes(route.flatOutput, message) : route.serialization.getO(binary).serialize(message);
    return { status: 200, contentType: binary ? CONTENT_TYPE_PROTO : CONTENT_TYPE_JSON, body: encoded, headers: context.takeHeaders() };
  } catch (e) {
    const error = e instanceof ConnectError ? e : new ConnectError("internal error", Code.Internal, undefined, undefined, e);
    let headers = context.takeHeaders();
    if (!error.isWireError && hasEntries(error.metadata)) {
      headers ??= new Headers();
      mergeNonProtocolHeaders(headers, error.metadata);
    }
    return { status: codeToHttpStatus(error.code), contentType: CONTENT_TYPE_JSON, body: errorToJsonBytes(error, route.jsonOptions ?? {}), headers };
  } finally {
    context.finish();
  }
}

function flatBytes(codec: FlatJson, message: Message): Uint8Array {
  if (!Object.isFrozen(message)) return utf8Out.encode(codec.write(message));
  let bytes = frozenJson.get(message);
  if (bytes === undefined) {
    bytes = utf8Out.encode(codec.write(message));
    frozenJson.set(message, bytes);
  }
  return bytes;
}

function hasEntries(headers: Headers): boolean {
  for (const _ of headers.keys()) return true;
  return false;
}

/**
 * A HandlerContext whose parts are made only when an implementation touches them: the KV and Raft
 * handlers use none, and building headers and linked abort signals per call is most of the cost.
 */
class LaneContext implements HandlerContext {
  readonly protocolName = "connect";
  readonly requestMethod = "POST";
  readonly method: DescMethod;
  readonly service: DescService;
  private requestHeaders: Headers | null = null;
  private responseHeaders: Headers | null = null;
  private responseTrailers: Headers | null = null;
  private contextValues: ContextValues | null = null;
  private abort: AbortController | null = null;
  private unlink: (() => void) | null = null;

  constructor(
    route: UnaryRoute,
    private readonly source: CallSource,
  ) {
    this.method = route.method;
    this.service = route.service;
  }

  get url(): string {
    return this.source.url();
  }

  readonly timeoutMs = (): number | undefined => undefined;

  get signal(): AbortSignal {
    if (this.abort === null) {
      const abort = new AbortController();
      const outer = this.source.signal();
      if (outer.aborted) abort.abort(outer.reason);
      else {
        const onAbort = () => abort.abort(outer.reason);
        outer.addEventListener("abort", onAbort, { once: true });
        this.unlink = () => outer.removeEventListener("abort", onAbort);
      }
      this.abort = abort;
    }
    return this.abort.signal;
  }

  get requestHeader(): Headers {
    if (this.requestHeaders === null) {
      const headers = new Headers();
      for (const [name, value] of this.source.headers()) headers.append(name, value);
      this.requestHeaders = headers;
    }
    return this.requestHeaders;
  }

  get responseHeader(): Headers {
    this.responseHeaders ??= new Headers();
    return this.responseHeaders;
  }

  get responseTrailer(): Headers {
    this.responseTrailers ??= new Headers();
    return this.responseTrailers;
  }

  get values(): ContextValues {
    this.contextValues ??= createContextValues().set(connectionKey, this.source.connection());
    return this.contextValues;
  }

  /** Response headers and trailers the implementation set, muxed for a unary response. */
  takeHeaders(): Headers | null {
    if (this.responseHeaders === null && this.responseTrailers === null) return null;
    return trailerMux(this.responseHeaders ?? new Headers(), this.responseTrailers ?? new Headers());
  }

  /** The call is over: its signal fires (as connect-es's does) and stops listening to the source. */
  finish(): void {
    this.unlink?.();
    this.abort?.abort();
  }
}
