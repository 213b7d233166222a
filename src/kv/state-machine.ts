// KVStateMachine: the replicated state (user data, client sessions, applied index) in the LSM.
// Applies committed entries as atomic LSM batches without fsync (the Raft log is the WAL),
// streams snapshots from an LSM snapshot, and installs them into a fresh LSM switched atomically.
import * as fs from "node:fs";
import * as path from "node:path";
import { DB, type DBIteratorOptions, type DBOptions, type DBStats } from "../lsm/index.ts";
import { EntryType, type Entry, type NodeId, type SnapshotMeta, type StateMachine } from "../raft/index.ts";
import { OP_APPEND, OP_CLOSE, OP_DELETE, OP_PUT, decodeCommand } from "./command.ts";
import { KVCorruptionError } from "./errors.ts";
import {
  APPLIED_KEY,
  MEMBERS_KEY,
  SESSION_END,
  SESSION_PREFIX,
  USER_END,
  USER_START,
  decodeApplied,
  decodeMembers,
  encodeApplied,
  encodeMembers,
  sessionKey,
  userKey,
  userKeyFromBytes,
} from "./keys.ts";
import {
  RESULT_NO_KEY,
  RESULT_OK,
  type ResultCode,
  type Session,
  SessionTable,
  decodeSession,
  encodeSession,
} from "./sessions.ts";
import { SNAPSHOT_FORMAT_VERSION, decodeSnapshot, encodeSnapshot } from "./snapshot-stream.ts";

export interface KVStateMachineOptions {
  /** Directory owned by the state machine: `CURRENT` names the live `state-<n>` LSM directory. */
  dir: string;
  /** The cluster's members, recorded in snapshots. */
  members: NodeId[];
  memtableBytes?: number;
  blockCacheBytes?: number;
  /** Further LSM options (table size, mmap, compaction triggers); memtableBytes/blockCacheBytes above win. */
  lsm?: DBOptions;
  /** A session untouched for more than this many log entries expires. Default 1,000,000. */
  sessionTtlEntries?: number;
  /** Live sessions at most; the least recently used is evicted beyond it. Default 100,000. */
  maxSessions?: number;
  /** Snapshot chunk size. Default 1 MiB. */
  snapshotChunkBytes?: number;
  /** Applied entries not yet synced before a background `db.sync()` starts. Default 10,000. */
  syncEveryEntries?: number;
  /** Bytes of data changes per LSM batch; a larger apply is split at entry boundaries. Default 4 MiB. */
  maxBatchBytes?: number;
}

/** The outcome of one applied entry, for the server's waiters (Noop entries have no client). */
export interface AppliedCommand {
  index: number;
  term: number;
  result: ResultCode;
}

export interface ApplyListener {
  applied(commands: AppliedCommand[]): void;
  restored(meta: SnapshotMeta): void;
}

type BatchOp = { type: "put"; key: Uint8Array; value: Uint8Array } | { type: "del"; key: Uint8Array };

const POINTER_FILE = "CURRENT";
const STATE_DIR = /^state-(\d+)$/;
const EMPTY = new Uint8Array(0);

export class KVStateMachine implements StateMachine {
  listener: ApplyListener | null = null;

  private applied = 0;
  private appliedTerm = 0;
  private durable = 0;
  private syncing: Promise<unknown> | null = null;

