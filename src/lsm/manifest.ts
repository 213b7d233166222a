// The manifest: version edits appended as log records to MANIFEST-n, with CURRENT naming the
// live manifest. Recovery replays it; every open starts a fresh manifest holding one snapshot
// edit, and CURRENT is switched by write + fsync + rename + directory fsync.
import * as fs from "node:fs";
import * as path from "node:path";
import { LsmError, corruption, ioError } from "./errors.ts";
import { emptyEdit, decodeEdit, encodeEdit, NUM_LEVELS, Version, type FileMeta, type VersionEdit } from "./version.ts";
import { LogWriter, readLog } from "./wal.ts";

/** A manifest larger than this is rewritten as one snapshot edit into a new manifest file. */
const MANIFEST_ROLL_BYTES = 4 << 20;

export function tableFileName(n: number): string {
  return `${String(n).padStart(6, "0")}.sst`;
}
export function logFileName(n: number): string {
  return `${String(n).padStart(6, "0")}.log`;
}
export function manifestFileName(n: number): string {
  return `MANIFEST-${String(n).padStart(6, "0")}`;
}

export function fsyncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(dir, "r");
    fs.fsyncSync(fd);
  } catch (e) {
    throw ioError(dir, "directory fsync", e);
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

export type Logger = (message: string) => void;

/**
 * A fresh manifest in `dir`, which must not exist or be empty: the start of a database built from
 * outside the write path (bulk load, table import). `what` names the builder in errors.
 */
export async function freshVersionSet(dir: string, logger: Logger, what: string): Promise<VersionSet> {
  try {
    fs.mkdirSync(dir, { recursive: true });
  } catch (e) {
    throw new LsmError("IO", `${what}: cannot create ${dir}: ${(e as Error).message}`);
  }
  if (fs.readdirSync(dir).length > 0) throw new LsmError("INVALID_ARGUMENT", `${what} needs an empty directory; ${dir} is not empty`);
  const versions = new VersionSet(dir, logger);
  // An empty manifest first: table numbers come from the same counter as the manifest's.
  await versions.recover();
  return versions;
}

/**
 * Ends a database built by freshVersionSet: one manifest edit adding every table at its level,
 * the manifest closed and the directory synced, so DB.open finds it whole.
 */
export async function commitFreshVersion(versions: VersionSet, dir: string, tables: readonly (readonly [number, FileMeta])[], lastSequence: number): Promise<void> {
  const edit = emptyEdit();
  edit.logNumber = 0;
  for (const [level, f] of tables) edit.added.push([level, f]);
  await versions.logAndApply(edit, lastSequence);
  await versions.close();
  fsyncDir(dir);
}

export class VersionSet {
  current: Version = Version.empty();
  nextFileNumber = 2;
  /** WAL files numbered below this hold only data already in tables. */
  logNumber = 0;
  /** Last sequence recorded in the manifest (the DB tracks the live one). */
  lastSequence = 0;
  readonly compactPointers: (Uint8Array | null)[] = new Array(NUM_LEVELS).fill(null);
  private manifest: LogWriter | null = null;
  private manifestNumber = 0;
  private readonly live = new Set<Version>();
  private queue: Promise<void> = Promise.resolve();

  constructor(readonly dir: string, private readonly logger: Logger) {}

  /** Loads the state named by CURRENT (if any) and starts a new manifest. */
  async recover(): Promise<void> {
    const currentPath = path.join(this.dir, "CURRENT");
    if (fs.existsSync(currentPath)) {
      const name = fs.readFileSync(currentPath, "utf8");
      if (!name.endsWith("\n") || !/^MANIFEST-\d+$/.test(name.trim())) {
        throw corruption("CURRENT", 0, `does not name a manifest (${JSON.stringify(name.slice(0, 40))})`);
      }
      const manifestName = name.trim();
      let data: Uint8Array;
      try {
        data = fs.readFileSync(path.join(this.dir, manifestName));
      } catch (e) {
        throw ioError(manifestName, "read", e);
      }
      let version = Version.empty();
      let sawLogNumber = false;
      const result = readLog(data, manifestName, (payload, offset) => {
        const edit = decodeEdit(payload, manifestName, offset);
        this.absorb(edit);
        if (edit.logNumber !== undefined) sawLogNumber = true;
        version = version.apply(edit);
      });
      if (result.tornTail) {
        // An edit is applied only after its fsync; a torn one was never acknowledged.
        this.logger(`lsm: ${manifestName}: dropped torn tail at offset ${result.validEnd} (${result.tornTail})`);
      }
      if (!sawLogNumber) throw corruption(manifestName, 0, "manifest has no log number record");
      this.setCurrent(version);
      this.manifestNumber = Number(manifestName.slice("MANIFEST-".length));
    } else {
      this.setCurrent(Version.empty());
    }
    await this.writeNewManifest();
  }

  private absorb(edit: VersionEdit): void {
    if (edit.logNumber !== undefined) this.logNumber = edit.logNumber;
    if (edit.nextFileNumber !== undefined) this.nextFileNumber = Math.max(this.nextFileNumber, edit.nextFileNumber);
    if (edit.lastSequence !== undefined) this.lastSequence = Math.max(this.lastSequence, edit.lastSequence);
    for (const [level, key] of edit.compactPointers) this.compactPointers[level] = key;
    for (const [, f] of edit.added) this.nextFileNumber = Math.max(this.nextFileNumber, f.number + 1);
  }

  newFileNumber(): number {
    return this.nextFileNumber++;
  }

  private snapshotEdit(): VersionEdit {
    const e = emptyEdit();
    e.logNumber = this.logNumber;
    e.nextFileNumber = this.nextFileNumber;
    e.lastSequence = this.lastSequence;
    this.compactPointers.forEach((k, level) => k && e.compactPointers.push([level, k]));
    this.current.levels.forEach((files, level) => files.forEach((f) => e.added.push([level, f])));
    return e;
  }

  /** Writes the whole state into a new manifest and points CURRENT at it. */
  private async writeNewManifest(): Promise<void> {
    const oldNumber = this.manifestNumber;
    const old = this.manifest;
    const number = this.newFileNumber();
    const name = manifestFileName(number);
    const writer = new LogWriter(path.join(this.dir, name), name);
    try {
      writer.add(encodeEdit(this.snapshotEdit()));
      await writer.sync();
      fsyncDir(this.dir);
      this.setCurrentFile(name);
    } catch (e) {
      await writer.close(false).catch(() => {});
      try {
        fs.unlinkSync(path.join(this.dir, name));
      } catch {}
      throw e;
    }
    this.manifest = writer;
    this.manifestNumber = number;
    if (old) await old.close(false);
    if (oldNumber > 0) {
      try {
        fs.unlinkSync(path.join(this.dir, manifestFileName(oldNumber)));
      } catch {}
    }
  }

  private setCurrentFile(manifestName: string): void {
    const tmp = path.join(this.dir, `CURRENT.${manifestName}.tmp`);
    try {
      const fd = fs.openSync(tmp, "w");
      try {
        fs.writeSync(fd, `${manifestName}\n`);
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      fs.renameSync(tmp, path.join(this.dir, "CURRENT"));
    } catch (e) {
      throw ioError("CURRENT", "switch", e);
    }
    fsyncDir(this.dir);
  }

  /**
   * Makes `edit` durable in the manifest and installs the resulting version. Calls are
   * serialized; the edit is filled in with the file counter and `lastSequence`.
   */
  logAndApply(edit: VersionEdit, lastSequence: number): Promise<void> {
    const run = async (): Promise<void> => {
      if (!this.manifest) throw new LsmError("CLOSED", "manifest is closed");
      edit.nextFileNumber = this.nextFileNumber;
      edit.lastSequence = lastSequence;
      const next = this.current.apply(edit);
      this.manifest.add(encodeEdit(edit));
      await this.manifest.sync();
      this.absorb(edit);
      this.setCurrent(next);
      if (this.manifest.size > MANIFEST_ROLL_BYTES) await this.writeNewManifest();
    };
    const p = this.queue.then(run);
    this.queue = p.catch(() => {});
    return p;
  }

  private setCurrent(v: Version): void {
    const old = this.current;
    this.ref(v);
    this.current = v;
    if (old !== v && this.live.has(old)) this.unref(old);
  }

  ref(v: Version): void {
    if (v.refs++ === 0) this.live.add(v);
  }

  /** Returns true when the last reference went away (its files may now be obsolete). */
  unref(v: Version): boolean {
    if (--v.refs > 0) return false;
    this.live.delete(v);
    return true;
  }

  /** Table numbers referenced by any live version (current, or pinned by iterators). */
  liveFiles(): Set<number> {
    const s = new Set<number>();
    for (const v of this.live) v.fileNumbers(s);
    return s;
  }

  async close(): Promise<void> {
    await this.queue;
    const m = this.manifest;
    this.manifest = null;
    if (m) await m.close(false);
  }
}
