// A minimal keep-alive HTTP/1.1 client over one TCP socket, for the load generator: one request
// at a time per connection (closed loop), Content-Length or chunked responses, bounded sizes.
// A hand-written client costs a fraction of fetch()'s CPU, which keeps the generator out of the way.

import type { Socket } from "bun";

const MAX_RESPONSE_BYTES = 4 << 20;
const CRLFCRLF = Buffer.from("\r\n\r\n");

export interface HttpResponse {
  status: number;
  body: string;
}

export class HttpError extends Error {
  readonly code = "BENCH_HTTP";
  constructor(message: string) {
    super(message);
    this.name = "HttpError";
  }
}

interface Pending {
  resolve(r: HttpResponse): void;
  reject(e: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

export class HttpConnection {
  private socket: Socket<undefined> | null = null;
  private buffer: Buffer = Buffer.alloc(0);
  private pending: Pending | null = null;
  private closed = false;

  private constructor(
    readonly host: string,
    readonly port: number,
    private readonly timeoutMs: number,
  ) {}

  static async open(host: string, port: number, timeoutMs = 10_000): Promise<HttpConnection> {
    const c = new HttpConnection(host, port, timeoutMs);
    await c.connect();
    return c;
  }

  private async connect(): Promise<void> {
    this.buffer = Buffer.alloc(0);
    this.closed = false;
    this.socket = await Bun.connect({
      hostname: this.host,
      port: this.port,
      socket: {
        data: (_s, chunk) => this.onData(chunk),
        close: () => this.fail(new HttpError(`connection to ${this.host}:${this.port} closed`)),
        error: (_s, e) => this.fail(new HttpError(`connection to ${this.host}:${this.port} failed: ${e.message}`)),
        connectError: (_s, e) => this.fail(new HttpError(`cannot connect to ${this.host}:${this.port}: ${e.message}`)),
      },
    });
    this.socket.setNoDelay(true);
  }

  /** POSTs `body` (ASCII JSON) to `path`; one request in flight per connection. */
  post(path: string, body: string, headers = ""): Promise<HttpResponse> {
    if (this.pending) return Promise.reject(new HttpError("request already in flight on this connection"));
    if (this.closed || !this.socket) return Promise.reject(new HttpError(`connection to ${this.host}:${this.port} is closed`));
    const head =
      `POST ${path} HTTP/1.1\r\nHost: ${this.host}:${this.port}\r\nContent-Type: application/json\r\n` +
      `${headers}Content-Length: ${Buffer.byteLength(body)}\r\n\r\n`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.fail(new HttpError(`no response in ${this.timeoutMs} ms from ${this.host}:${this.port}${path}`)), this.timeoutMs);
      this.pending = { resolve, reject, timer };
      this.socket!.write(head + body);
    });
  }

  /** Drops the socket and opens a new one (after an error or a server-side close). */
  async reconnect(): Promise<void> {
    this.close();
    await this.connect();
  }

  close(): void {
    this.closed = true;
    this.socket?.end();
    this.socket = null;
  }

  private fail(e: Error): void {
    this.closed = true;
    const p = this.pending;
    this.pending = null;
    if (p) {
      clearTimeout(p.timer);
      p.reject(e);
    }
  }

  private onData(chunk: Uint8Array): void {
    this.buffer = this.buffer.length === 0 ? Buffer.from(chunk) : Buffer.concat([this.buffer, chunk]);
    if (this.buffer.length > MAX_RESPONSE_BYTES) {
      this.fail(new HttpError(`response from ${this.host}:${this.port} exceeds ${MAX_RESPONSE_BYTES} bytes`));
      this.socket?.end();
      return;
    }
    const parsed = parseResponse(this.buffer);
    if (!parsed) return;
    this.buffer = this.buffer.subarray(parsed.consumed);
    const p = this.pending;
    this.pending = null;
    if (!p) return; // A response nobody asked for: ignore it rather than misattribute it.
    clearTimeout(p.timer);
    if (parsed.close) {
      this.closed = true;
      this.socket?.end();
    }
    p.resolve({ status: parsed.status, body: parsed.body });
  }
}

/** Parses one complete response at the start of `buf`, or returns null if more bytes are needed. */
export function parseResponse(buf: Buffer): { status: number; body: string; consumed: number; close: boolean } | null {
  const headerEnd = buf.indexOf(CRLFCRLF);
  if (headerEnd < 0) return null;
  const head = buf.toString("latin1", 0, headerEnd);
  const lines = head.split("\r\n");
  const status = Number(lines[0].split(" ")[1]);
  if (!lines[0].startsWith("HTTP/1.") || !Number.isInteger(status)) {
    throw new HttpError(`malformed status line: ${JSON.stringify(lines[0].slice(0, 80))}`);
  }
  let length = -1;
  let chunked = false;
  let close = false;
  for (let i = 1; i < lines.length; i++) {
    const colon = lines[i].indexOf(":");
    if (colon < 0) continue;
    const name = lines[i].slice(0, colon).trim().toLowerCase();
    const value = lines[i].slice(colon + 1).trim().toLowerCase();
    if (name === "content-length") length = Number(value);
    else if (name === "transfer-encoding" && value.includes("chunked")) chunked = true;
    else if (name === "connection" && value === "close") close = true;
  }
  const bodyStart = headerEnd + 4;
  if (chunked) {
    const parts: Buffer[] = [];
    let p = bodyStart;
    for (;;) {
      const lineEnd = buf.indexOf("\r\n", p);
      if (lineEnd < 0) return null;
      const size = parseInt(buf.toString("latin1", p, lineEnd), 16);
      if (!Number.isFinite(size)) throw new HttpError("malformed chunk size in response");
      if (size === 0) {
        const end = buf.indexOf(CRLFCRLF, lineEnd);
        // Without trailers the terminating chunk is "0\r\n\r\n": its CRLFCRLF starts at lineEnd.
        if (end < 0) return null;
        return { status, body: Buffer.concat(parts).toString("utf8"), consumed: end + 4, close };
      }
      if (buf.length < lineEnd + 2 + size + 2) return null;
      parts.push(buf.subarray(lineEnd + 2, lineEnd + 2 + size));
      p = lineEnd + 2 + size + 2;
    }
  }
  if (length < 0) {
    // No length and not chunked: only a bodiless status (204, 304) is complete at the header end.
    if (status === 204 || status === 304) return { status, body: "", consumed: bodyStart, close };
    throw new HttpError(`response without Content-Length or chunked encoding (status ${status})`);
  }
  if (buf.length < bodyStart + length) return null;
  return { status, body: buf.toString("utf8", bodyStart, bodyStart + length), consumed: bodyStart + length, close };
}
