// Smoke tests of the bench harness pieces (no benchmark is run): statistics, tables, SVG charts,
// argument parsing, progress output, HTTP/1.1 response parsing, workload data and bounded loops.

import { describe, expect, test } from "bun:test";
import * as path from "node:path";
import { parseArgs, UsageError } from "../../bench/args.ts";
import { parseResponse } from "../../bench/http1.ts";
import { preloadKey, uniqueKey, validateConfig, type LoadConfig } from "../../bench/loadgen.ts";
import { batchLoop, concurrentLoop, KEY_BYTES, makeKey, makeMissingKey, Rng, serialLoop, syncLoop, VALUE_BYTES, ValueSource } from "../../bench/lsm-workloads.ts";
import { Progress } from "../../bench/progress.ts";
import { comparisonTable, recordRun, type Comparison } from "../../bench/report.ts";
import { Histogram, latencyMillis, ratio, summarize } from "../../bench/stats.ts";
import { barChart, escapeXml, lineChart, makeScale } from "../../bench/svg.ts";
import { formatBytes, formatCount, formatMillis, formatRatio, formatSummary, renderTable } from "../../bench/table.ts";

describe("stats", () => {
  test("summarize gives the median and spread of runs", () => {
    expect(summarize([3, 1, 2])).toEqual({ median: 2, min: 1, max: 3, runs: [3, 1, 2] });
    expect(summarize([4, 1, 3, 2]).median).toBe(2.5);
    expect(() => summarize([])).toThrow(RangeError);
    expect(() => summarize([1, NaN])).toThrow(RangeError);
  });

  test("ratio compares medians and is null when a side is missing", () => {
    expect(ratio(summarize([200]), summarize([100]))).toBe(2);
    expect(ratio(null, summarize([1]))).toBeNull();
    expect(ratio(summarize([1]), summarize([0]))).toBeNull();
  });

  test("histogram percentiles are within 1% of the exact values", () => {
    const h = new Histogram();
    const values: number[] = [];
    const rng = new Rng(42);
    for (let i = 0; i < 20_000; i++) {
      const v = 10 + rng.next() * 100_000;
      values.push(v);
      h.record(v);
    }
    values.sort((a, b) => a - b);
    for (const q of [0.5, 0.9, 0.99, 0.999]) {
      const exact = values[Math.ceil(q * values.length) - 1];
      expect(Math.abs(h.quantile(q) - exact) / exact).toBeLessThan(0.011);
    }
    expect(h.quantile(1)).toBe(h.max);
    expect(() => h.quantile(1.5)).toThrow(RangeError);
  });

  test("histograms survive JSON between processes and merge", () => {
    const a = new Histogram();
    const b = new Histogram();
    for (let i = 1; i <= 100; i++) a.record(i * 10);
    for (let i = 1; i <= 100; i++) b.record(i * 1000);
    const back = Histogram.fromJSON(JSON.parse(JSON.stringify(a.toJSON())));
    expect(back.count).toBe(100);
    expect(back.quantile(0.5)).toBe(a.quantile(0.5));
    back.merge(b);
    expect(back.count).toBe(200);
    expect(back.max).toBe(100_000);
    expect(latencyMillis(back).p50).toBeCloseTo(1, 1);
    expect(() => Histogram.fromJSON({ count: 1, sum: 1, min: 1, max: 1, buckets: [[-1, 1]] })).toThrow(RangeError);
  });
});

