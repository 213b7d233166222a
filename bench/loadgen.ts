// The closed-loop load generator, run as its own Bun process so its CPU does not compete with the
// harness: N clients, each sending its next request when the last one answered. Over hand-made
// HTTP/1.1 (one keep-alive connection per client; kvraft's Connect JSON API or etcd's JSON
// gateway), or through a client library as applications do (native-clients.ts: kvraft's Clerk over
// HTTP/2 or gRPC, etcd's etcd3 over gRPC; N concurrent callers of one client object).
// Usage: bun bench/loadgen.ts '<LoadConfig JSON>'  → prints one LoadResult JSON line on stdout.

import * as fs from "node:fs";
import { HttpConnection, type HttpResponse } from "./http1.ts";
import { CLIENT_PATHS, openNativeClient, type ClientPath, type NativeClient } from "./native-clients.ts";
import { Histogram, type HistogramJSON } from "./stats.ts";

export type Protocol = "kvraft" | "etcd";
/** bulk: unique-key Puts through the client's bulk API (the Clerk's putMany), `clients` in flight. */
export type Workload = "put" | "get" | "mix" | "preload" | "bulk";

export interface LoadConfig {
  protocol: Protocol;
  host: string;
  port: number;
  workload: Workload;
  clients: number;
  /** How long to keep the load on (put, get, mix). */
  durationMs: number;
  /** preload: how many keys to write ("g" + 15 digits); get/mix: how many exist to read. */
  keyCount: number;
  /** Prefix of unique put keys in this run, so runs never overwrite each other (≤ 6 chars). */
  tag: string;
  valueBytes: number;
  /** Processes whose CPU and RSS are read at the start and end of the load window. */
  watchPids: number[];
  /** How requests travel (default http1: hand-made HTTP/1.1 JSON to `port`). */
  path?: ClientPath;
  /** Every member's client port, member order (the Clerk is given all of them). */
  ports?: number[];
  /**
   * put/get/mix: run the same load this long before the window, unmeasured (default 0). Bun's JIT
   * takes a few thousand operations to reach its optimizing tiers, in the generator and in the
   * servers' paths the preload did not take: without it a short window measures warm-up.
   */
  warmupMs?: number;
}

export interface LoadResult {
  ops: number;
  errors: number;
  errorSamples: string[];
  seconds: number;
  histogram: HistogramJSON;
  /** CPU seconds used during the load window by each watched pid, and by the generator itself. */
  cpu: Record<string, number>;
  generatorCpu: number;
}

const MAX_CLIENTS = 4096;
/** bulk: writes in flight through one Clerk (sessions, not connections), so more are allowed. */
const MAX_BULK_IN_FLIGHT = 65_536;
const MAX_ERROR_SAMPLES = 5;
/** A run never outlasts its duration by more than this, whatever the servers do. */
const HARD_EXTRA_MS = 30_000;

export function validateConfig(c: LoadConfig): LoadConfig {
  const bad = (what: string) => {
    throw new RangeError(`load config: ${what}`);
  };
  if (c.protocol !== "kvraft" && c.protocol !== "etcd") bad(`protocol must be kvraft or etcd, got ${c.protocol}`);
  if (!["put", "get", "mix", "preload", "bulk"].includes(c.workload)) bad(`unknown workload ${c.workload}`);
  if (c.workload === "bulk" && !(c.path ?? "").startsWith("clerk")) bad("workload bulk runs through a Clerk path (putMany)");
  const maxClients = c.workload === "bulk" ? MAX_BULK_IN_FLIGHT : MAX_CLIENTS;
  if (!Number.isInteger(c.clients) || c.clients < 1 || c.clients > maxClients) bad(`clients must be 1..${maxClients}${c.workload === "bulk" ? " for bulk" : ""}`);
  if (!Number.isInteger(c.port) || c.port < 1 || c.port > 65535) bad(`bad port ${c.port}`);
  if (c.host !== "127.0.0.1") bad("the generator only talks to 127.0.0.1");
  if (!(c.durationMs > 0 && c.durationMs <= 3_600_000)) bad("durationMs must be in (0, 1 h]");
  if (c.warmupMs !== undefined && !(c.warmupMs >= 0 && c.warmupMs <= 600_000)) bad("warmupMs must be in [0, 10 min]");
  if (!/^[a-z0-9]{1,6}$/.test(c.tag)) bad("tag must be 1-6 lowercase letters or digits");
  if (!Number.isInteger(c.keyCount) || c.keyCount < 0 || c.keyCount > 1e9) bad("keyCount out of range");
  if (c.path !== undefined && !CLIENT_PATHS.includes(c.path)) bad(`path must be one of ${CLIENT_PATHS.join(", ")}`);
  if (c.path === "etcd3" && c.protocol !== "etcd") bad("path etcd3 drives etcd only");
  if (c.path !== undefined && c.path.startsWith("clerk") && c.protocol !== "kvraft") bad(`path ${c.path} drives kvraft only`);
  return c;
}

