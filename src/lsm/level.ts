// The abstract-level adapter: lets the Level ecosystem (sublevels, encodings, level-* modules and
// the official abstract-level test suite) drive the LSM engine through LsmLevel.
import { mkdir, readdir } from "node:fs/promises";
import { AbstractIterator, AbstractLevel, AbstractSnapshot } from "abstract-level";
import type { AbstractDatabaseOptions } from "abstract-level";
import { DB, type Snapshot } from "./index.ts";

/** Formats the engine accepts natively; every other encoding is transcoded to one of these. */
type Format = "buffer" | "view" | "utf8";
type Data = string | Uint8Array;
type EngineOptions = NonNullable<Parameters<typeof DB.open>[1]>;

export interface LsmLevelOptions<K, V> extends AbstractDatabaseOptions<K, V> {
  /** Options handed unchanged to the engine's DB.open (memtable size, cache size, limits). */
  engine?: EngineOptions;
}

/** Options abstract-level hands to the private methods (already encoded, defaults filled in). */
interface WriteOptions {
  sync?: boolean;
}
interface ReadOptions {
  keyEncoding: Format;
  valueEncoding: Format;
  snapshot?: LsmSnapshot;
}
interface RangeOptions {
  gt?: Data;
  gte?: Data;
  lt?: Data;
  lte?: Data;
  reverse: boolean;
  limit: number;
  keyEncoding: Format;
  snapshot?: LsmSnapshot;
}
interface IteratorOptions extends RangeOptions {
  keys: boolean;
  values: boolean;
  valueEncoding: Format;
  signal?: AbortSignal;
}
interface BatchOperation {
  type: "put" | "del";
  key: Data;
  value?: Data;
}

/** Errors with the `code` property abstract-level consumers switch on. */
export class LsmLevelError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = code === "LEVEL_ABORTED" ? "AbortError" : "LsmLevelError";
    this.code = code;
  }
}

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder();

/**
 * Keys and values handed to the engine are copied: a caller may reuse its buffer after the
 * write resolves, and the engine keeps what it is given in the memtable.
 */
function toBytes(data: Data): Uint8Array {
  return typeof data === "string" ? textEncoder.encode(data) : data.slice();
}

/** Bounds and seek targets are only compared, never stored: no copy needed. */
function toBoundBytes(data: Data): Uint8Array {
  return typeof data === "string" ? textEncoder.encode(data) : data;
}

function fromBytes(bytes: Uint8Array, format: Format): Data {
  switch (format) {
    case "utf8":
      return textDecoder.decode(bytes);
    case "buffer":
      return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    case "view":
      return bytes;
  }
}

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  return Buffer.compare(a, b);
}

interface Bound {
  key: Uint8Array;
  inclusive: boolean;
}

/** A key range with at most one lower and one upper bound (gte wins over gt, lte over lt). */
interface Range {
  lower?: Bound;
  upper?: Bound;
}

function normalizeRange(options: RangeOptions): Range {
  const range: Range = {};
  if (options.gte !== undefined) range.lower = { key: toBoundBytes(options.gte), inclusive: true };
  else if (options.gt !== undefined) range.lower = { key: toBoundBytes(options.gt), inclusive: false };
  if (options.lte !== undefined) range.upper = { key: toBoundBytes(options.lte), inclusive: true };
  else if (options.lt !== undefined) range.upper = { key: toBoundBytes(options.lt), inclusive: false };
  return range;
}

/** Narrows a range so that it starts at `target` (forward) or ends at it (reverse). */
function narrowRange(range: Range, target: Uint8Array, reverse: boolean): Range {
  if (reverse) {
    if (range.upper !== undefined && compareBytes(target, range.upper.key) >= 0) return range;
    return { lower: range.lower, upper: { key: target, inclusive: true } };
  }
  if (range.lower !== undefined && compareBytes(target, range.lower.key) <= 0) return range;
  return { lower: { key: target, inclusive: true }, upper: range.upper };
}

