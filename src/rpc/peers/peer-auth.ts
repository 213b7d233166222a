// Who may talk Raft to this node: the peer handshake (Challenge, then Authenticate) run once per
// HTTP/2 connection, which binds the connection to one authenticated member of this cluster, and
// the checks every peer call makes against that binding. See src/rpc/DESIGN.md.

import { createHmac, randomBytes, timingSafeEqual, type X509Certificate } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import type * as http2 from "node:http2";
import type { NodeId } from "../../raft/types.ts";
import type { ConnectionInfo } from "../server/connection.ts";
import { trustSession } from "../server/connection-guard.ts";

/** How peers prove who they are. At least one of secret and peerCa, unless insecure is chosen by name. */
export interface PeerSecurity {
  /** The cluster id made at bootstrap (data directory identity); checked on every peer connection. */
  clusterId: string;
  /** The shared cluster secret (--peer-secret-file): challenge-response on every connection. */
  secret: Uint8Array | null;
  /** Peer mTLS (--peer-trusted-ca-file with --peer-client-cert-auth): the CAs a peer's certificate must be issued by. */
  peerCa: readonly X509Certificate[] | null;
  /** TLS material for dialing peers over https (CA to verify them; this node's certificate). */
  dial?: { ca?: Buffer; cert?: Buffer; key?: Buffer };
}

/** Nonces are 32 random bytes; a proof is an HMAC-SHA256. */
export const NONCE_BYTES = 32;

/** The MAC one side of the handshake sends: binds both nonces, both ids and the cluster id. */
export function handshakeProof(
  secret: Uint8Array,
  role: "client" | "server",
  fields: { serverNonce: Uint8Array; clientNonce: Uint8Array; from: NodeId; to: NodeId; clusterId: string },
): Uint8Array {
  const mac = createHmac("sha256", secret);
  mac.update(`kvraft peer handshake v1\0${role}\0${fields.from}\0${fields.to}\0${fields.clusterId}\0`);
  mac.update(fields.clientNonce);
  mac.update(fields.serverNonce);
  return mac.digest();
}

