// The fast lanes' view of the routes: records every unary method that routes register, and runs one
// unary call on bytes (decode, implementation, encode, errors) without the universal handler's
// per-call async iterables, abort controllers and header objects. One implementation for every
// protocol: the HTTP/1.1 lane (Connect) and the HTTP/2 lane (Connect, gRPC, gRPC-Web) frame what
// invokeUnary returns. Decoding, encoding and error bodies use connect-es's own functions, so
// answers match the standard path byte for byte; anything outside the plain case is left to it.

import { create, isMessage, type DescMessage, type Message, type DescMethod, type DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextValues, type ConnectRouter, type ContextValues, type HandlerContext } from "@connectrpc/connect";
import {
  compressionNegotiate,
  createMethodSerializationLookup,
  mergeNonProtocolHeaders,
  validateReadWriteMaxBytes,
  type Compression,
  type MethodSerializationLookup,
  type UniversalHandler,
  type UniversalHandlerOptions,
} from "@connectrpc/connect/protocol";
import { compressionBrotli } from "@connectrpc/connect-node";
import { gzipLevel1 } from "./gzip-level1.ts";
import { codeToHttpStatus, errorToJsonBytes, trailerMux } from "@connectrpc/connect/protocol-connect";
import { flatBinary, type FlatBinary } from "./flat-binary.ts";
import { flatJson, type FlatJson } from "./flat-json.ts";
import { connectionKey, type CallGate, type ConnectionInfo } from "./connection.ts";
import type { Admission } from "./admission.ts";

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
  /** Binary decoding without reflection for flat request messages (null: the library's codec only). */
  readonly binaryInput: FlatBinary | null;
  readonly flatOutput: FlatJson | null;
  readonly impl: (request: unknown, context: HandlerContext) => unknown;
  /** Client authorization, checked before impl (as the adapter's interceptor does). */
  readonly gate: CallGate | undefined;
  /** The node's admission control when this method is counted by it; null: never refused for load. */
  readonly admission: Admission | null;
  /** The library's handler of this method (all protocols): the lanes' fallback for odd bodies. */
  library(): UniversalHandler;
}

/** The protocol a call arrived in, as connect-es names it (HandlerContext.protocolName). */
export type UnaryProtocol = "connect" | "grpc" | "grpc_web";

/**
 * Response compression the server offers (connectNodeAdapter's default set, gzip at level 1:
 * gzip-level1.ts; passed to it explicitly so that the lanes and the adapter negotiate and compress
 * alike), and the smallest body compressed.
 */
export const ACCEPT_COMPRESSION: readonly Compression[] = [gzipLevel1, compressionBrotli];
export const COMPRESS_MIN_BYTES = 1024;

/** What the implementation made of one call, before any protocol framing. */
export interface UnaryOutcome {
  /** The serialized output message; null when the call failed. */
  message: Uint8Array | null;
  error: ConnectError | null;
  /** Response headers and trailers the implementation set (null: none). */
  header: Headers | null;
  trailer: Headers | null;
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
  /** The client's deadline in ms from the timeout header, if it sent one. */
  readonly timeoutMs?: number;
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
  private router: ConnectRouter | null = null;

  constructor(private readonly defaults: { readMaxBytes: number; jsonOptions?: JsonWriteOptions; gate?: CallGate; admission?: Admission }) {}

  get(path: string): UnaryRoute | undefined {
    return this.routes.get(path);
  }

  /** Wraps a router so that registrations reach it unchanged and are recorded here too. */
  recording(router: ConnectRouter): ConnectRouter {
    this.router = router;
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
    let library: UniversalHandler | undefined;
    this.routes.set(path, {
      path,
      service,
      method: method as UnaryRoute["method"],
      readMaxBytes,
      serialization: createMethodSerializationLookup(method, undefined, jsonOptions, limits),
      jsonOptions,
      flatInput: flatJson(method.input),
      binaryInput: flatBinary(method.input),
      // Write options (emit defaults, enum numbers, proto names) change the output: the library's job.
      flatOutput: Object.keys(jsonOptions ?? {}).every((k) => k === "ignoreUnknownFields") ? flatJson(method.output) : null,
      impl,
      gate: this.defaults.gate,
      admission: this.defaults.admission?.covers(path) ? this.defaults.admission : null,
      library: () => {
        library ??= this.router?.handlers.find((h) => h.requestPath === path);
        if (library === undefined) throw new Error(`no library handler for ${path}`);
        return library;
      },
    });
  }
}

