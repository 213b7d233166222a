// One long-lived outgoing message stream to one peer: a Connect client-streaming call
// (raftpb.RaftService/Stream) held open on a dedicated, authenticated HTTP/2 connection (dialed by
// peer-session.ts), one enveloped frame per write. Reopened with backoff when it breaks; bounded
// (frames that do not fit are dropped).

import * as http2 from "node:http2";

export interface PeerLinkOptions {
  /** Base URL of the peer, e.g. "http://127.0.0.1:5002". */
  url: string;
  /** The streaming procedure's path, e.g. "/raftpb.RaftService/Stream". */
  path: string;
  /** Bytes waiting behind HTTP/2 flow control before further frames are dropped. */
  maxQueuedBytes: number;
  /** Liveness check of the connection (a black-holed TCP connection never errors by itself). */
  pingIntervalMs: number;
  pingTimeoutMs: number;
  /** Reopen delay after a failure, doubling per consecutive failure up to backoffMaxMs. */
  backoffMinMs: number;
  backoffMaxMs: number;
  /** Opens an authenticated connection to the peer (rejects with a PeerLinkError). */
  dial(): Promise<http2.ClientHttp2Session>;
  /** The stream ended with an error (network fault, or the peer's Connect error). */
  onError(error: PeerLinkError): void;
}

/** Why a stream ended: `code` is a Connect error code ("unavailable", "unimplemented", ...). */
export class PeerLinkError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "PeerLinkError";
  }
}

type LinkState = "idle" | "open" | "backoff" | "closed";

/** A stream that lived this long counts as a success: the next failure starts the backoff over. */
const HEALTHY_STREAM_MS = 1_000;
/** The response of a stream is one small message and an end-of-stream record. */
const MAX_RESPONSE_BYTES = 64 * 1024;

export class PeerLink {
  private state: LinkState = "idle";
  private session: http2.ClientHttp2Session | null = null;
  private stream: http2.ClientHttp2Stream | null = null;
  /** Frames written while the stream's buffer was full, waiting for 'drain'. */
  private queue: Uint8Array[] = [];
  private queuedBytes = 0;
  private blocked = false;
  /** The stream is open on an authenticated session: writes go straight to it. */
  private connected = false;
  private dialing = false;
  private failures = 0;
  private openedAt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private pingTimer: ReturnType<typeof setInterval> | null = null;

  constructor(private readonly options: PeerLinkOptions) {}

  /** True while frames may be written (open, or idle and about to open). */
  get up(): boolean {
    return this.state === "open" || this.state === "idle";
  }

  /**
   * Writes one enveloped frame. False if it was dropped: the link is down (backing off), closed,
   * or more than maxQueuedBytes are already waiting for the peer.
   */
  write(frame: Uint8Array): boolean {
    if (this.state === "idle") this.open();
    if (this.state !== "open") return false;
    // Until the connection is up, and while the stream's buffer is full, frames wait here (bounded).
    if (this.blocked || !this.connected) {
      if (this.queuedBytes + frame.length > this.options.maxQueuedBytes) return false;
      this.queue.push(frame);
      this.queuedBytes += frame.length;
      return true;
    }
    if (!this.stream!.write(frame)) this.blocked = true;
    return true;
  }

  close(): void {
    if (this.state === "closed") return;
    this.state = "closed";
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.dropQueue();
    const stream = this.stream;
    this.stream = null;
    // Half-close: the peer's handler sees the end of the stream and answers.
    if (stream !== null && !stream.destroyed) stream.end();
    this.closeSession(false);
  }

  // ---- the stream ------------------------------------------------------------------------------

  private open(): void {
    this.state = "open";
    this.openedAt = performance.now();
    if (this.session !== null) {
      this.openStream(this.session);
      return;
    }
    if (this.dialing) return;
    this.dialing = true;
    this.options.dial().then(
      (session) => {
        this.dialing = false;
        if (this.state !== "open") {
          session.close();
          return;
        }
        this.adopt(session);
        this.openStream(session);
      },
      (error: unknown) => {
        this.dialing = false;
        this.fail(error instanceof PeerLinkError ? error : new PeerLinkError("unavailable", String(error)));
      },
    );
  }

