// What the lean client transport sends and reads per protocol for a unary call: Connect binary
// (the message as the body, errors as JSON) and gRPC (one 5-byte envelope, status in trailers).
// Answers that are not plainly a message are read by connect-es's own functions, so codes,
// messages, details and metadata are what connect-node's transports report.
import type * as http2 from "node:http2";
import { Code, ConnectError } from "@connectrpc/connect";
import { errorFromJsonBytes, trailerDemux, validateResponse as validateConnectResponse } from "@connectrpc/connect/protocol-connect";
import { validateResponse as validateGrpcResponse, validateTrailer } from "@connectrpc/connect/protocol-grpc";

export type ProtocolName = "connect" | "grpc";

export interface UnaryProtocol {
  /** Request headers of every call (beside :method, :path and the timeout). */
  readonly headers: Readonly<Record<string, string>>;
  /** The header that carries a call's deadline, and its value for `ms`. */
  readonly timeoutHeader: string;
  timeoutValue(ms: number): string;
  /** The request body for an encoded message. */
  frame(message: Uint8Array): Uint8Array;
  /** The message bytes of an answer, or the error it carries. */
  read(status: number, headers: http2.IncomingHttpHeaders, trailers: http2.IncomingHttpHeaders | null, body: Buffer): Uint8Array | ConnectError;
  /** The answer's header and trailer, as connect-node's transport reports them. */
  metadata(headers: http2.IncomingHttpHeaders, trailers: http2.IncomingHttpHeaders | null): [Headers, Headers];
}

export const USER_AGENT = "kvraft-clerk";

/** node:http2's headers as fetch Headers (pseudo-headers left out). */
export function webHeaders(raw: http2.IncomingHttpHeaders, into = new Headers()): Headers {
  for (const name in raw) {
    if (name.charCodeAt(0) === 58 /* ':' */) continue;
    const value = raw[name];
    if (Array.isArray(value)) for (const v of value) into.append(name, v);
    else if (value !== undefined) into.append(name, String(value));
  }
  return into;
}

const connect: UnaryProtocol = {
  headers: { "content-type": "application/proto", "connect-protocol-version": "1", "user-agent": USER_AGENT },
  timeoutHeader: "connect-timeout-ms",
  timeoutValue: (ms) => String(ms),
  frame: (message) => message,
  read(status, headers, trailers, body) {
    if (status === 200 && headers["content-type"] === "application/proto" && headers["content-encoding"] === undefined) return body;
    const all = webHeaders(headers);
    if (trailers !== null) webHeaders(trailers, all);
    try {
      const encoding = all.get("content-encoding");
      if (encoding !== null && encoding.toLowerCase() !== "identity") {
        return new ConnectError(`unsupported response encoding "${encoding}"`, Code.Internal, all);
      }
      const { isUnaryError, unaryError } = validateConnectResponse("unary", true, status, all);
      if (!isUnaryError) return body; // a 200 with a binary unary content type after all
      const [header, trailer] = trailerDemux(all);
      trailer.forEach((value, name) => header.append(name, value));
      return errorFromJsonBytes(body, header, unaryError!);
    } catch (error) {
      return ConnectError.from(error);
    }
  },
  metadata(headers, trailers) {
    const all = webHeaders(headers);
    if (trailers !== null) webHeaders(trailers, all);
    return trailerDemux(all);
  },
};

const grpc: UnaryProtocol = {
  headers: { "content-type": "application/grpc+proto", te: "trailers", "user-agent": USER_AGENT },
  timeoutHeader: "grpc-timeout",
  timeoutValue: (ms) => `${ms}m`,
  frame(message) {
    const body = new Uint8Array(5 + message.length);
    new DataView(body.buffer).setUint32(1, message.length);
    body.set(message, 5);
    return body;
  },
  read(status, headers, trailers, body) {
    // The plain answer: 200, one uncompressed envelope, grpc-status 0 in the trailers.
    if (
      status === 200 &&
      trailers !== null &&
      trailers["grpc-status"] === "0" &&
      trailers["grpc-status-details-bin"] === undefined &&
      headers["grpc-encoding"] === undefined &&
      body.length >= 5 &&
      body[0] === 0 &&
      body.readUInt32BE(1) === body.length - 5
    ) {
      return body.subarray(5);
    }
    const header = webHeaders(headers);
    const trailer = trailers === null ? new Headers() : webHeaders(trailers);
    try {
      const { headerError } = validateGrpcResponse(status, header);
      if (headerError !== undefined) return headerError;
      const encoding = header.get("grpc-encoding");
      if (encoding !== null && encoding.toLowerCase() !== "identity") {
        return new ConnectError(`unsupported response encoding "${encoding}"`, Code.Internal, header);
      }
      validateTrailer(trailer, header);
      if (body.length < 5) return new ConnectError("protocol error: missing output message for unary method", Code.Unimplemented);
      if (body[0] !== 0) return new ConnectError("protocol error: received a compressed or unknown envelope", Code.Internal);
      const length = body.readUInt32BE(1);
      if (body.length !== 5 + length) return new ConnectError("protocol error: received extra output message for unary method", Code.Unimplemented);
      return body.subarray(5);
    } catch (error) {
      return ConnectError.from(error);
    }
  },
  metadata(headers, trailers) {
    return [webHeaders(headers), trailers === null ? new Headers() : webHeaders(trailers)];
  },
};

export const UNARY_PROTOCOLS: Record<ProtocolName, UnaryProtocol> = { connect, grpc };
