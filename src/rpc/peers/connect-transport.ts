// The production Raft Transport: one long-lived client-streaming call per peer (RaftService/Stream,
// see peer-link.ts) carries every batch of messages as one frame; InstallSnapshot streams on its
// own call; both on connections authenticated by the peer handshake (peer-session.ts). Everything
// is bounded per peer: a message that cannot go out now is dropped (Raft retransmits), never queued
// without limit. Also serves the receiving side (raftpb.RaftService), behind PeerGate (peer-auth.ts).

import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { RaftService } from "../../gen/raftpb/raft_pb.ts";
import type { Message, NodeId, Transport, TransportHandler } from "../../raft/types.ts";
import { RaftCodecError, batchFieldBytes, decodeBatchBytes, decodeMessage, encodeBatchBytes, encodeMessage, encodeMessageBytes } from "./raft-codec.ts";
import { PeerLink, PeerLinkError } from "./peer-link.ts";
import { frameRoutesOf } from "../server/frame-lane.ts";
import { connectionKey } from "../server/connection.ts";
import { PeerGate, type PeerGateStats, type PeerSecurity } from "./peer-auth.ts";
import { PeerSessionManager, dialPeer } from "./peer-session.ts";
import { sendSnapshotStream } from "./snapshot-sender.ts";

type InstallSnapshot = Extract<Message, { type: "InstallSnapshot" }>;
type InstallSnapshotResponse = Extract<Message, { type: "InstallSnapshotResponse" }>;

export interface ConnectTransportOptions {
  /** This node's id: messages arriving for another id are refused (a sign of swapped -addrs). */
  id: NodeId;
  /**
   * Base URL of every member, e.g. { 1: "http://localhost:5002" } ("https://" for peer TLS). The
   * keys are the cluster's members: only they may authenticate. This node's own entry is not dialed.
   */
  peers: ReadonlyMap<NodeId, string> | Readonly<Record<number, string>>;
  /** How peers authenticate and which cluster this is (see peer-auth.ts). */
  security: PeerSecurity;
  /** Bytes waiting for a peer's stream (connecting, or behind flow control) before frames are dropped. */
  maxQueuedBytesPerPeer?: number;
  /** A batch to one peer is cut into frames of about this many bytes (the receiver's readMaxBytes bounds one frame). */
  maxFrameBytes?: number;
  /** Largest slice of snapshot data per streamed message (bigger chunks are split). */
  snapshotChunkBytes?: number;
  /** Per-message limit for incoming peer messages (a batch of AppendEntries, a snapshot chunk). */
  readMaxBytes?: number;
}

export const DEFAULT_RAFT_READ_MAX_BYTES = 64 * 1024 * 1024;

interface Peer {
  id: NodeId;
  url: string;
  /** The snapshot connection (snapshot-sender.ts writes InstallSnapshot streams on it). */
  session: PeerSessionManager;
  /** The message stream. */
  link: PeerLink;
  lastError: string | null;
}

const STREAM_PATH = `/${RaftService.typeName}/${RaftService.method.stream.name}`;
const INSTALL_SNAPSHOT_PATH = `/${RaftService.typeName}/${RaftService.method.installSnapshot.name}`;

/** Counters for observability and tests. */
export interface TransportStats {
  sentBatches: number;
  sentMessages: number;
  droppedMessages: number;
  failedBatches: number;
}

/** Bound on dialing a peer plus its handshake. */
const DIAL_TIMEOUT_MS = 5_000;

export class ConnectTransport implements Transport {
  private readonly peers = new Map<NodeId, Peer>();
  private readonly abort = new AbortController();
  private handler: TransportHandler | null = null;
  private closed = false;
  private readonly maxFrameBytes: number;
  private readonly chunkBytes: number;
  private readonly readMaxBytes: number;
  readonly stats: TransportStats = { sentBatches: 0, sentMessages: 0, droppedMessages: 0, failedBatches: 0 };
  private readonly gate: PeerGate;
  /** The cluster's members, as the gate sees them (updated by setPeers). */
  private readonly members = new Set<NodeId>();
  private readonly maxQueuedBytes: number;