export function sameProof(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/** The node id a peer certificate names: a SAN URI kvraft://node/<id> or kvraft://cluster/<clusterId>/node/<id>. */
export function certificateNodeId(certificate: X509Certificate, clusterId: string): NodeId | null {
  for (const name of (certificate.subjectAltName ?? "").split(/,\s*/)) {
    const match = /^URI:kvraft:\/\/(?:cluster\/([^/]+)\/)?node\/(\d{1,9})$/.exec(name);
    if (match === null) continue;
    if (match[1] !== undefined && match[1] !== clusterId) return null;
    return Number(match[2]);
  }
  return null;
}

interface SessionState {
  from: NodeId;
  clientNonce: Uint8Array;
  serverNonce: Uint8Array | null;
  /** The authenticated sender, once Authenticate succeeded. */
  peer: NodeId | null;
}

/** Counters for observability and tests. */
export interface PeerGateStats {
  refusedConnections: number;
  /** Messages dropped because `from` is not the authenticated peer or `to` is not this node. */
  rejectedMessages: number;
}

/** The receiving side of peer authentication for one node. */
export class PeerGate {
  private readonly sessions = new WeakMap<http2.Http2Session, SessionState>();
  private readonly lastLog = new Map<string, number>();
  readonly stats: PeerGateStats = { refusedConnections: 0, rejectedMessages: 0 };

  constructor(
    private readonly self: NodeId,
    private readonly members: ReadonlySet<NodeId>,
    private readonly security: PeerSecurity,
  ) {}

  /** Step 1: checks who the caller says it is (and its certificate), and hands out a nonce. */
  challenge(request: { from: bigint; to: bigint; clusterId: string; clientNonce: Uint8Array }, connection: ConnectionInfo | null, contentType: string | null) {
    const session = this.sessionOf(connection, contentType);
    const from = Number(request.from);
    const to = Number(request.to);
    const where = connection!.remoteAddress;
    if (request.clusterId !== this.security.clusterId) {
      throw this.refuse(
        `cluster:${request.clusterId}`,
        `node ${from} at ${where} belongs to cluster ${request.clusterId || "(none)"}, this node ${this.self} to cluster ${this.security.clusterId}: refused`,
        Code.FailedPrecondition,
      );
    }
    if (to !== this.self) {
      throw this.refuse(`to:${to}`, `node ${from} at ${where} dialed node ${to}, but this is node ${this.self}: the nodes disagree on -addrs`, Code.FailedPrecondition);
    }
    if (!this.members.has(from) || from === this.self) {
      throw this.refuse(`member:${from}`, `${where} claims to be node ${from}, which is not a member of cluster ${this.security.clusterId}: refused`, Code.PermissionDenied);
    }
    if (this.security.peerCa !== null) {
      const certificate = connection!.verifiedCertificate();
      if (certificate === null || !this.security.peerCa.some((ca) => certificate.checkIssued(ca) && certificate.verify(ca.publicKey))) {
        throw this.refuse(`cert:${where}`, `${where} claims to be node ${from} without a certificate from the peer CA (--peer-trusted-ca-file): refused`, Code.Unauthenticated);
      }
      const named = certificateNodeId(certificate, this.security.clusterId);
      if (named !== from) {
        throw this.refuse(`certid:${from}`, `${where} claims to be node ${from} but its certificate names ${named === null ? "no kvraft node" : `node ${named}`}: refused`, Code.PermissionDenied);
      }
    }
    if (request.clientNonce.length !== NONCE_BYTES) throw new ConnectError(`client nonce must be ${NONCE_BYTES} bytes`, Code.InvalidArgument);
    const serverNonce = randomBytes(NONCE_BYTES);
    this.sessions.set(session, { from, clientNonce: request.clientNonce, serverNonce, peer: null });
    const secret = this.security.secret;
    const serverProof =
      secret === null ? new Uint8Array(0) : handshakeProof(secret, "server", { serverNonce, clientNonce: request.clientNonce, from, to, clusterId: this.security.clusterId });
    return { serverNonce, serverProof };
  }

  /** Step 2: checks the caller's proof and binds the connection to it. */
  authenticate(request: { clientProof: Uint8Array }, connection: ConnectionInfo | null, contentType: string | null): void {
    const session = this.sessionOf(connection, contentType);
    const state = this.sessions.get(session);
    if (state === undefined || state.serverNonce === null) {
      throw this.refuse(`order:${connection!.remoteAddress}`, `${connection!.remoteAddress} sent Authenticate without a Challenge on its connection: refused`, Code.Unauthenticated);
    }
    const serverNonce = state.serverNonce;
    // One proof per nonce: a second Authenticate needs a new Challenge.
    state.serverNonce = null;
    const secret = this.security.secret;
    if (secret !== null) {
      const expected = handshakeProof(secret, "client", { serverNonce, clientNonce: state.clientNonce, from: state.from, to: this.self, clusterId: this.security.clusterId });
      if (!sameProof(request.clientProof, expected)) {
        throw this.refuse(
          `secret:${state.from}`,
          `${connection!.remoteAddress} claims to be node ${state.from} but its proof does not match the cluster secret (a different --peer-secret-file?): refused`,
          Code.Unauthenticated,
        );
      }
    }
    state.peer = state.from;
    // An authenticated member's connection is never evicted or idle-closed by the port's guard.
    trustSession(session);
  }

  /** The authenticated peer of a connection; throws unauthenticated for any other caller. */
  peerOf(connection: ConnectionInfo | null, contentType: string | null): NodeId {
    const session = this.sessionOf(connection, contentType);
    const peer = this.sessions.get(session)?.peer ?? null;
    if (peer === null) {
      throw this.refuse(
        `unauth:${connection!.remoteAddress}`,
        `a peer call from ${connection!.remoteAddress} on a connection that did not authenticate: refused`,
        Code.Unauthenticated,
      );
    }
    return peer;
  }

  /** Whether a message may be delivered: from the authenticated peer, to this node. Counts the rest. */
  accepts(peer: NodeId, message: { from: NodeId; to: NodeId; type: string }): boolean {
    if (message.from === peer && message.to === this.self) return true;
    this.stats.rejectedMessages++;
    this.log(`msg:${peer}`, `dropped a ${message.type} from node ${message.from} to node ${message.to} sent by authenticated node ${peer} (this is node ${this.self})`);
    return false;
  }

  private sessionOf(connection: ConnectionInfo | null, contentType: string | null): http2.Http2Session {
    if (connection === null || connection.session === null) {
      this.stats.refusedConnections++;
      throw new ConnectError("raftpb.RaftService is for kvraft peers only: it takes authenticated HTTP/2 connections", Code.Unauthenticated);
    }
    if (contentType === null || /json|grpc-web-text/i.test(contentType)) {
      this.stats.refusedConnections++;
      throw new ConnectError("raftpb.RaftService is for kvraft peers only: binary protobuf only, no JSON", Code.PermissionDenied);
    }
    return connection.session;
  }

  private refuse(key: string, text: string, code: Code): ConnectError {
    this.stats.refusedConnections++;
    this.log(key, text);
    return new ConnectError(text, code);
  }

  /** One line per kind of refusal per 10 s: a misconfigured peer retries often. */
  private log(key: string, text: string): void {
    const now = Date.now();
    if ((this.lastLog.get(key) ?? -Infinity) > now - 10_000) return;
    if (this.lastLog.size > 1000) this.lastLog.clear();
    this.lastLog.set(key, now);
    console.error(`kvraft peers: node ${this.self}: ${text}`);
  }
}
