// Moving a snapshot between an LSM and a chunk stream: reading one out of a consistent LSM snapshot
// (released exactly once), and loading one into a fresh LSM as sorted runs (BulkLoader).
import type { BulkLoader } from "../lsm/bulk-load.ts";
import type { BatchOp, DB, DBIteratorOptions, LsmIterator } from "../lsm/index.ts";
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
import { SNAPSHOT_FORMAT_VERSION, decodeSnapshot, encodeSnapshot, type EntryPump } from "./snapshot-stream.ts";

/** Entries per call into the LSM iterator while streaming pairs (it stops earlier at each full frame). */
const PUMP_ENTRIES = 4096;

/** The state of `db` as one snapshot stream; everything, the applied index included, from one LSM snapshot. */
export function readSnapshot(db: DB, fallbackMembers: NodeId[], chunkBytes: number): { meta: SnapshotMeta; chunks: AsyncIterable<Uint8Array> } {
  const snap = db.snapshot();
  let handedOver = false;
  try {
    const appliedRecord = db.getSync(APPLIED_KEY, { snapshot: snap });
    const { index, term, logTime } = appliedRecord ? decodeApplied(appliedRecord) : { index: 0, term: 0, logTime: 0 };
    const membersRecord = db.getSync(MEMBERS_KEY, { snapshot: snap });
    const members = membersRecord ? decodeMembers(membersRecord) : [...fallbackMembers];
    const meta: SnapshotMeta = { index, term, members };
    const header = { version: SNAPSHOT_FORMAT_VERSION, index, term, logTime, members };
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
        snap.release();
      }) };
  } finally {
    // The stream owns the LSM snapshot from here; it releases it when finished or abandoned.
    if (!handedOver) snap.release();
  }
}

/**
 * Loads a snapshot stream into a bulk loader: the stream comes in key order within each kind of
 * record (sessions, Txn answers, pairs), so each kind is one sorted run written straight into
 * tables. Throws on any defect (the caller aborts the load). Returns what the metadata needs.
 */
export async function loadFromSnapshot(
  loader: BulkLoader,
  meta: SnapshotMeta,
  chunks: AsyncIterable<Uint8Array>,
  closing: () => boolean,
): Promise<{ logTime: number; keys: number }> {
  let complete = false;
  let keys = 0;
  let logTime = 0;
  let run = "";
  const startRun = (kind: string) => {
    if (run !== kind) loader.endRun();
    run = kind;
  };
  // One reusable buffer for user keys (the 0x01 prefix + the stream's key): the loader copies.
  let userKey = new Uint8Array(256);
  for await (const record of decodeSnapshot(chunks)) {
    if (closing()) throw new Error("snapshot install abandoned: the state machine is closing");
    switch (record.type) {
      case "header":
        if (record.header.index !== meta.index || record.header.term !== meta.term) {
          throw new KVCorruptionError(
            `snapshot stream is of index ${record.header.index} term ${record.header.term}, but the install asked for index ${meta.index} term ${meta.term}`,
          );
        }
        logTime = record.header.logTime;
        break;
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
    }
    await loader.settle();
  }
  if (!complete) throw new KVCorruptionError("snapshot stream ended without a trailer");
  return { logTime, keys };
}

/** The metadata records written over a loaded snapshot: applied index, configuration, key count. */
export function snapshotMetadata(meta: SnapshotMeta, logTime: number, keys: number): BatchOp[] {
  const extras = (meta.learners?.length ?? 0) > 0 || Object.keys(meta.addresses ?? {}).length > 0;
  return [
    { type: "put", key: APPLIED_KEY, value: encodeApplied(meta.index, meta.term, logTime) },
    { type: "put", key: MEMBERS_KEY, value: encodeMembers(meta.members, extras ? encodeMembership(membershipOfMeta(meta)) : undefined) },
    { type: "put", key: KEY_COUNT_KEY, value: encodeKeyCount(keys) },
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
