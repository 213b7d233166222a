// Reading the log directory back on open: replays every segment into memory, tells a torn tail
// (a crash mid-write, zeroed) from corruption (refused), and drops a segment torn while created.

import * as fs from "node:fs";
import * as path from "node:path";
import {
  decodeEntry,
  decodeHardState,
  decodeMeta,
  decodeSegmentHeader,
  findValidFrameAfter,
  type RawRecord,
  readFrame,
  RecordType,
} from "./log-record.ts";
import { LogStoreError } from "./log-error.ts";
import {
  COMPACTION_FILE,
  fillZeros,
  type LogCounters,
  readCompactionMeta,
  type Segment,
  SEGMENT_PATTERN,
  segmentName,
  SPARE_FILE,
  syncDir,
} from "./log-files.ts";
import { type Entry, type HardState, NONE, type SnapshotMeta } from "../types.ts";

/** What open() did to a torn last record (a crash mid-write): the bytes it cut off. */
export interface RecoveryReport {
  file: string;
  offset: number;
  truncatedBytes: number;
  reason: string;
}

/** The log as the files hold it; the last segment (if any) is the one to append to. */
export interface RecoveredLog {
  hard: HardState;
  snapshot: SnapshotMeta;
  /** entries[i].index === snapshot.index + 1 + i. */
  log: Entry[];
  segments: Segment[];
  recovery: RecoveryReport | null;
}

/** Creates `dir` if needed and reads the log in it, repairing a torn tail. */
export async function recoverLog(dir: string, counters: LogCounters): Promise<RecoveredLog> {
  await fs.promises.mkdir(dir, { recursive: true });
  await fs.promises.rm(path.join(dir, `${COMPACTION_FILE}.tmp`), { force: true });
  // A spare holds no records (it gets its header only just before its rename): prepare it afresh.
  await fs.promises.rm(path.join(dir, SPARE_FILE), { force: true });
  const state: RecoveredLog = {
    hard: { term: 0, votedFor: NONE, commitIndex: 0 },
    snapshot: await readCompactionMeta(dir),
    log: [],
    segments: [],
    recovery: null,
  };
  const segments = state.segments;
  const names = (await fs.promises.readdir(dir)).filter((n) => SEGMENT_PATTERN.test(n)).sort();
  for (let i = 0; i < names.length; i++) {
    const seq = Number(SEGMENT_PATTERN.exec(names[i])![1]);
    if (i > 0 && seq !== segments[i - 1].seq + 1) {
      throw new LogStoreError(
        "CORRUPTION",
        `segment ${segmentName(segments[i - 1].seq + 1)} is missing (found ${names[i]} next)`,
        path.join(dir, names[i]),
        0,
      );
    }
    const segment: Segment = { seq, path: path.join(dir, names[i]), size: 0, allocated: 0, maxIndex: 0 };
    segments.push(segment);
    await replaySegment(state, segment, i === names.length - 1, dir, counters);
  }
  const last = segments.at(-1);
  if (last && last.size === 0) {
    // Torn while being created: nothing in it was ever acknowledged.
    segments.pop();
    await fs.promises.unlink(last.path);
    await syncDir(dir, counters);
  }
  return state;
}

/**
 * Replays one segment's records into memory. The first bad frame ends the segment: followed only
 * by zeros it is its clean end (preallocated space); otherwise, in the last segment and with no
 * valid record anywhere after it, a torn tail, which is zeroed; anything else is corruption.
 */
async function replaySegment(
  state: RecoveredLog,
  segment: Segment,
  isLast: boolean,
  dir: string,
  counters: LogCounters,
): Promise<void> {
  const buf = new Uint8Array(await fs.promises.readFile(segment.path));
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const corrupt = (offset: number, what: string) =>
    new LogStoreError(
      "CORRUPTION",
      `corrupt Raft log segment ${segment.path} at offset ${offset}: ${what}; ` +
        `the log cannot be trusted past this point (restore this node from a peer)`,
      segment.path,
      offset,
    );
  let offset = 0;
  while (offset < buf.length) {
    const frame = readFrame(buf, view, offset, buf.length);
    if (typeof frame === "string") {
      const dirtyEnd = endOfNonZero(buf, offset);
      if (dirtyEnd === offset) break;
      if (!isLast || findValidFrameAfter(buf, view, offset, buf.length) >= 0) throw corrupt(offset, frame);
      await zeroTornTail(segment, offset, dirtyEnd, dir, counters);
      state.recovery = { file: segment.path, offset, truncatedBytes: dirtyEnd - offset, reason: frame };
      break;
    }
    const problem = replayRecord(state, segment, offset, buf, view, frame);
    if (problem) throw corrupt(offset, problem);
    offset = frame.end;
  }
  segment.size = offset;
  segment.allocated = buf.length;
}