  /** True while a background sync of the LSM is running (simulations wait for it). */
  get syncInFlight(): boolean {
    return this.syncing !== null;
  }
  /** Set when an LSM write failed after memory changed: memory and disk may disagree; stop. */
  private failure: unknown = null;
  private closed = false;
  /** close() was called: an install in progress gives up at its next record. */
  private closing = false;
  /** apply, restore and close run one at a time. */
  private exclusive: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly options: Required<KVStateMachineOptions>,
    private db: DB,
    private generation: number,
    private members: NodeId[],
    private readonly sessions: SessionTable,
  ) {}

  static async open(options: KVStateMachineOptions): Promise<KVStateMachine> {
    const full: Required<KVStateMachineOptions> = {
      memtableBytes: 4 << 20,
      blockCacheBytes: 8 << 20,
      sessionTtlEntries: 1_000_000,
      maxSessions: 100_000,
      snapshotChunkBytes: 1 << 20,
      syncEveryEntries: 10_000,
      maxBatchBytes: 4 << 20,
      lsm: {},
      // An option given as undefined means "the default", not "none".
      ...(Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as KVStateMachineOptions),
    };
    fs.mkdirSync(full.dir, { recursive: true });
    let generation = readPointer(full.dir);
    if (generation === null) {
      generation = 1;
      writePointer(full.dir, generation);
    }
    removeStaleStates(full.dir, generation);
    const db = await DB.open(stateDir(full.dir, generation), lsmOptions(full));
    const sessions = new SessionTable({ ttlEntries: full.sessionTtlEntries, maxSessions: full.maxSessions });
    const machine = new KVStateMachine(full, db, generation, [...full.members], sessions);
    // What the LSM recovered may sit in files never fsynced; make it durable before calling it so.
    await db.sync();
    await machine.loadFromDb();
    return machine;
  }

  lastApplied(): number {
    return this.applied;
  }

  lastAppliedTerm(): number {
    return this.appliedTerm;
  }

  durableAppliedIndex(): number {
    return this.durable;
  }

  /** The session of `clientId`, for answering a retried write without proposing it again. */
  session(clientId: bigint): Session | undefined {
    return this.sessions.get(clientId);
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  /** Reads a user key from the applied state (callers make it linearizable with ReadIndex). */
  read(key: string): Uint8Array | null {
    this.checkUsable();
    return this.db.getSync(userKey(key)) ?? null;
  }

  /** Bytes the LSM holds on disk. */
  /** The LSM's counters and sizes (for metrics). */
  lsmStats(): DBStats {
    return this.db.stats();
  }

  diskBytes(): number {
    return this.db.stats().diskBytes;
  }

  apply(entries: Entry[]): Promise<void> {
    return this.serialize(() => this.applyNow(entries));
  }

  async sync(): Promise<number> {
    this.checkUsable();
    const index = this.applied;
    const db = this.db;
    await db.sync();
    // A restore may have swapped the database meanwhile; it set `durable` itself.
    if (db === this.db && index > this.durable) this.durable = index;
    return this.durable;
  }

  async snapshot(): Promise<{ meta: SnapshotMeta; chunks: AsyncIterable<Uint8Array> }> {
    this.checkUsable();
    const db = this.db;
    const snap = db.snapshot();
    let handedOver = false;
    try {
      // Everything, the applied index included, is read through the one LSM snapshot.
      const appliedRecord = db.getSync(APPLIED_KEY, { snapshot: snap });
      const { index, term } = appliedRecord ? decodeApplied(appliedRecord) : { index: 0, term: 0 };
      const membersRecord = db.getSync(MEMBERS_KEY, { snapshot: snap });
      const members = membersRecord ? decodeMembers(membersRecord) : [...this.members];
      const meta: SnapshotMeta = { index, term, members };
      const header = { version: SNAPSHOT_FORMAT_VERSION, index, term, members };
      const chunkBytes = this.options.snapshotChunkBytes;
      async function* sessions(): AsyncGenerator<Session> {
        for await (const [key, value] of scan(db, { gte: SESSION_PREFIX, lt: SESSION_END, snapshot: snap })) {
          yield decodeSession(clientIdOfSessionKey(key), value);
        }
      }
      async function* pairs(): AsyncGenerator<[Uint8Array, Uint8Array]> {
        for await (const [key, value] of scan(db, { gte: USER_START, lt: USER_END, snapshot: snap })) {
          yield [key.subarray(1), value];
        }
      }
      handedOver = true;
      return { meta, chunks: releasingStream(encodeSnapshot(header, sessions(), pairs(), chunkBytes), () => snap.release()) };
    } finally {
      // The stream owns the LSM snapshot from here; it releases it when finished or abandoned.
      if (!handedOver) snap.release();
    }
  }

  restore(meta: SnapshotMeta, chunks: AsyncIterable<Uint8Array>): Promise<void> {
    return this.serialize(() => this.restoreNow(meta, chunks));
  }

  close(): Promise<void> {
    this.closing = true;
    return this.serialize(async () => {
      if (this.closed) return;
      this.closed = true;
      await this.syncing?.catch(() => {});
      await this.db.close();
    });
  }

  private serialize<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.exclusive.then(fn);
    this.exclusive = run.catch(() => {});
    return run;
  }

  private checkUsable(): void {
    if (this.closed) throw new Error("the KV state machine is closed");
    if (this.failure !== null) {
      throw new Error(`the KV state machine stopped after a storage failure; restart the node to recover from its log`, {
        cause: this.failure,
      });
    }
  }

  private async applyNow(entries: Entry[]): Promise<void> {
    this.checkUsable();
    let ops: BatchOp[] = [];
    let opBytes = 0;
    // Values written earlier in the current batch, by internal key (latin1 string of its bytes).
    let pendingValues = new Map<string, Uint8Array | null>();
    // Session changes of the current batch: the new record, or null for a deletion.
    let sessionChanges = new Map<bigint, Session | null>();
    let results: AppliedCommand[] = [];
    let index = this.applied;
    let term = this.appliedTerm;

    const flush = async (): Promise<void> => {
      if (index === this.applied) return;
      for (const [clientId, session] of sessionChanges) {
        ops.push(session === null ? { type: "del", key: sessionKey(clientId) } : { type: "put", key: sessionKey(clientId), value: encodeSession(session) });
      }
      ops.push({ type: "put", key: APPLIED_KEY, value: encodeApplied(index, term) });
      try {
        await this.db.write(ops);
      } catch (error) {
        // The in-memory session table already moved on; only a restart can reconcile it.
        this.failure = error;
        throw error;
      }
      this.applied = index;
      this.appliedTerm = term;
      const done = results;
      ops = [];
      opBytes = 0;
      pendingValues = new Map();
      sessionChanges = new Map();
      results = [];
      this.listener?.applied(done);
    };

    // Only a batch with an Append or a Delete reads what it wrote earlier: a Put-only batch (the
    // common case) skips the per-key string conversion of the pending-values index.
    const readsOwnWrites = entries.some(
      (entry) => entry.type !== EntryType.Noop && entry.data.length > 1 && (entry.data[1] === OP_APPEND || entry.data[1] === OP_DELETE),
    );
    const current = (key: Uint8Array): Uint8Array | null => {
      const pending = pendingValues.get(latin1(key));
      if (pending !== undefined) return pending;
      return this.db.getSync(key) ?? null;
    };

    for (const entry of entries) {
      // Entries at or below the applied index were applied before a restart: never twice.
      if (entry.index <= index) continue;
      if (entry.index !== index + 1) {
        throw new Error(`apply gap: the state machine is at index ${index} but was handed entry ${entry.index}`);
      }
      index = entry.index;
      term = entry.term;
      for (const expired of this.sessions.expire(index)) sessionChanges.set(expired.clientId, null);
      if (entry.type === EntryType.Noop || entry.data.length === 0) {
        results.push({ index, term, result: RESULT_OK });
        continue;
      }
      const command = decodeCommand(entry.data, index);
      const session = this.sessions.get(command.clientId);
      if (command.op === OP_CLOSE) {
        if (this.sessions.remove(command.clientId)) sessionChanges.set(command.clientId, null);
        results.push({ index, term, result: RESULT_OK });
        continue;
      }
      let result: ResultCode;
      if (session !== undefined && command.commandId <= session.commandId) {
        // A retry of a write already applied: answer it, change nothing but the session's age.
        result = command.commandId === session.commandId ? session.result : RESULT_OK;
        this.recordSession({ ...session, lastIndex: index }, sessionChanges);
        results.push({ index, term, result });
        continue;
      }
      const key = userKeyFromBytes(command.key);
      switch (command.op) {
        case OP_PUT: {
          const value = command.value.slice();
          ops.push({ type: "put", key, value });
          if (readsOwnWrites) pendingValues.set(latin1(key), value);
          opBytes += key.length + value.length;
          result = RESULT_OK;
          break;
        }
        case OP_APPEND: {
          const old = current(key) ?? EMPTY;
          const value = new Uint8Array(old.length + command.value.length);
          value.set(old, 0);
          value.set(command.value, old.length);
          ops.push({ type: "put", key, value });
          pendingValues.set(latin1(key), value);
          opBytes += key.length + value.length;
          result = RESULT_OK;
          break;
        }
        case OP_DELETE: {
          result = current(key) === null ? RESULT_NO_KEY : RESULT_OK;
          ops.push({ type: "del", key });
          pendingValues.set(latin1(key), null);
          opBytes += key.length;
          break;
        }
        default:
          throw new KVCorruptionError(`log entry ${index}: op code ${command.op} cannot be applied`);
      }
      this.recordSession({ clientId: command.clientId, commandId: command.commandId, lastIndex: index, result }, sessionChanges);
      results.push({ index, term, result });
      if (opBytes >= this.options.maxBatchBytes) await flush();
    }
    await flush();
    if (this.applied - this.durable >= this.options.syncEveryEntries && this.syncing === null) {
      this.syncing = this.sync()
        .catch((error) => {
          this.failure ??= error;
        })
        .finally(() => {
          this.syncing = null;
        });
    }
  }

  private recordSession(session: Session, changes: Map<bigint, Session | null>): void {
    changes.set(session.clientId, session);
    for (const evicted of this.sessions.record(session)) changes.set(evicted.clientId, null);
  }

  private async restoreNow(meta: SnapshotMeta, chunks: AsyncIterable<Uint8Array>): Promise<void> {
    this.checkUsable();
    const generation = this.generation + 1;
    const dir = stateDir(this.options.dir, generation);
    fs.rmSync(dir, { recursive: true, force: true });
    const db = await DB.open(dir, lsmOptions(this.options));
    try {
      // Batches of about one chunk: the install holds O(chunk) bytes, whatever the state's size.
      const batchBytes = Math.min(this.options.maxBatchBytes, this.options.snapshotChunkBytes);
      await fillFromSnapshot(db, meta, chunks, batchBytes, () => this.closing);
      await db.sync();
      // The switch: after this rename the new state is the state, crash or not.
      writePointer(this.options.dir, generation);
    } catch (error) {
      await db.close().catch(() => {});
      fs.rmSync(dir, { recursive: true, force: true });
      throw error;
    }
    const old = this.db;
    const oldDir = stateDir(this.options.dir, this.generation);
    this.db = db;
    this.generation = generation;
    await this.loadFromDb();
    this.durable = this.applied;
    await old.close().catch(() => {});
    fs.rmSync(oldDir, { recursive: true, force: true });
    this.listener?.restored({ index: this.applied, term: this.appliedTerm, members: [...this.members] });
  }

  /** Reloads applied index, members and sessions from the current database. */
  private async loadFromDb(): Promise<void> {
    const appliedRecord = this.db.getSync(APPLIED_KEY);
    const { index, term } = appliedRecord ? decodeApplied(appliedRecord) : { index: 0, term: 0 };
    this.applied = index;
    this.appliedTerm = term;
    // Callers sync before loading (open) or loaded a synced database (restore).
    this.durable = index;
    const membersRecord = this.db.getSync(MEMBERS_KEY);
    if (membersRecord) this.members = decodeMembers(membersRecord);
    const loaded: Session[] = [];
    for await (const [key, value] of this.db.iterator({ gte: SESSION_PREFIX, lt: SESSION_END })) {
      loaded.push(decodeSession(clientIdOfSessionKey(key), value));
    }
    const dropped = this.sessions.load(loaded);
    if (dropped.length > 0) {
      // A table written under a larger maxSessions: trim it the same way on every replica.
      await this.db.write(dropped.map((s): BatchOp => ({ type: "del", key: sessionKey(s.clientId) })));
    }
  }
}

