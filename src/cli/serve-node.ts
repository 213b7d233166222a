// Brings one kvraft node up and down: claims the data directory, binds the multi-protocol port,
// opens the KV server behind it with the Connect transport, and shuts down in the safe order.

import { ConnectTransport } from "../rpc/peers/connect-transport.ts";
import { registerKVService, type KVServiceBackend } from "../kv/service.ts";
import { RpcServer } from "../rpc/server/server.ts";
import { toBaseUrl } from "../kv/client.ts";
import type { NodeId, Transport } from "../raft/types.ts";
import type { KVServer } from "../kv/server.ts";
import { claimDataDir } from "./identity.ts";
import { markNewDataDir, RECOVERING_FILE } from "../kv/index.ts";
import { splitHostPort } from "./flags.ts";

/** What serveNode needs from a KV server: the handlers' calls plus close (which syncs). */
export type KVNode = KVServiceBackend & Pick<KVServer, "close">;

export interface ServeNodeOptions {
  id: NodeId;
  addrs: readonly string[];
  dir: string;
  corsOrigins?: readonly string[];
  /** RpcServerOptions.fastLane (default true). */
  fastLane?: boolean;
  /** Opens the KV server (KVServer.open in production, a stand-in in tests). */
  open(args: { id: NodeId; peers: NodeId[]; dir: string; transport: Transport }): Promise<KVNode>;
}

export interface ServingNode {
  server: RpcServer;
  transport: ConnectTransport;
  kv: KVNode;
  /** Stop accepting, let in-flight calls finish, close the KV server (sync), drop peer links. */
  close(): Promise<void>;
}

export async function serveNode(options: ServeNodeOptions): Promise<ServingNode> {
  const { id, addrs, dir } = options;
  // A directory without identity is a new node, or one whose data was lost (wiped): the node cannot
  // tell, so it starts recovering (a new cluster then elects its first leader once every node is up).
  claimDataDir(dir, id, addrs, { run: () => markNewDataDir(dir), allowed: [RECOVERING_FILE, `${RECOVERING_FILE}.tmp`] });
  const transport = new ConnectTransport({ id, peers: new Map(addrs.map((a, i) => [i, toBaseUrl(a)])) });
  let kv: KVNode | undefined;
  const { host, port } = splitHostPort(addrs[id]!);
  let server: RpcServer;
  try {
    server = await RpcServer.start({
      host,
      port,
      corsOrigins: options.corsOrigins,
      fastLane: options.fastLane,
      routes: (router) => {
        registerKVService(router, () => kv);
        transport.registerRoutes(router);
      },
    });
  } catch (error) {
    await transport.close();
    throw error;
  }
  try {
    kv = await options.open({ id, peers: addrs.map((_, i) => i), dir, transport });
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
