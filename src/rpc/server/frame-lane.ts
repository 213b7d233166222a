// The direct HTTP/2 route for client-streaming calls whose messages the receiver reads as raw bytes
// (the Raft peer stream): Connect envelopes are cut straight out of the stream's DATA chunks and
// handed to a synchronous sink, bypassing connectNodeAdapter's per-message async iterables.
// Wire-compatible with any Connect client; calls it does not take (other content types, timeouts,
// compression) go to the adapter unchanged.

import type * as http2 from "node:http2";
import type * as net from "node:net";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { endStreamToJson } from "@connectrpc/connect/protocol-connect";
import { connectionOf, type ConnectionInfo } from "./connection.ts";

/** A client-streaming method served on raw envelope payloads. */
export interface FrameRoute {
  /** Largest envelope payload accepted; a bigger one ends the call with resource_exhausted. */
  readonly readMaxBytes: number;
  /**
   * Decides at the start of a call whether this connection may use the route: throwing ends the
   * call with that error before any envelope is read (a ConnectError keeps its code).
   */
  authorize?(connection: ConnectionInfo, headers: http2.IncomingHttpHeaders): void;
  /**
   * One envelope's payload (valid only during the call: copy what must outlive it), in arrival
   * order. Throwing ends the call with that error (a ConnectError keeps its code).
   */
  onFrame(payload: Uint8Array, connection: ConnectionInfo): void;
}

const FRAME_ROUTES = Symbol("kvraft.frameRoutes");

/** Frame routes by path ("/pkg.Service/Method"); filled while routes are registered. */
export class FrameRoutes {
  private readonly routes = new Map<string, FrameRoute>();

  add(path: string, route: FrameRoute): void {
    if (!(route.readMaxBytes > 0)) throw new RangeError(`frame route ${path}: readMaxBytes must be positive`);
    this.routes.set(path, route);
  }

  get(path: string): FrameRoute | undefined {
    return this.routes.get(path);
  }

  get size(): number {
    return this.routes.size;
  }

  /** Wraps a router so that registration code can find these routes (see frameRoutesOf). */
  exposeOn(router: ConnectRouter): ConnectRouter {
    const wrapper = {
      get handlers() {
        return router.handlers;
      },
      service: (...args: Parameters<ConnectRouter["service"]>) => {
        router.service(...args);
        return wrapper;
      },
      rpc: (...args: Parameters<ConnectRouter["rpc"]>) => {
        (router.rpc as (...a: unknown[]) => unknown)(...args);
        return wrapper;
      },
      [FRAME_ROUTES]: this,
    };
    return wrapper as unknown as ConnectRouter;
  }
}

/**
 * The frame routes of a router an RpcServer handed out, or null for any other router (then the
 * method's ordinary Connect registration is the only one, and still works).
 */
export function frameRoutesOf(router: ConnectRouter): FrameRoutes | null {
  const routes = (router as unknown as Record<symbol, unknown>)[FRAME_ROUTES];
  return routes instanceof FrameRoutes ? routes : null;
}

/**
 * Whether a stream's request is one this lane answers exactly like the Connect adapter would:
 * a Connect streaming call in binary, uncompressed, without a deadline.
 */
export function isPlainConnectStream(headers: http2.IncomingHttpHeaders): boolean {
  if (headers[":method"] !== "POST" || headers["content-type"] !== "application/connect+proto") return false;
  const encoding = headers["connect-content-encoding"];
  if (encoding !== undefined && encoding !== "identity") return false;
  return headers["connect-timeout-ms"] === undefined;
}

const FLAG_COMPRESSED = 0x01;
const FLAG_END_STREAM = 0x02;
const utf8 = new TextEncoder();

/** The response of a successful call: one empty message (an empty protobuf) and the end record. */
const OK_BODY = envelopes([
  [0, new Uint8Array(0)],
  [FLAG_END_STREAM, utf8.encode("{}")],
]);

