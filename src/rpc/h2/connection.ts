// One HTTP/2 server connection of the engine (RFC 9113): reads frames off a socket, keeps the
// stream states, both directions of flow control, SETTINGS, PING and GOAWAY, hands each new stream
// to its handler and frames the answers, batching a turn's frames into one socket write. Protocol
// errors end the stream (RST_STREAM) or the connection (GOAWAY) with the RFC's code, never a throw.

import type { Duplex } from "node:stream";
import type { IncomingHttpHeaders } from "node:http2";
import {
  CLIENT_PREFACE,
  ConnectionError,
  DEFAULT_MAX_FRAME_SIZE,
  DEFAULT_WINDOW,
  ErrorCode,
  FLAG_ACK,
  FLAG_END_HEADERS,
  FLAG_END_STREAM,
  FLAG_PRIORITY,
  FRAME_HEADER_BYTES,
  FrameType,
  MAX_MAX_FRAME_SIZE,
  MAX_WINDOW,
  SETTINGS_ACK,
  Setting,
  goaway,
  pingAck,
  rstStream,
  settingsFrame,
  unpad,
  windowUpdate,
} from "./frames.ts";
import { HpackDecoder, HpackError, type HeaderList } from "./hpack-decoder.ts";
import { RateBudget, declaredLength, requestHeaders, trailerFields } from "./request-headers.ts";
import { H2Stream, type StreamOwner } from "./stream.ts";
import { Sender } from "./sender.ts";
import { FrameWriter } from "./writer.ts";
import { log } from "../../obs/log.ts";

export interface H2ConnectionOptions {
  /** SETTINGS_MAX_CONCURRENT_STREAMS: streams past it are refused (REFUSED_STREAM). */
  maxConcurrentStreams: number;
  /** SETTINGS_MAX_HEADER_LIST_SIZE; a larger request gets 431. */
  maxHeaderListSize: number;
  /** The window each stream gives the client for its request body (SETTINGS_INITIAL_WINDOW_SIZE). */
  streamWindow: number;
  /** The connection-wide window for request bodies. */
  connectionWindow: number;
  /** A new stream with its request headers; set its callbacks synchronously. */
  onStream(stream: H2Stream): void;
  /** A request whose headers exceed maxHeaderListSize: answered by the handler (431). */
  onOversizeHeaders(stream: H2Stream): void;
  /** Counters shared by every connection of a server (for /metrics); none: not counted. */
  counters?: EngineCounters;
}

/** What the engine's connections count as it happens. */
export interface EngineCounters {
  /** GOAWAY frames sent, indexed by error code (RFC 9113 §7; 0..13). */
  goAways: number[];
  /** Connections ended because the client reset streams faster than MAX_RESETS_PER_SECOND. */
  rapidResets: number;
}

export function engineCounters(): EngineCounters {
  return { goAways: new Array<number>(14).fill(0), rapidResets: 0 };
}

export const DEFAULT_ENGINE_OPTIONS = {
  maxConcurrentStreams: 256,
  maxHeaderListSize: 64 * 1024,
  streamWindow: 1024 * 1024,
  connectionWindow: 8 * 1024 * 1024,
};

/** Open streams a client may reset per second before the connection ends (ENHANCE_YOUR_CALM). */
const MAX_RESETS_PER_SECOND = 1000;

/** Streams a client may open before it acknowledged our SETTINGS (and so our stream limit). */
const UNACKED_STREAM_LIMIT = 1024;

type Phase = "preface" | "settings" | "open" | "closed";

