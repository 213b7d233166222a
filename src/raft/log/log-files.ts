// The log directory's files (FORMAT.md): segment names and bookkeeping, the compaction-meta file,
// and the counted write, zero-fill and directory-fsync primitives the store and recovery share.

import * as fs from "node:fs";
import * as path from "node:path";
import { traceSpan, tracing, wallNow } from "../../util/trace.ts";
import {
  decodeMeta,
  HARD_STATE_RECORD_BYTES,
  metaRecordBytes,
  readFrame,
  RecordType,
  SEGMENT_HEADER_RECORD_BYTES,
  writeMetaRecord,
} from "./log-record.ts";
import { LogStoreError } from "./log-error.ts";
import type { SnapshotMeta } from "../types.ts";

/** Room at the start of each segment for its header and hard state records. */
export const SEGMENT_OVERHEAD = SEGMENT_HEADER_RECORD_BYTES + HARD_STATE_RECORD_BYTES;
export const COMPACTION_FILE = "compaction-meta";
export const SEGMENT_PATTERN = /^log-(\d{16})\.seg$/;
/** The next segment, zero-filled ahead of time; renamed into place (header written) on rollover. */
export const SPARE_FILE = "segment.spare";
/** Segment space is zero-filled in steps of this much (or the whole segment when smaller). */
export const PREALLOCATE_STEP = 4 * 1024 * 1024;
/** Batches up to this size are written synchronously (see writeAll). */
const SYNC_WRITE_BYTES = 64 * 1024;
export const EMPTY_META: SnapshotMeta = { index: 0, term: 0, members: [] };

export const segmentName = (seq: number) => `log-${String(seq).padStart(16, "0")}.seg`;

export interface Segment {
  seq: number;
  path: string;
  size: number;
  /** Bytes of the file known zero-filled or written and synced: appends never write past this. */
  allocated: number;
  /** Highest entry index (or Reset index) ever written to it: it may go once compaction passes this. */
  maxIndex: number;
}

/** The I/O counters behind LogStoreStats, bumped by whichever part of the store does the work. */
export interface LogCounters {
  saves: number;
  /** Saves that changed only commitIndex: written with a later batch, never synced on their own. */
  lazyHardStates: number;
  /** write(2) calls carrying log records. */
  writes: number;
  /** fdatasync/fsync calls on segment files (directory fsyncs counted apart). */
  fsyncs: number;
  dirFsyncs: number;
  bytesWritten: number;
  /** Zero bytes written (and synced) ahead of the appends, in segments and spares. */
  preallocatedBytes: number;
  /** Rollovers that found a spare segment already prepared in the background. */
  sparesUsed: number;
  /** Rollovers that had to wait for a spare to be zero-filled first. */
  spareWaits: number;
  /** Flushes that had to wait for zero-filled space (the background fill fell behind). */
  allocationWaits: number;
  /** fdatasyncs that made appended records durable (the commit path), and their total seconds. */
  appendSyncs: number;
  appendSyncSeconds: number;
}

export function newCounters(): LogCounters {
  return {
    saves: 0,
    lazyHardStates: 0,
    writes: 0,
    fsyncs: 0,
    dirFsyncs: 0,
    bytesWritten: 0,
    preallocatedBytes: 0,
    sparesUsed: 0,
    spareWaits: 0,
    allocationWaits: 0,
    appendSyncs: 0,
    appendSyncSeconds: 0,
  };
}

/** Zero buffer shared by every store: allocated on first use, never written to. */
let zeroChunk: Uint8Array | null = null;
function zeros(): Uint8Array {
  zeroChunk ??= new Uint8Array(PREALLOCATE_STEP);
  return zeroChunk;
}

/** Writes all of buf at `position` as one counted write; `file` names the target in errors. */
export async function writeAll(
  handle: fs.promises.FileHandle,
  buf: Uint8Array,
  position: number,
  file: string,
  counters: LogCounters,
): Promise<void> {
  let done = 0;
  if (buf.length <= SYNC_WRITE_BYTES) {
    // Copying a small batch into the page cache takes microseconds: cheaper on the event loop
    // than a trip through the thread pool. The fsync that follows stays asynchronous.
    const traced = tracing ? wallNow() : 0;
    while (done < buf.length) {
      const written = fs.writeSync(handle.fd, buf, done, buf.length - done, position + done);
      if (written <= 0) throw new Error(`short write to ${file}`);
      done += written;
    }
    if (tracing && wallNow() - traced > 1) traceSpan("write-sync", traced, buf.length);
  } else {
    while (done < buf.length) {
      const { bytesWritten } = await handle.write(buf, done, buf.length - done, position + done);
      if (bytesWritten <= 0) throw new Error(`short write to ${file}`);
      done += bytesWritten;
    }
  }
  counters.writes++;
  counters.bytesWritten += buf.length;
}

/** Overwrites [from, to) with zeros (not synced); counted as preallocated bytes. */
export async function fillZeros(
  handle: fs.promises.FileHandle,
  from: number,
  to: number,
  dir: string,
  counters: LogCounters,
): Promise<void> {
  const chunk = zeros();
  for (let at = from; at < to; ) {
    const { bytesWritten } = await handle.write(chunk, 0, Math.min(chunk.length, to - at), at);
    if (bytesWritten <= 0) throw new Error(`short write while zero-filling ${dir}`);
    at += bytesWritten;
    counters.preallocatedBytes += bytesWritten;
  }
}

export async function syncDir(dir: string, counters: LogCounters): Promise<void> {
  const handle = await fs.promises.open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
  counters.dirFsyncs++;
}

/** The compaction point, atomically replaced: write a temp file, sync, rename, sync the directory. */
export async function writeCompactionMeta(dir: string, meta: SnapshotMeta, counters: LogCounters): Promise<void> {
  const buf = new Uint8Array(metaRecordBytes(meta));
  writeMetaRecord(buf, new DataView(buf.buffer), 0, RecordType.CompactionMeta, meta);
  const target = path.join(dir, COMPACTION_FILE);
  const temp = `${target}.tmp`;
  const handle = await fs.promises.open(temp, "w");
  try {
    await handle.write(buf, 0, buf.length, 0);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await fs.promises.rename(temp, target);
  await syncDir(dir, counters);
}

/** The compaction point on disk, or EMPTY_META when the log was never compacted. */
export async function readCompactionMeta(dir: string): Promise<SnapshotMeta> {
  const file = path.join(dir, COMPACTION_FILE);
  let buf: Uint8Array;
  try {
    buf = new Uint8Array(await fs.promises.readFile(file));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return EMPTY_META;
    throw err;
  }
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const frame = readFrame(buf, view, 0, buf.length);
  const meta = typeof frame === "string" ? frame : decodeMeta(view, frame);
  if (typeof meta === "string" || (typeof frame !== "string" && frame.type !== RecordType.CompactionMeta)) {
    throw new LogStoreError("CORRUPTION", `corrupt compaction meta in ${file} at offset 0: ${meta}`, file, 0);
  }
  return meta;
}