/**
 * The request message. A body that does not parse is the client's error: invalid_argument (the
 * library's binary codec calls it internal, which would send clients to retry a hopeless request).
 */
function parseInput(route: UnaryRoute, binary: boolean, body: Uint8Array): unknown {
  try {
    if (binary) {
      const decoded = route.binaryInput?.decode(body);
      if (decoded !== undefined) return decoded;
      return route.serialization.getI(true).parse(body);
    }
    const flat = route.flatInput?.parse(utf8.decode(body));
    // A lone surrogate escape ("\udc00") is not a string protobuf can hold: the library refuses it.
    if (flat && Object.values(flat).every((v) => typeof v !== "string" || v.isWellFormed())) return flat;
    return route.serialization.getI(binary).parse(body);
  } catch (e) {
    const cause = ConnectError.from(e);
    throw new ConnectError(cause.rawMessage, Code.InvalidArgument, undefined, undefined, e);
  }
}

/**
 * Runs one unary call on a complete request message (no envelope, not compressed) the way
 * connect-es's handlers do: gate, decode, implementation, encode. Never throws: a failure is the
 * outcome's error, as the library would report it.
 */
export async function invokeUnary(route: UnaryRoute, protocol: UnaryProtocol, binary: boolean, body: Uint8Array, source: CallSource): Promise<UnaryOutcome> {
  const admission = route.admission;
  if (admission === null) return runUnary(route, protocol, binary, body, source);
  // Before parsing: an overloaded node spends on a refusal only its framing.
  const ticket = admission.admit(body.byteLength);
  if (ticket instanceof ConnectError) return refused(admission, route, protocol === "grpc" && binary, body, ticket);
  try {
    return await runUnary(route, protocol, binary, body, source);
  } finally {
    admission.release(ticket);
  }
}

/** The outcome of a call admission refused: the error, or for gRPC the route's held answer. */
async function refused(admission: Admission, route: UnaryRoute, grpcBinary: boolean, body: Uint8Array, error: ConnectError): Promise<UnaryOutcome> {
  const answer = grpcBinary ? admission.grpcAnswer(route.path) : undefined;
  if (answer === undefined || (answer.applies !== undefined && !appliesTo(answer.applies, route, body))) return { message: null, error, header: null, trailer: null };
  await admission.hold(answer.holdMs);
  return { message: answer.message, error: null, header: null, trailer: null };
}

/** Whether a held answer applies to this request body (one that does not parse: no). */
function appliesTo(applies: (request: unknown) => boolean, route: UnaryRoute, body: Uint8Array): boolean {
  try {
    return applies(parseInput(route, true, body));
  } catch {
    return false;
  }
}

async function runUnary(route: UnaryRoute, protocol: UnaryProtocol, binary: boolean, body: Uint8Array, source: CallSource): Promise<UnaryOutcome> {
  const context = new LaneContext(route, source, protocol);
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
    return { message: encoded, error: null, header: context.responseHeaders, trailer: context.responseTrailers };
  } catch (e) {
    const error = e instanceof ConnectError ? e : new ConnectError("internal error", Code.Internal, undefined, undefined, e);
    return { message: null, error, header: context.responseHeaders, trailer: context.responseTrailers };
  } finally {
    context.finish();
  }
}

/** Runs one Connect unary call on a complete, uncompressed request body: the response to send. */
export async function callUnary(route: UnaryRoute, format: "json" | "proto", body: Uint8Array, source: CallSource): Promise<UnaryAnswer> {
  const outcome = await invokeUnary(route, "connect", format === "proto", body, source);
  return connectAnswer(route, format === "proto", outcome);
}