/** Writes a snapshot stream into an empty database; throws (leaving it partial) on any defect. */
async function fillFromSnapshot(
  db: DB,
  meta: SnapshotMeta,
  chunks: AsyncIterable<Uint8Array>,
  maxBatchBytes: number,
  closing: () => boolean,
): Promise<void> {
  let batch: BatchOp[] = [];
  let batchBytes = 0;
  let complete = false;
  for await (const record of decodeSnapshot(chunks)) {
    if (closing()) throw new Error("snapshot install abandoned: the state machine is closing");
    switch (record.type) {
      case "header":
        if (record.header.index !== meta.index || record.header.term !== meta.term) {
          throw new KVCorruptionError(
            `snapshot stream is of index ${record.header.index} term ${record.header.term}, but the install asked for index ${meta.index} term ${meta.term}`,
          );
        }
        break;
      case "sessions":
        for (const s of record.sessions) batch.push({ type: "put", key: sessionKey(s.clientId), value: encodeSession(s) });
        batchBytes += record.sessions.length * 32;
        break;
      case "pairs":
        for (const [key, value] of record.pairs) {
          batch.push({ type: "put", key: userKeyFromBytes(key), value });
          batchBytes += key.length + value.length + 1;
        }
        break;
      case "trailer":
        complete = true;
        break;
    }
    if (batchBytes >= maxBatchBytes) {
      await db.write(batch);
      batch = [];
      batchBytes = 0;
    }
  }
  if (!complete) throw new KVCorruptionError("snapshot stream ended without a trailer");
  batch.push({ type: "put", key: APPLIED_KEY, value: encodeApplied(meta.index, meta.term) });
  batch.push({ type: "put", key: MEMBERS_KEY, value: encodeMembers(meta.members) });
  await db.write(batch);
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
async function* scan(db: DB, options: DBIteratorOptions): AsyncGenerator<[Uint8Array, Uint8Array]> {
  const iterator = db.iterator(options);
  try {
    for (let entry = iterator.read(); entry !== undefined; entry = iterator.read()) yield entry;
  } finally {
    iterator.close();
  }
}

function lsmOptions(options: Required<KVStateMachineOptions>): DBOptions {
  return { ...options.lsm, memtableBytes: options.memtableBytes, blockCacheBytes: options.blockCacheBytes };
}

function stateDir(dir: string, generation: number): string {
  return path.join(dir, `state-${generation}`);
}

function readPointer(dir: string): number | null {
  let text: string;
  try {
    text = fs.readFileSync(path.join(dir, POINTER_FILE), "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw error;
  }
  const match = STATE_DIR.exec(text.trim());
  if (match === null) {
    throw new KVCorruptionError(`${path.join(dir, POINTER_FILE)} should name a state-<n> directory but holds ${JSON.stringify(text.slice(0, 40))}`);
  }
  return Number(match[1]);
}

/** Atomically points CURRENT at state-<generation>: write a temp file, fsync, rename, fsync the dir. */
function writePointer(dir: string, generation: number): void {
  const tmp = path.join(dir, `${POINTER_FILE}.tmp`);
  const fd = fs.openSync(tmp, "w");
  try {
    fs.writeSync(fd, `state-${generation}\n`);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, path.join(dir, POINTER_FILE));
  const dirFd = fs.openSync(dir, "r");
  try {
    fs.fsyncSync(dirFd);
  } finally {
    fs.closeSync(dirFd);
  }
}

/** Removes state directories other than the live one: leftovers of an interrupted install. */
function removeStaleStates(dir: string, live: number): void {
  for (const name of fs.readdirSync(dir)) {
    const match = STATE_DIR.exec(name);
    if ((match !== null && Number(match[1]) !== live) || name === `${POINTER_FILE}.tmp`) {
      fs.rmSync(path.join(dir, name), { recursive: true, force: true });
    }
  }
}

function clientIdOfSessionKey(key: Uint8Array): bigint {
  if (key.length !== SESSION_PREFIX.length + 8) throw new KVCorruptionError(`session key of ${key.length} bytes, expected ${SESSION_PREFIX.length + 8}`);
  return new DataView(key.buffer, key.byteOffset, key.byteLength).getBigInt64(SESSION_PREFIX.length, false);
}

function latin1(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("latin1");
}
