// The engine's sending flow control (RFC 9113 §6.9): the client's connection and stream windows,
// its frame size, and the framing of each stream's pending answer as far as the windows allow;
// streams waiting for window are resumed by the client's WINDOW_UPDATEs.

import { DEFAULT_MAX_FRAME_SIZE, DEFAULT_WINDOW, dataFrame, headersFrames } from "./frames.ts";
import { HIGH_WATER_MARK, type H2Stream } from "./stream.ts";
import type { FrameWriter } from "./writer.ts";

const EMPTY = new Uint8Array(0);

export class Sender {
  /** The client's connection window for our DATA. */
  window = DEFAULT_WINDOW;
  /** The client's SETTINGS_INITIAL_WINDOW_SIZE: each new stream's window. */
  initialWindow = DEFAULT_WINDOW;
  maxFrameSize = DEFAULT_MAX_FRAME_SIZE;
  private readonly blocked = new Set<H2Stream>();

  constructor(
    private readonly writer: FrameWriter,
    /** The stream's answer is complete (END_STREAM framed). */
    private readonly localEnd: (stream: H2Stream) => void,
  ) {}

  /** Frames what `stream` has pending, within the windows; called on every change. */
  pump(stream: H2Stream): void {
    if (stream.closed) return;
    if (stream.pendingHeaders !== null) {
      const block = stream.pendingHeaders;
      stream.pendingHeaders = null;
      const endNow = stream.pendingHeadersEnd;
      this.writer.queue(headersFrames(stream.id, block, endNow, this.maxFrameSize));
      if (endNow) return this.localEnd(stream);
    }
    while (stream.pendingDataBytes > 0) {
      const allowed = Math.min(stream.sendWindow, this.window, this.maxFrameSize);
      if (allowed <= 0) {
        if (!stream.blocked) {
          stream.blocked = true;
          this.blocked.add(stream);
        }
        return;
      }
      const head = stream.pendingData[0]!;
      const take = Math.min(allowed, head.length);
      const piece = take === head.length ? head : head.subarray(0, take);
      if (take === head.length) stream.pendingData.shift();
      else stream.pendingData[0] = head.subarray(take);
      stream.pendingDataBytes -= take;
      stream.sendWindow -= take;
      this.window -= take;
      const last = stream.pendingDataBytes === 0 && stream.ending && stream.pendingTrailers === null;
      this.writer.queue(dataFrame(stream.id, piece, last));
      if (last) return this.localEnd(stream);
      if (stream.pendingDataBytes < HIGH_WATER_MARK && stream.pendingDataBytes + take >= HIGH_WATER_MARK) stream.onDrain?.();
    }
    if (!stream.ending || stream.localEnded) return;
    if (stream.pendingTrailers !== null) this.writer.queue(headersFrames(stream.id, stream.pendingTrailers, true, this.maxFrameSize));
    else this.writer.queue(dataFrame(stream.id, EMPTY, true));
    this.localEnd(stream);
  }

  /** The client's connection-level WINDOW_UPDATE: the streams that waited for it go on. */
  connectionWindowUpdate(increment: number): void {
    this.window += increment;
    if (this.blocked.size === 0) return;
    const waiting = [...this.blocked];
    this.blocked.clear();
    for (const stream of waiting) {
      stream.blocked = false;
      this.pump(stream);
    }
  }

  /** A stream that ends no longer waits for window. */
  forget(stream: H2Stream): void {
    if (!stream.blocked) return;
    stream.blocked = false;
    this.blocked.delete(stream);
  }
}
