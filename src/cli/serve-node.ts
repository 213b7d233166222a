// Brings one kvraft node up and down: claims the data directory (and its cluster id), binds the
// multi-protocol port (TLS and client gate as configured), opens the KV server behind it with the
// authenticated Connect transport, and shuts down in the safe order.

import { ConnectTransport } from "../rpc/peers/connect-transport.ts";
import { admittedKVMethod, eRaftOverloadAnswers, registerKVService, type KVServiceBackend } from "../kv/service.ts";
import { registerClusterService } from "../kv/cluster-service.ts";
import { RpcServer } from "../rpc/server/server.ts";
import type { ConnectionLimits } from "../rpc/server/connection-guard.ts";
import type { Membership, NodeId, Transport } from "../raft/types.ts";
import type { KVServer } from "../kv/server.ts";
import type { KVDiagnostics } from "../kv/index.ts";
import type { RaftObserver } from "../raft/index.ts";
import { NodeMetrics, instrumentKV, instrumentRouter, obsRoutes, registerHealthService } from "../obs/index.ts";
import { statusPageRoute } from "../obs/status-page/page.ts";
import { log } from "../obs/log.ts";
import { registerReflection } from "../rpc/server/reflection.ts";
import { claimDataDir } from "./identity.ts";
import { markNewDataDir, RECOVERING_FILE } from "../kv/index.ts";
import { DEFAULT_CLUSTER_TOKEN, adoptClusterId, clusterIdOf } from "./cluster-id.ts";
import type { NodeSecurity } from "./security-flags.ts";
import { splitHostPort } from "./flags.ts";

/**
 * What serveNode needs from a KV server: the handlers' calls plus close (which syncs), the live
 * state for metrics and health, and its Raft node for ClusterService (KVServer has both; test
 * stand-ins may leave them out).
 */
export type KVNode = KVServiceBackend & Pick<KVServer, "close"> & Partial<Pick<KVServer, "raft">> & { diagnostics?(): KVDiagnostics };

/** A node that joins an existing cluster instead of bootstrapping one from `addrs`. */
export interface JoinOptions {
  /** This node's own host:port (where it listens and where the others reach it). */
  address: string;
  /** The cluster's members as a member listed them (null on a restart: the stored configuration says). */
  members: ReadonlyMap<NodeId, string> | null;
  /** The cluster id to adopt (null on a restart: the data directory has it). */
  clusterId: string | null;
}

