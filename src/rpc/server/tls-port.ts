// TLS on the node's one port: the first byte of a connection says TLS (a handshake record, 0x16)
// or not, so a mismatch is answered at once instead of hanging: a ClientHello on a cleartext port
// gets a TLS alert, cleartext on a TLS port gets an HTTP/1.1 400 that says to use https.

import * as net from "node:net";
import * as tls from "node:tls";
import { Duplex } from "node:stream";

/** The content type of a TLS handshake record: the first byte a TLS client sends. */
export const TLS_HANDSHAKE_BYTE = 0x16;

export interface TlsOptions {
  /** PEM certificate chain and private key the port presents. */
  cert: Buffer;
  key: Buffer;
  /** CAs whose client certificates count as verified (client mTLS and peer mTLS); none: no client certificates asked for. */
  ca: Buffer[];
}

/** A fatal TLS alert record (protocol_version): the client's handshake fails with an alert at once. */
const TLS_ALERT = Buffer.from([0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x46]);

/** Answers a ClientHello that reached a cleartext port, and closes. */
export function refuseTls(socket: net.Socket): void {
  socket.end(TLS_ALERT);
  socket.destroySoon?.();
}

/**
 * Answers cleartext that reached a TLS port, and closes: a 400 whose body is a Connect error
 * (failed_precondition), so Connect clients and curl both show the reason instead of retrying.
 */
export function refuseCleartext(socket: net.Socket, port: number): void {
  const message = `this kvraft port speaks TLS only: use https://<host>:${port} (kvclient --cacert FILE, curl --cacert FILE)`;
  const body = JSON.stringify({ code: "failed_precondition", message }) + "\n";
  socket.end(`HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
}

export function secureContextOf(options: TlsOptions): tls.SecureContext {
  return tls.createSecureContext({ cert: options.cert, key: options.key, ...(options.ca.length > 0 ? { ca: options.ca } : {}) });
}

/**
 * Starts the server side of TLS on a socket whose first bytes (`seen`) were already read by the
 * sniffer; `onSecure` gets the TLS socket after the handshake (its alpnProtocol picks h2 or h1).
 */
export function startTls(
  socket: net.Socket,
  seen: Buffer,
  context: tls.SecureContext,
  askClientCertificate: boolean,
  handshakeTimeoutMs: number,
  onSecure: (secure: tls.TLSSocket) => void,
): tls.TLSSocket {
  // Under Bun a TLSSocket over a net.Socket reads the native handle and misses bytes already read,
  // so the handshake runs over a stream that replays them first.
  const secure = new tls.TLSSocket(replay(socket, seen) as unknown as net.Socket, {
    isServer: true,
    secureContext: context,
    requestCert: askClientCertificate,
    // A missing or unknown certificate is decided per route (KV API or peer), not per connection.
    rejectUnauthorized: false,
    ALPNProtocols: ["h2", "http/1.1"],
  });
  // A client that starts a handshake and stalls must not hold the socket (0: the caller enforces it).
  const timer =
    handshakeTimeoutMs > 0
      ? setTimeout(() => {
          secure.destroy();
          socket.destroy();
        }, handshakeTimeoutMs)
      : undefined;
  secure.once("secure", () => {
    clearTimeout(timer);
    onSecure(secure);
  });
  secure.on("error", () => {
    clearTimeout(timer);
    secure.destroy();
    socket.destroy();
  });
  socket.once("close", () => clearTimeout(timer));
  return secure;
}

/** A duplex over `socket` that first yields `first`: lets TLS read bytes the sniffer consumed. */
function replay(socket: net.Socket, first: Buffer): Duplex {
  const duplex = new Duplex({
    read() {
      socket.resume();
    },
    write(chunk: Buffer, _encoding, callback) {
      if (socket.destroyed) callback(new Error("socket closed"));
      else socket.write(chunk, callback);
    },
    final(callback) {
      socket.end();
      callback();
    },
    destroy(error, callback) {
      socket.destroy();
      callback(error);
    },
  });
  duplex.push(first);
  socket.on("data", (chunk: Buffer) => {
    if (!duplex.push(chunk)) socket.pause();
  });
  socket.on("end", () => duplex.push(null));
  socket.on("close", () => duplex.destroy());
  socket.on("error", (error) => duplex.destroy(error));
  // Address facts the TLS socket and the HTTP servers ask their transport for.
  Object.defineProperties(duplex, {
    remoteAddress: { get: () => socket.remoteAddress },
    remotePort: { get: () => socket.remotePort },
    remoteFamily: { get: () => socket.remoteFamily },
    localAddress: { get: () => socket.localAddress },
    localPort: { get: () => socket.localPort },
  });
  (duplex as unknown as { setNoDelay: (v?: boolean) => void }).setNoDelay = (v?: boolean) => void socket.setNoDelay(v);
  (duplex as unknown as { setKeepAlive: (e?: boolean, d?: number) => void }).setKeepAlive = (e?: boolean, d?: number) => void socket.setKeepAlive(e, d);
  (duplex as unknown as { setTimeout: (ms: number, cb?: () => void) => unknown }).setTimeout = (ms: number, cb?: () => void) => socket.setTimeout(ms, cb);
  return duplex;
}
