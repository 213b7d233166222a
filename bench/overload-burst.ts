// A burst of concurrent raw writes, as a careless or hostile client sends them: C HTTP/2
// connections each carrying S Connect binary Command calls at once (no Clerk, no retries, no
// session). Counts how each call was answered (OK, resource_exhausted with its retry hint,
// ErrTimeout, anything else, no answer at all) and keeps the keys of the acknowledged writes.
// Used by the cluster suite's overload point and by test/e2e/overload.test.ts.

import * as http2 from "node:http2";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { CommandRequestSchema, CommandResponseSchema, Op } from "../src/gen/kvraftpb/kvraft_pb.ts";

export interface BurstConfig {
  /** Client port of the node the burst goes to (the leader). */
  port: number;
  connections: number;
  /** Calls in flight per connection. */
  streams: number;
  /** Prefix of this burst's keys: key i is `${keyPrefix}-${i}`. */
  keyPrefix: string;
  valueBytes: number;
  /** A call not answered within this counts as hung (and is cancelled). */
  hangAfterMs: number;
  /**
   * Keep every slot busy this long (a closed loop: the next call leaves when the last one is
   * answered); 0: one call per slot, connections × streams in all.
   */
  durationMs?: number;
  /**
   * Retry a refused (resource_exhausted) or timed-out write as the Clerk does: after the node's
   * retry-after-ms hint (50 ms without one) times 1 + random, the same key again, until it is
   * acknowledged or the duration is over. Latencies of OK writes then count from the first try.
   */
  retry?: boolean;
}

export interface BurstResult {
  sent: number;
  ok: number;
  /** Refused at once with resource_exhausted. */
  exhausted: number;
  /** The retry hints (retry-after-ms) of the refusals, smallest and largest. */
  retryAfterMs: { min: number; max: number } | null;
  /** Answered ErrTimeout (the entry may or may not apply later). */
  timeouts: number;
  wrongLeader: number;
  /** Calls that were a retry of a refused or timed-out write (retry mode). */
  retried: number;
  /** Any other answer, with a few samples. */
  other: number;
  otherSamples: string[];
  hung: number;
  /** Keys whose write was acknowledged OK. */
  acked: string[];
  /** Latency of every answered call, ms. */
  latenciesMs: number[];
  /** Latency of the OK calls only, ms. */
  okLatenciesMs: number[];
  seconds: number;
  /**
   * With a duration: acknowledged writes per second in the steady part of the run (from a quarter
   * of the duration to its end; calls still running at the end are not counted). 0 without one.
   */
  goodput: number;
}

const MAX_CONNECTIONS = 512;
const MAX_STREAMS = 256;

export async function runBurst(config: BurstConfig): Promise<BurstResult> {
  if (!(config.connections >= 1 && config.connections <= MAX_CONNECTIONS)) throw new RangeError(`connections must be 1..${MAX_CONNECTIONS}`);
  if (!(config.streams >= 1 && config.streams <= MAX_STREAMS)) throw new RangeError(`streams must be 1..${MAX_STREAMS}`);
  const value = "v".repeat(config.valueBytes);
  const result: BurstResult = {
    sent: 0,
    ok: 0,
    exhausted: 0,
    retryAfterMs: null,
    timeouts: 0,
    wrongLeader: 0,
    retried: 0,
    other: 0,
    otherSamples: [],
    hung: 0,
    acked: [],
    latenciesMs: [],
    okLatenciesMs: [],
    seconds: 0,
    goodput: 0,
  };
  const sessions: http2.ClientHttp2Session[] = [];
  for (let c = 0; c < config.connections; c++) {
    const session = http2.connect(`http://127.0.0.1:${config.port}`);
    session.on("error", () => {});
    sessions.push(session);
  }
  await Promise.all(sessions.map((s) => new Promise<void>((resolve, reject) => (s.once("connect", () => resolve()), s.once("error", reject)))));
  const started = performance.now();
  const until = config.durationMs ? started + config.durationMs : 0;
  const steadyFrom = config.durationMs ? started + config.durationMs / 4 : 0;
  let steadyOk = 0;
  let next = 0;
  const slot = async (session: http2.ClientHttp2Session): Promise<void> => {
    do {
      const key = `${config.keyPrefix}-${next++}`;
      const firstSentAt = performance.now();
      let answer: Answer;
      let sentAt: number;
      for (;;) {
        result.sent++;
        sentAt = performance.now();
        answer = await call(session, key, value, config.hangAfterMs);
        if (!config.retry || !(answer.kind === "exhausted" || answer.kind === "timeout") || performance.now() >= until) break;
        result.retried++;
        const hint = answer.kind === "exhausted" && answer.retryAfterMs !== null ? answer.retryAfterMs : 50;
        await new Promise((resolve) => setTimeout(resolve, hint * (1 + Math.random())));
      }
      const ms = performance.now() - (answer.kind === "ok" ? firstSentAt : sentAt);
      if (answer.kind !== "hung") result.latenciesMs.push(ms);
      switch (answer.kind) {
        case "ok":
          result.ok++;
          if (until > 0) {
            const now = performance.now();
            if (now >= steadyFrom && now <= until) steadyOk++;
          }
          result.acked.push(key);
          result.okLatenciesMs.push(ms);
          break;
        case "exhausted": {
          result.exhausted++;
          const hint = answer.retryAfterMs;
          if (hint !== null) result.retryAfterMs = { min: Math.min(result.retryAfterMs?.min ?? hint, hint), max: Math.max(result.retryAfterMs?.max ?? hint, hint) };
          break;
        }
        case "timeout":
          result.timeouts++;
          break;
        case "wrong-leader":
          result.wrongLeader++;
          break;
        case "hung":
          result.hung++;
          break;
        case "other":
          result.other++;
          if (result.otherSamples.length < 5) result.otherSamples.push(answer.what);
          break;
      }
    } while (until > 0 && performance.now() < until);
  };
  const slots: Promise<void>[] = [];
  for (const session of sessions) for (let s = 0; s < config.streams; s++) slots.push(slot(session));
  await Promise.all(slots);
  result.seconds = (performance.now() - started) / 1000;
  if (until > 0) result.goodput = steadyOk / ((until - steadyFrom) / 1000);
  for (const session of sessions) session.destroy();
  return result;
}