export interface ServeNodeOptions {
  id: NodeId;
  addrs: readonly string[];
  dir: string;
  corsOrigins?: readonly string[];
  /** RpcServerOptions.fastLane (default true). */
  fastLane?: boolean;
  /** RpcServerOptions.h2Engine (default true). */
  h2Engine?: boolean;
  /** Deadlines and connection limits of the port (kvserver's connection flags); unset: the defaults. */
  connections?: Partial<ConnectionLimits>;
  /** TLS, peer authentication, client gate (see security-flags.ts); default: cleartext, peers unauthenticated. */
  security?: NodeSecurity;
  /** Join a running cluster (kvserver --join): no bootstrap members, it waits to be added. */
  join?: JoinOptions;
  /** Serve ClusterService although no client authorization guards the port (--insecure-admin). */
  insecureAdmin?: boolean;
  /** Admission control of KV calls (src/rpc/server/admission.ts); defaults: 1024 calls, 64 MiB. */
  admission?: { maxCalls?: number; maxBytes?: number };
  /**
   * Opens the KV server (KVServer.open in production, a stand-in in tests). `addresses` are the
   * bootstrap members' addresses; `onMembershipChange` keeps the transport's peers in step with
   * the configuration in the log.
   */
  open(args: {
    id: NodeId;
    peers: NodeId[];
    dir: string;
    transport: Transport;
    addresses: Record<NodeId, string>;
    onMembershipChange: (membership: Membership) => void;
    observer: RaftObserver;
  }): Promise<KVNode>;
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
  const { id, dir, join } = options;
  // A joining node's identity is its own address; a bootstrapping node's, the cluster's list.
  const addrs = join === undefined ? options.addrs : [join.address];
  const security = options.security ?? INSECURE;
  // A directory without identity is a new node, or one whose data was lost (wiped): the node cannot
  // tell, so it starts recovering (a new cluster then elects its first leader once every node is up).
  claimDataDir(dir, id, addrs, { run: () => markNewDataDir(dir), allowed: [RECOVERING_FILE, `${RECOVERING_FILE}.tmp`] });
  const clusterId =
    join === undefined ? clusterIdOf(dir, addrs, security.initialClusterToken ?? DEFAULT_CLUSTER_TOKEN) : adoptClusterId(dir, join.clusterId);
  const url = (address: string) => `${security.peerScheme}://${address}`;
  const initialPeers =
    join === undefined ? addrs.map((a, i) => [i, a] as const) : [...(join.members ?? new Map<NodeId, string>()), [id, join.address] as const];
  const transport = new ConnectTransport({
    id,
    peers: new Map(initialPeers.map(([i, a]) => [i, url(a)])),
    security: { ...security.peer, clusterId },
  });
  // The status page served by any member calls every member: their origins are allowed too. Both
  // follow the configuration: a member added on a new port appears, and may call the others.
  const scheme = security.tls !== undefined ? "https" : "http";
  const corsAllowed = new Set([...(options.corsOrigins ?? []), ...addrs.map((a) => `${scheme}://${a}`)]);
  let members = initialPeers.map(([i, a]) => ({ id: i, url: `${scheme}://${a}` })).sort((a, b) => a.id - b.id);
  for (const m of members) corsAllowed.add(m.url);
  // After bootstrap the configuration in the log names the peers: follow it (members without an
  // address keep the one the transport has).
  let wasMember = false;
  const onMembershipChange = (m: Membership) => {
    // A joining node knows no configuration until the leader's log reaches it: keep the members
    // it was told about, or its gate would refuse the very leader that is adding it.
    if (m.voters.length === 0) return;
    const member = m.voters.includes(id) || m.learners.includes(id);
    if (wasMember && !member) {
      log.warn(`kvserver: node ${id} was removed from cluster ${clusterId}; it takes no further part. Stop it; reuse its id only with an empty -db`);
    }
    wasMember = member;
    const peers = new Map<NodeId, string>();
    for (const member of [...m.voters, ...m.learners]) {
      const address = m.addresses[member] ?? initialPeers.find(([i]) => i === member)?.[1];
      if (address !== undefined) peers.set(member, url(address));
    }
    if (!peers.has(id)) peers.set(id, url(join?.address ?? addrs[id]!));
    transport.setPeers(peers);
    members = [...peers.keys()].sort((a, b) => a - b).map((member) => ({ id: member, url: peers.get(member)!.replace(/^[a-z]+:/, `${scheme}:`) }));
    for (const m of members) corsAllowed.add(m.url);
  };
  let kv: KVNode | undefined;
  let served: KVNode | undefined;
  const state = () => kv?.diagnostics?.();
  const metrics = new NodeMetrics(id, state);
  const { host, port } = splitHostPort(join?.address ?? addrs[id]!);
  let server: RpcServer;
  try {
    server = await RpcServer.start({
      host,
      port,
      corsOrigins: corsAllowed,
      fastLane: options.fastLane,
      ...(options.h2Engine !== undefined ? { h2Engine: options.h2Engine } : {}),
      ...(options.connections !== undefined ? { connections: options.connections } : {}),
      ...(security.tls !== undefined ? { tls: security.tls } : {}),
      ...(security.gate !== undefined ? { gate: security.gate } : {}),
      httpRoutes: obsRoutes({ metrics, state, extra: [statusPageRoute({ self: id, members: () => members })] }),
      admission: { ...options.admission, covers: admittedKVMethod, grpcAnswers: eRaftOverloadAnswers() },
      pulse: () => kv?.raft?.pulse(),
      routes: (router) => {
        const counted = instrumentRouter(router, metrics);
        registerKVService(counted, () => served);
        registerClusterService(counted, () => (kv?.raft === undefined ? undefined : { raft: kv.raft, clusterId }), {
          gated: security.gate !== undefined,
          allowUnauthenticated: options.insecureAdmin ?? false,
        });
        transport.registerRoutes(counted);
        registerHealthService(counted, { state });
        registerReflection(counted);
      },
    });
  } catch (error) {
    await transport.close();
    throw error;
  }
  metrics.admission = server.admission;
  metrics.connections = () => server.connectionStats;
  metrics.engine = server.stats;
  try {
    kv = await options.open({
      id,
      peers: join === undefined ? addrs.map((_, i) => i) : [],
      dir,
      transport,
      addresses: join === undefined ? Object.fromEntries(addrs.map((a, i) => [i, a])) : {},
      onMembershipChange,
      observer: metrics.raftObserver,
    });
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
        // Watches never finish on their own: end them first (clients resume on another node),
        // so the server's graceful close does not wait its whole grace period for them.
        opened.watches?.close();
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
