// Model test of the LSM's public API: a seeded random mix of put/del/batch/get/range/snapshot
// operations runs against the engine and an in-memory sorted map; every read must agree.
// Replay a failure with LSM_MODEL_SEED=<seed printed on failure>.
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DB, type Snapshot } from "../../src/lsm/index.ts";

const OPERATIONS = 30_000;
const TIME_BUDGET_MS = 20_000;
const REOPEN_EVERY = 4_000;
const MAX_LIVE_SNAPSHOTS = 4;
// A small memtable, small tables and a small L1 so that the run crosses many flushes and
// compactions, and the data spreads over several levels of several tables each.
const ENGINE_OPTIONS = { memtableBytes: 64 * 1024, targetFileSize: 64 * 1024, level1MaxBytes: 256 * 1024 };

const dirs: string[] = [];
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

/** sfc32: a small, fast, seedable generator; one seed replays one run exactly. */
function makeRandom(seed: number) {
  let a = 0x9e3779b9, b = 0x243f6a88, c = 0xb7e15162, d = seed >>> 0;
  const next = (): number => {
    a >>>= 0; b >>>= 0; c >>>= 0; d >>>= 0;
    const t = (a + b + d) >>> 0;
    d = (d + 1) >>> 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) >>> 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) >>> 0;
    return t / 4294967296;
  };
  for (let i = 0; i < 16; i++) next();
  return {
    float: next,
    int: (n: number): number => Math.floor(next() * n),
    chance: (p: number): boolean => next() < p,
    pick<T>(items: readonly T[]): T {
      return items[Math.floor(next() * items.length)];
    },
  };
}
type Random = ReturnType<typeof makeRandom>;

const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString("hex");
const unhex = (text: string): Uint8Array => new Uint8Array(Buffer.from(text, "hex"));

// Shared prefixes (including 0x00 and 0xff runs) make keys that differ only in their tails,
// which is where byte-order, prefix-compression and bound handling bugs live.
const PREFIXES = [[], [0x00], [0x00, 0x00], [0xff], [0xff, 0xff], [0x61], [0x61, 0x62], [0x75, 0x73, 0x65, 0x72, 0x2f]]
  .map((bytes) => new Uint8Array(bytes));
const TAIL_BYTES = [0x00, 0x01, 0x2f, 0x61, 0x62, 0x7f, 0x80, 0xfe, 0xff];

function randomKey(random: Random): Uint8Array {
  const prefix = random.pick(PREFIXES);
  const tailLength = random.int(4);
  const key = new Uint8Array(prefix.length + tailLength);
  key.set(prefix);
  for (let i = 0; i < tailLength; i++) {
    key[prefix.length + i] = random.chance(0.7) ? random.pick(TAIL_BYTES) : random.int(256);
  }
  return key;
}

function randomValue(random: Random): Uint8Array {
  const roll = random.float();
  const length = roll < 0.1 ? 0 : roll < 0.97 ? random.int(120) : 1000 + random.int(3000);
  const value = new Uint8Array(length);
  for (let i = 0; i < length; i++) value[i] = random.int(256);
  return value;
}

/** The model: hex(key) → value, plus the keys kept sorted (hex sorts as the bytes it encodes). */
class Model {
  readonly values = new Map<string, Uint8Array>();
  readonly sorted: string[] = [];

  clone(): Model {
    const copy = new Model();
    for (const [key, value] of this.values) copy.values.set(key, value);
    copy.sorted.push(...this.sorted);
    return copy;
  }

  get(key: string): Uint8Array | undefined {
    return this.values.get(key);
  }

  set(key: string, value: Uint8Array): void {
    if (!this.values.has(key)) this.sorted.splice(this.lowerBound(key), 0, key);
    this.values.set(key, value);
  }

  delete(key: string): void {
    if (this.values.delete(key)) this.sorted.splice(this.lowerBound(key), 1);
  }

