// One node's Prometheus metrics: a prom-client Registry with the process defaults, the Raft
// observer's hot-path recorders, and gauges/counters read from KVServer.diagnostics() at scrape time.
// Names follow Prometheus conventions: kvraft_<layer>_<what>_<unit>, counters end in _total.

import { Registry, collectDefaultMetrics } from "prom-client";
import type { KVDiagnostics } from "../kv/index.ts";
import { NONE, type Entry, type Message, type RaftObserver } from "../raft/index.ts";
import { log } from "./log.ts";
import type { ConnectionStats } from "../rpc/server/connection-guard.ts";
import { BucketHistogram, CounterFamily, HistogramFamily, register, scraped, type ScrapedMetric } from "./recorders.ts";

/** Seconds: 50 µs .. 5 s, for fsync, request and RPC latencies. */
export const LATENCY_BOUNDS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
/** Entries per save or per AppendEntries message. */
const COUNT_BOUNDS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];
/** Bytes per save or per AppendEntries message. */
const BYTES_BOUNDS = [64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304];

const HEAP_SPACE_METRICS = ["nodejs_heap_space_size_total_bytes", "nodejs_heap_space_size_used_bytes", "nodejs_heap_space_size_available_bytes"];

const ROLES = ["Leader", "Follower", "Candidate", "PreCandidate"] as const;

/** A leader change or a fatal condition, kept for the status page (/events). */
export interface NodeEvent {
  time: number;
  kind: "leader" | "error";
  term: number;
  message: string;
}

const MAX_EVENTS = 64;

/** What the metrics read of the RPC server's HTTP/2 engine (RpcServer.stats). */
export interface EngineView {
  readonly h2EngineConnections: number;
  readonly h2Relayed: number;
  readonly h2Engine: { readonly goAways: readonly number[]; readonly rapidResets: number };
}

/** HTTP/2 error code names (RFC 9113 §7), the GOAWAY counter's label values. */
const H2_CODES = ["NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT", "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED"];

/** What the metrics read of the RPC server's admission control (src/rpc/server/admission.ts). */
export interface AdmissionView {
  readonly stats: { readonly admitted: number; readonly refusedCalls: number; readonly refusedBytes: number };
  readonly inFlightCalls: number;
  readonly inFlightBytes: number;
}

export class NodeMetrics {
  readonly registry = new Registry();
  /** Recent leader changes and errors, oldest first, at most MAX_EVENTS. */
  readonly events: NodeEvent[] = [];

  // Raft, recorded by the observer.
  private leaderChanges = 0;
  private knownLeader: number = NONE;
  private proposals = 0;
  private appendsSent = 0;
  private readonly saveSeconds = new BucketHistogram(LATENCY_BOUNDS);
  private readonly entriesPerSave = new BucketHistogram(COUNT_BOUNDS);
  private readonly bytesPerSave = new BucketHistogram(BYTES_BOUNDS);
  private readonly entriesPerAppend = new BucketHistogram(COUNT_BOUNDS);
  private readonly bytesPerAppend = new BucketHistogram(BYTES_BOUNDS);

  /** KV requests by op and result, and their latency by op (recorded by instrumentKV). */
  readonly kvRequests = new CounterFamily("kvraft_kv_requests_total", "KV commands by op and result (an error code when the command failed).", ["op", "result"]);
  readonly kvLatency = new HistogramFamily("kvraft_kv_request_duration_seconds", "Time from a KV command's arrival to its answer, by op.", ["op"], LATENCY_BOUNDS);
  /** RPCs by method, protocol and code, and in flight (recorded by instrumentRouter). */
  readonly rpcRequests = new CounterFamily("kvraft_rpc_requests_total", "RPCs answered, by method, protocol (connect, grpc, grpc-web) and code.", ["method", "protocol", "code"]);
  readonly rpcLatency = new HistogramFamily("kvraft_rpc_duration_seconds", "RPC handling time by method.", ["method"], LATENCY_BOUNDS);
  rpcInFlight = 0;
  /** The RPC server's admission control (set once the port is bound; null: none configured). */
  admission: AdmissionView | null = null;
  /** The port's connection counters (RpcServer.connectionStats), once the port is bound. */
  connections: (() => Readonly<ConnectionStats>) | null = null;
  /** The RPC server's path counters (RpcServer.stats), once the port is bound. */
  engine: EngineView | null = null;

