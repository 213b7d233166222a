// The state-machine snapshot as a byte stream of pairs (version 3): CRC-framed records (header,
// session batches, key/value batches, trailer) cut into chunks of bounded size, and the decoder of
// every version. Layout in FORMAT.md. Both sides hold at most one frame and one chunk in memory.
import { KVCorruptionError } from "./errors.ts";
import { type Session, SESSION_RECORD_BYTES, decodeSession, encodeSession } from "./sessions.ts";
import {
  ByteReader, Chunker, CRC32, FRAME_HEADER, FrameBuilder, FrameReader, SNAPSHOT_FILES_VERSION, SNAPSHOT_PAIRS_VERSION, headerFrame, isFilesVersion, type SnapshotHeader,
} from "./snapshot-frames.ts";
import { FileStreamChecker, parseFileFrame, type FileSnapshotRecord } from "./snapshot-files.ts";

export { SNAPSHOT_FILES_VERSION, SNAPSHOT_PAIRS_VERSION, isFilesVersion, type SnapshotHeader } from "./snapshot-frames.ts";

export const FRAME_SESSIONS = 2;
export const FRAME_PAIRS = 3;
export const FRAME_TRAILER = 4;
export const FRAME_RECORDS = 5;

export type SnapshotRecord =
  | { type: "header"; header: SnapshotHeader }
  | { type: "sessions"; sessions: Session[] }
  | { type: "pairs"; pairs: [Uint8Array, Uint8Array][] }
  | { type: "records"; records: [Uint8Array, Uint8Array][] }
  | { type: "trailer"; sessions: number; pairs: number; records: number }
  | FileSnapshotRecord;

/**
 * Encodes a snapshot: `pairs` are user keys without the 0x01 prefix. Frames of about
 * `chunkBytes` are cut into chunks of exactly `chunkBytes` (the last one shorter).
 */
export async function* encodeSnapshot(
  header: SnapshotHeader,
  sessions: Source<Session>,
  pairs: Source<[Uint8Array, Uint8Array]> | EntryPump,
  chunkBytes: number,
  /** Further metadata records (full LSM keys): each session's last Txn answer. */
  records: Source<[Uint8Array, Uint8Array]> = [],
  /** Bytes to drop from the front of each pair's key (an LSM key's prefix), sparing a view per pair. */
  pairKeySkip = 0,
): AsyncGenerator<Uint8Array> {
  if (!(chunkBytes >= 64)) throw new RangeError(`snapshot chunk size ${chunkBytes} is below the 64-byte minimum`);
  const chunker = new Chunker(chunkBytes);

  yield* chunker.push(headerFrame(header));

  let sessionCount = 0;
  let frame = new FrameBuilder(FRAME_SESSIONS, chunkBytes, true);
  let inFrame = 0;
  const addSession = (s: Session): Uint8Array | null => {
    frame.i64(s.clientId).bytes(encodeSession(s));
    sessionCount++;
    if (++inFrame * (8 + SESSION_RECORD_BYTES) < chunkBytes) return null;
    const full = frame.finishCounted(inFrame);
    frame = new FrameBuilder(FRAME_SESSIONS, chunkBytes, true);
    inFrame = 0;
    return full;
  };
  if (isSync(sessions)) {
    for (const s of sessions) {
      const full = addSession(s);
      if (full !== null) yield* chunker.push(full);
    }
  } else {
    for await (const s of sessions) {
      const full = addSession(s);
      if (full !== null) yield* chunker.push(full);
    }
  }
  if (inFrame > 0) yield* chunker.push(frame.finishCounted(inFrame));

  // Records, then pairs: the same frame layout, each its own frame type and count.
  const counts = { records: 0, pairs: 0 };
  for (const [type, source] of [[FRAME_RECORDS, records], [FRAME_PAIRS, pairs]] as const) {
    frame = new FrameBuilder(type, chunkBytes, true);
    inFrame = 0;
    let count = 0;
    const skip = type === FRAME_PAIRS ? pairKeySkip : 0;
    const add = (key: Uint8Array, value: Uint8Array): Uint8Array | null => {
      // A frame is cut before an entry that would not fit, so its buffer never grows (but for one huge entry).
      let full: Uint8Array | null = null;
      if (inFrame > 0 && !frame.fits(8 + key.length - skip + value.length)) {
        full = frame.finishCounted(inFrame);
        frame = new FrameBuilder(type, chunkBytes, true);
        inFrame = 0;
      }
      frame.entry(key, skip, value);
      count++;
      inFrame++;
      return full;
    };
    if (typeof source === "function") {
      // A pump stops at each entry that completes a frame, so at most one frame waits here.
      const ready: Uint8Array[] = [];
      const visit = (key: Uint8Array, value: Uint8Array): boolean => {
        const full = add(key, value);
        if (full === null) return true;
        ready.push(full);
        return false;
      };
      while (source(visit) > 0) {
        for (const full of ready) yield* chunker.push(full);
        ready.length = 0;
      }
    } else if (isSync(source)) {
      // A synchronous source is read without an await per entry: most of the cost of a large state.
      for (const [key, value] of source) {
        const full = add(key, value);
        if (full !== null) yield* chunker.push(full);
      }
    } else {
      for await (const [key, value] of source) {
        const full = add(key, value);
        if (full !== null) yield* chunker.push(full);
      }
    }
    if (inFrame > 0) yield* chunker.push(frame.finishCounted(inFrame));
    if (type === FRAME_PAIRS) counts.pairs = count;
    else counts.records = count;
  }
  const pairCount = counts.pairs;
  const recordCount = counts.records;

  const trailer = new FrameBuilder(FRAME_TRAILER, 24);
  trailer.u64(sessionCount).u64(pairCount).u64(recordCount);
  yield* chunker.push(trailer.finish());
  const last = chunker.flush();
  if (last !== null) yield last;
}