  constructor(private readonly options: ConnectTransportOptions) {
    this.maxFrameBytes = options.maxFrameBytes ?? 4 * 1024 * 1024;
    const maxQueuedBytes = options.maxQueuedBytesPerPeer ?? 16 * 1024 * 1024;
    this.chunkBytes = options.snapshotChunkBytes ?? 1024 * 1024;
    this.readMaxBytes = options.readMaxBytes ?? DEFAULT_RAFT_READ_MAX_BYTES;
    if (this.chunkBytes + 1024 > this.readMaxBytes) {
      throw new RangeError(`snapshotChunkBytes ${this.chunkBytes} does not fit readMaxBytes ${this.readMaxBytes}`);
    }
    if (!(this.maxFrameBytes > 0 && this.maxFrameBytes <= this.readMaxBytes / 2)) {
      throw new RangeError(`maxFrameBytes ${this.maxFrameBytes} must be positive and at most half of readMaxBytes ${this.readMaxBytes}`);
    }
    if (!(maxQueuedBytes > 0)) throw new RangeError(`maxQueuedBytesPerPeer must be positive, got ${maxQueuedBytes}`);
    this.maxQueuedBytes = maxQueuedBytes;
    this.gate = new PeerGate(options.id, this.members, options.security);
    this.setPeers(options.peers instanceof Map ? options.peers : new Map(Object.entries(options.peers).map(([k, v]) => [Number(k), v] as const)));
  }

  /**
   * The cluster's membership changed: `peers` is every member's base URL (this node's own entry is
   * not dialed). New members are dialed, members that left are dropped (their connections closed,
   * their handshakes refused from now on), a member whose URL changed is dialed at the new one.
   */
  setPeers(peers: ReadonlyMap<NodeId, string>): void {
    this.members.clear();
    for (const id of peers.keys()) this.members.add(id);
    for (const [id, peer] of this.peers) {
      if (peers.get(id) === peer.url) continue;
      peer.link.close();
      peer.session.close();
      this.peers.delete(id);
    }
    if (this.closed) return;
    for (const [id, url] of peers) {
      if (id === this.options.id || this.peers.has(id)) continue;
      this.peers.set(id, this.connect(id, url));
    }
  }

  /** One member's stream and snapshot connection, dialed lazily and authenticated like every peer. */
  private connect(id: NodeId, url: string): Peer {
    const options = this.options;
    const maxQueuedBytes = this.maxQueuedBytes;
    const dial = { url, self: options.id, peer: id, security: options.security, timeoutMs: DIAL_TIMEOUT_MS };
    // Snapshots go on a connection of their own (authenticated the same way): bulk data never
    // waits behind, or delays, the message stream.
    const session = new PeerSessionManager(dial);
    const peer: Peer = { id, url, session, link: null!, lastError: null };
    peer.link = new PeerLink({
      url,
      path: STREAM_PATH,
      maxQueuedBytes,
      pingIntervalMs: 5_000,
      pingTimeoutMs: 5_000,
      backoffMinMs: 20,
      backoffMaxMs: 1_000,
      dial: () => dialPeer(dial),
      onError: (error) => this.linkFailed(peer, error),
    });
    return peer;
  }

  /**
   * Groups messages per destination and sends each group as one frame on the peer's stream,
   * without waiting. Never throws: an unencodable message is dropped and logged.
   */
  send(messages: Message[]): void {
    if (this.closed) return;
    const groups = new Map<NodeId, Message[]>();
    for (const message of messages) {
      if (!this.peers.has(message.to)) {
        this.stats.droppedMessages++;
        continue;
      }
      const group = groups.get(message.to);
      if (group === undefined) groups.set(message.to, [message]);
      else group.push(message);
    }
    for (const [id, group] of groups) this.streamBatch(this.peers.get(id)!.link, group);
  }