export class H2Connection implements StreamOwner {
  private phase: Phase = "preface";
  private buffered: Buffer | null = null;
  private readonly streams = new Map<number, H2Stream>();
  private readonly decoder: HpackDecoder;
  /** Highest client stream id seen (GOAWAY's last stream). */
  private lastStreamId = 0;
  /** A header block in progress (HEADERS without END_HEADERS, then CONTINUATION). */
  private continuing: { streamId: number; endStream: boolean; parts: Buffer[]; size: number } | null = null;
  // Flow control, our side: what the client may still send on the connection, and what was consumed.
  private receiveWindow: number;
  private unacked = 0;
  // Their side, and the output.
  private readonly writer: FrameWriter;
  private readonly sender: Sender;
  /** GOAWAY sent: no new streams; the socket ends when the last stream closes. */
  private goingAway = false;
  /** The client's SETTINGS arrived (the guard's handshake stage is over). */
  settingsSeen = false;
  /** The client acknowledged our SETTINGS: our stream limit binds it from now on. */
  private settingsAcked = false;
  /** Open streams the client may still reset this second. */
  private readonly resets = new RateBudget(MAX_RESETS_PER_SECOND, 1_000);
  /** Streams open now. */
  get openStreams(): number {
    return this.streams.size;
  }
  /** Called as each request ends (END_STREAM from the client): the guard's body deadline is met. */
  onRequestEnded: ((stream: H2Stream) => void) | null = null;
  /** Called when a stream is answered before its request ended and reset with NO_ERROR. */
  onStreamCut: ((stream: H2Stream) => void) | null = null;
  /** Called as each stream closes (the guard counts open streams and body deadlines). */
  onStreamClosed: ((stream: H2Stream) => void) | null = null;

  constructor(
    readonly socket: Duplex,
    private readonly options: H2ConnectionOptions,
  ) {
    this.decoder = new HpackDecoder(4096);
    this.writer = new FrameWriter(socket);
    this.sender = new Sender(this.writer, (stream) => this.localEnd(stream));
    this.receiveWindow = DEFAULT_WINDOW;
    socket.on("data", (chunk: Buffer) => this.receive(chunk));
    socket.on("error", () => socket.destroy());
    socket.once("close", () => this.closed());
  }

  /** Starts with the bytes already read off the socket (the preface or part of it). */
  start(initial: Buffer): void {
    const settings: [Setting, number][] = [
      [Setting.MAX_CONCURRENT_STREAMS, this.options.maxConcurrentStreams],
      [Setting.ENABLE_PUSH, 0],
      [Setting.INITIAL_WINDOW_SIZE, this.options.streamWindow],
      [Setting.MAX_HEADER_LIST_SIZE, this.options.maxHeaderListSize],
    ];
    this.queue(settingsFrame(settings));
    if (this.options.connectionWindow > DEFAULT_WINDOW) {
      this.queue(windowUpdate(0, this.options.connectionWindow - DEFAULT_WINDOW));
      this.receiveWindow = this.options.connectionWindow;
    }
    this.writer.flush();
    if (initial.length > 0) this.receive(initial);
  }

  /** GOAWAY was sent or received: the connection takes no new streams. */
  get closing(): boolean {
    return this.goingAway || this.phase === "closed";
  }

  /** Graceful end: GOAWAY(NO_ERROR); streams in progress finish, then the socket ends. */
  close(): void {
    if (this.goingAway || this.phase === "closed") return;
    this.goingAway = true;
    this.countGoAway(ErrorCode.NO_ERROR);
    this.queue(goaway(this.lastStreamId, ErrorCode.NO_ERROR, ""));
    this.writer.flush();
    if (this.streams.size === 0) this.socket.end();
  }

