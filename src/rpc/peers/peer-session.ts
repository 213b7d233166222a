// The dialing side of the peer handshake: opens an HTTP/2 connection to a peer (h2c, or TLS with
// this node's certificate), runs Challenge and Authenticate on it, and only then hands it out. Also
// a connect-node session manager over such connections, for the InstallSnapshot client.

import * as http2 from "node:http2";
import * as net from "node:net";
import * as tls from "node:tls";
import { randomBytes } from "node:crypto";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { NodeHttpClientOptions } from "@connectrpc/connect-node";
import { AuthenticateRequestSchema, ChallengeRequestSchema, ChallengeResponseSchema, RaftService } from "../../gen/raftpb/raft_pb.ts";
import type { NodeId } from "../../raft/types.ts";
import { NONCE_BYTES, handshakeProof, sameProof, type PeerSecurity } from "./peer-auth.ts";
import { PeerLinkError } from "./peer-link.ts";
import { PEER_TAG } from "../server/peer-tag.ts";

export interface DialOptions {
  url: string;
  self: NodeId;
  peer: NodeId;
  security: PeerSecurity;
  /** Bound on connecting plus the handshake. */
  timeoutMs: number;
  /** false: dial without PEER_TAG, as nodes of older builds do (default true). */
  tagged?: boolean;
}

const CHALLENGE_PATH = `/${RaftService.typeName}/${RaftService.method.challenge.name}`;
const AUTHENTICATE_PATH = `/${RaftService.typeName}/${RaftService.method.authenticate.name}`;
const MAX_ANSWER_BYTES = 64 * 1024;

/** An authenticated HTTP/2 connection to `options.peer`, or a PeerLinkError saying why not. */
export async function dialPeer(options: DialOptions): Promise<http2.ClientHttp2Session> {
  const reached = { value: false };
  if (options.tagged === false) return dialOnce(options, false, reached);
  try {
    return await dialOnce(options, true, reached);
  } catch (error) {
    // A node of an older build reads the tag as a broken request and drops the connection: the
    // same dial without it reaches its node:http2 (and on a newer node, the engine relays it).
    if (!(error instanceof PeerLinkError && error.code === "unavailable" && reached.value)) throw error;
    return dialOnce(options, false, { value: false });
  }
}

async function dialOnce(options: DialOptions, tagged: boolean, reached: { value: boolean }): Promise<http2.ClientHttp2Session> {
  const { url, self, peer, security } = options;
  let session: http2.ClientHttp2Session;
  try {
    session = http2.connect(url, { createConnection: () => dialTagged(url, security, tagged, reached) });
  } catch (error) {
    throw new PeerLinkError("unavailable", `connecting to ${url}: ${(error as Error).message}`);
  }
  // Until the handshake ends, any failure of the connection fails the dial.
  let onError!: (error: Error) => void;
  const broken = new Promise<never>((_, reject) => {
    onError = (error) => reject(new PeerLinkError("unavailable", `connection to ${url}: ${error.message}`));
    session.once("error", onError);
    session.once("close", () => reject(new PeerLinkError("unavailable", `connection to ${url} closed during the handshake`)));
  });
  broken.catch(() => {});
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new PeerLinkError("deadline_exceeded", `handshake with ${url} took over ${options.timeoutMs} ms`)), options.timeoutMs);
  });
  try {
    await Promise.race([handshake(session, url, self, peer, security), broken, expired]);
  } catch (error) {
    session.destroy();
    throw error instanceof PeerLinkError ? error : new PeerLinkError("unavailable", `handshake with ${url}: ${(error as Error).message}`);
  } finally {
    clearTimeout(timer);
    session.off("error", onError);
  }
  return session;
}

/**
 * The connection under a peer session: TCP (or TLS with ALPN h2 and this node's certificate) that
 * starts with PEER_TAG, so the receiving port serves it with node:http2, where peer sessions bind.
 * `reached` is set once the connection (and TLS) is up.
 */
function dialTagged(url: string, security: PeerSecurity, tagged: boolean, reached: { value: boolean }): net.Socket {
  const { hostname, port } = new URL(url);
  const host = hostname.startsWith("[") ? hostname.slice(1, -1) : hostname;
  if (!url.startsWith("https:")) {
    const socket = net.connect({ host, port: Number(port || 80) });
    socket.once("connect", () => {
      reached.value = true;
    });
    if (tagged) socket.write(PEER_TAG);
    return socket;
  }
  const socket = tls.connect({ ...security.dial, host, port: Number(port || 443), ALPNProtocols: ["h2"], ...(net.isIP(host) === 0 ? { servername: host } : {}) });
  // Inside TLS: written once the handshake is done, ahead of the HTTP/2 preface.
  socket.once("secureConnect", () => {
    reached.value = true;
    if (tagged) socket.write(PEER_TAG);
  });
  return socket;
}