  private encodeAll(messages: Message[]): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (const message of messages) {
      try {
        out.push(encodeMessageBytes(message));
      } catch (error) {
        this.stats.droppedMessages++;
        console.error(`kvraft transport: dropping unencodable ${message.type} to ${message.to}: ${(error as Error).message}`);
      }
    }
    return out;
  }

  /** One frame per group (cut at maxFrameBytes), written onto the peer's open stream. */
  private streamBatch(link: PeerLink, group: Message[]): void {
    const prepared = this.encodeAll(group);
    let start = 0;
    while (start < prepared.length) {
      let end = start;
      let bytes = 0;
      while (end < prepared.length && (end === start || bytes + batchFieldBytes(prepared[end]!) <= this.maxFrameBytes)) {
        bytes += batchFieldBytes(prepared[end]!);
        end++;
      }
      const part = start === 0 && end === prepared.length ? prepared : prepared.slice(start, end);
      if (link.write(envelope(encodeBatchBytes(part)))) {
        this.stats.sentBatches++;
        this.stats.sentMessages += part.length;
      } else {
        this.stats.droppedMessages += part.length;
      }
      start = end;
    }
  }

  private linkFailed(peer: Peer, error: PeerLinkError): void {
    this.stats.failedBatches++;
    this.noteError(peer, new ConnectError(error.message, codeOf(error.code)));
  }

  /** Network faults are normal (a peer is down); refusals are worth one line each time they change. */
  private noteError(peer: Peer, error: unknown): void {
    const connectError = ConnectError.from(error);
    const text = `${Code[connectError.code]}: ${connectError.rawMessage}`;
    const refusal = [Code.FailedPrecondition, Code.Unimplemented, Code.Unauthenticated, Code.PermissionDenied].includes(connectError.code);
    if (refusal && peer.lastError !== text) {
      console.error(`kvraft transport: peer ${peer.id} at ${peer.url} refused messages: ${connectError.rawMessage}`);
    }
    peer.lastError = text;
  }

  /** Refused peer connections and dropped forged messages on the receiving side. */
  get gateStats(): PeerGateStats {
    return this.gate.stats;
  }

  /** The last error seen sending to `peer`, or null after a success. */
  lastError(peer: NodeId): string | null {
    return this.peers.get(peer)?.lastError ?? null;
  }

  async sendSnapshot(message: InstallSnapshot, chunks: AsyncIterable<Uint8Array>): Promise<InstallSnapshotResponse> {
    if (this.closed) throw new Error("transport is closed");
    const peer = this.peers.get(message.to);
    if (peer === undefined) throw new Error(`no address for node ${message.to}`);
    // Straight onto an HTTP/2 stream of the snapshot connection (snapshot-sender.ts), not through
    // connect-es: the receiver serves it with its ordinary Connect handler.
    const wire = await sendSnapshotStream(peer.session, INSTALL_SNAPSHOT_PATH, encodeMessageBytes(message), chunks, this.chunkBytes, this.abort.signal);
    const response = decodeMessage(wire);
    if (response.type !== "InstallSnapshotResponse") {
      throw new RaftCodecError(`peer ${peer.id} answered InstallSnapshot with ${response.type}`);
    }
    return response;
  }

  listen(handler: TransportHandler): void {
    if (this.handler !== null) throw new Error("ConnectTransport.listen called twice");
    this.handler = handler;
  }

  /** Registers raftpb.RaftService on a router (the node's RpcServer), delivering to the listen() handler. */
  registerRoutes(router: ConnectRouter): void {
    const gate = this.gate;
    // On an RpcServer, Stream frames are read straight off the HTTP/2 stream (frame-lane.ts); the
    // Connect registration below serves every other client of the method. Both check the caller.
    frameRoutesOf(router)?.add(STREAM_PATH, {
      readMaxBytes: this.readMaxBytes,
      authorize: (connection, headers) => void gate.peerOf(connection, headerText(headers["content-type"])),
      onFrame: (payload, connection) => this.deliver(gate.peerOf(connection, "application/connect+proto"), decodeOrRefuse(() => decodeBatchBytes(payload))),
    });
    router.service(
      RaftService,
      {
        challenge: (request, context) => gate.challenge(request, context.values.get(connectionKey), context.requestHeader.get("content-type")),
        authenticate: (request, context) => {
          gate.authenticate(request, context.values.get(connectionKey), context.requestHeader.get("content-type"));
          return {};
        },
        stream: async (batches, context) => {
          const peer = gate.peerOf(context.values.get(connectionKey), context.requestHeader.get("content-type"));
          // Lives as long as the sender's link; ends when the sender half-closes (or on a bad message).
          for await (const batch of batches) this.deliver(peer, decodeOrRefuse(() => batch.messages.map(decodeMessage)));
          return {};
        },
        installSnapshot: async (requests, context) => {
          const peer = gate.peerOf(context.values.get(connectionKey), context.requestHeader.get("content-type"));
          const handler = this.handler;
          if (handler === null || this.closed) {
            throw new ConnectError("this node is not ready to receive a snapshot", Code.Unavailable);
          }
          const iterator = requests[Symbol.asyncIterator]();
          const first = await iterator.next();
          if (first.done === true || first.value.header === undefined) {
            throw new ConnectError("InstallSnapshot stream must start with a header message", Code.InvalidArgument);
          }
          const wireHeader = first.value.header;
          const header = decodeOrRefuse(() => decodeMessage(wireHeader));
          if (header.type !== "InstallSnapshot") {
            throw new ConnectError(`InstallSnapshot header is a ${header.type} message`, Code.InvalidArgument);
          }
          if (!gate.accepts(peer, header)) {
            throw new ConnectError(`InstallSnapshot from node ${header.from} to node ${header.to} sent by node ${peer}: refused`, Code.PermissionDenied);
          }
          const firstData = first.value.data;
          async function* data(): AsyncIterable<Uint8Array> {
            if (firstData.length > 0) yield firstData;
            for (;;) {
              const next = await iterator.next();
              if (next.done === true) return;
              if (next.value.data.length > 0) yield next.value.data;
            }
          }
          try {
            return encodeMessage(await handler.onSnapshot(header, data()));
          } catch (error) {
            // The sender is an authenticated member: pass the receiver's reason back to its log.
            if (error instanceof ConnectError) throw error;
            throw new ConnectError(`installing the snapshot failed: ${(error as Error).message ?? String(error)}`, Code.Internal);
          }
        },
      },
      { readMaxBytes: this.readMaxBytes },
    );
  }

  /** Hands on the messages `peer` may send: from itself, to this node; the rest are dropped and counted. */
  private deliver(peer: NodeId, messages: Message[]): void {
    this.hand(messages.filter((message) => this.gate.accepts(peer, message)));
  }

  private hand(messages: Message[]): void {
    // Before listen() the node is still opening: dropping is what the network could do too.
    if (this.handler !== null && !this.closed && messages.length > 0) this.handler.onMessages(messages);
  }

  /** Aborts in-flight calls and closes every peer connection. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.abort.abort(new Error("transport closed"));
    for (const peer of this.peers.values()) {
      peer.link.close();
      peer.session.close();
    }
  }
}

function codeOf(name: string): Code {
  const camel = name.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
  const key = (camel.charAt(0).toUpperCase() + camel.slice(1)) as keyof typeof Code;
  const code = Code[key];
  return typeof code === "number" ? code : Code.Unknown;
}

/** A Connect envelope (flags 0, big-endian length) around one message. */
function envelope(payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(5 + payload.length);
  new DataView(out.buffer).setUint32(1, payload.length);
  out.set(payload, 5);
  return out;
}

function decodeOrRefuse<T>(decode: () => T): T {
  try {
    return decode();
  } catch (error) {
    if (error instanceof RaftCodecError) throw new ConnectError(error.message, Code.InvalidArgument);
    throw error;
  }
}

function headerText(value: string | string[] | undefined): string | null {
  return typeof value === "string" ? value : null;
}