/** The Connect unary response (status, type, body, headers with trailers muxed) of an outcome. */
export function connectAnswer(route: UnaryRoute, binary: boolean, outcome: UnaryOutcome): UnaryAnswer {
  let headers: Headers | null = outcome.header === null && outcome.trailer === null ? null : trailerMux(outcome.header ?? new Headers(), outcome.trailer ?? new Headers());
  const error = outcome.error;
  if (error === null) return { status: 200, contentType: binary ? CONTENT_TYPE_PROTO : CONTENT_TYPE_JSON, body: outcome.message!, headers };
  if (!error.isWireError && hasEntries(error.metadata)) {
    headers ??= new Headers();
    mergeNonProtocolHeaders(headers, error.metadata);
  }
  return { status: codeToHttpStatus(error.code), contentType: CONTENT_TYPE_JSON, body: errorToJsonBytes(error, route.jsonOptions ?? {}), headers };
}

/**
 * The compression a response uses, negotiated as connect-es does from the client's accept header
 * (Accept-Encoding for Connect, Grpc-Accept-Encoding for gRPC and gRPC-Web); null: none.
 */
export function responseCompression(accepted: string | undefined): Compression | null {
  if (accepted === undefined || accepted === "") return null;
  let found = negotiated.get(accepted);
  if (found === undefined) {
    found = compressionNegotiate([...ACCEPT_COMPRESSION], null, accepted, "").response;
    // Clients send one of a handful of values; a bounded memo keeps odd ones from growing it.
    if (negotiated.size < MAX_NEGOTIATED) negotiated.set(accepted, found);
  }
  return found;
}

const negotiated = new Map<string, Compression | null>();
const MAX_NEGOTIATED = 64;

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
  readonly requestMethod = "POST";
  readonly method: DescMethod;
  readonly service: DescService;
  private requestHeaders: Headers | null = null;
  /** Made when the implementation touches them (null: it set none). */
  responseHeaders: Headers | null = null;
  responseTrailers: Headers | null = null;
  private contextValues: ContextValues | null = null;
  private abort: AbortController | null = null;
  private unlink: (() => void) | null = null;
  private deadlineTimer: ReturnType<typeof setTimeout> | undefined;
  /** When the client's deadline passes (Date.now() ms), if it sent one. */
  private readonly deadline: number | undefined;

  constructor(
    route: UnaryRoute,
    private readonly source: CallSource,
    readonly protocolName: UnaryProtocol,
  ) {
    this.method = route.method;
    this.service = route.service;
    this.deadline = source.timeoutMs === undefined ? undefined : Date.now() + source.timeoutMs;
  }

  get url(): string {
    return this.source.url();
  }

  readonly timeoutMs = (): number | undefined => (this.deadline === undefined ? undefined : this.deadline - Date.now());

  get signal(): AbortSignal {
    if (this.abort === null) {
      const abort = new AbortController();
      const outer = this.source.signal();
      // As connect-es's context: the signal also fires when the client's deadline passes.
      if (this.deadline !== undefined) {
        const left = this.deadline - Date.now();
        const expire = () => abort.abort(new ConnectError("the operation timed out", Code.DeadlineExceeded));
        if (left <= 0) expire();
        else this.deadlineTimer = setTimeout(expire, left);
      }
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

  /** The call is over: its signal fires (as connect-es's does) and stops listening to the source. */
  finish(): void {
    clearTimeout(this.deadlineTimer);
    this.unlink?.();
    this.abort?.abort();
  }
}

/** Paths of the client- and bidi-streaming methods registered: their request bodies never need to end. */
export function streamingPathsOf(router: ConnectRouter | null): ReadonlySet<string> {
  const paths = new Set<string>();
  for (const handler of router?.handlers ?? []) {
    if (handler.method.methodKind === "client_streaming" || handler.method.methodKind === "bidi_streaming") paths.add(handler.requestPath);
  }
  return paths;
}
