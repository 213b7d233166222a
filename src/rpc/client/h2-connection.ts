// One HTTP/2 connection to one server for the lean client transport: opened on first use, replaced
// after GOAWAY, an error or a close, unref'd while idle, its streams bounded by the server's
// SETTINGS_MAX_CONCURRENT_STREAMS (calls beyond it wait in a bounded FIFO).
import * as http2 from "node:http2";
import { Code, ConnectError } from "@connectrpc/connect";

/** TLS and socket options of node:http2's connect: the shape connect-node's `nodeOptions` takes for HTTP/2. */
export type H2SessionOptions = http2.ClientSessionOptions | http2.SecureClientSessionOptions;

/** Streams opened before the server's SETTINGS arrive (RFC 9113 §6.5.2 advises servers to allow ≥ 100). */
const INITIAL_STREAM_LIMIT = 100;

/** A call waiting for a stream slot: started with a session, or failed. */
export interface StreamWaiter {
  start(session: LiveSession): void;
  fail(error: ConnectError): void;
}

/** A stream open on a session, as GOAWAY needs to see it. */
export interface OpenStream {
  /** Its stream id (0 before node:http2 assigned one). */
  readonly streamId: number;
  /** The server went away without processing it. */
  unprocessed(reason: string): void;
}

/** One session and the streams open on it. `usable` turns false for good at GOAWAY, error or close. */
export class LiveSession {
  active = 0;
  /** Streams open now (what a GOAWAY's last stream id is checked against). */
  readonly streams = new Set<OpenStream>();
  limit = INITIAL_STREAM_LIMIT;
  usable = true;
  /** Why the session stopped being usable (for the calls it fails). */
  reason = "";

  constructor(readonly session: http2.ClientHttp2Session) {}
}

export class H2Connection {
  private current: LiveSession | null = null;
  private readonly waiting: StreamWaiter[] = [];
  private waitingHead = 0;
  private closed = false;

  constructor(
    /** The origin, e.g. "https://node-1:5001". */
    readonly authority: string,
    private readonly options: H2SessionOptions,
    /** Calls that may wait for a stream slot at once; past it a call fails with ResourceExhausted. */
    private readonly maxWaiting: number,
  ) {}

  /** Starts `waiter` on a session with a free stream slot now, or queues it (FIFO) until one frees. */
  run(waiter: StreamWaiter): void {
    if (this.closed) return waiter.fail(new ConnectError(`${this.authority}: the transport was closed`, Code.Unavailable));
    const live = this.session();
    if (live.active < live.limit && this.waitingHead === this.waiting.length) return this.begin(live, waiter);
    if (this.waiting.length - this.waitingHead >= this.maxWaiting) {
      return waiter.fail(new ConnectError(`${this.authority}: ${this.maxWaiting} calls already wait for one of the server's ${live.limit} streams`, Code.ResourceExhausted));
    }
    this.waiting.push(waiter);
  }

  /** Takes a waiter out of the queue (its call was aborted before it started). */
  cancel(waiter: StreamWaiter): void {
    const at = this.waiting.indexOf(waiter, this.waitingHead);
    if (at >= 0) this.waiting.splice(at, 1);
  }

  /** A stream opened on `live` has closed: its slot goes to the next waiter. */
  release(live: LiveSession): void {
    live.active--;
    if (live.active === 0) {
      live.session.unref?.();
      // A retired session (GOAWAY) ends once its last stream is done.
      if (!live.usable && !live.session.closed) live.session.close();
    }
    this.drain();
  }

  /** Ends the sessions (streams in flight finish) and fails waiting calls; later calls fail. */
  close(): void {
    this.closed = true;
    const live = this.current;
    this.current = null;
    if (live !== null) {
      live.usable = false;
      live.session.close();
    }
    const error = new ConnectError(`${this.authority}: the transport was closed`, Code.Unavailable);
    while (this.waitingHead < this.waiting.length) this.waiting[this.waitingHead++]!.fail(error);
    this.waiting.length = 0;
    this.waitingHead = 0;
  }

  private begin(live: LiveSession, waiter: StreamWaiter): void {
    if (live.active === 0) live.session.ref?.();
    live.active++;
    waiter.start(live);
  }

  private drain(): void {
    while (this.waitingHead < this.waiting.length && !this.closed) {
      const live = this.session();
      if (live.active >= live.limit) return;
      const waiter = this.waiting[this.waitingHead]!;
      this.waiting[this.waitingHead++] = undefined as unknown as StreamWaiter;
      this.begin(live, waiter);
    }
    if (this.waitingHead === this.waiting.length) {
      this.waiting.length = 0;
      this.waitingHead = 0;
    } else if (this.waitingHead > 1024 && this.waitingHead * 2 > this.waiting.length) {
      this.waiting.splice(0, this.waitingHead);
      this.waitingHead = 0;
    }
  }

  /** The usable session, opened now if there is none. */
  private session(): LiveSession {
    const current = this.current;
    if (current !== null && current.usable) return current;
    const session = http2.connect(this.authority, this.options);
    const live = new LiveSession(session);
    this.current = live;
    // Idle sessions never keep the process alive; ref'd while a stream is open.
    session.unref?.();
    const retire = (reason: string) => {
      if (!live.usable) return;
      live.usable = false;
      live.reason = reason;
      if (this.current === live) this.current = null;
      // Waiting calls move to the next session (opened by drain).
      queueMicrotask(() => this.drain());
    };
    session.on("remoteSettings", (settings: http2.Settings) => {
      live.limit = Math.max(1, settings.maxConcurrentStreams ?? INITIAL_STREAM_LIMIT);
      this.drain();
    });
    session.on("goaway", (errorCode: number, lastStreamId: number) => {
      const reason = `the server sent GOAWAY (error code ${errorCode}, last stream ${lastStreamId})`;
      retire(reason);
      // Streams past the last one the server says it processes will get no answer (RFC 9113 §6.8).
      for (const open of [...live.streams]) if (open.streamId > lastStreamId) open.unprocessed(reason);
      // Streams the server will still answer finish; the session ends with the last of them.
      if (live.active === 0) session.close();
    });
    session.on("error", (error: Error) => retire(error.message));
    session.on("close", () => retire("the connection closed"));
    return live;
  }
}
