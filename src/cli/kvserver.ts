// kvserver: one kvraft node, with eRaft's flags and defaults.
//   bun run kvserver -id 0 -addrs "localhost:5001,localhost:5002,localhost:5003" -db kvserver-data
// Exit status: 0 after a clean shutdown (SIGINT/SIGTERM), 1 runtime failure (e.g. port in use),
// 2 bad usage or a data directory that belongs to another node or cluster.

import { KVServer } from "../kv/index.ts";
import { ListenError } from "../rpc/server/server.ts";
import { UsageError, parseAddrs, parseFlags } from "./flags.ts";
import { DataDirError } from "./identity.ts";
import { serveNode, type ServingNode } from "./serve-node.ts";
import { SECURITY_SWITCHES, SECURITY_USAGE, SECURITY_VALUE_FLAGS, loadSecurity, type NodeSecurity } from "./security-flags.ts";

const SNAPSHOT_CHUNK_BYTES = 1024 * 1024;
const SHUTDOWN_LIMIT_MS = 20_000;

const USAGE = `usage: bun run kvserver [-id N] [-addrs host:port,...] [-db DIR] [--cors-origin ORIGIN,...]

  -id                  this node's index in -addrs (default 0)
  -addrs               comma separated addresses of every node, the same on every node
                       (default "localhost:5001,localhost:5002,localhost:5003")
  -db                  data directory: Raft log and LSM (default "kvserver-data"); one per node
  --cors-origin        browser origins allowed to call this node, comma separated ("*" for any)
  --no-fast-lane       serve every call through the Connect adapter (turns off the HTTP/1.1 unary
                       lane and the HTTP/2 peer frame lane; for measuring what they gain)
  --snapshot-threshold compact the Raft log once this many entries are applied past the last
                       snapshot (default: the KV server's own)
  --session-ttl MS     a client session idle this long (by the leaders' clocks) expires
                       (default 3600000, one hour); give every node the same value
  --max-sessions N     registered client sessions at most; registrations beyond are refused
                       (default 100000)
  --max-unregistered-sessions N
                       sessions of clients that do not register (eRaft's) at most; the least
                       recently used is dropped beyond (default 100000)
  --max-pending N      client commands in flight on this node at most; beyond it a command is
                       refused at once with resource_exhausted (default: the KV server's own)
  -help                print this message

security (a node of a multi-node cluster needs peer authentication, or --insecure-peers):
${SECURITY_USAGE}

Serves Connect (JSON and binary), gRPC and gRPC-Web on HTTP/1.1 and HTTP/2 (h2c, or TLS), and the
Raft peer service, all on the node's own address. Flags may also be written --name value or -name=value.`;

interface Config {
  id: number;
  addrs: string[];
  db: string;
  corsOrigins: string[];
  snapshotThreshold?: number;
  fastLane: boolean;
  sessions: { sessionTtlMs?: number; maxSessions?: number; maxUnregisteredSessions?: number };
  maxPendingCommands?: number;
  security: NodeSecurity;
}

function parseConfig(argv: string[]): Config | "help" {
  const flags = parseFlags(argv, {
    values: {
      id: "0",
      addrs: "localhost:5001,localhost:5002,localhost:5003",
      db: "kvserver-data",
      "cors-origin": "",
      "snapshot-threshold": undefined,
      "session-ttl": undefined,
      "max-sessions": undefined,
      "max-unregistered-sessions": undefined,
      "max-pending": undefined,
      ...SECURITY_VALUE_FLAGS,
    },
    switches: ["help", "h", "no-fast-lane", ...SECURITY_SWITCHES],
  });
  if (flags.switches.has("help") || flags.switches.has("h")) return "help";
  const addrs = parseAddrs(flags.values.addrs!);
  const id = Number(flags.values.id);
  if (!/^\d+$/.test(flags.values.id!) || id >= addrs.length) {
    throw new UsageError(`-id ${flags.values.id} is not a node of -addrs (use 0..${addrs.length - 1})`);
  }
  if (flags.values.db!.trim() === "") throw new UsageError("-db must not be empty");
  const corsOrigins = flags.values["cors-origin"]!.split(",").map((o) => o.trim()).filter((o) => o !== "");
  for (const origin of corsOrigins) {
    if (origin !== "*" && !/^https?:\/\/[^/\s]+$/.test(origin)) {
      throw new UsageError(`--cors-origin "${origin}" is not an origin like http://localhost:8080 (or "*")`);
    }
  }
  let snapshotThreshold: number | undefined;
  if (flags.values["snapshot-threshold"] !== undefined) {
    snapshotThreshold = Number(flags.values["snapshot-threshold"]);
    if (!Number.isInteger(snapshotThreshold) || snapshotThreshold < 1) {
      throw new UsageError(`--snapshot-threshold must be a positive integer`);
    }
  }
  const positive = (name: string): number | undefined => {
    const raw = flags.values[name];
    if (raw === undefined) return undefined;
    const value = Number(raw);
    if (!/^\d+$/.test(raw) || value < 1) throw new UsageError(`--${name} must be a positive integer, got "${raw}"`);
    return value;
  };
  const sessions = {
    sessionTtlMs: positive("session-ttl"),
    maxSessions: positive("max-sessions"),
    maxUnregisteredSessions: positive("max-unregistered-sessions"),
  };
  const security = loadSecurity(flags, addrs.length);
  return { id, addrs, db: flags.values.db!, corsOrigins, snapshotThreshold, fastLane: !flags.switches.has("no-fast-lane"), sessions, maxPendingCommands: positive("max-pending"), security };
}