/** Key `i` of the preloaded set: 16 bytes. */
export function preloadKey(i: number): string {
  return "g" + String(i).padStart(15, "0");
}

/** The `seq`-th unique put key of a run tagged `tag`: 16 bytes. */
export function uniqueKey(tag: string, seq: number): string {
  return tag + "-" + String(seq).padStart(15 - tag.length, "0");
}

function procCpu(pid: number | "self"): number {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return NaN;
  }
}

interface Request {
  path: string;
  body: string;
  check(r: HttpResponse): string | null;
}

function b64(s: string): string {
  return Buffer.from(s).toString("base64");
}

/** Builds requests for one protocol; `check` returns null for success or a short error text. */
function requestFactory(c: LoadConfig, value: string) {
  let nextClientId = Math.floor(Math.random() * 2 ** 40) * 1024;
  if (c.protocol === "kvraft") {
    const okOrErr = (r: HttpResponse) => {
      if (r.status !== 200) return `HTTP ${r.status}: ${r.body.slice(0, 120)}`;
      const err = (JSON.parse(r.body) as { err?: string }).err ?? "";
      return err === "OK" ? null : err || "empty err";
    };
    return () => {
      const clientId = ++nextClientId;
      let commandId = 0;
      return {
        put: (key: string): Request => ({
          path: "/kvraftpb.KVService/Command",
          body: JSON.stringify({ key, value, op: "PUT", clientId, commandId: ++commandId }),
          check: okOrErr,
        }),
        get: (key: string): Request => ({
          path: "/kvraftpb.KVService/Command",
          body: JSON.stringify({ key, op: "GET", clientId, commandId: ++commandId }),
          check: okOrErr,
        }),
      };
    };
  }
  const valueB64 = b64(value);
  const httpOk = (r: HttpResponse) => (r.status === 200 ? null : `HTTP ${r.status}: ${r.body.slice(0, 120)}`);
  return () => ({
    put: (key: string): Request => ({ path: "/v3/kv/put", body: `{"key":"${b64(key)}","value":"${valueB64}"}`, check: httpOk }),
    get: (key: string): Request => ({
      path: "/v3/kv/range",
      body: `{"key":"${b64(key)}"}`,
      check: (r) => httpOk(r) ?? (r.body.includes('"kvs"') ? null : "key not found"),
    }),
  });
}

