// Snapshot stream versions 4 and 5: the LSM's table files shipped byte for byte, then the memtables' part
// as entries, from one checkpoint (src/lsm/checkpoint.ts). Frames and their CRCs as in every
// version (snapshot-frames.ts); layout in FORMAT.md. The receiver installs it with TableImporter.
import * as fs from "node:fs";
import * as path from "node:path";
import { TableStreamVerifier, type Checkpoint } from "../lsm/index.ts";
import { compareBytes } from "./range.ts";
import { KVCorruptionError } from "./errors.ts";
import { type ByteReader, Chunker, CRC32, FRAME_PREFIX_BYTES, FrameBuilder, headerFrame, sealFrame, type SnapshotHeader } from "./snapshot-frames.ts";

export const FRAME_FILE = 6;
export const FRAME_FILE_DATA = 7;
export const FRAME_ENTRIES = 8;
export const FRAME_FILES_TRAILER = 9;

/** Bytes of a table file per data frame: each is read, checksummed and sent as one piece. */
const FILE_DATA_BYTES = 1 << 20;
/** Memtable entries handed to the encoder per call (it stops earlier at each full frame). */
const PUMP_ENTRIES = 4096;

export interface ShippedFile {
  level: number;
  number: number;
  size: number;
  /** Internal keys bounding the table. */
  smallest: Uint8Array;
  largest: Uint8Array;
}

export interface MemtableEntry {
  key: Uint8Array;
  seq: number;
  kind: number;
  value: Uint8Array;
}

export type FileSnapshotRecord =
  | { type: "file"; file: ShippedFile }
  | { type: "fileData"; bytes: Uint8Array }
  | { type: "entries"; entries: MemtableEntry[] }
  | { type: "filesTrailer"; files: number; fileBytes: number; entries: number; lastSequence: number };

/**
 * Encodes a checkpoint as a version-4 stream: header, then per table a file frame followed by its
 * bytes in data frames, then the memtable entries, then the trailer. Reads each file as it goes:
 * one data frame and one chunk in memory at a time. The caller releases the checkpoint.
 */
export async function* encodeFileSnapshot(
  header: SnapshotHeader,
  checkpoint: Checkpoint,
  chunkBytes: number,
  /** User-key ranges [start, end) not worth shipping: tables wholly inside one, and such entries, are left out. */
  leaveOut: readonly (readonly [Uint8Array, Uint8Array])[] = [],
): AsyncGenerator<Uint8Array> {
  if (!(chunkBytes >= 64)) throw new RangeError(`snapshot chunk size ${chunkBytes} is below the 64-byte minimum`);
  const chunker = new Chunker(chunkBytes);
  yield* chunker.push(headerFrame(header));
  const outside = (key: Uint8Array) => !leaveOut.some(([start, end]) => compareBytes(key, start) >= 0 && compareBytes(key, end) < 0);
  const within = (smallest: Uint8Array, largest: Uint8Array) =>
    leaveOut.some(([start, end]) => compareBytes(smallest, start) >= 0 && compareBytes(largest, end) < 0);
  const files = checkpoint.files.filter((f) => !within(f.smallestUser, f.largestUser));
  let fileBytes = 0;
  for (const file of files) {
    const head = new FrameBuilder(FRAME_FILE, 29 + file.smallest.length + file.largest.length);
    head.u8(file.level).u64(file.number).u64(file.size).u32(file.smallest.length).bytes(file.smallest).u32(file.largest.length).bytes(file.largest);
    yield* chunker.push(head.finish(CRC32));
    // Every block's CRC is checked on the way out: a table gone bad here is this replica's
    // corruption (reported, repaired), never something a follower installs.
    const verifier = TableStreamVerifier.open(file.path, path.basename(file.path), file.size);
    const fd = fs.openSync(file.path, "r");
    try {
      for (let offset = 0; offset < file.size; ) {
        const n = Math.min(FILE_DATA_BYTES, file.size - offset);
        // A fresh buffer per frame, filled in place by the read and passed on without a copy.
        const frame = new Uint8Array(FRAME_PREFIX_BYTES + 1 + n);
        frame[FRAME_PREFIX_BYTES] = FRAME_FILE_DATA;
        const read = await readAt(fd, frame, FRAME_PREFIX_BYTES + 1, n, offset);
        if (read !== n) throw new Error(`snapshot: table file ${file.path} ended at ${offset + read} of its ${file.size} bytes`);
        verifier.update(frame.subarray(FRAME_PREFIX_BYTES + 1));
        yield* chunker.pushWhole(sealFrame(frame, 1 + n, CRC32));
        offset += n;
      }
      verifier.finish();
    } finally {
      fs.closeSync(fd);
    }
    fileBytes += file.size;
  }

  let entries = 0;
  let frame = new FrameBuilder(FRAME_ENTRIES, chunkBytes, true);
  let inFrame = 0;
  const ready: Uint8Array[] = [];
  const visit = (key: Uint8Array, seq: number, kind: number, value: Uint8Array): boolean => {
    if (!outside(key)) return true;
    let full = false;
    if (inFrame > 0 && !frame.fits(17 + key.length + value.length)) {
      ready.push(frame.finishCounted(inFrame, CRC32));
      frame = new FrameBuilder(FRAME_ENTRIES, chunkBytes, true);
      inFrame = 0;
      full = true;
    }
    frame.u8(kind).u64(seq).u32(key.length).bytes(key).u32(value.length).bytes(value);
    inFrame++;
    entries++;
    return !full;
  };
  while (checkpoint.nextEntries(PUMP_ENTRIES, visit) > 0) {
    for (const full of ready) yield* chunker.push(full);
    ready.length = 0;
  }
  for (const full of ready) yield* chunker.push(full);
  if (inFrame > 0) yield* chunker.push(frame.finishCounted(inFrame, CRC32));

  const trailer = new FrameBuilder(FRAME_FILES_TRAILER, 32);
  trailer.u64(files.length).u64(fileBytes).u64(entries).u64(checkpoint.seq);
  yield* chunker.push(trailer.finish(CRC32));
  const last = chunker.flush();
  if (last !== null) yield last;
}

