// Bulk loading a fresh database from sorted runs: tables written straight into the bottom level,
// no WAL, no memtable, no compaction, then one manifest edit and an ordinary open. What a Raft
// snapshot install uses, where the state arrives as a stream in key order.
import * as fs from "node:fs";
import * as path from "node:path";
import { compareBytes, KIND_PUT } from "./coding.ts";
import { DB } from "./db.ts";
import { LsmError } from "./errors.ts";
import { commitFreshVersion, freshVersionSet, tableFileName, type VersionSet } from "./manifest.ts";
import { resolveOptions, type DBOptions, type ResolvedOptions } from "./options.ts";
import { TableBuilder, type BuiltTable, type TableOptions } from "./sstable.ts";
import { fileMeta, NUM_LEVELS, type FileMeta } from "./version.ts";

/** Every loaded entry has this sequence; writes after the open get higher ones and win. */
const LOADED_SEQ = 1;
const BOTTOM = NUM_LEVELS - 1;

interface Written {
  number: number;
  smallest: Uint8Array;
  largest: Uint8Array;
  /** The table's size once synced. */
  done: Promise<BuiltTable>;
}

/** Tables past this many waiting for their fdatasync make `settle()` wait: each holds its buffers. */
const MAX_SYNCING = 2;

/**
 * Builds a database from entries given in runs of strictly ascending keys whose key ranges do not
 * overlap (a key not above the previous one starts a new run, and a new table). Memory: one table
 * builder (about one table's index and filter), whatever the size of the data.
 */
export class BulkLoader {
  private builder: TableBuilder | null = null;
  private number = 0;
  private last = new Uint8Array(64);
  private lastLength = 0;
  private readonly written: Written[] = [];
  private failure: unknown = null;
  private syncing = new Set<Promise<unknown>>();
  private closed = false;
  entries = 0;

  private constructor(
    readonly dir: string,
    private readonly options: DBOptions,
    private readonly opts: ResolvedOptions,
    private readonly table: TableOptions,
    private readonly versions: VersionSet,
  ) {}

  /** Starts loading into `dir`, which must not exist or be empty. */
  static async create(dir: string, options: DBOptions = {}): Promise<BulkLoader> {
    const opts = resolveOptions(options);
    const versions = await freshVersionSet(dir, opts.logger, "bulk load");
    const table: TableOptions = {
      blockSize: opts.blockSize,
      restartInterval: opts.blockRestartInterval,
      bloomBitsPerKey: opts.bloomBitsPerKey,
      compression: opts.compression,
    };
    return new BulkLoader(dir, options, opts, table, versions);
  }

  /** Adds one entry; a key at or below the previous one ends the current run (and table). */
  add(key: Uint8Array, value: Uint8Array): void {
    if (this.closed) throw new LsmError("CLOSED", "bulk load already finished or aborted");
    if (this.failure !== null) throw this.failure;
    if (key.length === 0) throw new LsmError("INVALID_ARGUMENT", "bulk load: empty key");
    if (key.length > this.opts.maxKeyBytes) throw new LsmError("LIMIT", `bulk load: key of ${key.length} bytes exceeds maxKeyBytes (${this.opts.maxKeyBytes})`);
    if (value.length > this.opts.maxValueBytes) throw new LsmError("LIMIT", `bulk load: value of ${value.length} bytes exceeds maxValueBytes (${this.opts.maxValueBytes})`);
    let b = this.builder;
    if (b !== null && (b.estimatedSize >= this.opts.targetFileSize || compareBytes(key, this.last.subarray(0, this.lastLength)) <= 0)) {
      this.finishTable();
      b = null;
    }
    if (b === null) {
      this.number = this.versions.newFileNumber();
      const name = tableFileName(this.number);
      b = this.builder = new TableBuilder(path.join(this.dir, name), name, this.table);
    }
    b.add(key, LOADED_SEQ, KIND_PUT, value);
    if (this.last.length < key.length) this.last = new Uint8Array(key.length * 2);
    this.last.set(key);
    this.lastLength = key.length;
    this.entries++;
  }

  /** Ends the current run: the next key starts a new table even if it sorts after the last. */
  endRun(): void {
    if (this.closed) throw new LsmError("CLOSED", "bulk load already finished or aborted");
    if (this.builder !== null) this.finishTable();
  }

  private finishTable(): void {
    const builder = this.builder!;
    this.builder = null;
    // finish() writes synchronously and then waits for fdatasync: tables sync while the next fills.
    const done = builder.finish();
    // Only the bounds are kept: the builder and its buffers go once the table is synced.
    this.written.push({ number: this.number, smallest: builder.smallest!, largest: builder.largest!, done });
    const settled = done.then(
      () => {},
      (e) => {
        this.failure ??= e;
      },
    );
    this.syncing.add(settled);
    void settled.then(() => this.syncing.delete(settled));
  }

  /** Waits while more than a couple of finished tables are still syncing (bounds memory); call between adds. */
  async settle(): Promise<void> {
    while (this.syncing.size > MAX_SYNCING) await Promise.race(this.syncing);
    if (this.failure !== null) throw this.failure;
  }

  /** Syncs every table, records them in the manifest, and opens the database. */
  async finish(): Promise<DB> {
    if (this.closed) throw new LsmError("CLOSED", "bulk load already finished or aborted");
    if (this.builder !== null) this.finishTable();
    this.closed = true;
    try {
      const files: FileMeta[] = [];
      for (const w of this.written) {
        const built = await w.done;
        files.push(fileMeta(w.number, built.fileSize, w.smallest, w.largest));
      }
      files.sort((a, b) => compareBytes(a.smallestUser, b.smallestUser));
      for (let i = 1; i < files.length; i++) {
        if (compareBytes(files[i - 1].largestUser, files[i].smallestUser) >= 0) {
          throw new LsmError("INVALID_ARGUMENT", `bulk load: runs overlap (tables ${files[i - 1].number} and ${files[i].number}); each key may appear once`);
        }
      }
      await commitFreshVersion(this.versions, this.dir, files.map((f) => [BOTTOM, f] as const), LOADED_SEQ);
    } catch (e) {
      await this.versions.close().catch(() => {});
      throw e;
    }
    return DB.open(this.dir, this.options);
  }

  /** Gives up: closes what is open. The caller removes the directory. */
  async abort(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.builder?.abandon();
    this.builder = null;
    await Promise.allSettled(this.written.map((w) => w.done));
    await this.versions.close().catch(() => {});
  }
}