export async function runLoad(config: LoadConfig): Promise<LoadResult> {
  const c = validateConfig(config);
  const value = "v".repeat(Math.max(0, c.valueBytes - 16)) + Math.random().toString(36).slice(2, 18).padEnd(16, "0");
  const newClient = requestFactory(c, value.slice(0, c.valueBytes));
  let histogram = new Histogram();
  const errorSamples: string[] = [];
  let ops = 0;
  let errors = 0;
  let putSeq = 0;
  let preloadNext = 0;
  /** Preload keys whose write failed (a timeout under load): written again, so none is missing. */
  const preloadRetry: number[] = [];
  const nextPreload = (): number => preloadRetry.pop() ?? (preloadNext < c.keyCount ? preloadNext++ : -1);
  const headers = c.protocol === "kvraft" ? "Connect-Protocol-Version: 1\r\n" : "";
  const path = c.path ?? "http1";
  const native: NativeClient | null = path === "http1" ? null : await openNativeClient(path, c.ports ?? [c.port], c.port, c.clients);
  const connections = native !== null ? Array.from({ length: c.clients }, () => null) : await Promise.all(Array.from({ length: c.clients }, () => HttpConnection.open(c.host, c.port)));
  if (native !== null) {
    // Outside the window: the Clerk registers its sessions and finds the leader, etcd3 connects.
    // Thousands of first writes register as many sessions, a few at a time: on a loaded machine
    // one may outlast its deadline. Tried again once; a session still missing registers in the window.
    const warm = (i: number) => native.put(uniqueKey(`${c.tag}w`.slice(0, 6), i), value.slice(0, c.valueBytes));
    await Promise.all(Array.from({ length: c.clients }, (_, i) => warm(i).catch(() => warm(i)).catch(() => {})));
  }

  const warmupMs = c.workload === "put" || c.workload === "get" || c.workload === "mix" ? (c.warmupMs ?? 0) : 0;
  // Set for the warm-up, then again for the window (the loops below read it on every operation).
  let deadline = performance.now() + warmupMs;
  let cpuStart: Record<string, number> = {};
  let selfStart = 0;
  let start = 0;
  const hardStop = setTimeout(() => {
    process.stderr.write("loadgen: hard time limit reached, exiting\n");
    process.exit(3);
  }, warmupMs + c.durationMs + HARD_EXTRA_MS);

  const noteError = (e: string) => {
    errors++;
    if (errorSamples.length < MAX_ERROR_SAMPLES && !errorSamples.includes(e)) errorSamples.push(e);
  };

  const nativeClient = async (client: NativeClient) => {
    const v = value.slice(0, c.valueBytes);
    while (performance.now() < deadline) {
      const preloading = c.workload === "preload" ? nextPreload() : -1;
      if (c.workload === "preload" && preloading < 0) break;
      const t0 = performance.now();
      try {
        if (preloading >= 0) await client.put(preloadKey(preloading), v);
        else if (c.workload === "put" || (c.workload === "mix" && Math.random() < 0.5)) await client.put(uniqueKey(c.tag, putSeq++), v);
        else await client.get(preloadKey(Math.floor(Math.random() * Math.max(1, c.keyCount))));
        histogram.record((performance.now() - t0) * 1000);
        ops++;
      } catch (e) {
        noteError(e instanceof Error ? e.message : String(e));
        if (preloading >= 0) preloadRetry.push(preloading);
        await Bun.sleep(20);
      }
    }
  };

  const bulk = async (client: NativeClient) => {
    const v = value.slice(0, c.valueBytes);
    const pairs = function* (): Generator<[string, string]> {
      while (performance.now() < deadline) yield [uniqueKey(c.tag, putSeq++), v];
    };
    try {
      ops += await client.putMany!(pairs(), c.clients);
    } catch (e) {
      const written = (e as { written?: number }).written;
      if (typeof written === "number") ops += written;
      noteError(e instanceof Error ? e.message : String(e));
    }
  };

  const client = async (conn: HttpConnection | null) => {
    if (conn === null) return nativeClient(native!);
    const make = newClient();
    while (performance.now() < deadline) {
      let req: Request;
      const preloading = c.workload === "preload" ? nextPreload() : -1;
      if (c.workload === "preload") {
        if (preloading < 0) break;
        req = make.put(preloadKey(preloading));
      } else if (c.workload === "put" || (c.workload === "mix" && Math.random() < 0.5)) {
        req = make.put(uniqueKey(c.tag, putSeq++));
      } else {
        req = make.get(preloadKey(Math.floor(Math.random() * Math.max(1, c.keyCount))));
      }
      const t0 = performance.now();
      try {
        const r = await conn.post(req.path, req.body, headers);
        const err = req.check(r);
        histogram.record((performance.now() - t0) * 1000);
        if (err) {
          noteError(err);
          if (preloading >= 0) preloadRetry.push(preloading);
        } else ops++;
      } catch (e) {
        noteError(e instanceof Error ? e.message : String(e));
        if (preloading >= 0) preloadRetry.push(preloading);
        // Back off briefly so a dead server does not turn the loop into a busy spin.
        await Bun.sleep(20);
        if (performance.now() < deadline) await conn.reconnect().catch((e2: Error) => noteError(e2.message));
      }
    }
  };
  if (warmupMs > 0) {
    await Promise.all(connections.map(client));
    histogram = new Histogram();
    ops = 0;
    errors = 0;
    errorSamples.length = 0;
    preloadRetry.length = 0;
  }
  cpuStart = Object.fromEntries(c.watchPids.map((pid) => [pid, procCpu(pid)]));
  selfStart = procCpu("self");
  start = performance.now();
  deadline = start + c.durationMs;
  if (c.workload === "bulk") await bulk(native!);
  else await Promise.all(connections.map(client));
  const seconds = (performance.now() - start) / 1000;
  const cpu: Record<string, number> = {};
  for (const pid of c.watchPids) cpu[pid] = procCpu(pid) - cpuStart[pid];
  const generatorCpu = procCpu("self") - selfStart;
  clearTimeout(hardStop);
  for (const conn of connections) conn?.close();
  native?.close();
  return { ops, errors, errorSamples, seconds, histogram: histogram.toJSON(), cpu, generatorCpu };
}

if (import.meta.main) {
  const arg = process.argv[2];
  if (!arg) {
    process.stderr.write("usage: bun bench/loadgen.ts '<LoadConfig JSON>'\n");
    process.exit(2);
  }
  try {
    const result = await runLoad(JSON.parse(arg) as LoadConfig);
    process.stdout.write(JSON.stringify(result) + "\n");
    process.exit(0);
  } catch (e) {
    process.stderr.write(`loadgen: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  }
}
