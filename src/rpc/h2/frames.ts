// HTTP/2 framing (RFC 9113 §4, §6): frame types, flags, error codes, settings, and the writers of
// every frame the server sends, each a ready Buffer (9-byte header + payload).

export const FRAME_HEADER_BYTES = 9;

export const enum FrameType {
  DATA = 0x0,
  HEADERS = 0x1,
  PRIORITY = 0x2,
  RST_STREAM = 0x3,
  SETTINGS = 0x4,
  PUSH_PROMISE = 0x5,
  PING = 0x6,
  GOAWAY = 0x7,
  WINDOW_UPDATE = 0x8,
  CONTINUATION = 0x9,
}

export const FLAG_END_STREAM = 0x1;
export const FLAG_ACK = 0x1;
export const FLAG_END_HEADERS = 0x4;
export const FLAG_PADDED = 0x8;
export const FLAG_PRIORITY = 0x20;

/** Error codes (RFC 9113 §7). */
export const enum ErrorCode {
  NO_ERROR = 0x0,
  PROTOCOL_ERROR = 0x1,
  INTERNAL_ERROR = 0x2,
  FLOW_CONTROL_ERROR = 0x3,
  SETTINGS_TIMEOUT = 0x4,
  STREAM_CLOSED = 0x5,
  FRAME_SIZE_ERROR = 0x6,
  REFUSED_STREAM = 0x7,
  CANCEL = 0x8,
  COMPRESSION_ERROR = 0x9,
  CONNECT_ERROR = 0xa,
  ENHANCE_YOUR_CALM = 0xb,
  INADEQUATE_SECURITY = 0xc,
  HTTP_1_1_REQUIRED = 0xd,
}

export const enum Setting {
  HEADER_TABLE_SIZE = 0x1,
  ENABLE_PUSH = 0x2,
  MAX_CONCURRENT_STREAMS = 0x3,
  INITIAL_WINDOW_SIZE = 0x4,
  MAX_FRAME_SIZE = 0x5,
  MAX_HEADER_LIST_SIZE = 0x6,
}

export const DEFAULT_WINDOW = 65_535;
export const MAX_WINDOW = 2 ** 31 - 1;
export const DEFAULT_MAX_FRAME_SIZE = 16_384;
export const MAX_MAX_FRAME_SIZE = 2 ** 24 - 1;

/** The bytes every client sends first (RFC 9113 §3.4). */
export const CLIENT_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

/** A connection error: the connection ends with GOAWAY(code). */
export class ConnectionError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
    this.name = "ConnectionError";
  }
}

/** A stream error: the stream ends with RST_STREAM(code), the connection serves on. */
export class StreamError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
    this.name = "StreamError";
  }
}

export function frameHeader(out: Uint8Array, pos: number, length: number, type: number, flags: number, streamId: number): void {
  out[pos] = length >>> 16;
  out[pos + 1] = (length >>> 8) & 255;
  out[pos + 2] = length & 255;
  out[pos + 3] = type;
  out[pos + 4] = flags;
  out[pos + 5] = (streamId >>> 24) & 0x7f;
  out[pos + 6] = (streamId >>> 16) & 255;
  out[pos + 7] = (streamId >>> 8) & 255;
  out[pos + 8] = streamId & 255;
}

export function settingsFrame(settings: readonly [Setting, number][]): Buffer {
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + settings.length * 6);
  frameHeader(out, 0, settings.length * 6, FrameType.SETTINGS, 0, 0);
  let pos = FRAME_HEADER_BYTES;
  for (const [id, value] of settings) {
    out.writeUInt16BE(id, pos);
    out.writeUInt32BE(value, pos + 2);
    pos += 6;
  }
  return out;
}

export const SETTINGS_ACK: Buffer = (() => {
  const out = Buffer.alloc(FRAME_HEADER_BYTES);
  frameHeader(out, 0, 0, FrameType.SETTINGS, FLAG_ACK, 0);
  return out;
})();

export function pingAck(payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + 8);
  frameHeader(out, 0, 8, FrameType.PING, FLAG_ACK, 0);
  out.set(payload, FRAME_HEADER_BYTES);
  return out;
}

export function windowUpdate(streamId: number, increment: number): Buffer {
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + 4);
  frameHeader(out, 0, 4, FrameType.WINDOW_UPDATE, 0, streamId);
  out.writeUInt32BE(increment, FRAME_HEADER_BYTES);
  return out;
}

export function rstStream(streamId: number, code: ErrorCode): Buffer {
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + 4);
  frameHeader(out, 0, 4, FrameType.RST_STREAM, 0, streamId);
  out.writeUInt32BE(code, FRAME_HEADER_BYTES);
  return out;
}

export function goaway(lastStreamId: number, code: ErrorCode, debug: string): Buffer {
  const text = Buffer.from(debug.slice(0, 256), "utf8");
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + 8 + text.length);
  frameHeader(out, 0, 8 + text.length, FrameType.GOAWAY, 0, 0);
  out.writeUInt32BE(lastStreamId & 0x7fffffff, FRAME_HEADER_BYTES);
  out.writeUInt32BE(code, FRAME_HEADER_BYTES + 4);
  out.set(text, FRAME_HEADER_BYTES + 8);
  return out;
}

/** HEADERS (+ CONTINUATION frames when the block exceeds `maxFrameSize`) for one header block. */
export function headersFrames(streamId: number, block: Uint8Array, endStream: boolean, maxFrameSize: number): Buffer {
  const frames = Math.max(1, Math.ceil(block.length / maxFrameSize));
  const out = Buffer.allocUnsafe(block.length + frames * FRAME_HEADER_BYTES);
  let pos = 0;
  for (let i = 0, at = 0; i < frames; i++) {
    const length = Math.min(maxFrameSize, block.length - at);
    const last = i === frames - 1;
    const type = i === 0 ? FrameType.HEADERS : FrameType.CONTINUATION;
    const flags = (last ? FLAG_END_HEADERS : 0) | (i === 0 && endStream ? FLAG_END_STREAM : 0);
    frameHeader(out, pos, length, type, flags, streamId);
    out.set(block.subarray(at, at + length), pos + FRAME_HEADER_BYTES);
    pos += FRAME_HEADER_BYTES + length;
    at += length;
  }
  return out;
}

/** One DATA frame; `data` must fit the peer's frame size. */
export function dataFrame(streamId: number, data: Uint8Array, endStream: boolean): Buffer {
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + data.length);
  frameHeader(out, 0, data.length, FrameType.DATA, endStream ? FLAG_END_STREAM : 0, streamId);
  out.set(data, FRAME_HEADER_BYTES);
  return out;
}

/** The payload without its padding (PADDED flag): a pad length past the payload is a PROTOCOL_ERROR. */
export function unpad(flags: number, payload: Buffer): Buffer {
  if (!(flags & FLAG_PADDED)) return payload;
  if (payload.length < 1) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "a padded frame without its pad length");
  const pad = payload[0]!;
  if (pad >= payload.length) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "padding longer than the frame");
  return payload.subarray(1, payload.length - pad);
}