type Answer =
  | { kind: "ok" | "timeout" | "wrong-leader" | "hung" }
  | { kind: "exhausted"; retryAfterMs: number | null }
  | { kind: "other"; what: string };

function call(session: http2.ClientHttp2Session, key: string, value: string, hangAfterMs: number): Promise<Answer> {
  const body = toBinary(CommandRequestSchema, create(CommandRequestSchema, { key, value, op: Op.PUT }));
  return new Promise<Answer>((resolve) => {
    let stream: http2.ClientHttp2Stream;
    try {
      stream = session.request({
        ":method": "POST",
        ":path": "/kvraftpb.KVService/Command",
        "content-type": "application/proto",
        "connect-protocol-version": "1",
      });
    } catch (error) {
      resolve({ kind: "other", what: `request: ${(error as Error).message}` });
      return;
    }
    let status = 0;
    let retryAfter: string | undefined;
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      stream.close(http2.constants.NGHTTP2_CANCEL);
      resolve({ kind: "hung" });
    }, hangAfterMs);
    stream.on("response", (headers) => {
      status = Number(headers[":status"]);
      const hint = headers["retry-after-ms"];
      retryAfter = typeof hint === "string" ? hint : undefined;
    });
    stream.on("data", (chunk: Buffer) => chunks.push(chunk));
    stream.on("error", (error) => {
      clearTimeout(timer);
      resolve({ kind: "other", what: `stream: ${error.message}` });
    });
    stream.on("end", () => {
      clearTimeout(timer);
      const bytes = Buffer.concat(chunks);
      if (status === 200) {
        let err: string;
        try {
          err = fromBinary(CommandResponseSchema, bytes).err;
        } catch {
          resolve({ kind: "other", what: `HTTP 200 with a body that is no CommandResponse (${bytes.length} bytes)` });
          return;
        }
        if (err === "OK") resolve({ kind: "ok" });
        else if (err === "ErrTimeout") resolve({ kind: "timeout" });
        else if (err === "ErrWrongLeader") resolve({ kind: "wrong-leader" });
        else resolve({ kind: "other", what: `err ${err}` });
        return;
      }
      let code = "";
      try {
        code = String((JSON.parse(bytes.toString("utf8")) as { code?: string }).code ?? "");
      } catch {
        // Not a Connect error body: reported below by status.
      }
      if (code === "resource_exhausted") resolve({ kind: "exhausted", retryAfterMs: retryAfter === undefined ? null : Number(retryAfter) });
      else resolve({ kind: "other", what: `HTTP ${status} ${code || bytes.toString("utf8").slice(0, 80)}` });
    });
    stream.end(body);
  });
}

/** The p-th percentile (0-100) of `values` (sorted copy), or 0 when empty. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** What the cluster suite's overload point reads back from a burst run in its own process. */
export interface BurstSummary extends Pick<BurstResult, "sent" | "ok" | "exhausted" | "timeouts" | "wrongLeader" | "retried" | "other" | "otherSamples" | "hung"> {
  seconds: number;
  goodput: number;
  okP50Ms: number;
  okP99Ms: number;
}

// Usage: bun bench/overload-burst.ts '<BurstConfig JSON>'  → one BurstSummary JSON line on stdout.
if (import.meta.main) {
  const config = JSON.parse(process.argv[2] ?? "{}") as BurstConfig;
  const r = await runBurst(config);
  const summary: BurstSummary = {
    sent: r.sent,
    ok: r.ok,
    exhausted: r.exhausted,
    timeouts: r.timeouts,
    wrongLeader: r.wrongLeader,
    retried: r.retried,
    other: r.other,
    otherSamples: r.otherSamples,
    hung: r.hung,
    seconds: r.seconds,
    goodput: r.goodput,
    okP50Ms: percentile(r.okLatenciesMs, 50),
    okP99Ms: percentile(r.okLatenciesMs, 99),
  };
  console.log(JSON.stringify(summary));
  process.exit(0);
}
