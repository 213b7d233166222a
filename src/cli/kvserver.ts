// kvserver: one kvraft node, with eRaft's flags and defaults.
//   bun run kvserver -id 0 -addrs "localhost:5001,localhost:5002,localhost:5003" -db kvserver-data
// Exit status: 0 after a clean shutdown (SIGINT/SIGTERM), 1 runtime failure (e.g. port in use),
// 2 bad usage or a data directory that belongs to another node or cluster, 3 fail-stop (a storage
// error or broken invariant while running: one line says what and what to do; restart it).

import * as fs from "node:fs";
import * as path from "node:path";
import { KVServer } from "../kv/index.ts";
import { adminConnection, callLeader } from "./cluster-admin.ts";
import { CLUSTER_ID_FILE } from "./cluster-id.ts";
import { ListenError } from "../rpc/server/server.ts";
import type { ConnectionLimits } from "../rpc/server/connection-guard.ts";
import { UsageError, parseAddrs, parseFlags } from "./flags.ts";
import { DataDirError } from "./identity.ts";
import { serveNode, type JoinOptions, type ServingNode } from "./serve-node.ts";
import { CONNECTION_USAGE, CONNECTION_VALUE_FLAGS, connectionLimitsFrom } from "./connection-flags.ts";
import { SECURITY_SWITCHES, SECURITY_USAGE, SECURITY_VALUE_FLAGS, loadSecurity, type NodeSecurity } from "./security-flags.ts";
import { log, parseLogLevel, type LogLevel } from "../obs/log.ts";

const SNAPSHOT_CHUNK_BYTES = 64 * 1024;
const SHUTDOWN_LIMIT_MS = 20_000;

const USAGE = `usage: bun run kvserver [-id N] [-addrs host:port,...] [-db DIR] [--cors-origin ORIGIN,...]

  -id                  this node's index in -addrs (default 0); with --join, its new id
  -addrs               comma separated addresses of every node, the same on every node
                       (default "localhost:5001,localhost:5002,localhost:5003"); used only to
                       bootstrap: afterwards the membership stored in the log is the truth
  --join host:port,... join the running cluster that these members belong to, instead of
                       bootstrapping one: this node starts empty and waits (never campaigns) until
                       a member adds it (kvclient member add -id N -address ADDR); needs -addr
  -addr                this node's own host:port (with --join)
  --insecure-admin     serve ClusterService (membership changes) without client authorization
  -db                  data directory: Raft log and LSM (default "kvserver-data"); one per node
  --cors-origin        browser origins allowed to call this node, comma separated ("*" for any)
  --no-fast-lane       serve every call through the Connect adapter (turns off the HTTP/1.1 unary
                       lane, the HTTP/2 engine and lanes, the peer frame lane; for measuring what
                       they gain)
  --no-h2-engine       serve HTTP/2 client connections with node:http2 instead of the node's own
                       HTTP/2 engine (the unary lane still runs on node:http2's streams)
  --snapshot-threshold compact the Raft log once this many entries are applied past the last
                       snapshot (default: the KV server's own)
  --snapshot-threshold-mb
                       compact it also once the entries it holds in memory pass this many MiB
                       (default 64; the state machine flushes every half of it)
  --snapshot-format    what this node sends a follower that needs a snapshot: files (its LSM table
                       files, the default) or pairs (every key and value: the stream older builds
                       read, for a cluster part-way through an upgrade); both are installed
  --session-ttl MS     a client session idle this long (by the leaders' clocks) expires
                       (default 3600000, one hour); give every node the same value
  --max-sessions N     registered client sessions at most; registrations beyond are refused
                       (default 100000)
  --max-unregistered-sessions N
                       sessions of clients that do not register (eRaft's) at most; the least
                       recently used is dropped beyond (default 100000)
  --max-pending N      client commands in flight on this node at most; beyond it a command is
                       refused at once with resource_exhausted (default: the KV server's own)
  --max-in-flight N    KV calls (Command, Batch, Txn, Range, ...; not GetStatus) in flight on this
                       node at most; one more is refused before it is parsed, with resource_exhausted
                       and a retry-after-ms hint. The bound in force follows the node's answer rate
                       (250 ms worth, at least 128) up to N (default 1024)
  --max-in-flight-mb N request bytes of those calls at most (default 64)
  --log-level          debug, info, warn, error or fatal (default info)
  --log-format         json (one object per line), human, or auto: human on a terminal (default)
  --max-watches        watches this node serves at once; one more is refused (default 1000)
  --min-free-disk-mb   refuse writes (resource_exhausted) while the data directory's disk has less
                       free space than this; reads go on (default 128)
  -help                print this message

security (a node of a multi-node cluster needs peer authentication, or --insecure-peers):
${SECURITY_USAGE}

connections (times in milliseconds):
${CONNECTION_USAGE}

Serves Connect (JSON and binary), gRPC and gRPC-Web on HTTP/1.1 and HTTP/2 (h2c, or TLS), and the
Raft peer service, all on the node's own address, with GET /metrics (Prometheus), /livez, /readyz,
a status page at /, grpc.health.v1 and server reflection beside them. Flags may also be written
--name value or -name=value.`;

