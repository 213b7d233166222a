// The abstract-level adapter: lets the Level ecosystem (sublevels, encodings, level-* modules and
// the official abstract-level test suite) drive the LSM engine through LsmLevel.
import { mkdir, readdir } from "node:fs/promises";
import { AbstractIterator, AbstractLevel, AbstractSnapshot } from "abstract-level";
import type { AbstractDatabaseOptions } from "abstract-level";
import { DB, LsmError, type BatchOp, type DBIteratorOptions, type LsmIterator, type Snapshot } from "./index.ts";

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
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = code === "LEVEL_ABORTED" ? "AbortError" : "LsmLevelError";
    this.code = code;
  }
}

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder();

/**
 * No copy: the engine encodes every write into its own batch buffer before write() returns, and
 * bounds and seek targets are only compared.
 */
function toBytes(data: Data): Uint8Array {
  return typeof data === "string" ? textEncoder.encode(data) : data;
}

/** The engine hands out fresh copies of keys and values, so wrapping them shares nothing. */
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

/**
 * The engine's range options for abstract-level's: at most one lower and one upper bound, where
 * abstract-level gives gte precedence over gt and lte over lt.
 */
function engineRange(options: RangeOptions): IteratorRange {
  const range: IteratorRange = { reverse: options.reverse };
  if (options.gte !== undefined) range.gte = toBytes(options.gte);
  else if (options.gt !== undefined) range.gt = toBytes(options.gt);
  if (options.lte !== undefined) range.lte = toBytes(options.lte);
  else if (options.lt !== undefined) range.lt = toBytes(options.lt);
  return range;
}
type IteratorRange = Omit<DBIteratorOptions, "limit" | "snapshot">;

/** Deletes per engine batch in clear(), and entries read per step of all(). */
const CHUNK_ENTRIES = 1000;

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

/**
 * Wraps one engine iterator. The engine iterator fixes its sequence number (or the explicit
 * snapshot's) when created, synchronously, which is abstract-level's implicit snapshot; its
 * seek() stays within the range and the snapshot, so seek never sees later writes.
 */
