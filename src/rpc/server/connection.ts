// What a handler may know about the connection a call came on: TLS and the client certificate,
// and the HTTP/2 session (the unit peer authentication binds to). Handed to handlers as a Connect
// context value; calls that carry none (the HTTP/1.1 fast lane) count as unauthenticated.

import type * as http2 from "node:http2";
import type * as net from "node:net";
import type * as tls from "node:tls";
import { X509Certificate } from "node:crypto";
import { createContextKey, type ConnectError } from "@connectrpc/connect";

export interface ConnectionInfo {
  /** The HTTP/2 session of the call; null over HTTP/1.1. */
  readonly session: http2.Http2Session | null;
  /** Whether the connection is TLS. */
  readonly encrypted: boolean;
  /** The client's certificate if it sent one and it chains to a CA the port trusts; else null. */
  verifiedCertificate(): X509Certificate | null;
  readonly remoteAddress: string;
}

/** The connection of a call, as a Connect context value (null: unknown, treat as unauthenticated). */
export const connectionKey = createContextKey<ConnectionInfo | null>(null, { description: "kvraft connection" });

const bySocket = new WeakMap<net.Socket, ConnectionInfo>();

/** The ConnectionInfo of a socket (a TLSSocket or a plain one), made once per socket. */
export function connectionOf(socket: net.Socket, session: http2.Http2Session | null): ConnectionInfo {
  if (session !== null) return sessionConnection(session, socket);
  let info = bySocket.get(socket);
  if (info === undefined) {
    info = makeInfo(socket, null);
    bySocket.set(socket, info);
  }
  return info;
}

const bySession = new WeakMap<http2.Http2Session, ConnectionInfo>();

/**
 * Calls on `session` see `socket`'s connection: the HTTP/2 engine relays streams it does not serve
 * to node:http2 over an in-memory connection, whose own socket knows no TLS or address.
 */
export function bindSession(session: http2.Http2Session, socket: net.Socket): void {
  bySession.set(session, makeInfo(socket, session));
}

function sessionConnection(session: http2.Http2Session, socket: net.Socket): ConnectionInfo {
  let info = bySession.get(session);
  if (info === undefined) {
    info = makeInfo(socket, session);
    bySession.set(session, info);
  }
  return info;
}

function makeInfo(socket: net.Socket, session: http2.Http2Session | null): ConnectionInfo {
  // Duck-typed: an HTTP/2 session hands out a proxy of its socket, not the TLSSocket itself.
  const encrypted = (socket as tls.TLSSocket).encrypted === true;
  let certificate: X509Certificate | null | undefined;
  return {
    session,
    encrypted,
    remoteAddress: `${socket.remoteAddress ?? "?"}:${socket.remotePort ?? "?"}`,
    verifiedCertificate() {
      if (certificate !== undefined) return certificate;
      certificate = null;
      if (encrypted) {
        const tlsSocket = socket as tls.TLSSocket;
        const raw = tlsSocket.authorized ? tlsSocket.getPeerCertificate(false)?.raw : undefined;
        if (raw !== undefined && raw.length > 0) certificate = new X509Certificate(raw);
      }
      return certificate;
    },
  };
}

/** The facts a CallGate decides on. */
export interface CallFacts {
  /** "/package.Service/Method". */
  readonly path: string;
  header(name: string): string | null;
  readonly connection: ConnectionInfo | null;
}

/** Decides whether a call may run (client authorization): null lets it through. */
export type CallGate = (call: CallFacts) => ConnectError | null;
