// Importing a database from another one's checkpoint (checkpoint.ts): its table files written
// byte for byte under their own numbers and levels, its memtable part built into one newer level-0
// table, then one manifest edit and an ordinary open. The receiving end of a file-shipping snapshot.
import * as fs from "node:fs";
import * as path from "node:path";
import { compareBytes, compareEncodedInternalKeys, internalUserKey, KIND_DEL, KIND_PUT } from "./coding.ts";
import { DB } from "./db.ts";
import { LsmError } from "./errors.ts";
import { commitFreshVersion, freshVersionSet, tableFileName, type VersionSet } from "./manifest.ts";
import { resolveOptions, type DBOptions, type ResolvedOptions } from "./options.ts";
import { BlockCache } from "./cache.ts";
import { TableBuilder, TableReader } from "./sstable.ts";
import { fileMeta, NUM_LEVELS, type FileMeta } from "./version.ts";

/** Files past this many waiting for their fdatasync make `settle()` wait. */
const MAX_SYNCING = 4;
/** Bytes handed to writes still running past which `settle()` waits (each write holds its buffer). */
const MAX_WRITING_BYTES = 8 << 20;
/** A shipped table larger than this is refused (the largest target file size is 1 GiB). */
const MAX_FILE_BYTES = 2 ** 31;
/** Bytes of a trailer (8) plus at least one key byte: the shortest internal key. */
const MIN_INTERNAL_KEY = 9;

export interface ImportedFile {
  level: number;
  number: number;
  size: number;
  smallest: Uint8Array;
  largest: Uint8Array;
}

interface OpenFile {
  meta: FileMeta;
  level: number;
  fd: number;
  /** Bytes given so far (the writes may still be running). */
  written: number;
  writes: Promise<void>[];
}

/**
 * Builds a database from shipped table files and memtable entries. Memory: one file's write in
 * flight and one table builder for the memtable part, whatever the size of the data.
 */
export class TableImporter {
  private readonly files: [number, FileMeta][] = [];
  private readonly numbers = new Set<number>();
  private current: OpenFile | null = null;
  private builder: TableBuilder | null = null;
  private builderNumber = 0;
  private lastKey = new Uint8Array(64);
  private lastKeyLength = -1;
  private highestSeq = 0;
  private readonly syncing = new Set<Promise<void>>();
  private writingBytes = 0;
  private writeDrained: (() => void) | null = null;
  private failure: unknown = null;
  private closed = false;
  /** Bytes of table files written and entries of the memtable part added. */
  fileBytes = 0;
  entries = 0;

  private constructor(
    readonly dir: string,
    private readonly options: DBOptions,
    private readonly opts: ResolvedOptions,
    private readonly versions: VersionSet,
  ) {}

  /** Starts importing into `dir`, which must not exist or be empty. */
  static async create(dir: string, options: DBOptions = {}): Promise<TableImporter> {
    const opts = resolveOptions(options);
    const versions = await freshVersionSet(dir, opts.logger, "table import");
    return new TableImporter(dir, options, opts, versions);
  }

  /** Starts a table file; its bytes follow through writeFile, then endFile. */
  beginFile(file: ImportedFile): void {
    this.checkUsable();
    if (this.current !== null) throw corrupt(`table ${this.current.meta.number} was not finished before table ${file.number}`);
    if (this.builder !== null) throw corrupt("table files must come before the memtable entries");
    if (!(file.level >= 0 && file.level < NUM_LEVELS)) throw corrupt(`table ${file.number} at level ${file.level} (levels are 0 to ${NUM_LEVELS - 1})`);
    if (!Number.isSafeInteger(file.number) || file.number <= 0 || this.numbers.has(file.number)) throw corrupt(`table number ${file.number} is invalid or repeated`);
    if (!(file.size > 0 && file.size <= MAX_FILE_BYTES)) throw corrupt(`table ${file.number} of ${file.size} bytes`);
    if (file.smallest.length < MIN_INTERNAL_KEY || file.largest.length < MIN_INTERNAL_KEY || compareEncodedInternalKeys(file.smallest, file.largest) > 0) {
      throw corrupt(`table ${file.number} has invalid key bounds`);
    }
    this.numbers.add(file.number);
    const name = tableFileName(file.number);
    let fd: number;
    try {
      fd = fs.openSync(path.join(this.dir, name), "wx");
    } catch (e) {
      throw new LsmError("IO", `table import: cannot create ${name}: ${(e as Error).message}`);
    }
    this.current = { meta: fileMeta(file.number, file.size, file.smallest.slice(), file.largest.slice()), level: file.level, fd, written: 0, writes: [] };
  }

