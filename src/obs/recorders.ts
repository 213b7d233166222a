// Hot-path recorders: counters and histograms that cost a few nanoseconds to record (plain
// numbers, a Float64Array per histogram) and become prom-client metrics only when scraped.
// Why not prom-client's own Counter/Histogram on the hot path: `bun bench metrics` measured a
// labelled inc or an observe at ~220-380 ns there, against ~5-15 ns here (see bench/metrics.ts).

import type { Registry } from "prom-client";

type Labels = Record<string, string | number>;

/** One exposition line: `metricName{labels} value` (metricName defaults to the metric's name). */
export interface Sample {
  metricName?: string;
  labels: Labels;
  value: number;
}

/** What prom-client's Registry accepts besides its own metric classes: a name, help, type and get(). */
export interface ScrapedMetric {
  name: string;
  help: string;
  type: "counter" | "gauge" | "histogram" | "summary";
  aggregator: "sum";
  get(): { name: string; help: string; type: string; aggregator: "sum"; values: Sample[] };
}

/** A histogram with fixed upper bounds (seconds, entries, bytes): observe() is one loop and two adds. */
export class BucketHistogram {
  readonly counts: Float64Array;
  readonly bounds: Float64Array;
  sum = 0;
  count = 0;

  constructor(bounds: readonly number[]) {
    for (let i = 1; i < bounds.length; i++) {
      if (!(bounds[i]! > bounds[i - 1]!)) throw new Error(`histogram bounds must increase: ${bounds.join(", ")}`);
    }
    this.bounds = Float64Array.from(bounds);
    this.counts = new Float64Array(bounds.length + 1);
  }

  observe(value: number): void {
    const bounds = this.bounds;
    const n = bounds.length;
    let i = 0;
    while (i < n && value > bounds[i]!) i++;
    this.counts[i]!++;
    this.sum += value;
    this.count++;
  }

  /** Prometheus samples: cumulative `_bucket{le}`, then `_sum` and `_count`. */
  samples(name: string, labels: Labels, into: Sample[]): void {
    let cumulative = 0;
    for (let i = 0; i < this.bounds.length; i++) {
      cumulative += this.counts[i]!;
      into.push({ metricName: `${name}_bucket`, labels: { ...labels, le: this.bounds[i]! }, value: cumulative });
    }
    into.push({ metricName: `${name}_bucket`, labels: { ...labels, le: "+Inf" }, value: this.count });
    into.push({ metricName: `${name}_sum`, labels, value: this.sum });
    into.push({ metricName: `${name}_count`, labels, value: this.count });
  }
}

/**
 * Histograms keyed by a label value set, created on first use. Bounded: label values come from
 * fixed vocabularies (ops, results, methods), and past `maxSeries` new keys share one "other".
 */
export class HistogramFamily {
  private readonly series = new Map<string, { labels: Labels; histogram: BucketHistogram }>();

  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly string[],
    private readonly bounds: readonly number[],
    private readonly maxSeries = 256,
  ) {}

  /** The histogram for these label values (in labelNames order); keep it to skip the lookup. */
  with(...values: string[]): BucketHistogram {
    const key = values.join("\u0000");
    let entry = this.series.get(key);
    if (entry === undefined) {
      if (this.series.size >= this.maxSeries) return this.with(...this.labelNames.map(() => "other"));
      const labels: Labels = {};
      this.labelNames.forEach((n, i) => (labels[n] = values[i] ?? ""));
      entry = { labels, histogram: new BucketHistogram(this.bounds) };
      this.series.set(key, entry);
    }
    return entry.histogram;
  }

  metric(): ScrapedMetric {
    return {
      name: this.name,
      help: this.help,
      type: "histogram",
      aggregator: "sum",
      get: () => {
        const values: Sample[] = [];
        for (const { labels, histogram } of this.series.values()) histogram.samples(this.name, labels, values);
        return { name: this.name, help: this.help, type: "histogram", aggregator: "sum", values };
      },
    };
  }
}

/**
 * Counters keyed by up to three label values, found through nested maps (no key string or array
 * per call); bounded as HistogramFamily is.
 */
export class CounterFamily {
  private readonly root = new Map<string, unknown>();
  private readonly series: { labels: Labels; value: number }[] = [];

  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly string[],
    private readonly maxSeries = 1024,
  ) {
    if (labelNames.length < 1 || labelNames.length > 3) throw new Error(`${name}: 1 to 3 labels, got ${labelNames.length}`);
  }

  inc(a: string, b = "", c = "", by = 1): void {
    this.entry(a, b, c).value += by;
  }

  /** The current value for these label values (0 when never counted). */
  value(a: string, b = "", c = ""): number {
    let level: unknown = this.root;
    for (const v of [a, b, c].slice(0, this.labelNames.length)) level = (level as Map<string, unknown> | undefined)?.get(v);
    return (level as { value: number } | undefined)?.value ?? 0;
  }

  private entry(a: string, b: string, c: string): { labels: Labels; value: number } {
    const depth = this.labelNames.length;
    let map = this.root;
    let next = map.get(a);
    if (depth > 1 && next !== undefined) {
      map = next as Map<string, unknown>;
      next = map.get(b);
      if (depth > 2 && next !== undefined) {
        map = next as Map<string, unknown>;
        next = map.get(c);
      }
    }
    if (next !== undefined && (next as Map<string, unknown>).size === undefined) return next as { labels: Labels; value: number };
    return this.create(a, b, c);
  }

  private create(a: string, b: string, c: string): { labels: Labels; value: number } {
    const values = [a, b, c].slice(0, this.labelNames.length);
    if (this.series.length >= this.maxSeries && !values.every((v) => v === "other")) return this.entry("other", "other", "other");
    let map = this.root;
    for (let i = 0; i < values.length - 1; i++) {
      let inner = map.get(values[i]!) as Map<string, unknown> | undefined;
      if (inner === undefined) {
        inner = new Map();
        map.set(values[i]!, inner);
      }
      map = inner;
    }
    const labels: Labels = {};
    this.labelNames.forEach((n, i) => (labels[n] = values[i]!));
    const entry = { labels, value: 0 };
    map.set(values[values.length - 1]!, entry);
    this.series.push(entry);
    return entry;
  }

  metric(): ScrapedMetric {
    return {
      name: this.name,
      help: this.help,
      type: "counter",
      aggregator: "sum",
      get: () => ({
        name: this.name,
        help: this.help,
        type: "counter",
        aggregator: "sum",
        values: this.series.map(({ labels, value }) => ({ labels, value })),
      }),
    };
  }
}

/**
 * A metric read from live state when scraped (a gauge, or a counter kept elsewhere, e.g. the LSM's
 * compaction count): `read` returns the samples, or [] when the source is not available.
 */
export function scraped(
  name: string,
  help: string,
  type: "counter" | "gauge",
  read: () => { labels?: Labels; value: number }[],
): ScrapedMetric {
  return {
    name,
    help,
    type,
    aggregator: "sum",
    get: () => ({
      name,
      help,
      type,
      aggregator: "sum",
      values: read().map(({ labels, value }) => ({ labels: labels ?? {}, value })),
    }),
  };
}

export function register(registry: Registry, ...metrics: ScrapedMetric[]): void {
  for (const metric of metrics) registry.registerMetric(metric as never);
}
