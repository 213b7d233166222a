// Public surface of the RPC layer: the multi-protocol server, the KVService handlers, and the
// Connect-based Raft transport.
export { DEFAULT_READ_MAX_BYTES, ListenError, RpcServer, type RpcServerOptions } from "./server/server.ts";
export { registerKVService, toConnectError, type KVServiceBackend } from "../kv/service.ts";
export {
  ConnectTransport,
  DEFAULT_RAFT_READ_MAX_BYTES,
  type ConnectTransportOptions,
  type TransportStats,
} from "./peers/connect-transport.ts";
export { RaftCodecError, decodeMessage, encodeMessage } from "./peers/raft-codec.ts";
