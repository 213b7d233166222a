// Brings one kvraft node up and down: claims the data directory (and its cluster id), binds the
// multi-protocol port (TLS and client gate as configured), opens the KV server behind it with the
// authenticated Connect transport, and shuts down in the safe order.

import { ConnectTransport } from "../rpc/peers/connect-transport.ts";
import { registerKVService, type KVServiceBackend } from "../kv/service.ts";
import { RpcServer } from "../rpc/server/server.ts";
import type { NodeId, Transport } from "../raft/types.ts";
import type { KVServer } from "../kv/server.ts";
import type { KVDiagnostics } from "../kv/index.ts";
import type { RaftObserver } from "../raft/index.ts";
import { NodeMetrics, instrumentKV, instrumentRouter, obsRoutes, registerHealthService } from "../obs/index.ts";
import { statusPageRoute } from "../obs/status-page/page.ts";
import { registerReflection } from "../rpc/server/reflection.ts";
import { claimDataDir } from "./identity.ts";
import { DEFAULT_CLUSTER_TOKEN, clusterIdOf } from "./cluster-id.ts";
import type { NodeSecurity } from "./security-flags.ts";
import { splitHostPort } from "./flags.ts";

/**
 * What serveNode needs from a KV server: the handlers' calls plus close (which syncs), and the
 * live state for metrics and health (KVServer has it; test stand-ins may leave it out).
 */
export type KVNode = KVServiceBackend & Pick<KVServer, "close"> & { diagnostics?(): KVDiagnostics };

export interface ServeNodeOptions {
  id: NodeId;
  addrs: readonly string[];
  dir: string;
  corsOrigins?: readonly string[];
  /** RpcServerOptions.fastLane (default true). */
  fastLane?: boolean;
  /** TLS, peer authentication, client gate (see security-flags.ts); default: cleartext, peers unauthenticated. */
  security?: NodeSecurity;
  /** Opens the KV server (KVServer.open in production, a stand-in in tests). */
  open(args: { id: NodeId; peers: NodeId[]; dir: string; transport: Transport; observer: RaftObserver }): Promise<KVNode>;
}

export interface ServingNode {
  server: RpcServer;
  transport: ConnectTransport;
  kv: KVNode;
  clusterId: string;
  metrics: NodeMetrics;
  /** Stop accepting, let in-flight calls finish, close the KV server (sync), drop peer links. */
  close(): Promise<void>;
}

export async function serveNode(options: ServeNodeOptions): Promise<ServingNode> {
  const { id, addrs, dir } = options;
  const security = options.security ?? INSECURE;
  claimDataDir(dir, id, addrs);
  const clusterId = clusterIdOf(dir, addrs, security.initialClusterToken ?? DEFAULT_CLUSTER_TOKEN);
  const transport = new ConnectTransport({
    id,
    peers: new Map(addrs.map((a, i) => [i, `${security.peerScheme}://${a}`])),
    security: { ...security.peer, clusterId },
  });
  let kv: KVNode | undefined;
  let served: KVNode | undefined;
  const state = () => kv?.diagnostics?.();
  const metrics = new NodeMetrics(id, state);
  // The status page served by any member calls every member: their origins are allowed too.
  const memberUrls = addrs.map((a) => `${security.tls !== undefined ? "https" : "http"}://${a}`);
  const { host, port } = splitHostPort(addrs[id]!);
  let server: RpcServer;
  try {
    server = await RpcServer.start({
      host,
      port,
      corsOrigins: [...(options.corsOrigins ?? []), ...memberUrls],
      fastLane: options.fastLane,
      ...(security.tls !== undefined ? { tls: security.tls } : {}),
      ...(security.gate !== undefined ? { gate: security.gate } : {}),
      httpRoutes: obsRoutes({ metrics, state, extra: [statusPageRoute({ self: id, members: memberUrls })] }),
      routes: (router) => {
        const counted = instrumentRouter(router, metrics);
        registerKVService(counted, () => served);
        transport.registerRoutes(counted);
        registerHealthService(counted, { state });
        registerReflection(counted);
      },
    });
  } catch (error) {
    await transport.close();
    throw error;
  }
  try {
    kv = await options.open({ id, peers: addrs.map((_, i) => i), dir, transport, observer: metrics.raftObserver });
    served = instrumentKV(kv, metrics);
  } catch (error) {
    await server.close();
    await transport.close();
    throw error;
  }
  const opened = kv;
  let closing: Promise<void> | null = null;
  return {
    server,
    transport,
    kv: opened,
    clusterId,
    metrics,
    close() {
      closing ??= (async () => {
        await server.close();
        try {
          await opened.close();
        } finally {
          await transport.close();
        }
      })();
      return closing;
    },
  };
}

/** No TLS, open API, peers not authenticated: what tests of one node use. */
const INSECURE: NodeSecurity = { peer: { secret: null, peerCa: null }, peerScheme: "http", initialClusterToken: undefined, summary: "cleartext" };