  private receive(chunk: Buffer): void {
    if (this.phase === "closed") return;
    let data = this.buffered === null ? chunk : Buffer.concat([this.buffered, chunk]);
    this.buffered = null;
    this.writer.holding = true;
    try {
      let pos = 0;
      if (this.phase === "preface") {
        const n = Math.min(data.length, CLIENT_PREFACE.length);
        if (!data.subarray(0, n).equals(CLIENT_PREFACE.subarray(0, n))) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 client preface");
        if (data.length < CLIENT_PREFACE.length) {
          this.buffered = data;
          return;
        }
        pos = CLIENT_PREFACE.length;
        this.phase = "settings";
      }
      while (data.length - pos >= FRAME_HEADER_BYTES) {
        const length = (data[pos]! << 16) | (data[pos + 1]! << 8) | data[pos + 2]!;
        if (length > DEFAULT_MAX_FRAME_SIZE) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, `a frame of ${length} bytes exceeds SETTINGS_MAX_FRAME_SIZE`);
        if (data.length - pos < FRAME_HEADER_BYTES + length) break;
        const type = data[pos + 3]!;
        const flags = data[pos + 4]!;
        const streamId = data.readUInt32BE(pos + 5) & 0x7fffffff;
        const payload = data.subarray(pos + FRAME_HEADER_BYTES, pos + FRAME_HEADER_BYTES + length);
        pos += FRAME_HEADER_BYTES + length;
        this.frame(type, flags, streamId, payload);
        if ((this.phase as Phase) === "closed") return;
      }
      if (pos < data.length) this.buffered = Buffer.from(data.subarray(pos));
    } catch (error) {
      if (error instanceof ConnectionError) this.fail(error.code, error.message);
      else {
        // A bug here or in a handler: this connection ends, the process serves on.
        log.error(`kvraft rpc: http/2 engine connection failed: ${(error as Error).stack ?? error}`);
        this.fail(ErrorCode.INTERNAL_ERROR, "internal error");
      }
    } finally {
      this.writer.holding = false;
      if ((this.phase as Phase) !== "closed" && this.writer.pending > 0) this.writer.schedule();
    }
  }

  private frame(type: number, flags: number, streamId: number, payload: Buffer): void {
    if (this.continuing !== null && type !== FrameType.CONTINUATION) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "a header block was interrupted by another frame");
    if (this.phase === "settings") {
      if (type !== FrameType.SETTINGS || flags & FLAG_ACK) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "the first frame must be SETTINGS");
      this.phase = "open";
    }
    switch (type) {
      case FrameType.DATA:
        return this.onData(flags, streamId, payload);
      case FrameType.HEADERS:
        return this.onHeaders(flags, streamId, payload);
      case FrameType.CONTINUATION:
        return this.onContinuation(flags, streamId, payload);
      case FrameType.PRIORITY:
        if (streamId === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0");
        if (payload.length !== 5) this.streamError(streamId, ErrorCode.FRAME_SIZE_ERROR);
        return; // priorities are ignored (RFC 9113 §5.3.2 deprecates them)
      case FrameType.RST_STREAM:
        return this.onReset(streamId, payload);
      case FrameType.SETTINGS:
        return this.onSettings(flags, streamId, payload);
      case FrameType.PUSH_PROMISE:
        throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "a client may not push");
      case FrameType.PING:
        if (streamId !== 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "PING on a stream");
        if (payload.length !== 8) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "PING of the wrong size");
        if (!(flags & FLAG_ACK)) this.queue(pingAck(payload));
        return;
      case FrameType.GOAWAY:
        if (streamId !== 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream");
        // The client leaves: answer what it sent, open nothing new.
        this.goingAway = true;
        if (this.streams.size === 0) this.socket.end();
        return;
      case FrameType.WINDOW_UPDATE:
        return this.onWindowUpdate(streamId, payload);
      default:
        return; // unknown frame types are ignored (RFC 9113 §5.5)
    }
  }

  private onSettings(flags: number, streamId: number, payload: Buffer): void {
    if (streamId !== 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream");
    if (flags & FLAG_ACK) {
      if (payload.length !== 0) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload");
      this.settingsAcked = true;
      return;
    }
    if (payload.length % 6 !== 0) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS of the wrong size");
    for (let pos = 0; pos < payload.length; pos += 6) {
      const id = payload.readUInt16BE(pos);
      const value = payload.readUInt32BE(pos + 2);
      if (id === Setting.ENABLE_PUSH && value > 1) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH above 1");
      if (id === Setting.INITIAL_WINDOW_SIZE) {
        if (value > MAX_WINDOW) throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1");
        const delta = value - this.sender.initialWindow;
        this.sender.initialWindow = value;
        for (const stream of this.streams.values()) {
          stream.sendWindow += delta;
          if (stream.sendWindow > MAX_WINDOW) throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "a stream window above 2^31-1");
        }
      } else if (id === Setting.MAX_FRAME_SIZE) {
        if (value < DEFAULT_MAX_FRAME_SIZE || value > MAX_MAX_FRAME_SIZE) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range");
        // Frames this size are plenty; a larger setting changes nothing here.
        this.sender.maxFrameSize = Math.min(value, 64 * 1024);
      }
      // HEADER_TABLE_SIZE: the encoder uses no dynamic table. MAX_CONCURRENT_STREAMS: no pushes.
    }
    this.settingsSeen = true;
    this.queue(SETTINGS_ACK);
    if (this.streams.size > 0) for (const stream of this.streams.values()) this.pump(stream);
  }

  private onWindowUpdate(streamId: number, payload: Buffer): void {
    if (payload.length !== 4) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size");
    const increment = payload.readUInt32BE(0) & 0x7fffffff;
    if (streamId === 0) {
      if (increment === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0");
      if (this.sender.window + increment > MAX_WINDOW) throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "the connection window above 2^31-1");
      this.sender.connectionWindowUpdate(increment);
      return;
    }
    this.checkKnown(streamId);
    const stream = this.streams.get(streamId);
    if (stream === undefined) return; // closed: frames in flight are ignored
    if (increment === 0) return this.streamError(streamId, ErrorCode.PROTOCOL_ERROR);
    stream.sendWindow += increment;
    if (stream.sendWindow > MAX_WINDOW) return this.streamError(streamId, ErrorCode.FLOW_CONTROL_ERROR);
    this.pump(stream);
  }

  private onReset(streamId: number, payload: Buffer): void {
    if (streamId === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0");
    if (payload.length !== 4) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM of the wrong size");
    this.checkKnown(streamId);
    const stream = this.streams.get(streamId);
    if (stream === undefined) return;
    // Opening streams and cancelling them at once costs us work the stream limit does not bound
    // (the "rapid reset" attack): past a rate no client needs, the connection ends.
    if (!this.resets.take(Date.now())) {
      if (this.options.counters !== undefined) this.options.counters.rapidResets++;
      throw new ConnectionError(ErrorCode.ENHANCE_YOUR_CALM, "too many streams reset by the client");
    }
    this.finishStream(stream, payload.readUInt32BE(0) as ErrorCode);
  }

  /** A frame for a stream the client never opened: a connection error (RFC 9113 §5.1, idle). */
  private checkKnown(streamId: number): void {
    if (streamId > this.lastStreamId) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `a frame for idle stream ${streamId}`);
  }

  private onData(flags: number, streamId: number, payload: Buffer): void {
    if (streamId === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0");
    this.checkKnown(streamId);
    // Flow control counts the whole payload, padding included.
    if (payload.length > this.receiveWindow) throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond the connection window");
    this.receiveWindow -= payload.length;
    const data = unpad(flags, payload);
    const stream = this.streams.get(streamId);
    if (stream === undefined || stream.remoteEnded) {
      this.refill(payload.length);
      // After a reset, DATA in flight is expected: ignored. On a half-closed stream: STREAM_CLOSED.
      if (stream !== undefined) this.streamError(streamId, ErrorCode.STREAM_CLOSED);
      return;
    }
    if (payload.length > stream.receiveWindow) return this.streamError(streamId, ErrorCode.FLOW_CONTROL_ERROR);
    stream.receiveWindow -= payload.length;
    stream.receivedLength += data.length;
    const padding = payload.length - data.length;
    if (stream.declaredLength >= 0 && stream.receivedLength > stream.declaredLength) return this.streamError(streamId, ErrorCode.PROTOCOL_ERROR);
    const end = (flags & FLAG_END_STREAM) !== 0;
    if (end && stream.declaredLength >= 0 && stream.receivedLength !== stream.declaredLength) return this.streamError(streamId, ErrorCode.PROTOCOL_ERROR);
    if (padding > 0) this.consumed(stream, padding);
    if (data.length > 0) {
      if (stream.onData !== null) stream.onData(data);
      if (!stream.manualFlow || stream.onData === null) this.consumed(stream, data.length);
    }
    if (end) this.remoteEnd(stream);
  }

  private onHeaders(flags: number, streamId: number, payload: Buffer): void {
    if (streamId === 0 || streamId % 2 === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `HEADERS on stream ${streamId}`);
    let block = unpad(flags, payload);
    if (flags & FLAG_PRIORITY) {
      if (block.length < 5) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "HEADERS too short for its priority");
      block = block.subarray(5);
    }
    const endStream = (flags & FLAG_END_STREAM) !== 0;
    if (!(flags & FLAG_END_HEADERS)) {
      this.continuing = { streamId, endStream, parts: [Buffer.from(block)], size: block.length };
      return;
    }
    this.headerBlock(streamId, endStream, block);
  }

  private onContinuation(flags: number, streamId: number, payload: Buffer): void {
    const pending = this.continuing;
    if (pending === null || pending.streamId !== streamId) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without its HEADERS");
    pending.size += payload.length;
    // Bounded: a block may be at most twice the advertised list size (HPACK rarely expands).
    if (pending.size > 2 * this.options.maxHeaderListSize + 16_384) throw new ConnectionError(ErrorCode.ENHANCE_YOUR_CALM, "a header block too large");
    pending.parts.push(Buffer.from(payload));
    if (!(flags & FLAG_END_HEADERS)) return;
    this.continuing = null;
    this.headerBlock(streamId, pending.endStream, Buffer.concat(pending.parts));
  }

  /** A complete header block: a new stream's request headers, or trailers of an open one. */
  private headerBlock(streamId: number, endStream: boolean, block: Uint8Array): void {
    let decoded: { headers: HeaderList; oversize: boolean };
    try {
      decoded = this.decoder.decode(block, this.options.maxHeaderListSize);
    } catch (error) {
      if (error instanceof HpackError) throw new ConnectionError(ErrorCode.COMPRESSION_ERROR, error.message);
      throw error;
    }
    if (streamId <= this.lastStreamId) {
      const stream = this.streams.get(streamId);
      if (stream === undefined) return; // trailers of a stream already answered and closed
      if (stream.remoteEnded) return this.streamError(streamId, ErrorCode.STREAM_CLOSED);
      if (!endStream || trailerFields(decoded.headers) === null) return this.streamError(streamId, ErrorCode.PROTOCOL_ERROR);
      stream.onTrailers?.(decoded.headers);
      this.remoteEnd(stream);
      return;
    }
    this.lastStreamId = streamId;
    if (this.goingAway) return this.queue(rstStream(streamId, ErrorCode.REFUSED_STREAM));
    // Until the client has our SETTINGS it may open more than our limit (it assumes none): a
    // bounded allowance, so a client opening many streams at once is not refused for it.
    const limit = this.settingsAcked ? this.options.maxConcurrentStreams : Math.max(this.options.maxConcurrentStreams, UNACKED_STREAM_LIMIT);
    if (this.streams.size >= limit) return this.queue(rstStream(streamId, ErrorCode.REFUSED_STREAM));
    const headers: IncomingHttpHeaders | null = decoded.oversize ? {} : requestHeaders(decoded.headers);
    if (headers === null) {
      // Malformed (RFC 9113 §8.1.1): a stream error; the body, if any, is refused with it.
      return this.queue(rstStream(streamId, ErrorCode.PROTOCOL_ERROR));
    }
    const stream = new H2Stream(streamId, this, headers, endStream, this.sender.initialWindow, this.options.streamWindow);
    const length = declaredLength(headers);
    if (length === null || (endStream && length > 0)) return this.queue(rstStream(streamId, ErrorCode.PROTOCOL_ERROR));
    stream.declaredLength = length;
    this.streams.set(streamId, stream);
    if (decoded.oversize) this.options.onOversizeHeaders(stream);
    else this.options.onStream(stream);
    if (endStream && !stream.closed) {
      this.onRequestEnded?.(stream);
      stream.onEnd?.();
    }
  }

  private remoteEnd(stream: H2Stream): void {
    stream.remoteEnded = true;
    this.onRequestEnded?.(stream);
    stream.onEnd?.();
    if (stream.localEnded) this.finishStream(stream, null);
  }

  consumed(stream: H2Stream, bytes: number): void {
    this.refill(bytes);
    if (stream.remoteEnded || stream.closed) return;
    const granted = this.options.streamWindow;
    // Refill in steps of a quarter window: fewer frames than one per DATA.
    const deficit = granted - stream.receiveWindow;
    if (deficit >= granted / 4) {
      stream.receiveWindow = granted;
      this.queue(windowUpdate(stream.id, deficit));
      this.writer.schedule();
    }
  }

  private refill(bytes: number): void {
    this.unacked += bytes;
    const granted = this.options.connectionWindow;
    if (this.unacked >= granted / 4 || (this.receiveWindow < granted / 2 && this.unacked > 0)) {
      this.receiveWindow += this.unacked;
      this.queue(windowUpdate(0, this.unacked));
      this.unacked = 0;
      this.writer.schedule();
    }
  }

  pump(stream: H2Stream): void {
    this.sender.pump(stream);
  }

  get maxFrameSize(): number {
    return this.sender.maxFrameSize;
  }

  private localEnd(stream: H2Stream): void {
    stream.localEnded = true;
    stream.pendingTrailers = null;
    if (stream.remoteEnded) this.finishStream(stream, null);
    else {
      // Answered before the request ended (RFC 9113 §8.1): the client may stop sending.
      this.queue(rstStream(stream.id, ErrorCode.NO_ERROR));
      this.onStreamCut?.(stream);
      this.finishStream(stream, null);
    }
    this.writer.schedule();
  }

  reset(stream: H2Stream, code: ErrorCode): void {
    this.queue(rstStream(stream.id, code));
    this.writer.schedule();
    this.finishStream(stream, code);
  }

  private streamError(streamId: number, code: ErrorCode): void {
    const stream = this.streams.get(streamId);
    this.queue(rstStream(streamId, code));
    if (stream !== undefined) this.finishStream(stream, code);
  }

  private finishStream(stream: H2Stream, code: ErrorCode | null): void {
    if (stream.closed) return;
    stream.closed = true;
    this.sender.forget(stream);
    // Unconsumed window of a stream that ends is the connection's again.
    this.streams.delete(stream.id);
    stream.pendingData.length = 0;
    stream.pendingDataBytes = 0;
    this.onStreamClosed?.(stream);
    stream.onClose?.(code);
    if (this.goingAway && this.streams.size === 0 && this.phase !== "closed") {
      this.writer.flush();
      this.socket.end();
    }
  }

  /** A connection error: GOAWAY with the code, then the socket ends. */
  private fail(code: ErrorCode, message: string): void {
    if (this.phase === "closed") return;
    this.countGoAway(code);
    this.queue(goaway(this.lastStreamId, code, message));
    this.writer.flush();
    this.phase = "closed";
    this.buffered = null;
    this.socket.end();
    // A client that never closes its side must not hold the socket.
    setTimeout(() => this.socket.destroy(), 1_000).unref?.();
    for (const stream of [...this.streams.values()]) this.finishStream(stream, ErrorCode.CANCEL);
  }

  private closed(): void {
    this.phase = "closed";
    this.buffered = null;
    for (const stream of [...this.streams.values()]) this.finishStream(stream, ErrorCode.CANCEL);
    this.writer.clear();
  }

  private countGoAway(code: ErrorCode): void {
    const counts = this.options.counters?.goAways;
    if (counts !== undefined && code < counts.length) counts[code]!++;
  }

  private queue(frame: Buffer): void {
    this.writer.queue(frame);
  }
}