  readonly raftObserver: RaftObserver = {
    proposed: (count) => {
      this.proposals += count;
    },
    saved: (entries, seconds) => this.recordSave(entries, seconds),
    sent: (messages) => this.recordSent(messages),
    softState: (soft) => {
      if (soft.leaderId !== NONE && soft.leaderId !== this.knownLeader) {
        this.leaderChanges++;
        this.event("leader", soft.term, `node ${soft.leaderId} leads in term ${soft.term}`);
        log.info(`raft: node ${soft.leaderId} leads in term ${soft.term}`, { leader: soft.leaderId, role: soft.role });
      } else if (soft.leaderId === NONE && this.knownLeader !== NONE) {
        this.event("leader", soft.term, `no leader known (was node ${this.knownLeader}); role ${soft.role}`);
        log.warn(`raft: lost touch with leader ${this.knownLeader}; now ${soft.role}`, { role: soft.role });
      }
      this.knownLeader = soft.leaderId;
    },
  };

  constructor(
    readonly nodeId: number,
    /** The node's live state; undefined while it opens its storage (or after close). */
    private readonly source: () => KVDiagnostics | undefined,
  ) {
    this.registry.setDefaultLabels({ node: String(nodeId) });
    collectDefaultMetrics({ register: this.registry });
    // Per-space heap sizes cost ~28 ms of CPU per scrape under Bun (v8.getHeapSpaceStatistics);
    // without them a scrape takes ~6 ms. Total heap size and use stay.
    for (const name of HEAP_SPACE_METRICS) this.registry.removeSingleMetric(name);
    register(this.registry, ...this.raftMetrics(), ...this.kvMetrics(), ...this.lsmMetrics(), ...this.rpcMetrics());
  }

