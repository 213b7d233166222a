// Moving a snapshot between an LSM and a chunk stream: reading one out of a consistent LSM snapshot
// or checkpoint (released exactly once), and installing one into a fresh LSM: versions 4 and 5 as shipped
// table files (TableImporter), version 3 as sorted runs of pairs (BulkLoader).
import { BulkLoader } from "../lsm/bulk-load.ts";
import { TableImporter, type BatchOp, type DB, type DBIteratorOptions, type DBOptions, type LsmIterator } from "../lsm/index.ts";
import { encodeMembership, membershipOfMeta, type NodeId, type SnapshotMeta } from "../raft/index.ts";
import { KVCorruptionError } from "./errors.ts";
import {
  APPLIED_KEY,
  KEY_COUNT_KEY,
  MEMBERS_KEY,
  SESSION_END,
  SESSION_PREFIX,
  USER_END,
  USER_START,
  decodeApplied,
  decodeMembers,
  encodeApplied,
  encodeKeyCount,
  encodeMembers,
  sessionKey,
} from "./keys.ts";
import { RESPONSE_END, RESPONSE_PREFIX } from "./session-responses.ts";
import { decodeSession, encodeSession, type Session } from "./sessions.ts";
import { EVENT_END, HISTORY_RANGE_START } from "./history.ts";
import { encodeFileSnapshot } from "./snapshot-files.ts";
import { SNAPSHOT_FILES_VERSION, SNAPSHOT_PAIRS_VERSION, decodeSnapshot, isFilesVersion, encodeSnapshot, type EntryPump, type SnapshotRecord } from "./snapshot-stream.ts";

/** What a leader sends: the LSM's table files (version 5, the default) or every pair (version 3, for receivers of older builds). */
export type SnapshotFormat = "files" | "pairs";

/** Entries per call into the LSM iterator while streaming pairs (it stops earlier at each full frame). */
const PUMP_ENTRIES = 4096;

/** The state of `db` as one snapshot stream; everything, the applied index included, from one LSM snapshot. */
export function readSnapshot(
  db: DB,
  fallbackMembers: NodeId[],
  chunkBytes: number,
  format: SnapshotFormat = "files",
): { meta: SnapshotMeta; chunks: AsyncIterable<Uint8Array> } {
  // A checkpoint pins the files of this moment and takes the snapshot the metadata is read at.
  const checkpoint = format === "files" ? db.checkpoint() : null;
  const snap = checkpoint?.snapshot ?? db.snapshot();
  const release = () => (checkpoint !== null ? checkpoint.release() : snap.release());
  let handedOver = false;
  try {
    const appliedRecord = db.getSync(APPLIED_KEY, { snapshot: snap });
    const { index, term, logTime } = appliedRecord ? decodeApplied(appliedRecord) : { index: 0, term: 0, logTime: 0 };
    const membersRecord = db.getSync(MEMBERS_KEY, { snapshot: snap });
    const members = membersRecord ? decodeMembers(membersRecord) : [...fallbackMembers];
    const meta: SnapshotMeta = { index, term, members };
    if (checkpoint !== null) {
      const header = { version: SNAPSHOT_FILES_VERSION, index, term, logTime, members };
      handedOver = true;
      // The watch history is node-local: tables holding nothing else stay home (the receiver's
      // history starts after the snapshot; history records in the tables it gets lie below that).
      const history = [[HISTORY_RANGE_START, EVENT_END]] as const;
      return { meta, chunks: releasingStream(encodeFileSnapshot(header, checkpoint, chunkBytes, history), release) };
    }
    const header = { version: SNAPSHOT_PAIRS_VERSION, index, term, logTime, members };
    function* sessions(): Generator<Session> {
      for (const [key, value] of scan(db, { gte: SESSION_PREFIX, lt: SESSION_END, snapshot: snap })) {
        yield decodeSession(clientIdOfSessionKey(key), value);
      }
    }
    // The bulk of the state: entries handed to the encoder as views (no copy per key or value),
    // full LSM keys whose one-byte user prefix the encoder drops as it copies them.
    let pairIterator: LsmIterator | null = null;
    const pairs: EntryPump = (visit) => {
      pairIterator ??= db.iterator({ gte: USER_START, lt: USER_END, snapshot: snap });
      return pairIterator.nextViews(PUMP_ENTRIES, visit);
    };
    function* records(): Generator<[Uint8Array, Uint8Array]> {
      yield* scan(db, { gte: RESPONSE_PREFIX, lt: RESPONSE_END, snapshot: snap });
    }
    handedOver = true;
    return { meta, chunks: releasingStream(encodeSnapshot(header, sessions(), pairs, chunkBytes, records(), USER_START.length), () => {
        pairIterator?.close();
        release();
      }) };
  } finally {
    // The stream owns the LSM snapshot from here; it releases it when finished or abandoned.
    if (!handedOver) release();
  }
}