class LsmLevelIterator extends (AbstractIterator as unknown as new (db: object, options: IteratorOptions) => {
  readonly count: number;
  readonly limit: number;
}) {
  /** Null when created over an explicit snapshot that was already closed: reads fail. */
  readonly #cursor: LsmIterator | null;
  readonly #keys: boolean;
  readonly #values: boolean;
  readonly #keyFormat: Format;
  readonly #valueFormat: Format;
  readonly #signal: AbortSignal | undefined;

  constructor(db: object, engine: DB, options: IteratorOptions) {
    super(db, options);
    const snapshot = options.snapshot?.engineSnapshot;
    this.#cursor = snapshot?.isReleased ? null : engine.iterator({ ...engineRange(options), snapshot });
    this.#keys = options.keys;
    this.#values = options.values;
    this.#keyFormat = options.keyEncoding;
    this.#valueFormat = options.valueEncoding;
    this.#signal = options.signal;
  }

  /**
   * Engine reads are synchronous. Each read step starts after one microtask, so an abort
   * signalled right after a call began is honored, and long all() calls yield between chunks.
   */
  async #step(): Promise<LsmIterator> {
    await null;
    if (this.#signal?.aborted) throw new LsmLevelError("LEVEL_ABORTED", "Operation has been aborted");
    if (this.#cursor === null) {
      throw new LsmLevelError("LEVEL_SNAPSHOT_NOT_OPEN", "Snapshot is not open: cannot read an iterator created after snapshot.close()");
    }
    return this.#cursor;
  }

  #entry(key: Uint8Array, value: Uint8Array): Entry {
    return [
      this.#keys ? fromBytes(key, this.#keyFormat) : undefined,
      this.#values ? fromBytes(value, this.#valueFormat) : undefined,
    ];
  }

  async _next(): Promise<Entry | undefined> {
    const item = (await this.#step()).read();
    return item === undefined ? undefined : this.#entry(item[0], item[1]);
  }

  async _nextv(size: number): Promise<Entry[]> {
    return (await this.#step()).nextv(size).map(([key, value]) => this.#entry(key, value));
  }

  async _all(): Promise<Entry[]> {
    let wanted = this.limit === Infinity ? Infinity : this.limit - this.count;
    const entries: Entry[] = [];
    while (wanted > 0) {
      const chunk = (await this.#step()).nextv(Math.min(wanted, CHUNK_ENTRIES));
      for (const [key, value] of chunk) entries.push(this.#entry(key, value));
      if (chunk.length < CHUNK_ENTRIES) break;
      wanted -= chunk.length;
    }
    return entries;
  }

  _seek(target: Data): void {
    this.#cursor?.seek(toBytes(target));
  }

  async _close(): Promise<void> {
    this.#cursor?.close();
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
    try {
      this.#engine = await DB.open(this.#location, this.#engineOptions);
    } catch (error) {
      if (error instanceof LsmError && error.code === "LOCKED") {
        throw new LsmLevelError("LEVEL_LOCKED", error.message, { cause: error });
      }
      throw error;
    }
  }

  async _close(): Promise<void> {
    const engine = this.#engine;
    this.#engine = null;
    await engine?.close();
  }

  async _get(key: Data, options: ReadOptions): Promise<Data | undefined> {
    const value = await this.#db.get(toBytes(key), { snapshot: options.snapshot?.engineSnapshot });
    return value === undefined ? undefined : fromBytes(value, options.valueEncoding);
  }

  _getSync(key: Data, options: ReadOptions): Data | undefined {
    const value = this.#db.getSync(toBytes(key), { snapshot: options.snapshot?.engineSnapshot });
    return value === undefined ? undefined : fromBytes(value, options.valueEncoding);
  }

  async _getMany(keys: Data[], options: ReadOptions): Promise<(Data | undefined)[]> {
    return this.#readMany(keys, options).map((value) =>
      value === undefined ? undefined : fromBytes(value, options.valueEncoding),
    );
  }

  async _has(key: Data, options: ReadOptions): Promise<boolean> {
    return (await this.#db.get(toBytes(key), { snapshot: options.snapshot?.engineSnapshot })) !== undefined;
  }

  async _hasMany(keys: Data[], options: ReadOptions): Promise<boolean[]> {
    return this.#readMany(keys, options).map((value) => value !== undefined);
  }

  /** Engine point reads are synchronous: one pass sees a single state, like a snapshot. */
  #readMany(keys: Data[], options: ReadOptions): (Uint8Array | undefined)[] {
    const db = this.#db;
    const readOptions = { snapshot: options.snapshot?.engineSnapshot };
    return keys.map((key) => db.getSync(toBytes(key), readOptions));
  }

  async _put(key: Data, value: Data, options: WriteOptions): Promise<void> {
    await this.#db.put(toBytes(key), toBytes(value), { sync: options.sync === true });
  }

  async _del(key: Data, options: WriteOptions): Promise<void> {
    await this.#db.del(toBytes(key), { sync: options.sync === true });
  }

  async _batch(operations: BatchOperation[], options: WriteOptions): Promise<void> {
    const ops: BatchOp[] = operations.map((op) =>
      op.type === "put"
        ? { type: "put", key: toBytes(op.key), value: toBytes(op.value as Data) }
        : { type: "del", key: toBytes(op.key) },
    );
    await this.#db.write(ops, { sync: options.sync === true });
  }

  /**
   * Deletes the range as it stood when clear() was called (the engine iterator pins that
   * state), in batches of bounded size: not atomic, as abstract-level allows.
   */
  async _clear(options: RangeOptions): Promise<void> {
    const db = this.#db;
    const cursor = db.iterator({
      ...engineRange(options),
      limit: options.limit,
      snapshot: options.snapshot?.engineSnapshot,
    });
    try {
      for (;;) {
        const chunk = cursor.nextv(CHUNK_ENTRIES);
        if (chunk.length === 0) break;
        await db.write(chunk.map(([key]): BatchOp => ({ type: "del", key })));
      }
    } finally {
      cursor.close();
    }
  }

  _iterator(options: IteratorOptions): LsmLevelIterator {
    return new LsmLevelIterator(this, this.#db, options);
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
    return toBytes(keyEncoding.call(this, options?.keyEncoding).encode(key));
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