interface Config {
  id: number;
  addrs: string[];
  db: string;
  corsOrigins: string[];
  snapshotThreshold?: number;
  snapshotThresholdBytes?: number;
  snapshotFormat?: "files" | "pairs";
  minFreeDiskBytes: number;
  maxWatches?: number;
  fastLane: boolean;
  h2Engine: boolean;
  connections: Partial<ConnectionLimits>;
  sessions: { sessionTtlMs?: number; maxSessions?: number; maxUnregisteredSessions?: number };
  maxPendingCommands?: number;
  admission: { maxCalls?: number; maxBytes?: number };
  security: NodeSecurity;
  join?: { address: string; members: string[] };
  insecureAdmin: boolean;
  /** --client-token-file and a CA for calling the members when joining. */
  joinCredentials: Record<string, string | undefined>;
  logLevel: LogLevel;
  logFormat: "json" | "human" | "auto";
}

function parseConfig(argv: string[]): Config | "help" {
  const flags = parseFlags(argv, {
    values: {
      id: "0",
      addrs: "localhost:5001,localhost:5002,localhost:5003",
      db: "kvserver-data",
      "cors-origin": "",
      "snapshot-threshold": undefined,
      "snapshot-threshold-mb": undefined,
      "snapshot-format": undefined,
      "min-free-disk-mb": "128",
      join: undefined,
      addr: undefined,
      "session-ttl": undefined,
      "max-sessions": undefined,
      "max-unregistered-sessions": undefined,
      "max-pending": undefined,
      "max-in-flight": undefined,
      "max-in-flight-mb": undefined,
      "log-level": "info",
      "log-format": "auto",
      "max-watches": undefined,
      ...SECURITY_VALUE_FLAGS,
      ...CONNECTION_VALUE_FLAGS,
    },
    switches: ["help", "h", "no-fast-lane", "no-h2-engine", "insecure-admin", ...SECURITY_SWITCHES],
  });
  if (flags.switches.has("help") || flags.switches.has("h")) return "help";
  const joining = flags.values.join !== undefined;
  if (joining && flags.values.addr === undefined) throw new UsageError("--join needs -addr host:port: where this node listens and the others reach it");
  const addrs = parseAddrs(joining ? (flags.values.addr ?? "") : flags.values.addrs!);
  const id = Number(flags.values.id);
  if (!/^\d+$/.test(flags.values.id!) || id > 0xffff_ffff || (!joining && id >= addrs.length)) {
    throw new UsageError(joining ? `-id ${flags.values.id} is not a node id` : `-id ${flags.values.id} is not a node of -addrs (use 0..${addrs.length - 1})`);
  }
  if (flags.values.addr !== undefined && !joining) throw new UsageError("-addr goes with --join (a bootstrapping node's address is -addrs[-id])");
  const join = joining ? { address: addrs[0]!, members: parseAddrs(flags.values.join!) } : undefined;
  if (join !== undefined && addrs.length !== 1) throw new UsageError("-addr is one host:port");
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
  let snapshotThresholdBytes: number | undefined;
  if (flags.values["snapshot-threshold-mb"] !== undefined) {
    const mb = Number(flags.values["snapshot-threshold-mb"]);
    if (!Number.isInteger(mb) || mb < 1 || mb > 65_536) throw new UsageError(`--snapshot-threshold-mb must be a whole number of MiB from 1 to 65536`);
    snapshotThresholdBytes = mb * 1024 * 1024;
  }
  const snapshotFormat = flags.values["snapshot-format"];
  if (snapshotFormat !== undefined && snapshotFormat !== "files" && snapshotFormat !== "pairs") {
    throw new UsageError(`--snapshot-format "${snapshotFormat}" is not one of files, pairs`);
  }
  const minFreeMb = Number(flags.values["min-free-disk-mb"]);
  if (!/^\d+(\.\d+)?$/.test(flags.values["min-free-disk-mb"]!) || !Number.isFinite(minFreeMb)) {
    throw new UsageError(`--min-free-disk-mb must be a number of MiB (0 or more)`);
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
  const security = loadSecurity(flags, joining ? 2 : addrs.length);
  const logLevel = parseLogLevel(flags.values["log-level"]!);
  if (logLevel === undefined) throw new UsageError(`--log-level "${flags.values["log-level"]}" is not one of debug, info, warn, error, fatal`);
  const logFormat = flags.values["log-format"]!;
  if (logFormat !== "json" && logFormat !== "human" && logFormat !== "auto") {
    throw new UsageError(`--log-format "${logFormat}" is not one of json, human, auto`);
  }
  let maxWatches: number | undefined;
  if (flags.values["max-watches"] !== undefined) {
    maxWatches = Number(flags.values["max-watches"]);
    if (!Number.isInteger(maxWatches) || maxWatches < 0) throw new UsageError(`--max-watches must be a non-negative integer`);
  }
  return {
    id,
    addrs,
    db: flags.values.db!,
    corsOrigins,
    snapshotThreshold,
    snapshotThresholdBytes,
    ...(snapshotFormat === undefined ? {} : { snapshotFormat }),
    minFreeDiskBytes: Math.round(minFreeMb * 1024 * 1024),
    maxWatches,
    fastLane: !flags.switches.has("no-fast-lane"),
    h2Engine: !flags.switches.has("no-h2-engine"),
    connections: connectionLimitsFrom(flags),
    sessions,
    maxPendingCommands: positive("max-pending"),
    admission: {
      ...(flags.values["max-in-flight"] !== undefined ? { maxCalls: positive("max-in-flight") } : {}),
      ...(flags.values["max-in-flight-mb"] !== undefined ? { maxBytes: positive("max-in-flight-mb")! * 1024 * 1024 } : {}),
    },
    security,
    logLevel,
    logFormat,
    ...(join !== undefined ? { join } : {}),
    insecureAdmin: flags.switches.has("insecure-admin"),
    joinCredentials: {
      "token-file": flags.values["client-token-file"],
      cacert: flags.values["peer-trusted-ca-file"] ?? flags.values["trusted-ca-file"],
    },
  };
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
  let node: ServingNode | undefined;
  log.configure({
    level: config.logLevel,
    format: config.logFormat,
    node: id,
    term: () => node?.kv.diagnostics?.().raft.term,
    onProblem: (_level, msg) => node?.metrics.event("error", node.kv.diagnostics?.().raft.term ?? 0, msg),
  });

  let join: JoinOptions | undefined;
  if (config.join !== undefined) {
    try {
      join = await joinTarget(id, config.join, db, config);
    } catch (error) {
      log.fatal(`kvserver: node ${id} cannot join: ${(error as Error).message}`);
      return error instanceof UsageError ? 2 : 1;
    }
  }

  try {
    node = await serveNode({
      id,
      addrs,
      ...(join !== undefined ? { join } : {}),
      insecureAdmin: config.insecureAdmin,
      admission: config.admission,
      dir: db,
      corsOrigins: config.corsOrigins,
      fastLane: config.fastLane,
      h2Engine: config.h2Engine,
      connections: config.connections,
      security: config.security,
      open: ({ addresses, onMembershipChange, ...args }) =>
        KVServer.open({
          ...args,
          raft: {
            addresses,
            onMembershipChange,
            // The size ConnectTransport streams snapshot data in; a chunk never needs splitting.
            snapshotChunkBytes: SNAPSHOT_CHUNK_BYTES,
            observer: args.observer,
            ...(config.snapshotThreshold === undefined ? {} : { snapshotThreshold: config.snapshotThreshold }),
            ...(config.snapshotThresholdBytes === undefined ? {} : { snapshotThresholdBytes: config.snapshotThresholdBytes }),
          },
          state: { ...config.sessions, ...(config.snapshotFormat === undefined ? {} : { snapshotFormat: config.snapshotFormat }) },
          ...(config.maxPendingCommands === undefined ? {} : { limits: { maxPendingCommands: config.maxPendingCommands } }),
          ...(config.maxWatches === undefined ? {} : { watchLimits: { maxWatches: config.maxWatches } }),
          diskWatch: { minFreeBytes: config.minFreeDiskBytes },
          // Fail-stop: one line, a non-zero exit, no zombie that still answers GetStatus.
          onFatal: (error) => {
            log.fatal(`kvserver: node ${id} FATAL: ${error.message}`, { error });
            process.exit(3);
          },
          // Lines from before the Raft node runs (opening storage) have no term yet: 0, as a new node's.
          log: (line) => log.warn(`kvserver: node ${id}: ${line}`, { term: 0 }),
        }),
    });
  } catch (error) {
    if (error instanceof DataDirError) {
      log.fatal(`kvserver: ${error.message}`);
      return 2;
    }
    if (error instanceof ListenError) {
      log.fatal(`kvserver: ${error.message}`);
      return 1;
    }
    log.fatal(`kvserver: node ${id} failed to start: ${(error as Error).message}`, { error });
    return 1;
  }
  const serving = node;

  const cors = config.corsOrigins.length > 0 ? `; CORS for ${config.corsOrigins.join(", ")}` : "";
  const scheme = config.security.tls === undefined ? "http" : "https";
  const own = join?.address ?? addrs[id]!;
  log.info(
    `kvserver: node ${id} serving on ${scheme}://${own} (Connect, gRPC, gRPC-Web; HTTP/1.1 and ${scheme === "http" ? "h2c" : "h2"}), ` +
      `cluster ${serving.clusterId} (${config.security.summary}), data in ${db}${cors}`,
    { addr: own, members: addrs.length },
  );
  if (join?.members != null) {
    log.info(`kvserver: node ${id} waits to be added: kvclient member add -id ${id} -address ${own} -addrs ${config.join!.members.join(",")}`);
  }

  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) {
        log.warn(`kvserver: node ${id} got ${signal} again; exiting without waiting`);
        resolve(1);
        return;
      }
      stopping = true;
      log.info(`kvserver: node ${id} got ${signal}; finishing in-flight requests and closing`);
      // Bounded: a close that hangs must not keep the process (and its port) forever.
      setTimeout(() => {
        log.error(`kvserver: node ${id} did not close within ${SHUTDOWN_LIMIT_MS} ms; exiting anyway`);
        resolve(1);
      }, SHUTDOWN_LIMIT_MS).unref();
      serving.close().then(
        () => {
          log.info(`kvserver: node ${id} stopped`);
          resolve(0);
        },
        (error) => {
          log.error(`kvserver: node ${id} failed to close cleanly: ${(error as Error).message}`, { error });
          resolve(1);
        },
      );
    };
    process.on("SIGINT", () => stop("SIGINT"));
    process.on("SIGTERM", () => stop("SIGTERM"));
  });
}

