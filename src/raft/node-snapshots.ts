// Leader side of snapshot transfer: streams the state machine's current image to a follower whose
// entries are compacted away, one transfer per follower at a time, re-cut into bounded chunks.

import type { Message, NodeId, SnapshotMeta, StateMachine, Transport } from "./types.ts";

type InstallSnapshot = Extract<Message, { type: "InstallSnapshot" }>;
type InstallSnapshotResponse = Extract<Message, { type: "InstallSnapshotResponse" }>;

export interface SnapshotSenderHost {
  readonly stopped: boolean;
  readonly sm: StateMachine;
  readonly transport: Transport;
  readonly chunkBytes: number;
  /** The snapshot meta at `index`, with the configuration in force there (throws if unknown). */
  metaAt(index: number): SnapshotMeta;
  /** The follower's answer, to be stepped into the core. */
  deliver(response: InstallSnapshotResponse): void;
  /** The transfer failed (network or snapshot): the core goes back to probing. */
  failed(to: NodeId): void;
}

export class SnapshotSender {
  private readonly inFlight = new Set<NodeId>();
  sent = 0;

  constructor(private readonly host: SnapshotSenderHost) {}

  /** Takes the core's InstallSnapshot request and streams the state machine's image instead. */
  send(request: InstallSnapshot): void {
    const to = request.to;
    if (this.inFlight.has(to)) return;
    this.inFlight.add(to);
    void this.transfer(request);
  }

  private async transfer(request: InstallSnapshot): Promise<void> {
    const host = this.host;
    let ok = false;
    try {
      const image = await host.sm.snapshot();
      // The configuration comes from the log, not the machine: the machine does not track it.
      const meta = { ...host.metaAt(image.meta.index), term: image.meta.term };
      const message: InstallSnapshot = { ...request, snapshot: meta };
      const response = await host.transport.sendSnapshot(message, rechunk(image.chunks, host.chunkBytes));
      if (host.stopped) return;
      this.sent++;
      ok = true;
      host.deliver(response);
    } catch {
      // Network or snapshot failure: the core goes back to probing and asks again later.
    } finally {
      this.inFlight.delete(request.to);
      if (!ok && !host.stopped) host.failed(request.to);
    }
  }
}

/** Re-cuts a stream into chunks of at most `max` bytes, joining small ones. */
export async function* rechunk(source: AsyncIterable<Uint8Array>, max: number): AsyncGenerator<Uint8Array> {
  let parts: Uint8Array[] = [];
  let size = 0;
  const flush = () => {
    const out = new Uint8Array(size);
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    parts = [];
    size = 0;
    return out;
  };
  for await (let chunk of source) {
    // Before a chunk of the full size, what waits goes as a short chunk: the big one and those
    // after it then pass through without a copy (the source hands over fresh buffers).
    if (size > 0 && chunk.length >= max) yield flush();
    while (size === 0 && chunk.length >= max) {
      yield chunk.subarray(0, max);
      chunk = chunk.subarray(max);
    }
    while (chunk.length > 0) {
      const take = Math.min(max - size, chunk.length);
      parts.push(chunk.subarray(0, take));
      size += take;
      chunk = chunk.subarray(take);
      if (size === max) yield flush();
    }
  }
  if (size > 0) yield flush();
}
