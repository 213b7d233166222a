// db_bench's data and drivers: 16-byte decimal keys, 100-byte values about half compressible,
// a seeded random order, and loops that run one operation serially, with N in flight, or in
// batches — every loop bounded by an operation count and a deadline.

import type { Progress } from "./progress.ts";

export const KEY_BYTES = 16;
export const VALUE_BYTES = 100;
/** Bytes of user data per operation, for MB/s as db_bench reports it. */
export const ENTRY_BYTES = KEY_BYTES + VALUE_BYTES;

/** Key `i` as 16 ASCII digits, zero-padded ("%016d" in db_bench): sorts in numeric order. */
export function makeKey(i: number): Buffer {
  const key = Buffer.allocUnsafe(KEY_BYTES);
  let v = i;
  for (let p = KEY_BYTES - 1; p >= 0; p--) {
    key[p] = 48 + (v % 10);
    v = Math.floor(v / 10);
  }
  return key;
}

/**
 * A key that is never written but sorts among the written ones: key `i` with its last digit
 * replaced by 'x', which sorts after every digit. Lookups walk the same blocks as hits do.
 */
export function makeMissingKey(i: number): Buffer {
  const key = makeKey(i);
  key[KEY_BYTES - 1] = 0x78;
  return key;
}

/** mulberry32: a small seeded generator so both systems see the same "random" keys in a run. */
export class Rng {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Uniform integer in [0, n). */
  below(n: number): number {
    return Math.floor(this.next() * n);
  }
}

/**
 * Values as db_bench makes them: a 1 MiB pool where each 100-byte piece is 50 random bytes
 * repeated, so a block compressor halves it. Values are views into the pool (never written
 * after creation), taken at a moving offset so neighbouring values differ.
 */
export class ValueSource {
  private readonly pool: Buffer;
  private pos = 0;
  constructor(seed: number) {
    const rng = new Rng(seed);
    this.pool = Buffer.allocUnsafe(1 << 20);
    for (let off = 0; off < this.pool.length; off += VALUE_BYTES) {
      const half = VALUE_BYTES / 2;
      for (let j = 0; j < half && off + j < this.pool.length; j++) this.pool[off + j] = 32 + rng.below(95);
      for (let j = half; j < VALUE_BYTES && off + j < this.pool.length; j++) this.pool[off + j] = this.pool[off + j - half];
    }
  }
  next(): Buffer {
    if (this.pos + VALUE_BYTES > this.pool.length) this.pos = 0;
    const v = this.pool.subarray(this.pos, this.pos + VALUE_BYTES);
    this.pos += VALUE_BYTES;
    return v;
  }
}

/** Result of one measured loop. */
export interface LoopResult {
  ops: number;
  seconds: number;
  /** True when the deadline, not the count, ended the loop. */
  capped: boolean;
}

export interface LoopBounds {
  count: number;
  /** Wall-clock limit in milliseconds. */
  maxMs: number;
  progress?: Progress;
  /** Called every few thousand operations (e.g. to sample RSS). */
  sample?: () => void;
}

const CHECK_EVERY = 64;
const SAMPLE_EVERY = 4096;

/** Runs `op(i)` for i = 0.. one at a time, awaiting each. */
export async function serialLoop(b: LoopBounds, op: (i: number) => Promise<unknown>): Promise<LoopResult> {
  const start = performance.now();
  const deadline = start + b.maxMs;
  let i = 0;
  let capped = false;
  while (i < b.count) {
    await op(i++);
    if (i % CHECK_EVERY === 0) {
      b.progress?.tick(i);
      if (i % SAMPLE_EVERY === 0) b.sample?.();
      if (performance.now() > deadline) {
        capped = i < b.count;
        break;
      }
    }
  }
  return { ops: i, seconds: (performance.now() - start) / 1000, capped };
}

/** Runs `op(i)` synchronously for i = 0.. (getSync, sync iterators). */
export function syncLoop(b: LoopBounds, op: (i: number) => unknown): LoopResult {
  const start = performance.now();
  const deadline = start + b.maxMs;
  let i = 0;
  let capped = false;
  while (i < b.count) {
    op(i++);
    if (i % CHECK_EVERY === 0) {
      b.progress?.tick(i);
      if (i % SAMPLE_EVERY === 0) b.sample?.();
      if (performance.now() > deadline) {
        capped = i < b.count;
        break;
      }
    }
  }
  return { ops: i, seconds: (performance.now() - start) / 1000, capped };
}

/** Keeps `inFlight` operations outstanding until `count` have been started or time is up. */
export async function concurrentLoop(b: LoopBounds, inFlight: number, op: (i: number) => Promise<unknown>): Promise<LoopResult> {
  const start = performance.now();
  const deadline = start + b.maxMs;
  let next = 0;
  let done = 0;
  let stop = false;
  const worker = async () => {
    while (!stop && next < b.count) {
      await op(next++);
      done++;
      if (done % CHECK_EVERY === 0) {
        b.progress?.tick(done);
        if (done % SAMPLE_EVERY === 0) b.sample?.();
        if (performance.now() > deadline) stop = true;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(inFlight, b.count)) }, worker));
  return { ops: done, seconds: (performance.now() - start) / 1000, capped: done < b.count };
}

/** Writes `count` operations in batches of `batchSize`, one awaited batch at a time. */
export async function batchLoop(
  b: LoopBounds,
  batchSize: number,
  writeBatch: (first: number, size: number) => Promise<unknown>,
): Promise<LoopResult> {
  const start = performance.now();
  const deadline = start + b.maxMs;
  let done = 0;
  let capped = false;
  while (done < b.count) {
    const size = Math.min(batchSize, b.count - done);
    await writeBatch(done, size);
    done += size;
    b.progress?.tick(done);
    b.sample?.();
    if (performance.now() > deadline && done < b.count) {
      capped = true;
      break;
    }
  }
  return { ops: done, seconds: (performance.now() - start) / 1000, capped };
}

/** A random permutation-free stream of indices in [0, n): db_bench's random with replacement. */
export function randomIndices(seed: number, n: number): (i: number) => number {
  const rng = new Rng(seed);
  return () => rng.below(n);
}
