// The hot-path recorders turn into correct Prometheus exposition text through prom-client.
import { describe, expect, test } from "bun:test";
import { Registry } from "prom-client";
import { parsePromText, sumOf } from "../../src/obs/prom-text.ts";
import { BucketHistogram, CounterFamily, HistogramFamily, register, scraped } from "../../src/obs/recorders.ts";

describe("recorders", () => {
  test("a histogram exposes cumulative buckets, +Inf, sum and count", async () => {
    const family = new HistogramFamily("t_seconds", "test", ["op"], [0.001, 0.01, 0.1]);
    const put = family.with("Put");
    for (const v of [0.0005, 0.001, 0.005, 0.05, 0.5]) put.observe(v);
    family.with("Get").observe(0.02);
    const registry = new Registry();
    register(registry, family.metric());
    const text = await registry.metrics();
    expect(text).toContain("# TYPE t_seconds histogram");
    const s = parsePromText(text);
    expect(sumOf(s, "t_seconds_bucket", { op: "Put", le: "0.001" })).toBe(2); // le is inclusive
    expect(sumOf(s, "t_seconds_bucket", { op: "Put", le: "0.01" })).toBe(3);
    expect(sumOf(s, "t_seconds_bucket", { op: "Put", le: "0.1" })).toBe(4);
    expect(sumOf(s, "t_seconds_bucket", { op: "Put", le: "+Inf" })).toBe(5);
    expect(sumOf(s, "t_seconds_count", { op: "Put" })).toBe(5);
    expect(sumOf(s, "t_seconds_sum", { op: "Put" })).toBeCloseTo(0.5565, 6);
    expect(sumOf(s, "t_seconds_count", { op: "Get" })).toBe(1);
    expect(() => new BucketHistogram([1, 1])).toThrow(/must increase/);
  });

  test("counters by label values, bounded; scraped gauges read live state", async () => {
    const counter = new CounterFamily("t_total", "test", ["op", "result"], 3);
    counter.inc("Put", "OK");
    counter.inc("Put", "OK", "", 2);
    counter.inc("Get", "ErrNoKey");
    expect(counter.value("Put", "OK")).toBe(3);
    // Past the bound new label sets share "other" instead of growing without limit.
    counter.inc("A", "x"); // the third and last series
    counter.inc("B", "y");
    counter.inc("C", "z");
    expect(counter.value("A", "x")).toBe(1);
    expect(counter.value("B", "y")).toBe(0);
    expect(counter.value("other", "other")).toBe(2);
    let live = 7;
    const registry = new Registry();
    registry.setDefaultLabels({ node: "2" });
    register(registry, counter.metric(), scraped("t_gauge", "test", "gauge", () => [{ value: live }]));
    live = 9;
    const s = parsePromText(await registry.metrics());
    expect(sumOf(s, "t_total", { op: "Put", result: "OK", node: "2" })).toBe(3);
    expect(sumOf(s, "t_total", { op: "other" })).toBe(2);
    expect(sumOf(s, "t_gauge")).toBe(9);
  });
});
