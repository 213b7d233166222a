// The client libraries the cluster suite drives, as applications use them: kvraft's Clerk over
// HTTP/2 binary Connect through its lean transport (createClerkTransport, what we recommend) or
// connect-node's, or over gRPC through connect-node, one Clerk for every concurrent caller of
// the generator process (its sessions and Batch coalescing as shipped, or with batching off), and
// etcd through the `etcd3` npm client over gRPC. Each answers put/get as one awaited call.

import type { Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { Clerk } from "../src/kv/client.ts";
import { createClerkTransport } from "../src/rpc/index.ts";

/** How the generator reaches the cluster. */
export type ClientPath = "http1" | "clerk-h2" | "clerk-h2-connect" | "clerk-grpc" | "clerk-grpc-lean" | "clerk-h2-unbatched" | "etcd3";
export const CLIENT_PATHS: readonly ClientPath[] = ["http1", "clerk-h2", "clerk-h2-connect", "clerk-grpc", "clerk-grpc-lean", "clerk-h2-unbatched", "etcd3"];

/** Which system each path talks to. */
export const PATH_SYSTEM: Record<ClientPath, "ours" | "etcd" | "both"> = {
  http1: "both",
  "clerk-h2": "ours",
  "clerk-h2-connect": "ours",
  "clerk-grpc": "ours",
  "clerk-grpc-lean": "ours",
  "clerk-h2-unbatched": "ours",
  etcd3: "etcd",
};

export const PATH_LABEL: Record<ClientPath, string> = {
  http1: "HTTP/1.1 JSON",
  "clerk-h2": "Clerk, HTTP/2 binary Connect (lean transport), batched",
  "clerk-h2-connect": "Clerk, HTTP/2 binary Connect (connect-node), batched",
  "clerk-grpc": "Clerk, gRPC (connect-node), batched",
  "clerk-grpc-lean": "Clerk, gRPC (lean transport), batched",
  "clerk-h2-unbatched": "Clerk, HTTP/2 binary Connect, one RPC per op",
  etcd3: "etcd3 npm client, gRPC",
};

export interface NativeClient {
  put(key: string, value: string): Promise<void>;
  /** Throws when the key does not exist (the suite reads only preloaded keys). */
  get(key: string): Promise<void>;
  /** The bulk API (the Clerk's putMany), `concurrency` writes in flight; resolves with the count. */
  putMany?(pairs: Iterable<[string, string]>, concurrency: number): Promise<number>;
  close(): void;
}

/**
 * A client for `path`: `ports` are every member's client port in member order, `leaderPort` the
 * leader's (etcd3 is pointed at the leader only, as the HTTP/1.1 generator is).
 */
export async function openNativeClient(path: Exclude<ClientPath, "http1">, ports: number[], leaderPort: number, concurrency: number): Promise<NativeClient> {
  if (path === "etcd3") {
    const { Etcd3 } = await import("etcd3");
    const etcd = new Etcd3({ hosts: `http://127.0.0.1:${leaderPort}` });
    return {
      async put(key, value) {
        await etcd.put(key).value(value);
      },
      async get(key) {
        const value = await etcd.get(key).string();
        if (value === null) throw new Error(`etcd: key ${key} not found`);
      },
      close: () => etcd.close(),
    };
  }
  const transports: (Transport & { close?(): void })[] = [];
  const transport: (baseUrl: string) => Transport & { close?(): void } =
    path === "clerk-grpc"
      ? (baseUrl) => createGrpcTransport({ baseUrl })
      : path === "clerk-h2-connect"
        ? (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true })
        : path === "clerk-grpc-lean"
          ? (baseUrl) => createClerkTransport({ baseUrl, protocol: "grpc" })
          : (baseUrl) => createClerkTransport({ baseUrl });
  // Leader first in the address list is not needed: the Clerk follows the first refusal's hint.
  const clerk = new Clerk({
    addrs: ports.map((p) => `127.0.0.1:${p}`),
    transport: (baseUrl) => {
      const made = transport(baseUrl);
      transports.push(made);
      return made;
    },
    maxConcurrency: concurrency,
    batch: path === "clerk-h2-unbatched" ? false : {},
  });
  return {
    put: (key, value) => clerk.put(key, value),
    putMany: (pairs, concurrency) => clerk.putMany(pairs, { concurrency }),
    async get(key) {
      if ((await clerk.get(key)) === null) throw new Error(`kvraft: key ${key} not found`);
    },
    close() {
      for (const t of transports) t.close?.();
    },
  };
}