/** Serves one call on `stream`: envelopes go to `route.onFrame` until the client half-closes. */
export function serveFrameStream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, route: FrameRoute, shutdown: AbortSignal): void {
  let done = false;
  const connection = connectionOf(stream.session!.socket as unknown as net.Socket, stream.session!);
  // Reassembly of an envelope split across chunks: its 5-byte prefix, then its payload.
  const prefix = new Uint8Array(5);
  let prefixFill = 0;
  let body: Uint8Array | null = null;
  let bodyFill = 0;

  const finish = (error: ConnectError | null) => {
    if (done) return;
    done = true;
    body = null;
    shutdown.removeEventListener("abort", onShutdown);
    if (stream.destroyed || stream.closed) return;
    try {
      stream.respond({ ":status": 200, "content-type": "application/connect+proto" });
      if (error === null) stream.end(OK_BODY);
      else {
        const end = endStreamToJson(new Headers(), error, undefined);
        // The client may still be sending: once the answer is out the connection guard resets the
        // stream with NO_ERROR (connection-guard.ts), so the client stops and takes the answer.
        stream.end(envelopes([[FLAG_END_STREAM, utf8.encode(JSON.stringify(end))]]));
      }
    } catch {
      // The stream went away while answering: nothing left to tell the client.
      if (!stream.destroyed) stream.destroy();
    }
  };
  const onShutdown = () => finish(new ConnectError("the server is shutting down", Code.Unavailable));

  const deliver = (payload: Uint8Array) => {
    try {
      route.onFrame(payload, connection);
    } catch (error) {
      finish(ConnectError.from(error));
    }
  };

  /** Validates a prefix; returns the payload length, or -1 after ending the call. */
  const payloadLength = (flags: number, length: number): number => {
    if (flags !== 0) {
      const what = (flags & FLAG_COMPRESSED) !== 0 ? "a compressed message, but no compression was negotiated" : `an envelope with flags ${flags}`;
      finish(new ConnectError(`protocol error: received ${what}`, (flags & FLAG_COMPRESSED) !== 0 ? Code.Internal : Code.InvalidArgument));
      return -1;
    }
    if (length > route.readMaxBytes) {
      finish(new ConnectError(`message size ${length} is larger than configured readMaxBytes ${route.readMaxBytes}`, Code.ResourceExhausted));
      return -1;
    }
    return length;
  };

  const onData = (chunk: Uint8Array) => {
    let pos = 0;
    const n = chunk.length;
    while (!done && pos < n) {
      if (body !== null) {
        const take = Math.min(n - pos, body.length - bodyFill);
        body.set(chunk.subarray(pos, pos + take), bodyFill);
        bodyFill += take;
        pos += take;
        if (bodyFill === body.length) {
          const whole = body;
          body = null;
          deliver(whole);
        }
        continue;
      }
      if (prefixFill === 0 && n - pos >= 5) {
        // The common case: the prefix lies whole in this chunk.
        const length = payloadLength(chunk[pos]!, ((chunk[pos + 1]! << 24) | (chunk[pos + 2]! << 16) | (chunk[pos + 3]! << 8) | chunk[pos + 4]!) >>> 0);
        if (length < 0) return;
        pos += 5;
        if (n - pos >= length) {
          deliver(chunk.subarray(pos, pos + length));
          pos += length;
        } else {
          body = new Uint8Array(length);
          bodyFill = 0;
        }
        continue;
      }
      const take = Math.min(n - pos, 5 - prefixFill);
      prefix.set(chunk.subarray(pos, pos + take), prefixFill);
      prefixFill += take;
      pos += take;
      if (prefixFill < 5) continue;
      prefixFill = 0;
      const length = payloadLength(prefix[0]!, ((prefix[1]! << 24) | (prefix[2]! << 16) | (prefix[3]! << 8) | prefix[4]!) >>> 0);
      if (length < 0) return;
      if (length === 0) deliver(new Uint8Array(0));
      else {
        body = new Uint8Array(length);
        bodyFill = 0;
      }
    }
  };

  stream.on("data", onData);
  stream.on("end", () => {
    if (body !== null || prefixFill !== 0) finish(new ConnectError("protocol error: the stream ended inside a message", Code.InvalidArgument));
    else finish(null);
  });
  // A reset or a broken connection: nobody is left to answer.
  stream.on("error", () => finish(null));
  stream.on("close", () => {
    done = true;
    body = null;
    shutdown.removeEventListener("abort", onShutdown);
  });
  if (shutdown.aborted) onShutdown();
  else shutdown.addEventListener("abort", onShutdown, { once: true });
  if (route.authorize !== undefined) {
    try {
      route.authorize(connection, headers);
    } catch (error) {
      finish(ConnectError.from(error));
    }
  }
}

function envelopes(parts: [number, Uint8Array][]): Uint8Array {
  let size = 0;
  for (const [, payload] of parts) size += 5 + payload.length;
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  let pos = 0;
  for (const [flags, payload] of parts) {
    out[pos] = flags;
    view.setUint32(pos + 1, payload.length);
    out.set(payload, pos + 5);
    pos += 5 + payload.length;
  }
  return out;
}