  /** Index of the first key ≥ `key`. */
  lowerBound(key: string): number {
    let low = 0;
    let high = this.sorted.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (this.sorted[middle] < key) low = middle + 1;
      else high = middle;
    }
    return low;
  }
}

interface RangeQuery {
  gt?: Uint8Array;
  gte?: Uint8Array;
  lt?: Uint8Array;
  lte?: Uint8Array;
  reverse?: boolean;
  limit?: number;
  /** Read `after` entries, then seek(target), then read the rest. */
  seek?: { after: number; target: Uint8Array };
}

function randomRange(random: Random): RangeQuery {
  const query: RangeQuery = {};
  const lowerKind = random.int(3);
  const upperKind = random.int(3);
  if (lowerKind === 1) query.gt = randomKey(random);
  if (lowerKind === 2) query.gte = randomKey(random);
  if (upperKind === 1) query.lt = randomKey(random);
  if (upperKind === 2) query.lte = randomKey(random);
  if (random.chance(0.5)) query.reverse = true;
  // Mostly limited: unlimited scans of the whole key space cost time without finding more.
  if (random.chance(0.95)) query.limit = random.int(60);
  if (random.chance(0.25)) query.seek = { after: random.int(5), target: randomKey(random) };
  return query;
}

function describeRange(query: RangeQuery): string {
  return JSON.stringify(query, (_name, value) => (value instanceof Uint8Array ? hex(value) : value));
}

type Entries = [string, Uint8Array][];

function expectedRange(model: Model, query: RangeQuery): Entries {
  let start = 0;
  let end = model.sorted.length;
  if (query.gt !== undefined) {
    const bound = hex(query.gt);
    start = model.lowerBound(bound);
    if (model.sorted[start] === bound) start++;
  }
  if (query.gte !== undefined) start = model.lowerBound(hex(query.gte));
  if (query.lt !== undefined) end = model.lowerBound(hex(query.lt));
  if (query.lte !== undefined) {
    const bound = hex(query.lte);
    end = model.lowerBound(bound);
    if (model.sorted[end] === bound) end++;
  }
  const inRange = start < end ? model.sorted.slice(start, end) : [];
  if (query.reverse) inRange.reverse();
  let limit = query.limit ?? Infinity;
  let keys: string[];
  if (query.seek === undefined) {
    keys = inRange.slice(0, limit);
  } else {
    // The first entries as usual; after the seek, the range from the target on, and the limit
    // counts every entry returned before and after the seek.
    const before = inRange.slice(0, Math.min(limit, query.seek.after));
    limit -= before.length;
    const target = hex(query.seek.target);
    const after = inRange.filter((key) => (query.reverse ? key <= target : key >= target));
    keys = [...before, ...after.slice(0, limit)];
  }
  return keys.map((key) => [key, model.get(key)!]);
}

type ReadMode = "forAwait" | "nextv" | "read";

/** Reads a range through one of the iterator's three read paths. */
async function actualRange(db: DB, query: RangeQuery, mode: ReadMode, snapshot?: Snapshot): Promise<Entries> {
  const { seek, ...options } = query;
  const entries: Entries = [];
  if (mode === "forAwait" && seek === undefined) {
    for await (const [key, value] of db.iterator({ ...options, snapshot })) entries.push([hex(key), value]);
    return entries;
  }
  const iterator = db.iterator({ ...options, snapshot });
  const drain = (count: number) => {
    const stop = entries.length + count;
    while (entries.length < stop) {
      if (mode === "nextv") {
        const chunk = iterator.nextv(Math.min(stop - entries.length, 16));
        if (chunk.length === 0) return;
        for (const [key, value] of chunk) entries.push([hex(key), value]);
      } else {
        const entry = iterator.read();
        if (entry === undefined) return;
        entries.push([hex(entry[0]), entry[1]]);
      }
    }
  };
  try {
    if (seek !== undefined) {
      drain(seek.after);
      iterator.seek(seek.target);
    }
    drain(Infinity);
    return entries;
  } finally {
    iterator.close();
  }
}