/**
 * Installs a snapshot stream of either version into the empty directory `dir` and opens it. On
 * any defect it throws, having closed what it opened (the caller removes `dir`). Returns the
 * database and what the metadata needs (the key count only when the stream counted pairs).
 */
export async function installSnapshot(
  dir: string,
  lsm: DBOptions,
  meta: SnapshotMeta,
  chunks: AsyncIterable<Uint8Array>,
  closing: () => boolean,
): Promise<{ db: DB; logTime: number; keys: number | null }> {
  const records = decodeSnapshot(chunks);
  try {
    const first = await records.next();
    if (first.done || first.value.type !== "header") throw new KVCorruptionError("snapshot stream has no header");
    const header = first.value.header;
    if (header.index !== meta.index || header.term !== meta.term) {
      throw new KVCorruptionError(
        `snapshot stream is of index ${header.index} term ${header.term}, but the install asked for index ${meta.index} term ${meta.term}`,
      );
    }
    if (isFilesVersion(header.version)) {
      const importer = await TableImporter.create(dir, lsm);
      let db: DB;
      try {
        db = await importFiles(importer, records, closing);
      } catch (error) {
        await importer.abort();
        throw error;
      }
      try {
        // The shipped state must stand at the index the stream claims.
        const applied = db.getSync(APPLIED_KEY);
        const index = applied ? decodeApplied(applied).index : 0;
        if (index !== meta.index) throw new KVCorruptionError(`snapshot files hold applied index ${index}, but the stream is of index ${meta.index}`);
      } catch (error) {
        await db.close().catch(() => {});
        throw error;
      }
      return { db, logTime: header.logTime, keys: null };
    }
    const loader = await BulkLoader.create(dir, lsm);
    try {
      const { logTime, keys } = await loadFromSnapshot(loader, header.logTime, records, closing);
      return { db: await loader.finish(), logTime, keys };
    } catch (error) {
      await loader.abort();
      throw error;
    }
  } finally {
    await records.return(undefined);
  }
}

/** Writes a version-4 stream's files and entries through `importer`; returns the opened database. */
async function importFiles(importer: TableImporter, records: AsyncIterable<SnapshotRecord>, closing: () => boolean): Promise<DB> {
  let remaining = 0;
  let lastSequence = -1;
  for await (const record of records) {
    if (closing()) throw new Error("snapshot install abandoned: the state machine is closing");
    switch (record.type) {
      case "file":
        importer.beginFile(record.file);
        remaining = record.file.size;
        break;
      case "fileData":
        importer.writeFile(record.bytes);
        remaining -= record.bytes.length;
        if (remaining === 0) importer.endFile();
        await importer.settle();
        break;
      case "entries":
        for (const e of record.entries) importer.addEntry(e.key, e.seq, e.kind, e.value);
        break;
      case "filesTrailer":
        // Read on to the end: the decoder refuses anything after the trailer.
        lastSequence = record.lastSequence;
        break;
      default:
        throw new KVCorruptionError(`snapshot stream of table files holds a ${record.type} frame`);
    }
  }
  if (lastSequence < 0) throw new KVCorruptionError("snapshot stream ended without a trailer");
  return importer.finish(lastSequence);
}

/**
 * Loads a version-3 stream (after its header) into a bulk loader: the stream comes in key order within each kind of
 * record (sessions, Txn answers, pairs), so each kind is one sorted run written straight into
 * tables. Throws on any defect (the caller aborts the load). Returns what the metadata needs.
 */