function readAt(fd: number, buf: Uint8Array, at: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => fs.read(fd, buf, at, length, position, (err, n) => (err ? reject(err) : resolve(n))));
}

/** One version-4 frame after the header (`r` stands after the type byte). */
export function parseFileFrame(type: number, r: ByteReader): FileSnapshotRecord {
  switch (type) {
    case FRAME_FILE: {
      const level = r.u8();
      const number = r.u64();
      const size = r.u64();
      const smallest = r.bytes(r.u32());
      const largest = r.bytes(r.u32());
      r.end();
      return { type: "file", file: { level, number, size, smallest, largest } };
    }
    case FRAME_FILE_DATA:
      return { type: "fileData", bytes: r.rest() };
    case FRAME_ENTRIES: {
      const count = r.u32();
      const entries: MemtableEntry[] = [];
      for (let i = 0; i < count; i++) {
        const kind = r.u8();
        const seq = r.u64();
        const key = r.bytes(r.u32());
        entries.push({ key, seq, kind, value: r.bytes(r.u32()) });
      }
      r.end();
      return { type: "entries", entries };
    }
    case FRAME_FILES_TRAILER: {
      const files = r.u64();
      const fileBytes = r.u64();
      const entries = r.u64();
      const lastSequence = r.u64();
      r.end();
      return { type: "filesTrailer", files, fileBytes, entries, lastSequence };
    }
    default:
      throw new KVCorruptionError(`snapshot stream of table files has a frame of unknown type ${type}`);
  }
}

/**
 * The order of a version-4 stream: each file frame followed by exactly its size in data, entries
 * after the last file, and a trailer whose counts match.
 */
export class FileStreamChecker {
  private files = 0;
  private fileBytes = 0;
  private entries = 0;
  /** Bytes the file begun last still expects. */
  private remaining = 0;
  private current = -1;
  private sawEntries = false;

  /** Checks one record; returns true for the trailer. */
  check(record: FileSnapshotRecord): boolean {
    switch (record.type) {
      case "file":
        this.expectFileDone(`table ${record.file.number} began`);
        if (this.sawEntries) throw new KVCorruptionError(`snapshot stream has table ${record.file.number} after the memtable entries`);
        this.files++;
        this.current = record.file.number;
        this.remaining = record.file.size;
        return false;
      case "fileData":
        if (record.bytes.length > this.remaining) {
          throw new KVCorruptionError(`snapshot stream has ${record.bytes.length} bytes of table data where ${this.current < 0 ? "no table was begun" : `table ${this.current} expects ${this.remaining}`}`);
        }
        this.remaining -= record.bytes.length;
        this.fileBytes += record.bytes.length;
        return false;
      case "entries":
        this.expectFileDone("memtable entries began");
        this.sawEntries = true;
        this.entries += record.entries.length;
        return false;
      case "filesTrailer":
        this.expectFileDone("the trailer came");
        if (record.files !== this.files || record.fileBytes !== this.fileBytes || record.entries !== this.entries) {
          throw new KVCorruptionError(
            `snapshot trailer counts ${record.files} tables of ${record.fileBytes} bytes and ${record.entries} entries, ` +
              `but the stream held ${this.files} of ${this.fileBytes} bytes and ${this.entries}`,
          );
        }
        return true;
    }
  }

  /** What was read so far, for an error message. */
  describe(): string {
    return `${this.files} tables (${this.fileBytes} bytes) and ${this.entries} memtable entries`;
  }

  private expectFileDone(what: string): void {
    if (this.remaining > 0) throw new KVCorruptionError(`snapshot stream: ${what} while table ${this.current} still expects ${this.remaining} bytes`);
  }
}
