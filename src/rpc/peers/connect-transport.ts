// The production Raft Transport: one long-lived client-streaming call per peer (RaftService/Stream,
// see peer-link.ts) carries every batch of messages as one frame; InstallSnapshot streams on its
// own call. Everything is bounded per peer: a message that cannot go out now is dropped (Raft
// retransmits), never queued without limit. Also serves the receiving side (raftpb.RaftService).

import { Code, ConnectError, createClient, type Client, type ConnectRouter } from "@connectrpc/connect";
import { createConnectTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { create } from "@bufbuild/protobuf";
import { RaftService, SnapshotChunkSchema, type Message as WireMessage, type SnapshotChunk } from "../../gen/raftpb/raft_pb.ts";
import type { Message, NodeId, Transport, TransportHandler } from "../../raft/types.ts";
import { RaftCodecError, batchFieldBytes, decodeBatchBytes, decodeMessage, encodeBatchBytes, encodeMessage, encodeMessageBytes } from "./raft-codec.ts";
import { PeerLink, PeerLinkError } from "./peer-link.ts";
import { frameRoutesOf } from "../server/frame-lane.ts";

type InstallSnapshot = Extract<Message, { type: "InstallSnapshot" }>;
type InstallSnapshotResponse = Extract<Message, { type: "InstallSnapshotResponse" }>;

export interface ConnectTransportOptions {
  /** This node's id: messages arriving for another id are refused (a sign of swapped -addrs). */
  id: NodeId;
  /** Base URL of every peer, e.g. { 1: "http://localhost:5002" }. This node's own entry is ignored. */
  peers: ReadonlyMap<NodeId, string> | Readonly<Record<number, string>>;
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
  session: Http2SessionManager;
  client: Client<typeof RaftService>;
  /** The message stream. */
  link: PeerLink;
  lastError: string | null;
}

const STREAM_PATH = `/${RaftService.typeName}/${RaftService.method.stream.name}`;

/** Counters for observability and tests. */
export interface TransportStats {
  sentBatches: number;
  sentMessages: number;
  droppedMessages: number;
  failedBatches: number;
}

export class ConnectTransport implements Transport {
  private readonly peers = new Map<NodeId, Peer>();
  private readonly abort = new AbortController();
  private handler: TransportHandler | null = null;
  private closed = false;
  private readonly maxFrameBytes: number;
  private readonly chunkBytes: number;
  private readonly readMaxBytes: number;
  readonly stats: TransportStats = { sentBatches: 0, sentMessages: 0, droppedMessages: 0, failedBatches: 0 };

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
    const entries = options.peers instanceof Map ? [...options.peers] : Object.entries(options.peers).map(([k, v]) => [Number(k), v] as const);
    for (const [id, url] of entries) {
      if (id === options.id) continue;
      // One session manager per peer keeps one HTTP/2 connection and reconnects after faults;
      // pings detect a dead peer whose TCP connection did not close.
      const session = new Http2SessionManager(url, { pingIntervalMs: 5_000, pingTimeoutMs: 5_000, idleConnectionTimeoutMs: 60_000 });
      const transport = createConnectTransport({
        baseUrl: url,
        httpVersion: "2",
        useBinaryFormat: true,
        sessionManager: session,
        readMaxBytes: this.readMaxBytes,
        writeMaxBytes: this.readMaxBytes,
        acceptCompression: [],
      });
      const peer: Peer = { id, url, session, client: createClient(RaftService, transport), link: null!, lastError: null };
      peer.link = new PeerLink({
        url,
        path: STREAM_PATH,
        maxQueuedBytes,
        pingIntervalMs: 5_000,
        pingTimeoutMs: 5_000,
        backoffMinMs: 20,
        backoffMaxMs: 1_000,
        onError: (error) => this.linkFailed(peer, error),
      });
      this.peers.set(id, peer);
    }
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

  /** Network faults are normal (a peer is down); configuration errors are worth one line each time they change. */
  private noteError(peer: Peer, error: unknown): void {
    const connectError = ConnectError.from(error);
    const text = `${Code[connectError.code]}: ${connectError.rawMessage}`;
    if ((connectError.code === Code.FailedPrecondition || connectError.code === Code.Unimplemented) && peer.lastError !== text) {
      console.error(`kvraft transport: peer ${peer.id} at ${peer.url} refused messages: ${connectError.rawMessage}`);
    }
    peer.lastError = text;
  }

  /** The last error seen sending to `peer`, or null after a success. */
  lastError(peer: NodeId): string | null {
    return this.peers.get(peer)?.lastError ?? null;
  }

  async sendSnapshot(message: InstallSnapshot, chunks: AsyncIterable<Uint8Array>): Promise<InstallSnapshotResponse> {
    if (this.closed) throw new Error("transport is closed");
    const peer = this.peers.get(message.to);
    if (peer === undefined) throw new Error(`no address for node ${message.to}`);
    const header = encodeMessage(message);
    const chunkBytes = this.chunkBytes;
    async function* stream(): AsyncIterable<SnapshotChunk> {
      // The header rides on the first message; empty chunks are skipped, oversized ones split.
      let pending: WireMessage | undefined = header;
      for await (const data of chunks) {
        for (let offset = 0; offset < data.length; offset += chunkBytes) {
          yield create(SnapshotChunkSchema, { header: pending, data: data.subarray(offset, offset + chunkBytes) });
          pending = undefined;
        }
      }
      if (pending !== undefined) yield create(SnapshotChunkSchema, { header: pending });
    }
    const wire = await peer.client.installSnapshot(stream(), { signal: this.abort.signal });
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
    // On an RpcServer, Stream frames are read straight off the HTTP/2 stream (frame-lane.ts); the
    // Connect registration below still serves every other client of the method.
    frameRoutesOf(router)?.add(STREAM_PATH, { readMaxBytes: this.readMaxBytes, onFrame: (payload) => this.deliverFrame(payload) });
    router.service(
      RaftService,
      {
        stream: async (batches) => {
          // Lives as long as the sender's link; ends when the sender half-closes (or on a bad message).
          for await (const batch of batches) this.deliver(batch.messages);
          return {};
        },
        installSnapshot: async (requests) => {
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
          const header = this.decodeForMe(() => decodeMessage(wireHeader));
          if (header.type !== "InstallSnapshot") {
            throw new ConnectError(`InstallSnapshot header is a ${header.type} message`, Code.InvalidArgument);
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
            // Peers are trusted: pass the receiver's reason back to the sender's log.
            if (error instanceof ConnectError) throw error;
            throw new ConnectError(`installing the snapshot failed: ${(error as Error).message ?? String(error)}`, Code.Internal);
          }
        },
      },
      { readMaxBytes: this.readMaxBytes },
    );
  }

  private deliver(wires: WireMessage[]): void {
    this.hand(wires.map((wire) => this.decodeForMe(() => decodeMessage(wire))));
  }

  /** One MessageBatch payload, decoded in place. */
  private deliverFrame(payload: Uint8Array): void {
    let messages: Message[];
    try {
      messages = decodeBatchBytes(payload);
    } catch (error) {
      if (error instanceof RaftCodecError) throw new ConnectError(error.message, Code.InvalidArgument);
      throw error;
    }
    for (const message of messages) this.decodeForMe(() => message);
    this.hand(messages);
  }

  private hand(messages: Message[]): void {
    // Before listen() the node is still opening: dropping is what the network could do too.
    if (this.handler !== null && !this.closed && messages.length > 0) this.handler.onMessages(messages);
  }

  private decodeForMe(decode: () => Message): Message {
    let message: Message;
    try {
      message = decode();
    } catch (error) {
      if (error instanceof RaftCodecError) throw new ConnectError(error.message, Code.InvalidArgument);
      throw error;
    }
    if (message.to !== this.options.id) {
      throw new ConnectError(
        `message for node ${message.to} arrived at node ${this.options.id}: the nodes disagree on -addrs`,
        Code.FailedPrecondition,
      );
    }
    return message;
  }

  /** Aborts in-flight calls and closes every peer connection. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.abort.abort(new Error("transport closed"));
    for (const peer of this.peers.values()) {
      peer.link.close();
      peer.session.abort();
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