function engineIteratorOptions(range: Range, reverse: boolean, snapshot: Snapshot) {
  const options: {
    gt?: Uint8Array;
    gte?: Uint8Array;
    lt?: Uint8Array;
    lte?: Uint8Array;
    reverse: boolean;
    snapshot: Snapshot;
  } = { reverse, snapshot };
  if (range.lower !== undefined) {
    if (range.lower.inclusive) options.gte = range.lower.key;
    else options.gt = range.lower.key;
  }
  if (range.upper !== undefined) {
    if (range.upper.inclusive) options.lte = range.upper.key;
    else options.lt = range.upper.key;
  }
  return options;
}

const ENGINE_BATCH_OPS = 1000;

/** An explicit snapshot: a token wrapping one engine snapshot, released on close. */
class LsmSnapshot extends (AbstractSnapshot as unknown as new (options: object) => AbstractSnapshot) {
  readonly engineSnapshot: Snapshot;

  constructor(engineSnapshot: Snapshot, options: object) {
    super(options);
    this.engineSnapshot = engineSnapshot;
  }

  async _close(): Promise<void> {
    this.engineSnapshot.release();
  }
}

type Entry = [Data | undefined, Data | undefined];
type Cursor = AsyncIterator<[Uint8Array, Uint8Array]>;

/**
 * Reads one snapshot (its own, taken synchronously at creation, or an explicit one) through
 * an engine iterator; seek() replaces that engine iterator with one over a narrowed range of
 * the same snapshot, so a seek never sees writes made after the iterator was created.
 */