  /**
   * Appends bytes to the table begun last. The write runs off the event loop: `bytes` must not
   * change until settle() or finish() has waited for it.
   */
  writeFile(bytes: Uint8Array): void {
    this.checkUsable();
    const f = this.current;
    if (f === null) throw corrupt("table bytes outside a table");
    if (f.written + bytes.length > f.meta.size) throw corrupt(`table ${f.meta.number} is longer than its ${f.meta.size} bytes`);
    const name = tableFileName(f.meta.number);
    const position = f.written;
    this.writingBytes += bytes.length;
    f.writes.push(
      writeAll(f.fd, bytes, position).then(
        () => this.wrote(bytes.length),
        (e) => {
          this.wrote(bytes.length);
          this.failure ??= new LsmError("IO", `table import: writing ${name}: ${(e as Error).message}`);
        },
      ),
    );
    f.written += bytes.length;
    this.fileBytes += bytes.length;
  }

  private wrote(bytes: number): void {
    this.writingBytes -= bytes;
    const drained = this.writeDrained;
    this.writeDrained = null;
    drained?.();
  }

  /** Ends the table begun last: it must hold exactly its announced size. Its fdatasync runs behind. */
  endFile(): void {
    this.checkUsable();
    const f = this.current;
    if (f === null) throw corrupt("end of a table that was not begun");
    if (f.written !== f.meta.size) throw corrupt(`table ${f.meta.number} ended after ${f.written} of its ${f.meta.size} bytes`);
    this.current = null;
    this.files.push([f.level, f.meta]);
    const name = tableFileName(f.meta.number);
    const synced = Promise.all(f.writes).then(
      () =>
        new Promise<void>((resolve) => {
          // The table must open: footer, index and filter present and matching their CRCs (the
          // sender checked every block; the stream's own checksums covered the way here).
          try {
            TableReader.open(path.join(this.dir, name), name, f.meta.number, f.meta.size, new BlockCache(0), { mmap: false }).release();
          } catch (e) {
            this.failure ??= e;
          }
          fs.fdatasync(f.fd, (err) => {
            fs.close(f.fd, () => {});
            if (err) this.failure ??= new LsmError("IO", `table import: fdatasync of ${name}: ${err.message}`);
            resolve();
          });
        }),
    );
    this.syncing.add(synced);
    void synced.then(() => this.syncing.delete(synced));
  }

  /**
   * Adds one memtable entry (user key, its sequence and kind): one entry per user key, in
   * ascending key order, after every file. They go into one level-0 table newer than all files.
   */
  addEntry(key: Uint8Array, seq: number, kind: number, value: Uint8Array): void {
    this.checkUsable();
    if (this.current !== null) throw corrupt(`memtable entries inside table ${this.current.meta.number}`);
    if (kind !== KIND_PUT && kind !== KIND_DEL) throw corrupt(`memtable entry of kind ${kind}`);
    if (!Number.isSafeInteger(seq) || seq <= 0) throw corrupt(`memtable entry with sequence ${seq}`);
    if (key.length === 0 || key.length > this.opts.maxKeyBytes || value.length > this.opts.maxValueBytes) throw corrupt(`memtable entry of a ${key.length}-byte key and ${value.length}-byte value`);
    if (this.lastKeyLength >= 0 && compareBytes(key, this.lastKey.subarray(0, this.lastKeyLength)) <= 0) throw corrupt("memtable entries out of key order");
    if (this.builder === null) {
      // Numbered above every shipped table: level 0 reads newest (highest number) first.
      this.builderNumber = Math.max(this.versions.nextFileNumber, ...this.numbers) + 1;
      this.versions.nextFileNumber = this.builderNumber + 1;
      const name = tableFileName(this.builderNumber);
      this.builder = new TableBuilder(path.join(this.dir, name), name, {
        blockSize: this.opts.blockSize,
        restartInterval: this.opts.blockRestartInterval,
        bloomBitsPerKey: this.opts.bloomBitsPerKey,
        compression: this.opts.compression,
      });
    }
    this.builder.add(key, seq, kind, value);
    if (this.lastKey.length < key.length) this.lastKey = new Uint8Array(2 * key.length);
    this.lastKey.set(key);
    this.lastKeyLength = key.length;
    if (seq > this.highestSeq) this.highestSeq = seq;
    this.entries++;
  }