async function handshake(session: http2.ClientHttp2Session, url: string, self: NodeId, peer: NodeId, security: PeerSecurity): Promise<void> {
  const clientNonce = new Uint8Array(randomBytes(NONCE_BYTES));
  const answer = await unaryCall(
    session,
    url,
    CHALLENGE_PATH,
    toBinary(ChallengeRequestSchema, create(ChallengeRequestSchema, { from: BigInt(self), to: BigInt(peer), clusterId: security.clusterId, clientNonce })),
  );
  let challenge;
  try {
    challenge = fromBinary(ChallengeResponseSchema, answer);
  } catch {
    throw new PeerLinkError("internal", `node ${peer} at ${url} answered the Challenge with bytes that are not a ChallengeResponse`);
  }
  const secret = security.secret;
  let clientProof = new Uint8Array(0);
  if (secret !== null) {
    const fields = { serverNonce: challenge.serverNonce, clientNonce, from: self, to: peer, clusterId: security.clusterId };
    if (!sameProof(challenge.serverProof, handshakeProof(secret, "server", fields))) {
      throw new PeerLinkError("unauthenticated", `node ${peer} at ${url} did not prove it holds the cluster secret (a different --peer-secret-file?)`);
    }
    clientProof = new Uint8Array(handshakeProof(secret, "client", fields));
  }
  await unaryCall(session, url, AUTHENTICATE_PATH, toBinary(AuthenticateRequestSchema, create(AuthenticateRequestSchema, { clientProof })));
}

/** One Connect unary call in binary on a raw session; resolves with the answer's bytes. */
function unaryCall(session: http2.ClientHttp2Session, url: string, path: string, body: Uint8Array): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    let stream: http2.ClientHttp2Stream;
    try {
      stream = session.request({ ":method": "POST", ":path": path, "content-type": "application/proto", "connect-protocol-version": "1" });
    } catch (error) {
      reject(new PeerLinkError("unavailable", `calling ${path} on ${url}: ${(error as Error).message}`));
      return;
    }
    let status = 0;
    const chunks: Buffer[] = [];
    let size = 0;
    stream.on("response", (headers) => {
      status = Number(headers[":status"] ?? 0);
    });
    stream.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size <= MAX_ANSWER_BYTES) chunks.push(chunk);
    });
    stream.on("error", (error: Error) => reject(new PeerLinkError("unavailable", `${path} on ${url}: ${error.message}`)));
    stream.on("end", () => {
      const answer = Buffer.concat(chunks);
      if (status === 200) {
        resolve(new Uint8Array(answer));
        return;
      }
      if (status === 404) {
        reject(new PeerLinkError("unimplemented", `${url} does not serve ${path} (not a kvraft node of this version?)`));
        return;
      }
      let code = "unknown";
      let message = `HTTP ${status}`;
      try {
        const error = JSON.parse(answer.toString("utf8")) as { code?: string; message?: string };
        code = error.code ?? code;
        message = error.message ?? message;
      } catch {
        // Not a Connect error body: the status says enough.
      }
      reject(new PeerLinkError(code, `node at ${url} refused the handshake: ${message}`));
    });
    stream.end(body);
  });
}

type NodeHttp2ClientSessionManager = ReturnType<NonNullable<Extract<NodeHttpClientOptions, { httpVersion: "2" }>["sessionProvider"]>>;

/**
 * connect-node's view of a peer: every request goes on one authenticated connection (dialed on
 * first use, dialed again after it closes). Used for InstallSnapshot.
 */
export class PeerSessionManager implements NodeHttp2ClientSessionManager {
  readonly authority: string;
  private dialing: Promise<http2.ClientHttp2Session> | null = null;
  private closed = false;

  constructor(private readonly options: DialOptions) {
    this.authority = new URL(options.url).origin;
  }

  async request(method: string, path: string, headers: http2.OutgoingHttpHeaders, options: Omit<http2.ClientSessionRequestOptions, "signal">): Promise<http2.ClientHttp2Stream> {
    if (this.closed) throw new PeerLinkError("unavailable", "the transport is closed");
    const session = await this.session();
    return session.request({ ...headers, ":method": method, ":path": path }, options);
  }

  notifyResponseByteRead(): void {}

  private session(): Promise<http2.ClientHttp2Session> {
    if (this.dialing === null) {
      const dialing = dialPeer(this.options);
      this.dialing = dialing;
      dialing.then(
        (session) => {
          const forget = () => {
            if (this.dialing === dialing) this.dialing = null;
          };
          session.once("close", forget);
          session.once("error", forget);
          session.once("goaway", forget);
          // Snapshots are rare: do not keep an idle connection (and its pings) around.
          session.setTimeout(60_000, () => session.close());
          if (this.closed) session.destroy();
        },
        () => {
          if (this.dialing === dialing) this.dialing = null;
        },
      );
    }
    return this.dialing;
  }

  close(): void {
    this.closed = true;
    this.dialing?.then(
      (session) => session.destroy(),
      () => {},
    );
    this.dialing = null;
  }
}