async function loadFromSnapshot(
  loader: BulkLoader,
  headerLogTime: number,
  records: AsyncIterable<SnapshotRecord>,
  closing: () => boolean,
): Promise<{ logTime: number; keys: number }> {
  let complete = false;
  let keys = 0;
  let logTime = headerLogTime;
  let run = "";
  const startRun = (kind: string) => {
    if (run !== kind) loader.endRun();
    run = kind;
  };
  // One reusable buffer for user keys (the 0x01 prefix + the stream's key): the loader copies.
  let userKey = new Uint8Array(256);
  for await (const record of records) {
    if (closing()) throw new Error("snapshot install abandoned: the state machine is closing");
    switch (record.type) {
      case "sessions":
        startRun("sessions");
        for (const s of record.sessions) {
          logTime = Math.max(logTime, s.lastTime);
          loader.add(sessionKey(s.clientId), encodeSession(s));
        }
        break;
      case "pairs":
        startRun("pairs");
        for (const [key, value] of record.pairs) {
          if (userKey.length < key.length + 1) userKey = new Uint8Array(2 * (key.length + 1));
          userKey[0] = USER_START[0];
          userKey.set(key, 1);
          loader.add(userKey.subarray(0, key.length + 1), value);
        }
        keys += record.pairs.length;
        break;
      case "records":
        startRun("records");
        for (const [key, value] of record.records) {
          // Only the kinds of record a snapshot carries: a stream cannot overwrite other metadata.
          if (key.length !== RESPONSE_PREFIX.length + 8 || key[0] !== RESPONSE_PREFIX[0] || key[1] !== RESPONSE_PREFIX[1]) {
            throw new KVCorruptionError(`snapshot stream holds a record under an unexpected ${key.length}-byte key`);
          }
          loader.add(key, value);
        }
        break;
      case "trailer":
        complete = true;
        break;
      default:
        throw new KVCorruptionError(`snapshot stream of version ${SNAPSHOT_PAIRS_VERSION} holds a ${record.type} frame`);
    }
    await loader.settle();
  }
  if (!complete) throw new KVCorruptionError("snapshot stream ended without a trailer");
  return { logTime, keys };
}

/** The metadata records written over a loaded snapshot: applied index, configuration, key count (when counted). */
export function snapshotMetadata(meta: SnapshotMeta, logTime: number, keys: number | null): BatchOp[] {
  const extras = (meta.learners?.length ?? 0) > 0 || Object.keys(meta.addresses ?? {}).length > 0;
  return [
    { type: "put", key: APPLIED_KEY, value: encodeApplied(meta.index, meta.term, logTime) },
    { type: "put", key: MEMBERS_KEY, value: encodeMembers(meta.members, extras ? encodeMembership(membershipOfMeta(meta)) : undefined) },
    ...(keys === null ? [] : [{ type: "put" as const, key: KEY_COUNT_KEY, value: encodeKeyCount(keys) }]),
  ];
}

/** Counts the user keys of `db` (once, for a state written before the key count was kept). */
export async function countUserKeys(db: DB): Promise<number> {
  let keys = 0;
  for (const _ of scan(db, { gte: USER_START, lt: USER_END })) keys++;
  return keys;
}

/** Every session record of `db`. */
export async function loadSessions(db: DB): Promise<Session[]> {
  const loaded: Session[] = [];
  for await (const [key, value] of db.iterator({ gte: SESSION_PREFIX, lt: SESSION_END })) {
    loaded.push(decodeSession(clientIdOfSessionKey(key), value));
  }
  return loaded;
}

/**
 * Wraps a stream so `release` runs exactly once when it ends, fails, or is abandoned through
 * return() — even before the first next(), when a generator's own `finally` would never run.
 */
function releasingStream(inner: AsyncGenerator<Uint8Array>, release: () => void): AsyncIterableIterator<Uint8Array> {
  let released = false;
  const once = (): void => {
    if (!released) {
      released = true;
      release();
    }
  };
  return {
    [Symbol.asyncIterator]() {
      return this;
    },
    async next(): Promise<IteratorResult<Uint8Array>> {
      try {
        const result = await inner.next();
        if (result.done) once();
        return result;
      } catch (error) {
        once();
        throw error;
      }
    },
    async return(): Promise<IteratorResult<Uint8Array>> {
      try {
        await inner.return(undefined);
      } finally {
        once();
      }
      return { done: true, value: undefined };
    },
  };
}

/**
 * Entries of a range one at a time. (The LSM iterator's `for await` reads ahead a batch of
 * entries; with large values that batch, not the chunk size, would bound a snapshot's memory.)
 */
function* scan(db: DB, options: DBIteratorOptions): Generator<[Uint8Array, Uint8Array]> {
  const iterator = db.iterator(options);
  try {
    for (let entry = iterator.read(); entry !== undefined; entry = iterator.read()) yield entry;
  } finally {
    iterator.close();
  }
}

function clientIdOfSessionKey(key: Uint8Array): bigint {
  if (key.length !== SESSION_PREFIX.length + 8) throw new KVCorruptionError(`session key of ${key.length} bytes, expected ${SESSION_PREFIX.length + 8}`);
  return new DataView(key.buffer, key.byteOffset, key.byteLength).getBigInt64(SESSION_PREFIX.length, false);
}