class LsmIterator extends (AbstractIterator as unknown as new (db: object, options: IteratorOptions) => {
  readonly count: number;
  readonly limit: number;
}) {
  readonly #engine: DB;
  readonly #snapshot: Snapshot;
  readonly #ownsSnapshot: boolean;
  readonly #range: Range;
  readonly #reverse: boolean;
  readonly #keys: boolean;
  readonly #values: boolean;
  readonly #keyFormat: Format;
  readonly #valueFormat: Format;
  readonly #signal: AbortSignal | undefined;
  #activeRange: Range;
  #cursor: Cursor | null = null;
  /** return() of a cursor abandoned by seek(); awaited before the next read or on close. */
  #abandoned: Promise<unknown> | null = null;

  constructor(db: object, engine: DB, options: IteratorOptions) {
    super(db, options);
    this.#engine = engine;
    this.#ownsSnapshot = options.snapshot === undefined;
    this.#snapshot = options.snapshot?.engineSnapshot ?? engine.snapshot();
    this.#range = normalizeRange(options);
    this.#activeRange = this.#range;
    this.#reverse = options.reverse;
    this.#keys = options.keys;
    this.#values = options.values;
    this.#keyFormat = options.keyEncoding;
    this.#valueFormat = options.valueEncoding;
    this.#signal = options.signal;
  }

  async #pull(): Promise<[Uint8Array, Uint8Array] | undefined> {
    if (this.#abandoned !== null) {
      const abandoned = this.#abandoned;
      this.#abandoned = null;
      await abandoned;
    }
    if (this.#cursor === null) {
      const options = engineIteratorOptions(this.#activeRange, this.#reverse, this.#snapshot);
      this.#cursor = this.#engine.iterator(options)[Symbol.asyncIterator]();
    }
    const result = await this.#cursor.next();
    if (this.#signal?.aborted) throw new LsmLevelError("LEVEL_ABORTED", "Operation has been aborted");
    return result.done ? undefined : result.value;
  }

  #entry(key: Uint8Array, value: Uint8Array): Entry {
    return [
      this.#keys ? fromBytes(key, this.#keyFormat) : undefined,
      this.#values ? fromBytes(value, this.#valueFormat) : undefined,
    ];
  }

  async _next(): Promise<Entry | undefined> {
    const item = await this.#pull();
    return item === undefined ? undefined : this.#entry(item[0], item[1]);
  }

  async _nextv(size: number): Promise<Entry[]> {
    const entries: Entry[] = [];
    while (entries.length < size) {
      const item = await this.#pull();
      if (item === undefined) break;
      entries.push(this.#entry(item[0], item[1]));
    }
    return entries;
  }

  async _all(): Promise<Entry[]> {
    return this._nextv(this.limit === Infinity ? Infinity : this.limit - this.count);
  }

  _seek(target: Data): void {
    this.#abandonCursor();
    this.#activeRange = narrowRange(this.#range, toBoundBytes(target), this.#reverse);
  }

  #abandonCursor(): void {
    const cursor = this.#cursor;
    this.#cursor = null;
    if (cursor?.return !== undefined) {
      const previous = this.#abandoned;
      this.#abandoned = Promise.all([previous, cursor.return()]);
    }
  }

  async _close(): Promise<void> {
    this.#abandonCursor();
    try {
      await this.#abandoned;
    } finally {
      this.#abandoned = null;
      if (this.#ownsSnapshot) this.#snapshot.release();
    }
  }
}

/**
 * An abstract-level database stored in one LSM directory. Declares only what it implements:
 * buffer/view/utf8 formats, implicit and explicit snapshots, has, getSync, seek, iterator
 * signals, createIfMissing/errorIfExists, and approximateSize/compactRange.
 */
export class LsmLevel<K = string, V = string> extends AbstractLevel<Data, K, V> {
  readonly #location: string;
  /** Kept out of abstract-level's options, which are echoed to hooks and events. */
  readonly #engineOptions: EngineOptions;
  #engine: DB | null = null;

  constructor(location: string, options?: LsmLevelOptions<K, V>) {
    if (typeof location !== "string" || location === "") {
      throw new TypeError("LsmLevel: the first argument 'location' must be a non-empty directory path");
    }
    const { engine: engineOptions, ...levelOptions } = options ?? {};
    // A variable, not a literal: the manifest type in abstract-level's declarations lags its
    // features (getSync), and a literal would be rejected for the extra property.
    const manifest = {
      encodings: { buffer: true, view: true, utf8: true },
      implicitSnapshots: true,
      explicitSnapshots: true,
      has: true,
      getSync: true,
      seek: true,
      createIfMissing: true,
      errorIfExists: true,
      permanence: true,
      signals: { iterators: true },
      additionalMethods: { approximateSize: true, compactRange: true },
    };
    super(manifest, levelOptions);
    this.#location = location;
    this.#engineOptions = engineOptions ?? {};
  }

  get location(): string {
    return this.#location;
  }

  /** The open engine; abstract-level guarantees private methods run only while open. */
  get #db(): DB {
    if (this.#engine === null) throw new LsmLevelError("LEVEL_DATABASE_NOT_OPEN", "Database is not open");
    return this.#engine;
  }

  async _open(options: { createIfMissing: boolean; errorIfExists: boolean }): Promise<void> {
    const exists = await databaseExists(this.#location);
    if (!exists && !options.createIfMissing) {
      throw new LsmLevelError(
        "LEVEL_DATABASE_NOT_OPEN",
        `Database ${this.#location} does not exist (createIfMissing is false): create it first or open with createIfMissing`,
      );
    }
    if (exists && options.errorIfExists) {
      throw new LsmLevelError(
        "LEVEL_DATABASE_NOT_OPEN",
        `Database ${this.#location} already exists (errorIfExists is true): choose a new location`,
      );
    }
    await mkdir(this.#location, { recursive: true });
    this.#engine = await DB.open(this.#location, this.#engineOptions);
  }

  async _close(): Promise<void> {
    const engine = this.#engine;
    this.#engine = null;
    await engine?.close();
  }

  async _get(key: Data, options: ReadOptions): Promise<Data | undefined> {
    const value = await this.#db.get(toBoundBytes(key), { snapshot: options.snapshot?.engineSnapshot });
    return value === undefined ? undefined : fromBytes(value, options.valueEncoding);
  }

  _getSync(key: Data, options: ReadOptions): Data | undefined {
    const value = this.#db.getSync(toBoundBytes(key), { snapshot: options.snapshot?.engineSnapshot });
    return value === undefined ? undefined : fromBytes(value, options.valueEncoding);
  }

  async _getMany(keys: Data[], options: ReadOptions): Promise<(Data | undefined)[]> {
    const values = await this.#readMany(keys, options);
    return values.map((value) => (value === undefined ? undefined : fromBytes(value, options.valueEncoding)));
  }

  async _has(key: Data, options: ReadOptions): Promise<boolean> {
    return (await this.#db.get(toBoundBytes(key), { snapshot: options.snapshot?.engineSnapshot })) !== undefined;
  }

  async _hasMany(keys: Data[], options: ReadOptions): Promise<boolean[]> {
    const values = await this.#readMany(keys, options);
    return values.map((value) => value !== undefined);
  }

  /** Reads several keys from one snapshot, so the answers are mutually consistent. */
  async #readMany(keys: Data[], options: ReadOptions): Promise<(Uint8Array | undefined)[]> {
    const db = this.#db;
    const snapshot = options.snapshot?.engineSnapshot ?? db.snapshot();
    try {
      return await Promise.all(keys.map((key) => db.get(toBoundBytes(key), { snapshot })));
    } finally {
      if (options.snapshot === undefined) snapshot.release();
    }
  }

  async _put(key: Data, value: Data, options: WriteOptions): Promise<void> {
    await this.#db.put(toBytes(key), toBytes(value), { sync: options.sync === true });
  }

  async _del(key: Data, options: WriteOptions): Promise<void> {
    await this.#db.del(toBytes(key), { sync: options.sync === true });
  }

  async _batch(operations: BatchOperation[], options: WriteOptions): Promise<void> {
    const ops = operations.map((op) =>
      op.type === "put"
        ? { type: "put" as const, key: toBytes(op.key), value: toBytes(op.value as Data) }
        : { type: "del" as const, key: toBytes(op.key) },
    );
    await this.#db.write(ops, { sync: options.sync === true });
  }

  /** Deletes a range as it stood when clear() was called, in bounded batches (not atomic). */
  async _clear(options: RangeOptions): Promise<void> {
    const db = this.#db;
    const snapshot = options.snapshot?.engineSnapshot ?? db.snapshot();
    try {
      let remaining = options.limit < 0 ? Infinity : options.limit;
      let pending: { type: "del"; key: Uint8Array }[] = [];
      const range = normalizeRange(options);
      for await (const [key] of db.iterator(engineIteratorOptions(range, options.reverse, snapshot))) {
        if (remaining-- <= 0) break;
        pending.push({ type: "del", key });
        if (pending.length >= ENGINE_BATCH_OPS) {
          await db.write(pending);
          pending = [];
        }
      }
      if (pending.length > 0) await db.write(pending);
    } finally {
      if (options.snapshot === undefined) snapshot.release();
    }
  }

  _iterator(options: IteratorOptions): LsmIterator {
    return new LsmIterator(this, this.#db, options);
  }

  _snapshot(options: object): LsmSnapshot {
    return new LsmSnapshot(this.#db.snapshot(), options);
  }

  /** Approximate bytes on disk used by keys in [start, end) (encoded with the key encoding). */
  async approximateSize(start: K, end: K, options?: { keyEncoding?: string }): Promise<number> {
    if (this.status === "opening") return this.deferAsync(() => this.approximateSize(start, end, options));
    return this.#db.approximateSize(this.#encodeKey(start, options), this.#encodeKey(end, options));
  }

  /** Compacts keys in [start, end] (all keys when both are omitted) down the levels. */
  async compactRange(start?: K, end?: K, options?: { keyEncoding?: string }): Promise<void> {
    if (this.status === "opening") return this.deferAsync(() => this.compactRange(start, end, options));
    await this.#db.compactRange(
      start === undefined ? undefined : this.#encodeKey(start, options),
      end === undefined ? undefined : this.#encodeKey(end, options),
    );
  }

  /** Encodes a key given to an additional method (LsmLevel is a root database: no prefix). */
  #encodeKey(key: K, options: { keyEncoding?: string } | undefined): Uint8Array {
    // keyEncoding(undefined) returns the default encoding; the declared overloads only accept
    // known encoding names as literal types.
    const keyEncoding = this.keyEncoding as (this: LsmLevel<K, V>, name?: string) => { encode(key: K): Data };
    return toBoundBytes(keyEncoding.call(this, options?.keyEncoding).encode(key));
  }
}

/** A directory holds a database when it exists and is non-empty (the engine wrote files there). */
async function databaseExists(location: string): Promise<boolean> {
  try {
    return (await readdir(location)).length > 0;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw error;
  }
}