describe("tables", () => {
  test("columns are padded and aligned", () => {
    const t = renderTable(
      [{ header: "name" }, { header: "ops/s", align: "right" }],
      [
        ["fillseq", "1.2k"],
        ["readrandom", "98"],
      ],
    );
    expect(t.split("\n")).toEqual(["name        ops/s", "----------  -----", "fillseq      1.2k", "readrandom     98"]);
    expect(() => renderTable([{ header: "a" }], [["1", "2"]])).toThrow(RangeError);
  });

  test("numbers read at a glance", () => {
    expect(formatCount(987)).toBe("987");
    expect(formatCount(1234)).toBe("1.23k");
    expect(formatCount(1500)).toBe("1.5k");
    expect(formatCount(142_300)).toBe("142k");
    expect(formatCount(1_000_000)).toBe("1M");
    expect(formatCount(2.5)).toBe("2.5");
    expect(formatBytes(512)).toBe("512 B");
    expect(formatBytes(64 * 1024 * 1024)).toBe("64 MiB");
    expect(formatMillis(0.1234)).toBe("0.123");
    expect(formatMillis(12.34)).toBe("12.3");
    expect(formatRatio(1.234)).toBe("1.23×");
    expect(formatRatio(null)).toBe("—");
    expect(formatSummary(summarize([100_000, 120_000, 90_000]))).toBe("100k (90k–120k)");
    expect(formatSummary(summarize([5]))).toBe("5");
    expect(formatSummary(null)).toBe("—");
  });

  test("comparison tables show both sides and the ratio", () => {
    const list: Comparison[] = [];
    recordRun(list, "fillseq", "serial", "ops/s", "ours", 200);
    recordRun(list, "fillseq", "serial", "ops/s", "leveldb", 100);
    recordRun(list, "readseq", "bulk", "ops/s", "leveldb", 50);
    const t = comparisonTable(list, { ours: "ours", theirs: "leveldb", oursLabel: "ours", theirsLabel: "LevelDB" });
    const lines = t.split("\n");
    expect(lines[2]).toContain("2.00×");
    expect(lines[3]).toContain("—");
  });
});

/** Checks that every opened tag is closed in order: enough to catch broken SVG output. */
function assertBalancedXml(xml: string): void {
  const stack: string[] = [];
  for (const m of xml.matchAll(/<(\/?)([a-zA-Z][\w:-]*)[^>]*?(\/?)>/g)) {
    const [, closing, name, selfClosing] = m;
    if (selfClosing) continue;
    if (closing) expect(stack.pop()).toBe(name);
    else stack.push(name);
  }
  expect(stack).toEqual([]);
}

describe("svg", () => {
  const spec = {
    title: "ours <vs> LevelDB & co",
    unit: "ops/s",
    series: [{ name: "ours" }, { name: "LevelDB" }],
    groups: [
      { label: "fillseq serial", values: [summarize([100_000, 90_000, 110_000]), summarize([40_000])], note: "2.50×" },
      { label: "readseq bulk", values: [null, summarize([600_000])] },
    ],
  };

  test("bar charts are standalone, balanced, escaped SVG with a bar per value", () => {
    for (const log of [false, true]) {
      const svg = barChart({ ...spec, log });
      expect(svg.startsWith("<svg xmlns=\"http://www.w3.org/2000/svg\"")).toBe(true);
      assertBalancedXml(svg);
      expect(svg).toContain("ours &lt;vs&gt; LevelDB &amp; co");
      expect(svg).not.toContain("<vs>");
      expect(svg.match(/<rect [^>]*><title>/g)?.length).toBe(3);
      expect(svg).toContain("no result");
      expect(svg).toContain("2.50×");
      expect(svg).not.toContain("NaN");
    }
  });

  test("line charts draw a path per series and whiskers for spread", () => {
    const svg = lineChart({
      title: "throughput",
      xLabel: "clients",
      yLabel: "ops/s",
      categories: ["1", "16", "64"],
      series: [
        { name: "ours put", points: [summarize([700]), summarize([1900, 2100]), null] },
        { name: "etcd put", points: [summarize([600]), summarize([2000]), summarize([3800])], dashed: true },
      ],
      log: true,
    });
    assertBalancedXml(svg);
    expect(svg.match(/<circle /g)?.length).toBe(5);
    expect(svg).toContain("stroke-dasharray");
    expect(svg).not.toContain("NaN");
  });

  test("scales map values into [0, 1]", () => {
    const lin = makeScale(950, 1, false);
    expect(lin.at(0)).toBe(0);
    expect(lin.at(lin.ticks.at(-1)!)).toBeCloseTo(1);
    const log = makeScale(500_000, 3_000, true);
    expect(log.ticks).toEqual([1000, 10_000, 100_000, 1_000_000]);
    expect(log.at(10_000)).toBeCloseTo(1 / 3);
    expect(escapeXml(`a"b'c`)).toBe("a&quot;b&#39;c");
  });
});