/**
 * Decodes a snapshot stream into records, checking every frame's length and CRC and that the
 * stream ends exactly after a trailer whose counts match what came before. Reads version 3
 * (pairs) and versions 4 and 5 (table files, checked by snapshot-files.ts) alike.
 */
export async function* decodeSnapshot(chunks: AsyncIterable<Uint8Array>): AsyncGenerator<SnapshotRecord> {
  const reader = new FrameReader();
  let version = 0;
  let sawTrailer = false;
  let sessions = 0;
  let pairs = 0;
  let records = 0;
  const files = new FileStreamChecker();
  for await (const chunk of chunks) {
    reader.push(chunk);
    for (let frame = reader.next(); frame !== null; frame = reader.next()) {
      if (sawTrailer) throw new KVCorruptionError("snapshot stream has data after its trailer");
      const record = parseFrame(frame, version);
      if (version === 0 && record.type !== "header") throw new KVCorruptionError(`snapshot stream starts with a ${record.type} frame, not a header`);
      switch (record.type) {
        case "header":
          if (version !== 0) throw new KVCorruptionError("snapshot stream has a second header");
          version = record.header.version;
          if (isFilesVersion(version)) reader.checksum = CRC32;
          break;
        case "sessions":
          sessions += record.sessions.length;
          break;
        case "pairs":
          pairs += record.pairs.length;
          break;
        case "records":
          records += record.records.length;
          break;
        case "trailer":
          if (record.sessions !== sessions || record.pairs !== pairs || record.records !== records) {
            throw new KVCorruptionError(
              `snapshot trailer counts ${record.sessions} sessions, ${record.pairs} pairs and ${record.records} records, ` +
                `but the stream held ${sessions}, ${pairs} and ${records}`,
            );
          }
          sawTrailer = true;
          break;
        default:
          sawTrailer = files.check(record);
      }
      yield record;
    }
  }
  if (!sawTrailer) {
    const held = isFilesVersion(version) ? files.describe() : `${sessions} sessions and ${pairs} pairs`;
    throw new KVCorruptionError(
      `snapshot stream is truncated: it ended after ${held} without a trailer` +
        (reader.buffered > 0 ? ` (${reader.buffered} bytes of a partial frame)` : ""),
    );
  }
}


/** What the encoder reads from: a synchronous source (an LSM scan) or an asynchronous one. */
export type Source<T> = Iterable<T> | AsyncIterable<T>;

/**
 * Entries pushed as views: hands entries to `visit` (which copies them at once) until it returns
 * false or a batch ends; returns how many it handed over, 0 at the end.
 */
export type EntryPump = (visit: (key: Uint8Array, value: Uint8Array) => boolean) => number;

function isSync<T>(source: Source<T>): source is Iterable<T> {
  return typeof (source as Iterable<T>)[Symbol.iterator] === "function";
}

/** One frame of a stream of `version` (0 before the header). */
function parseFrame(payload: Uint8Array, streamVersion: number): SnapshotRecord {
  const r = new ByteReader(payload);
  const type = r.u8();
  if (type !== FRAME_HEADER && isFilesVersion(streamVersion)) return parseFileFrame(type, r);
  switch (type) {
    case FRAME_HEADER: {
      const version = r.u8();
      if (version !== SNAPSHOT_PAIRS_VERSION && !isFilesVersion(version)) {
        throw new KVCorruptionError(
          `snapshot format version ${version} is not supported (this build reads ${SNAPSHOT_PAIRS_VERSION} to ${SNAPSHOT_FILES_VERSION})` +
            (version < SNAPSHOT_PAIRS_VERSION
              ? ": it comes from a node of a build before per-key revisions; run one build across the cluster"
              : ": it comes from a newer build; upgrade this node"),
        );
      }
      const index = r.u64();
      const term = r.u64();
      const logTime = r.u64();
      const count = r.u32();
      const members: number[] = [];
      for (let i = 0; i < count; i++) members.push(r.u32());
      r.end();
      return { type: "header", header: { version, index, term, logTime, members } };
    }
    case FRAME_SESSIONS: {
      const count = r.u32();
      const sessions: Session[] = [];
      for (let i = 0; i < count; i++) {
        const clientId = r.i64();
        sessions.push(decodeSession(clientId, r.bytes(SESSION_RECORD_BYTES)));
      }
      r.end();
      return { type: "sessions", sessions };
    }
    case FRAME_PAIRS: {
      const count = r.u32();
      const pairs: [Uint8Array, Uint8Array][] = [];
      for (let i = 0; i < count; i++) {
        const key = r.bytes(r.u32());
        pairs.push([key, r.bytes(r.u32())]);
      }
      r.end();
      return { type: "pairs", pairs };
    }
    case FRAME_RECORDS: {
      const count = r.u32();
      const records: [Uint8Array, Uint8Array][] = [];
      for (let i = 0; i < count; i++) {
        const key = r.bytes(r.u32());
        records.push([key, r.bytes(r.u32())]);
      }
      r.end();
      return { type: "records", records };
    }
    case FRAME_TRAILER: {
      const sessions = r.u64();
      const pairs = r.u64();
      const records = r.u64();
      r.end();
      return { type: "trailer", sessions, pairs, records };
    }
    default:
      throw new KVCorruptionError(`snapshot stream has a frame of unknown type ${type}`);
  }
}