/**
 * What a joining node needs before it serves: the cluster id and members, from whichever member
 * leads. On a restart (the data directory has the cluster id) the members are welcome but not
 * needed: the stored configuration names the peers, unless the node was never added yet.
 */
async function joinTarget(id: number, join: { address: string; members: string[] }, db: string, config: Config): Promise<JoinOptions> {
  const restarting = fs.existsSync(path.join(db, CLUSTER_ID_FILE));
  const conn = adminConnection({ addrs: join.members.join(","), timeout: restarting ? "3000" : "15000", ...config.joinCredentials });
  conn.https = config.security.tls !== undefined;
  let list;
  try {
    list = await callLeader(conn, (c) => c.memberList({}));
  } catch (error) {
    if (!restarting) throw error;
    return { address: join.address, members: null, clusterId: null };
  }
  const members = new Map<number, string>();
  for (const m of list.members) if (m.address !== "") members.set(Number(m.id), m.address);
  // On a restart the id adopted before must match (adoptClusterId checks), and being a member is normal.
  if (restarting) return { address: join.address, members, clusterId: list.clusterId };
  const clash = list.members.find((m) => Number(m.id) === id);
  if (clash !== undefined) {
    throw new UsageError(`node ${id} is already a ${clash.role} of cluster ${list.clusterId} (at ${clash.address || "an unknown address"}); remove it first or pick another -id`);
  }
  return { address: join.address, members, clusterId: list.clusterId };
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    log.fatal(`kvserver: ${(error as Error).message}`, { error });
    process.exit(1);
  },
);