describe("args", () => {
  const dir = "/tmp/results";
  test("defaults run every suite three times", () => {
    const o = parseArgs([], dir);
    expect(o.suites).toEqual(["lsm", "raft", "cluster", "metrics", "catchup"]);
    expect(o.runs).toBe(3);
    expect(o.quick).toBe(false);
  });

  test("suites, quick and options", () => {
    const o = parseArgs(["cluster", "--quick", "--vs-etcd", "--json", "out.json", "--seconds=4"], dir);
    expect(o.suites).toEqual(["cluster"]);
    expect(o.runs).toBe(1);
    expect(o.vsEtcd).toBe(true);
    expect(o.json).toBe("out.json");
    expect(o.seconds).toBe(4);
    expect(parseArgs(["lsm", "--keys", "200_000", "--runs", "5"], dir)).toMatchObject({ lsmKeys: 200_000, runs: 5 });
    expect(parseArgs(["cluster", "--warmup", "0"], dir).warmupSeconds).toBe(0);
    expect(parseArgs(["cluster", "--warmup", "5"], dir).warmupSeconds).toBe(5);
    expect(parseArgs(["cluster"], dir).warmupSeconds).toBeNull();
    expect(() => parseArgs(["cluster", "--warmup", "-1"], dir)).toThrow(/--warmup/);
    expect(parseArgs(["cluster", "--no-fast-lane"], dir).noFastLane).toBe(true);
  });

  test("bad input is a UsageError that says what to do", () => {
    expect(() => parseArgs(["--fast"], dir)).toThrow(UsageError);
    expect(() => parseArgs(["cluster", "--clients", "8192"], dir)).toThrow(/bulk only/);
    expect(() => parseArgs(["cluster", "--workloads", "put,bulk", "--clients", "8192"], dir)).toThrow(/bulk only/);
    expect(parseArgs(["cluster", "--workloads", "bulk", "--clients", "4096,8192"], dir).clients).toEqual([4096, 8192]);
    expect(() => parseArgs(["lsmx"], dir)).toThrow(/unknown suite/);
    expect(() => parseArgs(["--runs", "0"], dir)).toThrow(/whole number/);
    expect(() => parseArgs(["--json"], dir)).toThrow(/file name/);
    expect(() => parseArgs(["lsm", "--vs-etcd"], dir)).toThrow(/cluster/);
    expect(() => parseArgs(["raft", "--big"], dir)).toThrow(/lsm/);
    expect(() => parseArgs(["lsm", "--no-fast-lane"], dir)).toThrow(/cluster/);
  });
});

describe("progress", () => {
  test("plain output prints one line per finished step", () => {
    let out = "";
    const p = new Progress({ write: (s) => (out += s), isTTY: false });
    p.start("[lsm] fillseq", 1000);
    for (let i = 0; i < 1000; i++) p.tick(i);
    p.finish("123k ops/s");
    expect(out).toBe("  [lsm] fillseq: 123k ops/s\n");
  });

  test("a TTY gets a redrawn status line with a bar, cleared at the end", () => {
    let out = "";
    let clock = 0;
    const p = new Progress({ write: (s) => (out += s), isTTY: true, columns: 80 }, () => clock);
    p.start("[lsm] fillseq", 100);
    clock += 1000;
    p.tick(100);
    p.finish("done");
    expect(out).toContain("\r\x1b[2K[lsm] fillseq [");
    expect(out).toContain("100%");
    expect(out.endsWith("\r\x1b[2K  [lsm] fillseq: done\n")).toBe(true);
  });
});