  private openStream(session: http2.ClientHttp2Session): void {
    let stream: http2.ClientHttp2Stream;
    try {
      stream = session.request(
        {
          ":method": "POST",
          ":path": this.options.path,
          "content-type": "application/connect+proto",
          "connect-protocol-version": "1",
        },
        { endStream: false },
      );
    } catch (error) {
      this.closeSession(true);
      this.fail(new PeerLinkError("unavailable", `opening a stream to ${this.options.url}: ${(error as Error).message}`));
      return;
    }
    this.stream = stream;
    this.blocked = false;
    this.connected = true;
    stream.on("drain", () => {
      if (this.stream !== stream) return;
      this.blocked = false;
      this.flushQueue();
    });
    let status = 0;
    const body: Uint8Array[] = [];
    let bodyBytes = 0;
    stream.on("response", (headers) => {
      status = Number(headers[":status"] ?? 0);
    });
    stream.on("data", (chunk: Uint8Array) => {
      if (bodyBytes + chunk.length <= MAX_RESPONSE_BYTES) body.push(chunk);
      bodyBytes += chunk.length;
    });
    let ended = false;
    const finish = (error: PeerLinkError | null) => {
      if (ended) return;
      ended = true;
      if (this.stream === stream) this.stream = null;
      if (!stream.destroyed) stream.destroy();
      if (this.state === "closed") return;
      this.fail(error ?? responseError(status, Buffer.concat(body)) ?? new PeerLinkError("unavailable", `the stream to ${this.options.url} ended`));
    };
    stream.on("end", () => finish(null));
    stream.on("close", () => finish(null));
    stream.on("error", (error: Error) => finish(new PeerLinkError("unavailable", `stream to ${this.options.url}: ${error.message}`)));
    this.flushQueue();
  }

  private flushQueue(): void {
    const stream = this.stream;
    while (stream !== null && this.connected && !this.blocked && this.queue.length > 0) {
      const frame = this.queue.shift()!;
      this.queuedBytes -= frame.length;
      if (!stream.write(frame)) this.blocked = true;
    }
  }

  private dropQueue(): void {
    this.queue = [];
    this.queuedBytes = 0;
    this.blocked = false;
  }

  /** The stream broke: drop what waits (Raft retransmits) and reopen after a backoff. */
  private fail(error: PeerLinkError): void {
    if (this.state === "closed") return;
    this.connected = false;
    this.dropQueue();
    const healthy = this.openedAt > 0 && performance.now() - this.openedAt >= HEALTHY_STREAM_MS;
    this.failures = healthy ? 1 : this.failures + 1;
    this.openedAt = 0;
    const delay = Math.min(this.options.backoffMaxMs, this.options.backoffMinMs * 2 ** (this.failures - 1));
    this.state = "backoff";
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      if (this.state === "backoff") this.state = "idle"; // the next write reopens
    }, delay);
    this.options.onError(error);
  }

  // ---- the connection --------------------------------------------------------------------------

  /** Takes over a freshly authenticated connection: watches it, pings it. */
  private adopt(session: http2.ClientHttp2Session): void {
    this.session = session;
    const forget = () => {
      if (this.session === session) this.closeSession(false);
    };
    // The peer is shutting down: finish the stream so its server can drain, reconnect later.
    session.on("goaway", () => {
      if (this.session !== session) return;
      this.session = null;
      this.connected = false;
      this.stopPings();
      this.stream?.end();
      session.close();
    });
    session.on("close", forget);
    session.on("error", () => forget());
    this.startPings(session);
  }

  private closeSession(destroy: boolean): void {
    const session = this.session;
    this.session = null;
    this.connected = false;
    this.stopPings();
    if (session === null || session.destroyed) return;
    if (destroy) session.destroy();
    else session.close();
  }

  private startPings(session: http2.ClientHttp2Session): void {
    this.stopPings();
    this.pingTimer = setInterval(() => {
      if (this.session !== session || session.destroyed) return;
      let answered = false;
      const timeout = setTimeout(() => {
        if (answered || this.session !== session) return;
        // No answer: a dead peer behind a live-looking TCP connection.
        const stream = this.stream;
        this.closeSession(true);
        stream?.destroy();
      }, this.options.pingTimeoutMs);
      try {
        session.ping((error) => {
          answered = true;
          clearTimeout(timeout);
          if (error && this.session === session) this.closeSession(true);
        });
      } catch {
        clearTimeout(timeout);
      }
    }, this.options.pingIntervalMs);
    // Pings must not keep a process alive on their own.
    this.pingTimer.unref?.();
  }

  private stopPings(): void {
    if (this.pingTimer !== null) clearInterval(this.pingTimer);
    this.pingTimer = null;
  }
}

/** The error a finished Stream call reported, if any (HTTP status or the end-of-stream record). */
function responseError(status: number, body: Uint8Array): PeerLinkError | null {
  if (status === 404) return new PeerLinkError("unimplemented", "the peer does not serve RaftService/Stream (older version?)");
  if (status !== 0 && status !== 200) return new PeerLinkError("unavailable", `the peer answered the stream with HTTP ${status}`);
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  for (let at = 0; at + 5 <= body.length; ) {
    const flags = body[at]!;
    const length = view.getUint32(at + 1);
    const payload = body.subarray(at + 5, at + 5 + length);
    at += 5 + length;
    if ((flags & 2) === 0) continue;
    try {
      const end = JSON.parse(new TextDecoder().decode(payload)) as { error?: { code?: string; message?: string } };
      if (end.error) return new PeerLinkError(end.error.code ?? "unknown", end.error.message ?? "");
    } catch {
      return new PeerLinkError("internal", "the peer's end-of-stream record is not JSON");
    }
  }
  return null;
}
