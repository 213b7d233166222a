// The engine's output side: frames queued during a turn go to the socket in one write (after the
// read that caused them, or from a microtask), with a bound on what a client that does not read
// may leave unsent.

import type { Duplex } from "node:stream";

/** Bytes the socket may hold unsent before the client counts as not reading (its windows allow less). */
const MAX_UNSENT_BYTES = 32 * 1024 * 1024;

export class FrameWriter {
  private out: Buffer[] = [];
  private outBytes = 0;
  private scheduled = false;
  /** While a read is handled, frames wait for its end: one write answers the whole read. */
  holding = false;

  constructor(private readonly socket: Duplex) {}

  get pending(): number {
    return this.outBytes;
  }

  queue(frame: Buffer): void {
    this.out.push(frame);
    this.outBytes += frame.length;
    if (!this.holding) this.schedule();
  }

  /** Flushes after the current turn's other work (answers finishing together share one write). */
  schedule(): void {
    if (this.scheduled || this.holding) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      this.flush();
    });
  }

  /** Writes the queued frames in one socket write. */
  flush(): void {
    if (this.outBytes === 0) return;
    const bytes = this.out.length === 1 ? this.out[0]! : Buffer.concat(this.out, this.outBytes);
    this.clear();
    if (this.socket.destroyed) return;
    this.socket.write(bytes);
    if (this.socket.writableLength > MAX_UNSENT_BYTES) this.socket.destroy();
  }

  clear(): void {
    this.out = [];
    this.outBytes = 0;
  }
}
