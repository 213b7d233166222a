// Public surface of the RPC layer: the multi-protocol server (TLS, client gate), the KVService
// handlers, the Connect-based Raft transport with its peer authentication, and the Clerk's lean
// client transport.
export { DEFAULT_READ_MAX_BYTES, ListenError, RpcServer, type RpcServerOptions } from "./server/server.ts";
export { registerKVService, toConnectError, type KVServiceBackend } from "../kv/service.ts";
export {
  ConnectTransport,
  DEFAULT_RAFT_READ_MAX_BYTES,
  type ConnectTransportOptions,
  type TransportStats,
} from "./peers/connect-transport.ts";
export { RaftCodecError, decodeMessage, encodeMessage } from "./peers/raft-codec.ts";
export { PeerGate, type PeerSecurity } from "./peers/peer-auth.ts";
export { clientGate, type ClientAuthOptions } from "./server/client-auth.ts";
export { connectionKey, type CallGate, type ConnectionInfo } from "./server/connection.ts";
export type { TlsOptions } from "./server/tls-port.ts";
export { createClerkTransport, type ClerkTransport, type ClerkTransportOptions } from "./client/clerk-transport.ts";