describe("http1", () => {
  test("parses Content-Length and chunked responses, and waits for the rest", () => {
    const full = Buffer.from('HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"err":"OK"}');
    expect(parseResponse(full.subarray(0, full.length - 3))).toBeNull();
    const ok = parseResponse(Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{"err":"OK"}'))!;
    expect(ok).toMatchObject({ status: 200, body: '{"err":"OK"}', close: false });
    const chunked = Buffer.from("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNEXT");
    const r = parseResponse(chunked)!;
    expect(r).toMatchObject({ status: 200, body: "hello world", close: true });
    expect(chunked.subarray(r.consumed).toString()).toBe("NEXT");
    expect(parseResponse(chunked.subarray(0, 60))).toBeNull();
    expect(() => parseResponse(Buffer.from("garbage\r\n\r\n"))).toThrow(/malformed/);
  });
});

describe("load generator config", () => {
  const base: LoadConfig = { protocol: "etcd", host: "127.0.0.1", port: 2379, workload: "put", clients: 16, durationMs: 1000, keyCount: 10, tag: "e1", valueBytes: 100, watchPids: [] };
  test("keys are 16 bytes and distinct per tag", () => {
    expect(preloadKey(42)).toHaveLength(16);
    expect(uniqueKey("e1", 7)).toHaveLength(16);
    expect(uniqueKey("e1", 7)).not.toBe(uniqueKey("e2", 7));
  });
  test("bad configs are refused", () => {
    expect(validateConfig(base)).toBe(base);
    expect(() => validateConfig({ ...base, host: "10.0.0.1" })).toThrow(/127.0.0.1/);
    expect(() => validateConfig({ ...base, clients: 0 })).toThrow(/clients/);
    // Bulk clients are writes in flight through one Clerk: up to 65,536; anything else up to 4,096.
    expect(() => validateConfig({ ...base, clients: 8192 })).toThrow(/1\.\.4096/);
    const bulk: LoadConfig = { ...base, protocol: "kvraft", workload: "bulk", path: "clerk-grpc", clients: 8192 };
    expect(validateConfig(bulk)).toBe(bulk);
    expect(() => validateConfig({ ...bulk, clients: 70_000 })).toThrow(/65536 for bulk/);
    expect(() => validateConfig({ ...base, tag: "TOO-LONG-TAG" })).toThrow(/tag/);
  });
});

describe("lsm workload data and loops", () => {
  test("keys are 16 sortable bytes; missing keys sort between present ones", () => {
    expect(makeKey(1234).toString()).toBe("0000000000001234");
    expect(makeKey(1234)).toHaveLength(KEY_BYTES);
    expect(Buffer.compare(makeKey(9), makeKey(10))).toBe(-1);
    const missing = makeMissingKey(1234);
    expect(Buffer.compare(makeKey(1239), missing)).toBe(-1);
    expect(Buffer.compare(missing, makeKey(1240))).toBe(-1);
  });

  test("values are 100 bytes and about half compressible, like db_bench's", () => {
    const source = new ValueSource(1);
    const parts: Buffer[] = [];
    for (let i = 0; i < 1000; i++) parts.push(source.next());
    expect(parts[0]).toHaveLength(VALUE_BYTES);
    const all = Buffer.concat(parts);
    const ratio = Bun.deflateSync(all).length / all.length;
    expect(ratio).toBeGreaterThan(0.4);
    expect(ratio).toBeLessThan(0.7);
  });

  test("loops stop at the count, or at the deadline", async () => {
    let calls = 0;
    const r1 = await serialLoop({ count: 100, maxMs: 60_000 }, async () => calls++);
    expect(r1).toMatchObject({ ops: 100, capped: false });
    const r2 = syncLoop({ count: 1e12, maxMs: 0 }, () => calls++);
    expect(r2.capped).toBe(true);
    expect(r2.ops).toBe(64);
    const r3 = await concurrentLoop({ count: 1000, maxMs: 60_000 }, 64, async () => calls++);
    expect(r3).toMatchObject({ ops: 1000, capped: false });
    const batches: number[] = [];
    const r4 = await batchLoop({ count: 2500, maxMs: 60_000 }, 1000, async (_first, size) => batches.push(size));
    expect(batches).toEqual([1000, 1000, 500]);
    expect(r4.ops).toBe(2500);
  });
});

describe("bun bench command line", () => {
  const main = path.resolve(import.meta.dir, "../../bench/main.ts");
  test("--help exits 0 with usage; a bad flag exits 2 with a message", () => {
    const help = Bun.spawnSync([process.execPath, main, "--help"], { stdout: "pipe", stderr: "pipe" });
    expect(help.exitCode).toBe(0);
    expect(help.stdout.toString()).toContain("usage: bun bench");
    const bad = Bun.spawnSync([process.execPath, main, "--nope"], { stdout: "pipe", stderr: "pipe" });
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr.toString()).toContain('unknown option "--nope"');
  });
});
