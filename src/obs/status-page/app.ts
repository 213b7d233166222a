// The status page in the browser: every second it asks each member for its status (connect-web,
// KVService.GetStatus), its /metrics and its /readyz, keeps five minutes of throughput and latency,
// and redraws (render.ts). Cross-origin members need CORS: kvserver allows its own members'
// origins, and --cors-origin any other page origin.

import { createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { KVService } from "../../gen/kvraftpb/kvraft_pb.ts";
import { parsePromText, sumOf, type PromSample } from "../prom-text.ts";
import { render, type MemberView, type PageState } from "./render.ts";

const POLL_MS = 1_000;
const EVENTS_EVERY = 3;
const HISTORY_POINTS = 300;
const CALL_TIMEOUT_MS = 900;

interface Member {
  id: number;
  /** Base URL, e.g. "http://127.0.0.1:5001". */
  url: string;
}

interface Config {
  self: number;
  /** The configuration's members when the page was served; replaced by what members report. */
  members: Member[];
  /** A bearer token for nodes started with --client-token-file, from the URL's #token=... */
  token: string | null;
}

// The project's tsconfig has no DOM lib: the few browser globals used, typed here.
const browser = globalThis as unknown as {
  document: { getElementById(id: string): { textContent: string | null } | null };
  location: { search: string; hash: string };
  kvraftStatus?: PageState;
};

function readConfig(): Config {
  const embedded = browser.document.getElementById("kvraft-config")?.textContent;
  const config: Config = embedded ? (JSON.parse(embedded) as Config) : { self: -1, members: [], token: null };
  // In the fragment, which the browser never sends to a server or writes to its logs.
  config.token = new URLSearchParams(browser.location.hash.slice(1)).get("token");
  // ?members=http://a:1,http://b:2 points a page served elsewhere at a cluster.
  const override = new URLSearchParams(browser.location.search).get("members");
  if (override) config.members = override.split(",").map((m, id) => ({ id, url: m.includes("://") ? m : `http://${m}` }));
  return config;
}

/** What the previous poll saw of a member's counters, for rates. */
interface Previous {
  time: number;
  writes: number;
  reads: number;
  buckets: Map<number, number>;
}

function main(): void {
  const config = readConfig();
  const token = config.token;
  const withToken: Interceptor = (next) => (request) => {
    if (token !== null) request.header.set("Authorization", `Bearer ${token}`);
    return next(request);
  };
  const clients = new Map<string, ReturnType<typeof createClient<typeof KVService>>>();
  const clientFor = (baseUrl: string) => {
    let client = clients.get(baseUrl);
    if (client === undefined) clients.set(baseUrl, (client = createClient(KVService, createConnectTransport({ baseUrl, interceptors: [withToken] }))));
    return client;
  };
  const previous = new Map<number, Previous>();
  const state: PageState = {
    ticks: 0,
    self: config.self,
    leader: null,
    members: config.members.map(({ id, url }) => ({ id, address: url, online: false, state: "Offline" }) as MemberView),
    followers: [],
    levels: [],
    events: [],
    throughput: { time: [], writes: [], reads: [] },
    latency: { time: [], p50: [], p99: [] },
    errors: [],
  };
  browser.kvraftStatus = state;

  const poll = async (): Promise<void> => {
    const now = Date.now() / 1000;
    const results = await Promise.all(config.members.map(({ id, url }) => pollMember(id, url, clientFor(url))));
    state.members = results.map((r) => r.view);
    const leaders = state.members.filter((m) => m.online && m.state === "Leader");
    state.leader = leaders.length === 1 ? leaders[0]!.id : null;
    const leaderResult = results.find((r) => r.view.id === state.leader);
    const leaderMetrics = leaderResult?.metrics ?? null;
    // The configuration changes (members added on new ports, removed): follow what the leader (or
    // else any member) reports from the next poll on.
    const reported = (leaderResult ?? results.find((r) => r.members.length > 0))?.members ?? [];
    if (reported.length > 0) config.members = reported;
    state.followers = leaderMetrics === null ? [] : followersOf(leaderMetrics);
    for (const m of state.members) {
      const f = state.followers.find((x) => x.id === m.id);
      if (f !== undefined) m.lag = f.behind;
      else if (m.id === state.leader) m.lag = 0;
    }
    state.levels = results.map((r) => (r.metrics === null ? null : levelsOf(r.metrics)));
    recordRates(state, results, previous, now);
    if (state.ticks % EVENTS_EVERY === 0) state.events = await collectEvents(config.members.map((m) => m.url));
    state.ticks++;
    render(state);
  };
  const loop = async () => {
    const started = Date.now();
    try {
      await poll();
    } catch (error) {
      state.errors = [String(error)];
    }
    // One poll a second whatever a poll costs (a slow member's timeout included).
    setTimeout(loop, Math.max(100, POLL_MS - (Date.now() - started)));
  };
  void loop();
}

async function pollMember(
  id: number,
  address: string,
  client: ReturnType<typeof createClient<typeof KVService>>,
): Promise<{ view: MemberView; metrics: PromSample[] | null; members: Member[] }> {
  const signal = () => AbortSignal.timeout(CALL_TIMEOUT_MS);
  const [status, metrics, ready] = await Promise.allSettled([
    client.getStatus({}, { signal: signal() }),
    fetch(`${address}/metrics`, { signal: signal() }).then((r) => r.text()),
    fetch(`${address}/readyz`, { signal: signal() }).then((r) => r.status === 200),
  ]);
  if (status.status === "rejected") {
    return { view: { id, address, online: false, state: "Offline", error: String(status.reason) }, metrics: null, members: [] };
  }
  const s = status.value;
  return {
    view: {
      id,
      address,
      online: true,
      state: s.state,
      term: Number(s.term),
      commitIndex: Number(s.commitIndex),
      lastApplied: Number(s.lastApplied),
      snapshotIndex: Number(s.snapshotIndex),
      keyCount: Number(s.keyCount),
      storageSize: Number(s.storageSize),
      leaderId: s.leader.case === "leaderId" ? Number(s.leader.value) : null,
      ready: ready.status === "fulfilled" ? ready.value : null,
    },
    metrics: metrics.status === "fulfilled" ? parsePromText(metrics.value) : null,
    // Its view of the configuration, addresses in this page's scheme (members record host:port).
    members: s.memberDetails
      .filter((m) => m.address !== "")
      .map((m) => ({ id: Number(m.id), url: m.address.includes("://") ? m.address : `${address.startsWith("https:") ? "https" : "http"}://${m.address}` }))
      .sort((a, b) => a.id - b.id),
  };
}

function followersOf(metrics: PromSample[]): PageState["followers"] {
  const last = sumOf(metrics, "kvraft_raft_last_index");
  return metrics
    .filter((s) => s.name === "kvraft_raft_follower_match_index")
    .map((s) => ({ id: Number(s.labels.follower), match: s.value, last, behind: Math.max(0, last - s.value) }))
    .sort((a, b) => a.id - b.id);
}

function levelsOf(metrics: PromSample[]): { level: number; files: number; bytes: number }[] {
  const levels = new Map<number, { level: number; files: number; bytes: number }>();
  for (const s of metrics) {
    if (s.name !== "kvraft_lsm_level_files" && s.name !== "kvraft_lsm_level_bytes") continue;
    const level = Number(s.labels.level);
    const entry = levels.get(level) ?? { level, files: 0, bytes: 0 };
    if (s.name === "kvraft_lsm_level_files") entry.files = s.value;
    else entry.bytes = s.value;
    levels.set(level, entry);
  }
  return [...levels.values()].sort((a, b) => a.level - b.level);
}

const WRITE_OPS = new Set(["Put", "Append", "Delete"]);

/** Adds one point to the throughput and latency series from the counters' growth since last poll. */
function recordRates(state: PageState, results: { view: MemberView; metrics: PromSample[] | null }[], previous: Map<number, Previous>, now: number): void {
  let writes = 0;
  let reads = 0;
  const merged = new Map<number, number>();
  results.forEach((r) => {
    const id = r.view.id;
    if (r.metrics === null) return;
    let w = 0;
    let g = 0;
    const buckets = new Map<number, number>();
    for (const s of r.metrics) {
      if (s.name === "kvraft_kv_requests_total") {
        if (WRITE_OPS.has(s.labels.op ?? "")) w += s.value;
        else if (s.labels.op === "Get") g += s.value;
      } else if (s.name === "kvraft_kv_request_duration_seconds_bucket") {
        const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
        buckets.set(le, (buckets.get(le) ?? 0) + s.value);
      }
    }
    const before = previous.get(id);
    previous.set(id, { time: now, writes: w, reads: g, buckets });
    if (before === undefined) return;
    const dt = Math.max(0.001, now - before.time);
    // A restarted node's counters start again from zero: count nothing for that interval.
    writes += Math.max(0, w - before.writes) / dt;
    reads += Math.max(0, g - before.reads) / dt;
    for (const [le, count] of buckets) merged.set(le, (merged.get(le) ?? 0) + Math.max(0, count - (before.buckets.get(le) ?? 0)));
  });
  push(state.throughput, now, { writes: Math.round(writes), reads: Math.round(reads) });
  push(state.latency, now, { p50: quantileMs(merged, 0.5), p99: quantileMs(merged, 0.99) });
}

function push<T extends { time: number[] }>(series: T, time: number, values: Record<string, number | null>): void {
  series.time.push(time);
  for (const [key, value] of Object.entries(values)) (series as unknown as Record<string, (number | null)[]>)[key]!.push(value);
  if (series.time.length > HISTORY_POINTS) for (const list of Object.values(series) as unknown[][]) list.shift();
}

/** The q-quantile in ms from cumulative bucket counts (linear within a bucket); null with no data. */
function quantileMs(cumulative: Map<number, number>, q: number): number | null {
  const bounds = [...cumulative.keys()].sort((a, b) => a - b);
  const total = cumulative.get(Infinity) ?? 0;
  if (total <= 0) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const le of bounds) {
    const count = cumulative.get(le)!;
    if (count >= rank) {
      if (le === Infinity) return lower * 1000;
      const share = count === below ? 0 : (rank - below) / (count - below);
      return (lower + (le - lower) * share) * 1000;
    }
    lower = le;
    below = count;
  }
  return lower * 1000;
}

async function collectEvents(members: string[]): Promise<PageState["events"]> {
  const lists = await Promise.allSettled(
    members.map((address) =>
      fetch(`${address}/events`, { signal: AbortSignal.timeout(CALL_TIMEOUT_MS) })
        .then((r) => r.json() as Promise<{ node: number; events: { time: number; kind: string; term: number; message: string }[] }>),
    ),
  );
  const all: PageState["events"] = [];
  for (const list of lists) if (list.status === "fulfilled") for (const e of list.value.events) all.push({ ...e, node: list.value.node });
  return all.sort((a, b) => b.time - a.time).slice(0, 30);
}

main();
