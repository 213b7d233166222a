// Statistics for the bench harness: run summaries (median and spread of repeated runs) and a
// bounded latency histogram with log-spaced buckets, mergeable across processes.

/** Median and spread of repeated runs of one measurement. */
export interface Summary {
  median: number;
  min: number;
  max: number;
  runs: number[];
}

export function summarize(runs: readonly number[]): Summary {
  if (runs.length === 0) throw new RangeError("summarize: no runs to summarize");
  for (const r of runs) {
    if (!Number.isFinite(r)) throw new RangeError(`summarize: run value ${r} is not a finite number`);
  }
  const sorted = [...runs].sort((a, b) => a - b);
  return { median: medianOfSorted(sorted), min: sorted[0], max: sorted[sorted.length - 1], runs: [...runs] };
}

function medianOfSorted(sorted: readonly number[]): number {
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** ours / theirs, or null when either side is missing or theirs is zero. */
export function ratio(ours: Summary | null | undefined, theirs: Summary | null | undefined): number | null {
  if (!ours || !theirs || theirs.median === 0) return null;
  return ours.median / theirs.median;
}

/**
 * Latency histogram in microseconds. Buckets grow by `GROWTH` (1%), so any percentile is exact to
 * within 1% while memory stays fixed (about 2,100 buckets cover 1 µs to 1,000 s) however many
 * samples arrive. Values below 1 µs land in bucket 0; values above the top land in the last bucket.
 */
const GROWTH = 1.01;
const LOG_GROWTH = Math.log(GROWTH);
const MAX_MICROS = 1e9;
const BUCKETS = Math.ceil(Math.log(MAX_MICROS) / LOG_GROWTH) + 1;

export class Histogram {
  readonly counts = new Float64Array(BUCKETS);
  count = 0;
  sum = 0;
  min = Infinity;
  max = 0;

  record(micros: number): void {
    const v = micros > 0 ? micros : 0;
    const bucket = v <= 1 ? 0 : Math.min(BUCKETS - 1, Math.ceil(Math.log(v) / LOG_GROWTH));
    this.counts[bucket]++;
    this.count++;
    this.sum += v;
    if (v < this.min) this.min = v;
    if (v > this.max) this.max = v;
  }

  /** The value at quantile q (0..1): the upper edge of the bucket holding it, clamped to [min, max]. */
  quantile(q: number): number {
    if (!(q >= 0 && q <= 1)) throw new RangeError(`quantile ${q} is outside [0, 1]`);
    if (this.count === 0) return 0;
    const rank = Math.max(1, Math.ceil(q * this.count));
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.counts[i];
      if (seen >= rank) {
        const upper = i === 0 ? 1 : Math.pow(GROWTH, i);
        return Math.min(this.max, Math.max(this.min, upper));
      }
    }
    return this.max;
  }

  mean(): number {
    return this.count === 0 ? 0 : this.sum / this.count;
  }

  merge(other: Histogram): void {
    for (let i = 0; i < BUCKETS; i++) this.counts[i] += other.counts[i];
    this.count += other.count;
    this.sum += other.sum;
    this.min = Math.min(this.min, other.min);
    this.max = Math.max(this.max, other.max);
  }

  /** Sparse form for JSON between processes: [bucket, count] pairs of non-empty buckets. */
  toJSON(): HistogramJSON {
    const buckets: [number, number][] = [];
    for (let i = 0; i < BUCKETS; i++) if (this.counts[i] > 0) buckets.push([i, this.counts[i]]);
    return { count: this.count, sum: this.sum, min: this.count ? this.min : 0, max: this.max, buckets };
  }

  static fromJSON(json: HistogramJSON): Histogram {
    const h = new Histogram();
    for (const [bucket, n] of json.buckets) {
      if (!Number.isInteger(bucket) || bucket < 0 || bucket >= BUCKETS) {
        throw new RangeError(`histogram bucket ${bucket} is outside 0..${BUCKETS - 1}`);
      }
      h.counts[bucket] += n;
    }
    h.count = json.count;
    h.sum = json.sum;
    h.min = json.count ? json.min : Infinity;
    h.max = json.max;
    return h;
  }
}

export interface HistogramJSON {
  count: number;
  sum: number;
  min: number;
  max: number;
  buckets: [number, number][];
}

export interface LatencySummary {
  p50: number;
  p99: number;
  p999: number;
  mean: number;
  max: number;
}

/** Percentiles in milliseconds. */
export function latencyMillis(h: Histogram): LatencySummary {
  return {
    p50: h.quantile(0.5) / 1000,
    p99: h.quantile(0.99) / 1000,
    p999: h.quantile(0.999) / 1000,
    mean: h.mean() / 1000,
    max: h.max / 1000,
  };
}
