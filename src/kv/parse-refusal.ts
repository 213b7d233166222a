// A binary request body that does not parse is the client's error: answered invalid_argument in
// whichever protocol it came (connect-es's own codec answers internal, which sends clients to retry).
import { fromBinary, type DescMethod } from "@bufbuild/protobuf";
import { Code, ConnectError, createConnectRouter, type ConnectRouter } from "@connectrpc/connect";
import type { UniversalHandler, UniversalServerRequest } from "@connectrpc/connect/protocol";

/** Carries the parse error from the wrapper to the refusing handler (a header only this process sets). */
const PARSE_ERROR_HEADER = "x-kvraft-parse-error";
/** Bodies buffered for the check at most; a larger one goes on unchecked (its own limit refuses it). */
const MAX_CHECKED_BYTES = 8 << 20;

type Framing = "whole" | "enveloped";

/**
 * Wraps the binary-protobuf routes of `service` in `router` (registered just before) so that a
 * body that does not parse is answered by connect-es itself with invalid_argument and the parse
 * error: the wrapper checks the message first, and hands a failure to a handler for the same
 * method that refuses, with an empty, well-formed body in the same protocol.
 */
export function refuseUnparsableBodies(router: ConnectRouter, serviceTypeName: string): void {
  const handlers = router.handlers;
  for (let i = 0; i < handlers.length; i++) {
    const handler = handlers[i]!;
    if (handler.service.typeName !== serviceTypeName || handler.method.methodKind !== "unary") continue;
    handlers[i] = wrap(handler, refusingHandler(handler.method));
  }
}

function refusingHandler(method: DescMethod): UniversalHandler {
  const router = createConnectRouter();
  router.rpc(method as DescMethod & { methodKind: "unary" }, (_request: unknown, context) => {
    throw new ConnectError(context.requestHeader.get(PARSE_ERROR_HEADER) ?? "the request does not parse", Code.InvalidArgument);
  });
  return router.handlers[0]!;
}

function wrap(handler: UniversalHandler, refuse: UniversalHandler): UniversalHandler {
  const wrapped = async (request: UniversalServerRequest) => {
    const framing = framingOf(request.header);
    if (framing === null || !isByteStream(request.body)) return handler(request);
    const chunks: Uint8Array[] = [];
    let size = 0;
    const iterator = request.body[Symbol.asyncIterator]();
    let rest: AsyncIterator<Uint8Array> | null = null;
    for (;;) {
      const next = await iterator.next();
      if (next.done) break;
      chunks.push(next.value);
      size += next.value.length;
      if (size > MAX_CHECKED_BYTES) {
        rest = iterator;
        break;
      }
    }
    const body = concat(chunks, size);
    const problem = rest === null ? parseProblem(handler.method, framing, body) : null;
    if (problem === null) return handler({ ...request, body: replay(body, rest) });
    const empty = framing === "whole" ? new Uint8Array(0) : new Uint8Array(5);
    const header = new Headers(request.header);
    header.set(PARSE_ERROR_HEADER, problem);
    header.set("content-length", String(empty.length));
    return refuse({ ...request, header, body: replay(empty, null) });
  };
  return Object.assign(wrapped, {
    protocolNames: handler.protocolNames,
    service: handler.service,
    method: handler.method,
    requestPath: handler.requestPath,
    allowedMethods: handler.allowedMethods,
    supportedContentType: handler.supportedContentType,
  });
}

/** Binary protobuf bodies only, uncompressed (JSON and compressed bodies are connect-es's to judge). */
function framingOf(header: Headers): Framing | null {
  const type = (header.get("content-type") ?? "").toLowerCase();
  if (type === "application/proto") return header.has("content-encoding") ? null : "whole";
  if (/^application\/grpc(-web)?(\+proto)?$/.test(type)) {
    const encoding = header.get("grpc-encoding");
    return encoding === null || encoding === "identity" ? "enveloped" : null;
  }
  return null;
}

/** The parse error of the message(s) in `body`, or null when they parse (or are not ours to judge). */
function parseProblem(method: DescMethod, framing: Framing, body: Uint8Array): string | null {
  if (framing === "whole") return parseError(method, body);
  // gRPC envelopes: flags (u8), length (u32 big-endian), message.
  for (let offset = 0; offset < body.length; ) {
    if (offset + 5 > body.length) return null;
    const flags = body[offset]!;
    const length = new DataView(body.buffer, body.byteOffset + offset + 1, 4).getUint32(0, false);
    if (flags !== 0 || offset + 5 + length > body.length) return null;
    const problem = parseError(method, body.subarray(offset + 5, offset + 5 + length));
    if (problem !== null) return problem;
    offset += 5 + length;
  }
  return null;
}

function parseError(method: DescMethod, message: Uint8Array): string | null {
  try {
    fromBinary(method.input, message);
    return null;
  } catch (error) {
    return `parse binary: ${error instanceof Error ? error.message : String(error)}`;
  }
}

function isByteStream(body: UniversalServerRequest["body"]): body is AsyncIterable<Uint8Array> {
  return typeof body === "object" && body !== null && Symbol.asyncIterator in body;
}

function concat(chunks: Uint8Array[], size: number): Uint8Array {
  if (chunks.length === 1) return chunks[0]!;
  const out = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.length;
  }
  return out;
}

async function* replay(body: Uint8Array, rest: AsyncIterator<Uint8Array> | null): AsyncGenerator<Uint8Array> {
  if (body.length > 0) yield body;
  if (rest === null) return;
  for (let next = await rest.next(); !next.done; next = await rest.next()) yield next.value;
}
