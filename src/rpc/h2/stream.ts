// One HTTP/2 stream of the engine as its handler sees it: the request headers, the body as it
// comes (callbacks, no stream objects), and the response: headers, data, trailers, or a reset.
// The connection (connection.ts) owns framing and flow control; this file owns a stream's state.

import type { IncomingHttpHeaders } from "node:http2";
import { ErrorCode } from "./frames.ts";
import type { HeaderList } from "./hpack-decoder.ts";

/** What a stream asks of its connection. */
export interface StreamOwner {
  /** Frames this stream's pending output as far as the flow-control windows allow. */
  pump(stream: H2Stream): void;
  reset(stream: H2Stream, code: ErrorCode): void;
  /** The handler has taken `bytes` of the body: the client may send that much more. */
  consumed(stream: H2Stream, bytes: number): void;
  readonly maxFrameSize: number;
}

export class H2Stream {
  /** Request headers, shaped as node:http2's (repeated names: arrays; cookie joined). */
  readonly headers: IncomingHttpHeaders;
  /** The request carried END_STREAM on its headers (no body). */
  readonly endAfterHeaders: boolean;

  /** Body chunks as they arrive; unset: dropped (and the window refilled). */
  onData: ((chunk: Buffer) => void) | null = null;
  /** The request ended (END_STREAM). */
  onEnd: (() => void) | null = null;
  /** Request trailers, if the client sends any. */
  onTrailers: ((trailers: HeaderList) => void) | null = null;
  /** The stream is over: `code` null after a complete exchange, else why it was reset or lost. */
  onClose: ((code: ErrorCode | null) => void) | null = null;
  /** Pending output dropped below the high-water mark again. */
  onDrain: (() => void) | null = null;
  /**
   * True: the handler calls consumed() itself as it passes the body on (a proxy with its own
   * back-pressure); false: the window is refilled as each chunk is delivered.
   */
  manualFlow = false;

  // Receiving side.
  remoteEnded: boolean;
  /** Bytes the client may still send on this stream (our window). */
  receiveWindow: number;
  /** Declared content-length, checked against the DATA received (-1: none). */
  declaredLength = -1;
  receivedLength = 0;

  // Sending side.
  headersSent = false;
  /** Window the client granted for our DATA on this stream. */
  sendWindow: number;
  /** Output not yet framed: header block bytes first, then data, then trailers. */
  pendingHeaders: Uint8Array | null = null;
  pendingHeadersEnd = false;
  readonly pendingData: Uint8Array[] = [];
  pendingDataBytes = 0;
  pendingTrailers: Uint8Array | null = null;
  /** end() was called: after the pending data, END_STREAM (on the trailers, or an empty DATA). */
  ending = false;
  localEnded = false;
  closed = false;
  /** In the connection's list of streams waiting for window. */
  blocked = false;

  constructor(
    readonly id: number,
    private readonly owner: StreamOwner,
    headers: IncomingHttpHeaders,
    endAfterHeaders: boolean,
    sendWindow: number,
    receiveWindow: number,
  ) {
    this.headers = headers;
    this.endAfterHeaders = endAfterHeaders;
    this.remoteEnded = endAfterHeaders;
    this.sendWindow = sendWindow;
    this.receiveWindow = receiveWindow;
  }

  /** Nothing more can be sent on this stream. */
  get done(): boolean {
    return this.closed || this.ending;
  }

  /** Output queued but not yet framed (bytes of data). */
  get pendingBytes(): number {
    return this.pendingDataBytes;
  }

  /** Sends the response headers (a header block from hpack-encoder); `endStream`: no body follows. */
  sendHeaders(block: Uint8Array, endStream = false): void {
    if (this.closed || this.headersSent) return;
    this.headersSent = true;
    this.pendingHeaders = block;
    this.pendingHeadersEnd = endStream;
    if (endStream) this.ending = true;
    this.owner.pump(this);
  }

  /** Queues body bytes; false when the queue is past its high-water mark (wait for onDrain). */
  write(data: Uint8Array): boolean {
    if (this.closed || this.ending) return false;
    if (data.length > 0) {
      this.pendingData.push(data);
      this.pendingDataBytes += data.length;
    }
    this.owner.pump(this);
    return this.pendingDataBytes < HIGH_WATER_MARK;
  }

  /** Ends the response after the queued data, with trailers (a header block) if given. */
  end(trailers: Uint8Array | null = null): void {
    if (this.closed || this.ending) return;
    this.ending = true;
    this.pendingTrailers = trailers;
    this.owner.pump(this);
  }

  /** Headers, body and trailers at once: a unary answer, framed together when the windows allow. */
  respond(headers: Uint8Array, body: Uint8Array | null, trailers: Uint8Array | null = null): void {
    if (this.closed || this.headersSent) return;
    this.headersSent = true;
    this.pendingHeaders = headers;
    if (body !== null && body.length > 0) {
      this.pendingData.push(body);
      this.pendingDataBytes += body.length;
    }
    this.ending = true;
    this.pendingTrailers = trailers;
    this.owner.pump(this);
  }

  /** Ends the stream at once with RST_STREAM(code). */
  reset(code: ErrorCode = ErrorCode.CANCEL): void {
    if (this.closed) return;
    this.owner.reset(this, code);
  }

  /** The handler passed `bytes` of body on (only with manualFlow). */
  consumed(bytes: number): void {
    if (!this.closed) this.owner.consumed(this, bytes);
  }
}

/** Output a stream may queue before write() asks its producer to wait. */
export const HIGH_WATER_MARK = 256 * 1024;
