// Recovery at open (FORMAT.md, "How recovery works"): the manifest's version, then every WAL not
// yet in a table replayed into memtables and written as L0 tables, then a fresh WAL.
import * as fs from "node:fs";
import * as path from "node:path";
import { forEachBatchOp } from "./batch.ts";
import { writeTable, type CompactionContext } from "./compaction.ts";
import { ioError } from "./errors.ts";
import { fsyncDir, logFileName, type VersionSet } from "./manifest.ts";
import { type Memtable, newMemtable } from "./memtable.ts";
import type { ResolvedOptions } from "./options.ts";
import { emptyEdit, type VersionEdit } from "./version.ts";
import { LogWriter, readLog } from "./wal.ts";

export interface Recovered {
  lastSeq: number;
  /** The new WAL and its (empty) memtable. */
  wal: LogWriter;
  mem: Memtable;
  /** Bytes of the L0 tables the replay wrote. */
  tableBytes: number;
  /** WAL files whose contents are now in tables: the caller deletes them. */
  obsoleteLogs: number[];
}

/**
 * Brings `versions` to the state on disk and replays the WALs; the new tables and the new log
 * number are in the manifest when this returns. Tables written go through `ctx` (pendingOutputs
 * holds their numbers until they are in the version).
 */
export async function recover(dir: string, opts: ResolvedOptions, versions: VersionSet, ctx: CompactionContext): Promise<Recovered> {
  const names = fs.readdirSync(dir);
  let maxNumber = 0;
  for (const n of names) {
    const m = /^(\d+)\.(log|sst)$/.exec(n) ?? /^MANIFEST-(\d+)$/.exec(n);
    if (m) maxNumber = Math.max(maxNumber, Number(m[1]));
  }
  versions.nextFileNumber = maxNumber + 1;
  await versions.recover();
  const state = { lastSeq: versions.lastSequence };
  const logs = names
    .map((n) => /^(\d+)\.log$/.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .sort((a, b) => a - b);
  const edit = emptyEdit();
  for (const number of logs) {
    if (number < versions.logNumber) continue;
    await replayLog(dir, opts, ctx, number, edit, state);
  }
  const walNumber = versions.newFileNumber();
  const wal = new LogWriter(path.join(dir, logFileName(walNumber)), logFileName(walNumber));
  fsyncDir(dir);
  edit.logNumber = walNumber;
  await versions.logAndApply(edit, state.lastSeq);
  for (const [, f] of edit.added) ctx.pendingOutputs.delete(f.number);
  let tableBytes = 0;
  for (const [, f] of edit.added) tableBytes += f.size;
  return { lastSeq: state.lastSeq, wal, mem: newMemtable(walNumber, opts.memtableBytes), tableBytes, obsoleteLogs: logs.filter((n) => n < walNumber) };
}

/** Replays one WAL file into memtables, writing each full memtable (and the rest) to L0. */
async function replayLog(
  dir: string, opts: ResolvedOptions, ctx: CompactionContext, number: number, edit: VersionEdit, state: { lastSeq: number },
): Promise<void> {
  const name = logFileName(number);
  const file = path.join(dir, name);
  let data: Uint8Array;
  try {
    data = fs.readFileSync(file);
  } catch (e) {
    throw ioError(name, "read", e);
  }
  let mem = newMemtable(number, opts.memtableBytes);
  const flush = async (): Promise<void> => {
    if (mem.count === 0) return;
    const iter = mem.iterator();
    iter.seekToFirst();
    const f = await writeTable(ctx, iter);
    if (f) edit.added.push([0, f]);
    mem = newMemtable(number, opts.memtableBytes);
  };
  const batches: { payload: Uint8Array; offset: number }[] = [];
  const result = readLog(data, name, (payload, offset) => batches.push({ payload, offset }));
  for (const { payload, offset } of batches) {
    forEachBatchOp(payload, (kind, key, value, seq) => {
      mem.add(key, seq, kind, value);
      if (seq > state.lastSeq) state.lastSeq = seq;
    }, name, offset);
    if (mem.bytes >= opts.memtableBytes) await flush();
  }
  await flush();
  if (result.tornTail) {
    opts.logger(`lsm: ${name}: truncated torn tail at offset ${result.validEnd} (${result.tornTail}); unsynced writes after it are lost`);
    try {
      fs.truncateSync(file, result.validEnd);
    } catch (e) {
      throw ioError(name, "truncate", e);
    }
  }
}