  /** Waits while too many bytes are being written or files synced (bounds memory); call between writes. */
  async settle(): Promise<void> {
    while (this.writingBytes > MAX_WRITING_BYTES) await new Promise<void>((resolve) => (this.writeDrained = resolve));
    while (this.syncing.size > MAX_SYNCING) await Promise.race(this.syncing);
    if (this.failure !== null) throw this.failure;
  }

  /**
   * Syncs everything, records the files at their levels with `lastSequence` (the checkpoint's) in
   * the manifest, and opens the database.
   */
  async finish(lastSequence: number): Promise<DB> {
    this.checkUsable();
    if (this.current !== null) throw corrupt(`table ${this.current.meta.number} was not finished`);
    if (this.highestSeq > lastSequence) throw corrupt(`a memtable entry has sequence ${this.highestSeq}, above the checkpoint's ${lastSequence}`);
    this.closed = true;
    try {
      if (this.builder !== null) {
        const builder = this.builder;
        this.builder = null;
        const built = await builder.finish();
        this.files.push([0, fileMeta(this.builderNumber, built.fileSize, builder.smallest!, builder.largest!)]);
      }
      checkLevels(this.files);
      await Promise.all(this.syncing);
      if (this.failure !== null) throw this.failure;
      await commitFreshVersion(this.versions, this.dir, this.files, lastSequence);
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
    if (this.current !== null) {
      await Promise.all(this.current.writes);
      fs.closeSync(this.current.fd);
    }
    this.current = null;
    this.builder?.abandon();
    this.builder = null;
    await Promise.all(this.syncing);
    await this.versions.close().catch(() => {});
  }

  private checkUsable(): void {
    if (this.closed) throw new LsmError("CLOSED", "table import already finished or aborted");
    if (this.failure !== null) throw this.failure;
  }
}

/** Tables of a level above 0 must not overlap (a level-0 table may overlap any). */
function checkLevels(files: [number, FileMeta][]): void {
  for (let level = 1; level < NUM_LEVELS; level++) {
    const inLevel = files.filter(([l]) => l === level).map(([, f]) => f);
    inLevel.sort((a, b) => compareBytes(a.smallestUser, b.smallestUser));
    for (let i = 1; i < inLevel.length; i++) {
      if (compareBytes(internalUserKey(inLevel[i - 1].largest), inLevel[i].smallestUser) >= 0) {
        throw corrupt(`tables ${inLevel[i - 1].number} and ${inLevel[i].number} overlap in level ${level}`);
      }
    }
  }
}

function corrupt(message: string): LsmError {
  return new LsmError("CORRUPTION", `table import: ${message}`);
}

/** pwrite of all of `bytes` at `position`, off the event loop. */
async function writeAll(fd: number, bytes: Uint8Array, position: number): Promise<void> {
  for (let at = 0; at < bytes.length; ) {
    const n = await new Promise<number>((resolve, reject) =>
      fs.write(fd, bytes, at, bytes.length - at, position + at, (err, written) => (err ? reject(err) : resolve(written))),
    );
    at += n;
  }
}
