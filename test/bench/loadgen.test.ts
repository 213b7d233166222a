// The load generator end to end against a tiny in-process server that speaks kvraft's Connect
// JSON API and etcd's gateway: requests are well-formed, answers are checked, errors counted.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { runLoad, validateConfig, type LoadConfig } from "../../bench/loadgen.ts";
import { Histogram } from "../../bench/stats.ts";

interface Seen {
  commands: { key: string; value?: string; op: string; clientId: number; commandId: number }[];
  etcdPuts: { key: string; value: string }[];
  etcdRanges: string[];
  protocolHeader: number;
}

let server: ReturnType<typeof Bun.serve>;
const seen: Seen = { commands: [], etcdPuts: [], etcdRanges: [], protocolHeader: 0 };
const MAX_RECORDED = 10_000;

beforeAll(() => {
  server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(req) {
      const url = new URL(req.url);
      const body = (await req.json()) as Record<string, unknown>;
      if (url.pathname === "/kvraftpb.KVService/Command") {
        if (req.headers.get("connect-protocol-version") === "1") seen.protocolHeader++;
        const cmd = body as unknown as Seen["commands"][number];
        if (seen.commands.length < MAX_RECORDED) seen.commands.push(cmd);
        // Every 10th command of a client fails, so error counting is exercised.
        if (cmd.commandId % 10 === 0) return Response.json({ err: "ErrWrongLeader", leaderId: "1" });
        return Response.json(cmd.op === "GET" ? { err: "OK", value: "v" } : { err: "OK" });
      }
      if (url.pathname === "/v3/kv/put") {
        const put = { key: Buffer.from(String(body.key), "base64").toString(), value: Buffer.from(String(body.value), "base64").toString() };
        if (seen.etcdPuts.length < MAX_RECORDED) seen.etcdPuts.push(put);
        return Response.json({ header: { revision: "2" } });
      }
      if (url.pathname === "/v3/kv/range") {
        const key = Buffer.from(String(body.key), "base64").toString();
        if (seen.etcdRanges.length < MAX_RECORDED) seen.etcdRanges.push(key);
        return Response.json({ header: {}, kvs: [{ key: body.key, value: "dg==" }], count: "1" });
      }
      return new Response("not found", { status: 404 });
    },
  });
});

afterAll(() => server.stop(true));

function config(over: Partial<LoadConfig>): LoadConfig {
  return {
    protocol: "kvraft",
    host: "127.0.0.1",
    port: server.port!,
    workload: "put",
    clients: 4,
    durationMs: 300,
    keyCount: 50,
    tag: "t1",
    valueBytes: 100,
    watchPids: [process.pid],
    ...over,
  };
}

describe("load generator", () => {
  test("kvraft puts: unique 16-byte keys, 100-byte values, increasing commandIds, errors counted", async () => {
    seen.commands.length = 0;
    const r = await runLoad(config({}));
    expect(r.ops).toBeGreaterThan(0);
    expect(r.errors).toBeGreaterThan(0);
    expect(r.errorSamples).toEqual(["ErrWrongLeader"]);
    expect(Histogram.fromJSON(r.histogram).count).toBe(r.ops + r.errors);
    expect(seen.protocolHeader).toBeGreaterThan(0);
    const puts = seen.commands.filter((c) => c.op === "PUT");
    expect(puts.length).toBe(seen.commands.length);
    expect(new Set(puts.map((c) => c.key)).size).toBe(puts.length);
    for (const c of puts.slice(0, 100)) {
      expect(c.key).toHaveLength(16);
      expect(c.value).toHaveLength(100);
    }
    const byClient = new Map<number, number[]>();
    for (const c of seen.commands) byClient.set(c.clientId, [...(byClient.get(c.clientId) ?? []), c.commandId]);
    expect(byClient.size).toBe(4);
    for (const ids of byClient.values()) expect(ids).toEqual(ids.map((_, i) => i + 1));
    expect(r.cpu[process.pid]).toBeGreaterThanOrEqual(0);
  });

  test("a warm-up runs the same load unmeasured before the window: the server sees more than is counted", async () => {
    seen.etcdPuts.length = 0;
    const t0 = performance.now();
    const r = await runLoad(config({ protocol: "etcd", tag: "w3", clients: 1, durationMs: 200, warmupMs: 300 }));
    expect(performance.now() - t0).toBeGreaterThanOrEqual(500);
    expect(r.errors).toBe(0);
    expect(r.seconds).toBeLessThan(0.45);
    expect(Histogram.fromJSON(r.histogram).count).toBe(r.ops);
    // Warm-up puts reached the server but are not in the result.
    expect(seen.etcdPuts.length).toBeGreaterThan(r.ops);
    expect(() => validateConfig(config({ warmupMs: -1 }))).toThrow(/warmupMs/);
  });

  test("etcd mix: base64 puts and ranges over the preloaded keys", async () => {
    seen.etcdPuts.length = 0;
    seen.etcdRanges.length = 0;
    const r = await runLoad(config({ protocol: "etcd", workload: "mix", tag: "e2" }));
    expect(r.errors).toBe(0);
    expect(r.ops).toBe(seen.etcdPuts.length + seen.etcdRanges.length);
    expect(seen.etcdPuts.length).toBeGreaterThan(0);
    expect(seen.etcdRanges.length).toBeGreaterThan(0);
    expect(seen.etcdPuts[0].key.startsWith("e2-")).toBe(true);
    expect(seen.etcdPuts[0].value).toHaveLength(100);
    for (const k of seen.etcdRanges.slice(0, 100)) expect(Number(k.slice(1))).toBeLessThan(50);
  });

  test("preload writes exactly keyCount keys, then stops", async () => {
    seen.etcdPuts.length = 0;
    const r = await runLoad(config({ protocol: "etcd", workload: "preload", keyCount: 123, durationMs: 10_000 }));
    expect(r.ops).toBe(123);
    expect(new Set(seen.etcdPuts.map((p) => p.key)).size).toBe(123);
    expect(r.seconds).toBeLessThan(10);
  });

  test("a dead server is an error per attempt, not a hang", async () => {
    const dead = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("") });
    const port = dead.port!;
    dead.stop(true);
    await expect(runLoad(config({ port, durationMs: 200 }))).rejects.toThrow(/connect/i);
  });
});