  /** The exposition text for GET /metrics. */
  async scrape(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  event(kind: NodeEvent["kind"], term: number, message: string): void {
    this.events.push({ time: Date.now(), kind, term, message });
    if (this.events.length > MAX_EVENTS) this.events.shift();
  }

  private recordSave(entries: readonly Entry[], seconds: number): void {
    let bytes = 0;
    for (const entry of entries) bytes += entry.data.length;
    this.saveSeconds.observe(seconds);
    this.entriesPerSave.observe(entries.length);
    this.bytesPerSave.observe(bytes);
  }

  private recordSent(messages: readonly Message[]): void {
    for (const m of messages) {
      if (m.type !== "AppendEntries") continue;
      let bytes = 0;
      for (const entry of m.entries) bytes += entry.data.length;
      this.appendsSent++;
      this.entriesPerAppend.observe(m.entries.length);
      this.bytesPerAppend.observe(bytes);
    }
  }

  private raftMetrics(): ScrapedMetric[] {
    const raft = (read: (d: KVDiagnostics) => number) => () => {
      const d = this.source();
      return d === undefined ? [] : [{ value: read(d) }];
    };
    const histogram = (name: string, help: string, h: BucketHistogram): ScrapedMetric => ({
      name,
      help,
      type: "histogram",
      aggregator: "sum",
      get: () => {
        const values: Parameters<BucketHistogram["samples"]>[2] = [];
        h.samples(name, {}, values);
        return { name, help, type: "histogram", aggregator: "sum", values };
      },
    });
    return [
      scraped("kvraft_raft_term", "Current Raft term.", "gauge", raft((d) => d.raft.term)),
      scraped("kvraft_raft_role", "1 for this node's current role.", "gauge", () => {
        const d = this.source();
        return d === undefined ? [] : ROLES.map((role) => ({ labels: { role }, value: d.raft.role === role ? 1 : 0 }));
      }),
      scraped("kvraft_raft_leader_id", "The node this one believes leads (-1: none known).", "gauge", raft((d) => d.raft.leaderId)),
      scraped("kvraft_raft_commit_index", "Highest log index known committed.", "gauge", raft((d) => d.raft.commitIndex)),
      scraped("kvraft_raft_applied_index", "Highest log index applied to the state machine.", "gauge", raft((d) => d.raft.lastApplied)),
      scraped("kvraft_raft_snapshot_index", "The log's compaction point (last index in the snapshot).", "gauge", raft((d) => d.raft.snapshotIndex)),
      scraped("kvraft_raft_last_index", "Last index in this node's log.", "gauge", raft((d) => d.raft.lastIndex)),
      scraped("kvraft_raft_log_bytes", "Bytes of records in the Raft log's segments.", "gauge", raft((d) => d.raft.logBytes)),
      scraped("kvraft_raft_pending_reads", "ReadIndex requests waiting for confirmation or apply.", "gauge", raft((d) => d.raft.pendingReads)),
      scraped("kvraft_raft_snapshots_sent_total", "Snapshots streamed to followers.", "counter", raft((d) => d.raft.snapshotsSent)),
      scraped("kvraft_raft_snapshots_received_total", "Snapshots installed from a leader.", "counter", raft((d) => d.raft.snapshotsReceived)),
      scraped("kvraft_raft_snapshot_received_bytes_total", "Bytes of snapshot streams read from a leader.", "counter", raft((d) => d.raft.snapshotBytesReceived)),
      scraped("kvraft_raft_applied_before_own_sync_total", "Entries the leader applied (and answered) before its own log write of them was durable.", "counter", raft((d) => d.raft.appliedBeforeOwnSync)),
      scraped("kvraft_raft_leader_changes_total", "Leader changes this node has seen.", "counter", () => [{ value: this.leaderChanges }]),
      scraped("kvraft_raft_proposals_total", "Commands this node proposed as leader.", "counter", () => [{ value: this.proposals }]),
      scraped("kvraft_raft_append_entries_sent_total", "AppendEntries messages sent to followers.", "counter", () => [{ value: this.appendsSent }]),
      scraped("kvraft_raft_log_fsyncs_total", "fdatasync calls on the Raft log.", "counter", () => {
        const log = this.source()?.log;
        return log ? [{ value: log.fsyncs }] : [];
      }),
      {
        name: "kvraft_raft_log_fsync_seconds",
        help: "fdatasync of appended log records (the commit path's own fsync): count and total seconds.",
        type: "summary",
        aggregator: "sum",
        get: () => {
          const log = this.source()?.log;
          const values = log ? [{ metricName: "kvraft_raft_log_fsync_seconds_sum", labels: {}, value: log.appendSyncSeconds }, { metricName: "kvraft_raft_log_fsync_seconds_count", labels: {}, value: log.appendSyncs }] : [];
          return { name: "kvraft_raft_log_fsync_seconds", help: "fdatasync of appended log records (the commit path's own fsync): count and total seconds.", type: "summary", aggregator: "sum", values };
        },
      },
      scraped("kvraft_raft_log_bytes_written_total", "Bytes written to the Raft log.", "counter", () => {
        const log = this.source()?.log;
        return log ? [{ value: log.bytesWritten }] : [];
      }),
      scraped("kvraft_raft_follower_match_index", "Leader only: highest index known replicated on each follower.", "gauge", () =>
        this.followers((id, p) => ({ labels: { follower: id }, value: p.matchIndex })),
      ),
      scraped("kvraft_raft_follower_lag_entries", "Leader only: entries each follower is behind the leader's last index.", "gauge", () => {
        const last = this.source()?.raft.lastIndex ?? 0;
        return this.followers((id, p) => ({ labels: { follower: id }, value: Math.max(0, last - p.matchIndex) }));
      }),
      scraped("kvraft_raft_follower_inflight", "Leader only: AppendEntries in flight to each follower.", "gauge", () =>
        this.followers((id, p) => ({ labels: { follower: id }, value: p.inflight })),
      ),
      histogram("kvraft_raft_log_save_seconds", "Time to make one batch of entries durable (write + fsync).", this.saveSeconds),
      histogram("kvraft_raft_entries_per_save", "Entries made durable by one fsync.", this.entriesPerSave),
      histogram("kvraft_raft_bytes_per_save", "Entry payload bytes made durable by one fsync.", this.bytesPerSave),
      histogram("kvraft_raft_entries_per_append", "Entries per AppendEntries message sent.", this.entriesPerAppend),
      histogram("kvraft_raft_bytes_per_append", "Entry payload bytes per AppendEntries message sent.", this.bytesPerAppend),
    ];
  }

  private followers(sample: (id: string, p: { matchIndex: number; inflight: number }) => { labels: Record<string, string>; value: number }) {
    const d = this.source();
    if (d === undefined || d.raft.progress === undefined) return [];
    return Object.entries(d.raft.progress)
      .filter(([id]) => Number(id) !== d.raft.id)
      .map(([id, p]) => sample(id, p));
  }

  private kvMetrics(): ScrapedMetric[] {
    return [
      this.kvRequests.metric(),
      this.kvLatency.metric(),
      scraped("kvraft_kv_sessions", "Live client sessions in the replicated session table.", "gauge", () => {
        const d = this.source();
        return d === undefined ? [] : [{ value: d.sessions }];
      }),
      scraped("kvraft_kv_read_index_rounds_total", "ReadIndex rounds (batches of Gets sharing one leadership check).", "counter", () => {
        const d = this.source();
        return d === undefined ? [] : [{ value: d.readIndexRounds }];
      }),
      scraped("kvraft_kv_pending_commands", "Commands in flight on this node.", "gauge", () => {
        const d = this.source();
        return d === undefined ? [] : [{ value: d.pendingCommands }];
      }),
    ];
  }

  private lsmMetrics(): ScrapedMetric[] {
    const lsm = (type: "counter" | "gauge", name: string, help: string, read: (s: NonNullable<KVDiagnostics["lsm"]>) => number) =>
      scraped(name, help, type, () => {
        const s = this.source()?.lsm;
        return s ? [{ value: read(s) }] : [];
      });
    const levels = (read: (level: NonNullable<KVDiagnostics["lsm"]>["levels"][number]) => number) => () => {
      const s = this.source()?.lsm;
      return s ? s.levels.map((level, i) => ({ labels: { level: String(i) }, value: read(level) })) : [];
    };
    return [
      lsm("gauge", "kvraft_lsm_memtable_bytes", "Bytes in the memtable and immutable memtables.", (s) => s.memtableBytes),
      lsm("gauge", "kvraft_lsm_immutable_memtables", "Memtables waiting to be flushed.", (s) => s.immutableMemtables),
      scraped("kvraft_lsm_level_files", "Table files per level.", "gauge", levels((l) => l.files)),
      scraped("kvraft_lsm_level_bytes", "Table bytes per level.", "gauge", levels((l) => l.bytes)),
      scraped("kvraft_lsm_level_bytes_written_total", "Table bytes flushes and compactions wrote into each level.", "counter", levels((l) => l.bytesWritten)),
      scraped("kvraft_lsm_level_bytes_read_total", "Table bytes compactions read from each level.", "counter", levels((l) => l.bytesRead)),
      lsm("gauge", "kvraft_lsm_disk_bytes", "Table and WAL bytes on disk.", (s) => s.diskBytes),
      lsm("counter", "kvraft_lsm_compactions_total", "Compactions finished.", (s) => s.compactions),
      lsm("counter", "kvraft_lsm_flushes_total", "Memtable flushes finished.", (s) => s.flushes),
      lsm("counter", "kvraft_lsm_trivial_moves_total", "Compactions that moved a table down a level without rewriting it.", (s) => s.trivialMoves),
      lsm("gauge", "kvraft_lsm_write_amplification", "(WAL + table bytes written) / user bytes written, since open.", (s) => s.writeAmplification),
      lsm("counter", "kvraft_lsm_table_bytes_written_total", "Bytes of tables written by flushes and compactions.", (s) => s.tableBytesWritten),
      lsm("counter", "kvraft_lsm_wal_bytes_written_total", "Bytes written to the LSM's WAL.", (s) => s.walBytesWritten),
      lsm("counter", "kvraft_lsm_user_bytes_written_total", "Key and value bytes written by the state machine.", (s) => s.userBytesWritten),
      lsm("counter", "kvraft_lsm_write_stalls_total", "Writes that waited for a flush or compaction.", (s) => s.writeStalls),
      lsm("counter", "kvraft_lsm_write_slowdowns_total", "Writes delayed by the L0 slowdown.", (s) => s.writeSlowdowns),
      lsm("counter", "kvraft_lsm_block_cache_hits_total", "Block cache hits.", (s) => s.blockCache.hits),
      lsm("counter", "kvraft_lsm_block_cache_misses_total", "Block cache misses.", (s) => s.blockCache.misses),
      lsm("gauge", "kvraft_lsm_block_cache_bytes", "Bytes held by the block cache.", (s) => s.blockCache.bytes),
      lsm("gauge", "kvraft_lsm_open_tables", "Table files open in the table cache.", (s) => s.openTables),
    ];
  }

  private rpcMetrics(): ScrapedMetric[] {
    return [
      this.rpcRequests.metric(),
      this.rpcLatency.metric(),
      scraped("kvraft_rpc_in_flight", "RPCs being handled now.", "gauge", () => [{ value: this.rpcInFlight }]),
      scraped("kvraft_rpc_admission_refused_total", "Client calls refused at once with resource_exhausted by admission control, by the limit hit (calls, bytes).", "counter", () => {
        const a = this.admission;
        return a === null ? [] : [{ labels: { limit: "calls" }, value: a.stats.refusedCalls }, { labels: { limit: "bytes" }, value: a.stats.refusedBytes }];
      }),
      scraped("kvraft_rpc_admitted_total", "Client calls admission control let in.", "counter", () => (this.admission === null ? [] : [{ value: this.admission.stats.admitted }])),
      scraped("kvraft_rpc_admitted_in_flight_calls", "Admitted client calls not yet answered.", "gauge", () => (this.admission === null ? [] : [{ value: this.admission.inFlightCalls }])),
      scraped("kvraft_rpc_admitted_in_flight_bytes", "Request bytes of the admitted calls not yet answered.", "gauge", () => (this.admission === null ? [] : [{ value: this.admission.inFlightBytes }])),
      ...this.connectionMetrics(),
      ...this.engineMetrics(),
    ];
  }

  private engineMetrics(): ScrapedMetric[] {
    const read = (pick: (s: EngineView) => number) => () => (this.engine === null ? [] : [{ value: pick(this.engine) }]);
    return [
      scraped("kvraft_rpc_h2_engine_connections_total", "Client HTTP/2 connections served by the node's own HTTP/2 engine.", "counter", read((s) => s.h2EngineConnections)),
      scraped("kvraft_rpc_h2_engine_relayed_streams_total", "Engine streams relayed to node:http2 (streaming calls, plain HTTP routes, odd requests).", "counter", read((s) => s.h2Relayed)),
      scraped("kvraft_rpc_h2_engine_goaways_total", "GOAWAY frames the engine sent, by HTTP/2 error code (NO_ERROR: graceful close).", "counter", () => {
        const e = this.engine;
        // Codes never sent are left out: a dozen zero series on every node say nothing.
        return e === null ? [] : e.h2Engine.goAways.flatMap((value, code) => (value > 0 || code === 0 ? [{ labels: { code: H2_CODES[code]! }, value }] : []));
      }),
      scraped("kvraft_rpc_h2_engine_rapid_reset_refusals_total", "Engine connections ended (GOAWAY ENHANCE_YOUR_CALM) for resetting streams faster than 1,000 a second.", "counter", read((s) => s.h2Engine.rapidResets)),
    ];
  }

  private connectionMetrics(): ScrapedMetric[] {
    const read = (pick: (s: Readonly<ConnectionStats>) => number) => () => {
      const stats = this.connections?.();
      return stats === undefined ? [] : [{ value: pick(stats) }];
    };
    return [
      scraped("kvraft_rpc_connections", "Connections open on the node's port.", "gauge", read((s) => s.open)),
      scraped("kvraft_rpc_connections_accepted_total", "Connections accepted.", "counter", read((s) => s.accepted)),
      scraped("kvraft_rpc_connections_evicted_total", "Connections that never completed a request, closed to make room at a connection limit.", "counter", read((s) => s.evicted)),
      scraped("kvraft_rpc_connections_refused_total", "New connections closed at once: at a limit with no connection to evict.", "counter", read((s) => s.refused)),
      scraped("kvraft_rpc_connection_timeouts_total", "Connections or streams closed by a deadline, by stage (handshake, header, body, idle).", "counter", () => {
        const stats = this.connections?.();
        if (stats === undefined) return [];
        return [
          { labels: { stage: "handshake" }, value: stats.handshakeTimeouts },
          { labels: { stage: "header" }, value: stats.headerTimeouts },
          { labels: { stage: "body" }, value: stats.bodyTimeouts },
          { labels: { stage: "idle" }, value: stats.idleClosed },
        ];
      }),
    ];
  }
}
