// kvraftpb.KVService's Watch handler: a server stream (Connect, gRPC, gRPC-Web) of WatchResponse
// built from a WatchHub's messages. The first answer says `created`; the last may say `canceled`.
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import {
  EventSchema,
  Event_EventType,
  KeyValueSchema,
  WatchRequest_FilterType,
  WatchResponseSchema,
  type WatchRequest,
  type WatchResponse,
} from "../gen/kvraftpb/kvraft_pb.ts";
import { EVENT_PUT, type KeyEvent } from "./history.ts";
import { wireHeader, wireKV } from "./service-txn.ts";
import type { WatchHub, WatchMessage } from "./watch-hub.ts";
import type { NodeId } from "../raft/index.ts";

export interface WatchBackend {
  id: NodeId;
  watches: Pick<WatchHub, "open" | "close" | "term">;
}

export function watchHandlers(current: () => Partial<WatchBackend>, toConnectError: (error: unknown) => ConnectError) {
  return {
    async *watch(request: WatchRequest, context: HandlerContext): AsyncGenerator<WatchResponse> {
      let stream: AsyncGenerator<WatchMessage>;
      let id: NodeId;
      const backend = current();
      try {
        if (backend.watches === undefined || backend.id === undefined) throw new ConnectError("this node does not serve Watch", Code.Unimplemented);
        id = backend.id;
        if (request.startRevision < 0n || request.startRevision > BigInt(Number.MAX_SAFE_INTEGER)) {
          throw new ConnectError(`start_revision ${request.startRevision} is out of range`, Code.InvalidArgument);
        }
        stream = backend.watches.open(
          {
            key: request.key,
            rangeEnd: request.rangeEnd,
            startRevision: Number(request.startRevision),
            prevKv: request.prevKv,
            noPut: request.filters.includes(WatchRequest_FilterType.NOPUT),
            noDelete: request.filters.includes(WatchRequest_FilterType.NODELETE),
            progressNotify: request.progressNotify,
          },
          context.signal,
        );
      } catch (error) {
        throw toConnectError(error);
      }
      try {
        const watches = backend.watches;
        for await (const message of stream) yield toWire(message, id, watches.term);
      } catch (error) {
        throw toConnectError(error);
      }
    },
  };
}

function toWire(message: WatchMessage, id: NodeId, raftTerm: number): WatchResponse {
  const header = wireHeader({ revision: message.revision, memberId: id, raftTerm, err: "OK" });
  switch (message.kind) {
    case "created":
      return create(WatchResponseSchema, { header, created: true });
    case "progress":
      return create(WatchResponseSchema, { header });
    case "canceled":
      return create(WatchResponseSchema, { header, canceled: true, compactRevision: BigInt(message.compactRevision), cancelReason: message.reason });
    case "events":
      return create(WatchResponseSchema, { header, events: message.events.map(({ event }) => wireEvent(event)) });
  }
}

function wireEvent(event: KeyEvent): ReturnType<typeof create<typeof EventSchema>> {
  const kv = wireKV({ key: event.key, value: event.value, ...event.meta });
  const wire = create(EventSchema, { type: event.type === EVENT_PUT ? Event_EventType.PUT : Event_EventType.DELETE, kv });
  if (event.prev !== null) {
    // The previous value comes from the event that wrote it; once trimmed, only its revisions are known.
    wire.prevKv = create(KeyValueSchema, {
      key: event.key,
      value: event.prevValue ?? new Uint8Array(0),
      createRevision: BigInt(event.prev.createRevision),
      modRevision: BigInt(event.prev.modRevision),
      version: BigInt(event.prev.version),
    });
  }
  return wire;
}