async function main(argv: string[]): Promise<number> {
  let config: Config | "help";
  try {
    config = parseConfig(argv);
  } catch (error) {
    if (error instanceof UsageError) {
      console.error(`kvserver: ${error.message}\n\n${USAGE}`);
      return 2;
    }
    throw error;
  }
  if (config === "help") {
    console.log(USAGE);
    return 0;
  }
  const { id, addrs, db } = config;

  let node: ServingNode;
  try {
    node = await serveNode({
      id,
      addrs,
      dir: db,
      corsOrigins: config.corsOrigins,
      fastLane: config.fastLane,
      security: config.security,
      open: (args) =>
        KVServer.open({
          ...args,
          raft: {
            // The size ConnectTransport streams snapshot data in; a chunk never needs splitting.
            snapshotChunkBytes: SNAPSHOT_CHUNK_BYTES,
            ...(config.snapshotThreshold === undefined ? {} : { snapshotThreshold: config.snapshotThreshold }),
          },
          state: config.sessions,
          ...(config.maxPendingCommands === undefined ? {} : { limits: { maxPendingCommands: config.maxPendingCommands } }),
        }),
    });
  } catch (error) {
    if (error instanceof DataDirError) {
      console.error(`kvserver: ${error.message}`);
      return 2;
    }
    if (error instanceof ListenError) {
      console.error(`kvserver: ${error.message}`);
      return 1;
    }
    console.error(`kvserver: node ${id} failed to start: ${(error as Error).stack ?? error}`);
    return 1;
  }

  const cors = config.corsOrigins.length > 0 ? `; CORS for ${config.corsOrigins.join(", ")}` : "";
  const scheme = config.security.tls === undefined ? "http" : "https";
  console.log(
    `kvserver: node ${id} serving on ${scheme}://${addrs[id]} (Connect, gRPC, gRPC-Web; HTTP/1.1 and ${scheme === "http" ? "h2c" : "h2"}), ` +
      `cluster ${node.clusterId} (${config.security.summary}), data in ${db}${cors}`,
  );

  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) {
        console.error(`kvserver: node ${id} got ${signal} again; exiting without waiting`);
        resolve(1);
        return;
      }
      stopping = true;
      console.log(`kvserver: node ${id} got ${signal}; finishing in-flight requests and closing`);
      // Bounded: a close that hangs must not keep the process (and its port) forever.
      setTimeout(() => {
        console.error(`kvserver: node ${id} did not close within ${SHUTDOWN_LIMIT_MS} ms; exiting anyway`);
        resolve(1);
      }, SHUTDOWN_LIMIT_MS).unref();
      node.close().then(
        () => {
          console.log(`kvserver: node ${id} stopped`);
          resolve(0);
        },
        (error) => {
          console.error(`kvserver: node ${id} failed to close cleanly: ${(error as Error).stack ?? error}`);
          resolve(1);
        },
      );
    };
    process.on("SIGINT", () => stop("SIGINT"));
    process.on("SIGTERM", () => stop("SIGTERM"));
  });
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    console.error(`kvserver: ${(error as Error).stack ?? error}`);
    process.exit(1);
  },
);