/** Applies one record to the recovered log; returns a problem description when it is invalid. */
function replayRecord(
  state: RecoveredLog,
  segment: Segment,
  offset: number,
  buf: Uint8Array,
  view: DataView,
  frame: RawRecord,
): string | null {
  const type = frame.type;
  if ((offset === 0) !== (type === RecordType.SegmentHeader)) {
    return offset === 0 ? "segment does not start with a header" : "segment header in the middle of a segment";
  }
  switch (type) {
    case RecordType.SegmentHeader: {
      const header = decodeSegmentHeader(view, frame);
      if (typeof header === "string") return header;
      return header.seq === segment.seq ? null : `header names segment ${header.seq}`;
    }
    case RecordType.HardState: {
      const hs = decodeHardState(view, frame);
      if (typeof hs === "string") return hs;
      state.hard = hs;
      return null;
    }
    case RecordType.Entry: {
      const entry = decodeEntry(buf, view, frame);
      if (typeof entry === "string") return entry;
      segment.maxIndex = Math.max(segment.maxIndex, entry.index);
      // Each entry record means "truncate after index - 1, then append". At or below the
      // compaction point the entry itself is gone, but its truncation of what follows still holds.
      const snapshotIndex = state.snapshot.index;
      if (entry.index <= snapshotIndex) {
        state.log.length = 0;
        return null;
      }
      const lastIndex = snapshotIndex + state.log.length;
      if (entry.index > lastIndex + 1) return `entry ${entry.index} leaves a gap after index ${lastIndex}`;
      state.log.length = entry.index - snapshotIndex - 1;
      state.log.push(entry);
      return null;
    }
    case RecordType.Reset: {
      const meta = decodeMeta(view, frame);
      if (typeof meta === "string") return meta;
      segment.maxIndex = Math.max(segment.maxIndex, meta.index);
      state.log.length = 0;
      if (meta.index >= state.snapshot.index) state.snapshot = meta;
      return null;
    }
    case RecordType.CompactionMeta:
      return "compaction meta record inside a segment";
  }
}

/**
 * Overwrites a torn tail [offset, end) with zeros and syncs: the space stays allocated, and no
 * remnant of an unacknowledged write can line up behind a later, shorter record and replay.
 */
async function zeroTornTail(segment: Segment, offset: number, end: number, dir: string, counters: LogCounters) {
  const handle = await fs.promises.open(segment.path, "r+");
  try {
    await fillZeros(handle, offset, end, dir, counters);
    counters.preallocatedBytes -= end - offset; // repair, not preallocation
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** One past the last non-zero byte of buf[from, length), or `from` when that range is all zeros. */
function endOfNonZero(buf: Uint8Array, from: number): number {
  let end = buf.length;
  // Backwards, eight bytes at a time where aligned: a 64 MiB preallocated tail is scanned on open.
  while (end > from && (buf.byteOffset + end) % 8 !== 0) {
    if (buf[end - 1] !== 0) return end;
    end--;
  }
  if (end === from) return from;
  const wordsFrom = Math.ceil((buf.byteOffset + from) / 8);
  const words = new BigUint64Array(buf.buffer, 0, (buf.byteOffset + end) / 8);
  let w = words.length;
  while (w > wordsFrom && words[w - 1] === 0n) w--;
  end = Math.min(end, w * 8 - buf.byteOffset);
  while (end > from) {
    if (buf[end - 1] !== 0) return end;
    end--;
  }
  return from;
}