interface SavedSnapshot {
  snapshot: Snapshot;
  model: Model;
}

interface ModelResult {
  operations: number;
  reopens: number;
  checks: number;
  flushes: number;
  compactions: number;
  deepestLevel: number;
}

async function runModel(seed: number): Promise<ModelResult> {
  const random = makeRandom(seed);
  const dir = mkdtempSync(join(tmpdir(), "lsm-model-"));
  dirs.push(dir);
  let db = await DB.open(dir, ENGINE_OPTIONS);
  const model = new Model();
  // Recently written keys: reads and deletes aim at them so that most of them hit.
  const recent: Uint8Array[] = [];
  const remember = (key: Uint8Array) => {
    if (recent.length < 256) recent.push(key);
    else recent[random.int(256)] = key;
  };
  const someKey = (): Uint8Array => (recent.length > 0 && random.chance(0.7) ? random.pick(recent) : randomKey(random));
  let open = true;
  const snapshots: SavedSnapshot[] = [];
  const started = performance.now();
  let operation = 0;
  let reopens = 0;
  let checks = 0;
  let flushes = 0;
  let compactions = 0;
  let deepestLevel = 0;
  const closeDb = async () => {
    const stats = db.stats();
    flushes += stats.flushes;
    compactions += stats.compactions;
    stats.levels.forEach((level, index) => {
      if (level.files > 0) deepestLevel = Math.max(deepestLevel, index);
    });
    open = false;
    await db.close();
  };

  const fail = (what: string): never => {
    throw new Error(`seed ${seed}, operation ${operation}: ${what}`);
  };
  const checkGet = async (key: Uint8Array, expected: Model, snapshot?: Snapshot) => {
    const want = expected.get(hex(key));
    const got = snapshot === undefined ? await db.get(key) : await db.get(key, { snapshot });
    checks++;
    if ((got === undefined) !== (want === undefined) || (got !== undefined && hex(got) !== hex(want!))) {
      fail(`get(${hex(key)})${snapshot ? " at snapshot" : ""} = ${got && hex(got)}, model has ${want && hex(want)}`);
    }
  };
  const checkRange = async (query: RangeQuery, expected: Model, snapshot?: Snapshot) => {
    const mode = random.pick(["forAwait", "nextv", "read"] as const);
    const got = await actualRange(db, query, mode, snapshot);
    const want = expectedRange(expected, query);
    checks++;
    const length = Math.max(got.length, want.length);
    for (let i = 0; i < length; i++) {
      const a = got[i];
      const b = want[i];
      if (a !== undefined && b !== undefined && a[0] === b[0] && Buffer.compare(a[1], b[1]) === 0) continue;
      const show = (entry: [string, Uint8Array] | undefined) =>
        entry === undefined ? "end" : `${entry[0]}=${hex(entry[1].subarray(0, 8))}${entry[1].length > 8 ? "…" : ""}`;
      fail(`iterator(${describeRange(query)}) read by ${mode}${snapshot ? " at snapshot" : ""}: got ${got.length} entries, ` +
        `model ${want.length}; first difference at #${i}: got ${show(a)}, model ${show(b)}`);
    }
  };
  const releaseAll = () => {
    for (const saved of snapshots) saved.snapshot.release();
    snapshots.length = 0;
  };

  try {
    for (; operation < OPERATIONS && performance.now() - started < TIME_BUDGET_MS; operation++) {
      const roll = random.float();
      if (roll < 0.45) {
        const key = randomKey(random);
        const value = randomValue(random);
        await db.put(key, value, { sync: random.chance(0.01) });
        model.set(hex(key), value);
        remember(key);
      } else if (roll < 0.57) {
        const key = someKey();
        await db.del(key);
        model.delete(hex(key));
      } else if (roll < 0.65) {
        // A batch may touch one key several times: the last operation on it wins.
        const ops: ({ type: "put"; key: Uint8Array; value: Uint8Array } | { type: "del"; key: Uint8Array })[] = [];
        const count = 1 + random.int(30);
        for (let i = 0; i < count; i++) {
          const key = randomKey(random);
          ops.push(random.chance(0.7) ? { type: "put", key, value: randomValue(random) } : { type: "del", key });
        }
        await db.write(ops);
        for (const op of ops) {
          if (op.type === "put") {
            model.set(hex(op.key), op.value);
            remember(op.key);
          } else model.delete(hex(op.key));
        }
      } else if (roll < 0.8) {
        const key = someKey();
        if (random.chance(0.3)) {
          const want = model.get(hex(key));
          const got = db.getSync(key);
          checks++;
          if ((got === undefined) !== (want === undefined) || (got && hex(got) !== hex(want!))) {
            fail(`getSync(${hex(key)}) = ${got && hex(got)}, model has ${want && hex(want)}`);
          }
        } else {
          await checkGet(key, model);
        }
      } else if (roll < 0.94) {
        await checkRange(randomRange(random), model);
      } else if (roll < 0.945) {
        if (snapshots.length >= MAX_LIVE_SNAPSHOTS) snapshots.shift()!.snapshot.release();
        snapshots.push({ snapshot: db.snapshot(), model: model.clone() });
      } else if (roll < 0.9985) {
        if (snapshots.length > 0) {
          const saved = random.pick(snapshots);
          const keys = saved.model.sorted;
          for (let i = 0; i < 5; i++) {
            const key = random.chance(0.7) && keys.length > 0 ? unhex(random.pick(keys)) : someKey();
            await checkGet(key, saved.model, saved.snapshot);
          }
          await checkRange(randomRange(random), saved.model, saved.snapshot);
        }
      } else {
        const a = randomKey(random);
        const b = randomKey(random);
        const [start, end] = Buffer.compare(a, b) <= 0 ? [a, b] : [b, a];
        await db.compactRange(random.chance(0.3) ? undefined : start, random.chance(0.3) ? undefined : end);
      }

      if (operation > 0 && operation % REOPEN_EVERY === 0) {
        // Snapshots do not survive a close: check the oldest one once more, then release all.
        if (snapshots.length > 0) await checkRange({}, snapshots[0].model, snapshots[0].snapshot);
        releaseAll();
        await closeDb();
        db = await DB.open(dir, ENGINE_OPTIONS);
        open = true;
        reopens++;
        await checkRange({}, model);
      }
    }

    for (const saved of snapshots) await checkRange({}, saved.model, saved.snapshot);
    releaseAll();
    await checkRange({}, model);
    await checkRange({ reverse: true }, model);
    await closeDb();
    db = await DB.open(dir, ENGINE_OPTIONS);
    open = true;
    await checkRange({}, model);
    return { operations: operation, reopens: reopens + 1, checks, flushes, compactions, deepestLevel };
  } catch (error) {
    console.error(`LSM model test failed: replay with LSM_MODEL_SEED=${seed}`);
    throw error;
  } finally {
    releaseAll();
    if (open) await db.close();
  }
}

test("random operations agree with an in-memory sorted map across flushes, compactions and reopens", async () => {
  const seed = process.env.LSM_MODEL_SEED !== undefined ? Number(process.env.LSM_MODEL_SEED) : (Math.random() * 2 ** 32) >>> 0;
  const result = await runModel(seed);
  console.log(
    `model test seed ${seed}: ${result.operations} operations, ${result.reopens} reopens, ` +
      `${result.flushes} flushes, ${result.compactions} compactions, deepest level L${result.deepestLevel}, ` +
      `${result.checks} checks`,
  );
  expect(result.operations).toBeGreaterThanOrEqual(3_000);
  expect(result.flushes).toBeGreaterThan(0);
  expect(result.compactions).toBeGreaterThan(0);
  expect(result.deepestLevel).toBeGreaterThanOrEqual(1);
  expect(result.checks).toBeGreaterThan(1_000);
}, 60_000);
