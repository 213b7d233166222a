// KVStateMachine: the replicated state (user data, client sessions, applied index) in the LSM.
// Applies committed entries as atomic LSM batches without the LSM's WAL (the Raft log is the WAL:
// they are durable once flushed to tables), streams snapshots from an LSM snapshot, and installs
// them into a fresh LSM switched atomically.
import * as fs from "node:fs";
import { traceSpan, tracing, wallNow } from "../util/trace.ts";
import { DB, type DBOptions, type DBStats } from "../lsm/index.ts";
import { EntryType, decodeMembership, metaWith, type Entry, type NodeId, type SnapshotMeta } from "../raft/index.ts";
import { ApplyBatch } from "./apply-batch.ts";
import { applyClientWrite, recordSession } from "./apply-command.ts";
import { decodeBatchCommands } from "./batch-command.ts";
import { OP_BATCH, OP_REGISTER, commandFingerprint, decodeCommand } from "./command.ts";
import { KVCorruptionError } from "./errors.ts";
import {
  APPLIED_KEY,
  KEY_COUNT_KEY,
  MEMBERS_KEY,
  decodeApplied,
  decodeKeyCount,
  decodeMembers,
  encodeKeyCount,
  membersRecordMembership,
  sessionKey,
  userKey,
} from "./keys.ts";
import type { AppliedCommand } from "./pending-writes.ts";
import {
  NO_COMMAND,
  RESULT_COMMAND_REUSED,
  RESULT_OK,
  RESULT_SESSION_EXPIRED,
  RESULT_STALE_COMMAND,
  RESULT_TABLE_FULL,
  type ResultCode,
  type Session,
  SessionTable,
} from "./sessions.ts";
import { countUserKeys, installSnapshot, loadSessions, readSnapshot, snapshotMetadata, type SnapshotFormat } from "./snapshot-io.ts";
import { readPointer, removeStaleStates, stateDir, writePointer } from "./state-dir.ts";
import { HISTORY_START_KEY, decodeHistoryStart, encodeHistoryStart, trimOps } from "./history.ts";
import { LAYOUT_KEY, OldLayoutError, VALUE_LAYOUT, decodeLayout, encodeLayout, storedUserValue } from "./revisions.ts";
import { OP_TXN, applyTxn, rememberTxn, retriedTxn, type TxnLimits } from "./txn.ts";

export interface KVStateMachineOptions {
  /** Directory owned by the state machine: `CURRENT` names the live `state-<n>` LSM directory. */
  dir: string;
  /** The cluster's members, recorded in snapshots. */
  members: NodeId[];
  memtableBytes?: number;
  blockCacheBytes?: number;
  /** Further LSM options (table size, mmap, compaction triggers); memtableBytes/blockCacheBytes above win. */
  lsm?: DBOptions;
  /** A session untouched for longer than this (log time: leader timestamps) expires. Default 1 hour. */
  sessionTtlMs?: number;
  /** Registered sessions at most; registrations beyond it are refused. Default 100,000. */
  maxSessions?: number;
  /** Unregistered sessions at most; the least recently used is evicted beyond it. Default 100,000. */
  maxUnregisteredSessions?: number;
  /** Snapshot chunk size. Default 1 MiB. */
  snapshotChunkBytes?: number;
  /**
   * What snapshots this machine sends: "files" (version 4: its table files, the default) or
   * "pairs" (version 3, which receivers of older builds read). Both are installed on receipt.
   */
  snapshotFormat?: SnapshotFormat;
  /**
   * Applied entries not yet durable before a background flush of the LSM starts. Default 5,000:
   * half the Raft driver's default snapshot threshold, so the durable index has moved by the time
   * log compaction asks (else the driver forces a flush inline and its cycle waits for the table).
   */
  syncEveryEntries?: number;
  /**
   * Entry bytes applied since the last flush before a background flush starts, whatever the entry
   * count. Default 32 MiB: half the driver's default byte threshold for log compaction, for the same
   * reason (big Batch entries reach it long before 5,000 entries).
   */
  syncEveryBytes?: number;
  /** Bytes of data changes per LSM batch; a larger apply is split at entry boundaries. Default 4 MiB. */
  maxBatchBytes?: number;
  /** Record every change in the watch history (history.ts). Default true. */
  watchHistory?: boolean;
  /** Bounds of a Txn (and DeleteRange) at apply; the same on every replica. */
  txnLimits?: TxnLimits;
}

/**
 * The machine's writes after open skip the LSM's WAL: the Raft log already holds every entry, and
 * a restart replays it from the applied index the LSM's tables hold. So what a crash keeps is a
 * prefix of the applies (the LSM flushes memtables in order), and the durable applied index moves
 * only with a flush (`sync()`), which is what the driver compacts the log through.
 */
const UNLOGGED = { wal: false } as const;

/**
 * Not the Raft driver's StateMachine itself: apply() returns per-entry results, which the KV
 * server's apply loop (KVServer) hands to the writes waiting for them.
 */
export class KVStateMachine {
  private applied = 0;
  private appliedTerm = 0;
  /** The log's time (ms): the largest leader timestamp applied so far; sessions expire by it. */
  private logTime = 0;
  /** User keys in the applied state (GetStatus.key_count), kept in every batch that changes it. */
  private keyCount = 0;
  /** The oldest revision whose watch-history events this node still holds. */
  private historyFloor = 1;
  private durable = 0;
  /** Entry bytes applied since the last sync started (syncEveryBytes). */
  private unsyncedBytes = 0;
  private syncing: Promise<unknown> | null = null;
  /** Set while the Raft node applied beyond its durable log: no applied index above it may become durable. */
  private durableLimit: number | null = null;

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
      sessionTtlMs: 3_600_000,
      maxSessions: 100_000,
      maxUnregisteredSessions: 100_000,
      snapshotChunkBytes: 1 << 20,
      snapshotFormat: "files",
      syncEveryEntries: 5_000,
      syncEveryBytes: 32 << 20,
      maxBatchBytes: 4 << 20,
      watchHistory: true,
      txnLimits: {},
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
    const sessions = new SessionTable({ ttlMs: full.sessionTtlMs, maxSessions: full.maxSessions, maxUnregisteredSessions: full.maxUnregisteredSessions });
    const machine = new KVStateMachine(full, db, generation, [...full.members], sessions);
    try {
      // What the LSM recovered may sit in files never fsynced; make it durable before calling it so.
      await db.sync();
      await checkLayout(db, stateDir(full.dir, generation));
      await machine.loadFromDb();
    } catch (error) {
      // E.g. a corrupt block met while loading, or a foreign layout: release the directory.
      await db.close().catch(() => {});
      throw error;
    }
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

  /** User keys in the applied state. */
  get userKeyCount(): number {
    return this.keyCount;
  }

  /** Reads a user key from the applied state (callers make it linearizable with ReadIndex). */
  read(key: string): Uint8Array | null {
    this.checkUsable();
    const stored = this.db.getSync(userKey(key));
    return stored === undefined ? null : storedUserValue(stored);
  }

  /** The LSM holding the applied state, for range reads and the watch history (read-only use). */
  get store(): DB {
    this.checkUsable();
    return this.db;
  }

  /** True when every change is recorded in the watch history (the default). */
  get recordsHistory(): boolean {
    return this.options.watchHistory;
  }

  /** The oldest revision whose events the watch history still holds. */
  get historyStart(): number {
    return this.historyFloor;
  }

  /**
   * Drops watch-history events below `revision` (the Raft log's first index: what the log no
   * longer holds, no watcher can be served from either). Runs between applies, in bounded batches.
   */
  trimHistory(revision: number): Promise<void> {
    return this.serialize(async () => {
      this.checkUsable();
      const target = Math.min(revision, this.applied + 1);
      if (target <= this.historyFloor) return;
      for (;;) {
        const { ops, more } = trimOps(this.db, target, 10_000);
        if (!more) ops.push({ type: "put", key: HISTORY_START_KEY, value: encodeHistoryStart(target) });
        if (ops.length > 0) await this.db.write(ops, UNLOGGED);
        if (!more) break;
      }
      this.historyFloor = target;
    });
  }

  /** The LSM's counters and sizes (for metrics). */
  lsmStats(): DBStats {
    return this.db.stats();
  }

  /** Bytes the LSM holds on disk. */
  diskBytes(): number {
    return this.db.stats().diskBytes;
  }

  /** Applies committed entries; resolves with each entry's result, in log order, for the waiting writes. */
  apply(entries: Entry[]): Promise<AppliedCommand[]> {
    return this.serialize(() => this.applyNow(entries));
  }

  /**
   * The Raft node applied entries its own log does not hold durably yet (RaftNode's early apply):
   * until called with null, no applied index above `index` may become durable.
   */
  limitDurableApplied(index: number | null): void {
    this.durableLimit = index;
  }

  /** Makes the applied state durable (a flush of the LSM's memtables) and returns the durable applied index. */
  async sync(): Promise<number> {
    this.checkUsable();
    const index = this.applied;
    if (this.durableLimit !== null && index > this.durableLimit) {
      throw new Error(`invariant: flushing applied index ${index} while the Raft log is durable only through ${this.durableLimit}`);
    }
    const db = this.db;
    this.unsyncedBytes = 0;
    await db.flush();
    // A restore may have swapped the database meanwhile; it set `durable` itself.
    if (db === this.db && index > this.durable) this.durable = index;
    return this.durable;
  }

  async snapshot(): Promise<{ meta: SnapshotMeta; chunks: AsyncIterable<Uint8Array> }> {
    this.checkUsable();
    return readSnapshot(this.db, this.members, this.options.snapshotChunkBytes, this.options.snapshotFormat);
  }

  restore(meta: SnapshotMeta, chunks: AsyncIterable<Uint8Array>): Promise<void> {
    return this.serialize(() => this.restoreNow(meta, chunks));
  }

  /**
   * The configuration recorded by the last restore, at the applied index. RaftNode asks only when
   * this machine is ahead of its log, which happens only between a restore and the log's reset.
   */
  restoredSnapshot(): SnapshotMeta | null {
    const record = this.db.getSync(MEMBERS_KEY);
    if (!record) return null;
    const membership = membersRecordMembership(record);
    if (membership === null) return { index: this.applied, term: this.appliedTerm, members: decodeMembers(record) };
    return metaWith(this.applied, this.appliedTerm, decodeMembership(membership));
  }

  /**
   * Closes the LSM, flushing the applied state. `asCrash` leaves what a crash would (the applies
   * no flush has written are lost; the Raft log replays them): for simulators.
   */
  close(options?: { asCrash?: boolean }): Promise<void> {
    this.closing = true;
    return this.serialize(async () => {
      if (this.closed) return;
      this.closed = true;
      await this.syncing?.catch(() => {});
      // Applies above the durable log (the node stopped during its write) must not be flushed.
      const ahead = this.durableLimit !== null && this.applied > this.durableLimit;
      await this.db.close({ discardUnlogged: options?.asCrash === true || ahead });
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

  /** Applies entries in order: one LSM batch per maxBatchBytes of changes; returns each entry's result. */
  private async applyNow(entries: Entry[]): Promise<AppliedCommand[]> {
    this.checkUsable();
    const results: AppliedCommand[] = [];
    let batch = new ApplyBatch(this.db, this.applied, this.appliedTerm, this.logTime, this.options.watchHistory, this.historyFloor);
    for (const entry of entries) {
      // Entries at or below the applied index were applied before a restart: never twice.
      if (entry.index <= batch.index) continue;
      if (entry.index !== batch.index + 1) {
        throw new Error(`apply gap: the state machine is at index ${batch.index} but was handed entry ${entry.index}`);
      }
      batch.index = entry.index;
      batch.term = entry.term;
      this.unsyncedBytes += entry.data.length;
      results.push(this.applyEntry(entry, batch));
      if (batch.bytes >= this.options.maxBatchBytes) {
        await this.commit(batch);
        batch = new ApplyBatch(this.db, batch.index, batch.term, batch.logTime, this.options.watchHistory, this.historyFloor);
      }
    }
    await this.commit(batch);
    this.startBackgroundSync();
    return results;
  }

  /**
   * One entry: a Noop, a session registration, a batch of client writes, a Txn, or one client
   * write (apply-command.ts: exactly-once through its session).
   */
  private applyEntry(entry: Entry, batch: ApplyBatch): AppliedCommand {
    const { index, term } = entry;
    if (entry.type === EntryType.Noop || entry.data.length === 0) return { index, term, clientId: 0n, commandId: 0n, result: RESULT_OK };
    const command = decodeCommand(entry.data, index);
    const { clientId, commandId } = command;
    const done = (result: ResultCode): AppliedCommand => ({ index, term, clientId, commandId, result });
    this.advanceLogTime(command.timestamp, batch);
    if (command.op === OP_REGISTER) return done(this.register(index, batch));
    if (command.op === OP_BATCH) {
      // Each command in order, each exactly-once through its own session; one result each.
      const commands = decodeBatchCommands(command, index);
      const results = new Uint8Array(commands.length);
      for (let i = 0; i < commands.length; i++) results[i] = applyClientWrite(this.sessions, commands[i]!, batch, index);
      return { ...done(RESULT_OK), batch: results };
    }
    if (command.op !== OP_TXN) return done(applyClientWrite(this.sessions, command, batch, index));
    if (clientId === 0n) return { ...done(RESULT_OK), txn: applyTxn(command, batch, index, this.options.txnLimits) };
    const session = this.sessions.get(clientId);
    if (command.registered && session?.registered !== true) return done(RESULT_SESSION_EXPIRED);
    const fingerprint = commandFingerprint(command);
    if (session !== undefined && commandId <= session.commandId) {
      if (commandId < session.commandId) return done(RESULT_STALE_COMMAND);
      if (session.fingerprint !== 0 && session.fingerprint !== fingerprint) return done(RESULT_COMMAND_REUSED);
      // A retry of a Txn already applied: answer it, change nothing but the session's age.
      recordSession(this.sessions, { ...session, lastIndex: index, lastTime: batch.logTime }, batch);
      return { ...done(session.result), txn: retriedTxn(batch, clientId, commandId) };
    }
    // A Txn's answer does not fit a result code: it is kept beside the session for a retry.
    const txn = applyTxn(command, batch, index, this.options.txnLimits);
    recordSession(this.sessions, { clientId, commandId, lastIndex: index, lastTime: batch.logTime, result: RESULT_OK, registered: session?.registered ?? false, fingerprint }, batch);
    rememberTxn(batch, clientId, commandId, txn);
    return { ...done(RESULT_OK), txn };
  }

  /** A leader timestamp moves the log's time forward (never back) and expires idle sessions. */
  private advanceLogTime(timestamp: number, batch: ApplyBatch): void {
    if (timestamp <= batch.logTime) return;
    batch.logTime = timestamp;
    for (const expired of this.sessions.expire(timestamp)) batch.setSession(expired.clientId, null);
  }

  /** RegisterSession: the session's id is the entry's index; refused when every slot is taken. */
  private register(index: number, batch: ApplyBatch): ResultCode {
    if (!this.sessions.canRegister()) return RESULT_TABLE_FULL;
    const session: Session = { clientId: BigInt(index), commandId: NO_COMMAND, lastIndex: index, lastTime: batch.logTime, result: RESULT_OK, registered: true, fingerprint: 0 };
    recordSession(this.sessions, session, batch);
    return RESULT_OK;
  }

  /** Writes one batch with its applied index; a failed write stops the machine (memory moved on). */
  private async commit(batch: ApplyBatch): Promise<void> {
    if (batch.isEmptySince(this.applied)) return;
    const keyCount = this.keyCount + batch.keyCountDelta;
    try {
      await this.db.write(batch.finish(keyCount), UNLOGGED);
    } catch (error) {
      // The in-memory session table already moved on; only a restart can reconcile it.
      this.failure = error;
      throw error;
    }
    this.applied = batch.index;
    this.appliedTerm = batch.term;
    this.logTime = batch.logTime;
    this.keyCount = keyCount;
  }

  /** Every syncEveryEntries applied entries or syncEveryBytes of them, a background flush moves the durable applied index. */
  private startBackgroundSync(): void {
    if (this.syncing !== null) return;
    if (this.applied - this.durable < this.options.syncEveryEntries && this.unsyncedBytes < this.options.syncEveryBytes) return;
    // Applied ahead of the node's durable log: flushing now could leave the machine ahead of the
    // log after a crash. The next apply after the log write tries again.
    if (this.durableLimit !== null && this.applied > this.durableLimit) return;
    const traced = tracing ? wallNow() : 0;
    this.syncing = this.sync()
      .then((durable) => {
        if (tracing) traceSpan("sm-flush", traced, durable);
        return durable;
      })
      .catch((error) => {
        this.failure ??= error;
      })
      .finally(() => {
        this.syncing = null;
      });
  }

  private async restoreNow(meta: SnapshotMeta, chunks: AsyncIterable<Uint8Array>): Promise<void> {
    this.checkUsable();
    const generation = this.generation + 1;
    const dir = stateDir(this.options.dir, generation);
    fs.rmSync(dir, { recursive: true, force: true });
    // Version 4 ships the leader's table files; version 3 streams pairs in key order, built into
    // tables directly. Either way no WAL or memtable on the way.
    let db: DB | null = null;
    try {
      const installed = await installSnapshot(dir, lsmOptions(this.options), meta, chunks, () => this.closing);
      db = installed.db;
      // A fresh history: events before the snapshot are not in the stream (shipped files may hold
      // the sender's; they lie below the floor and are trimmed with the log).
      const history = { type: "put" as const, key: HISTORY_START_KEY, value: encodeHistoryStart(meta.index + 1) };
      await db.write([...snapshotMetadata(meta, installed.logTime, installed.keys), { type: "put", key: LAYOUT_KEY, value: encodeLayout() }, history]);
      await db.sync();
      // The switch: after this rename the new state is the state, crash or not.
      writePointer(this.options.dir, generation);
    } catch (error) {
      if (db !== null) await db.close().catch(() => {});
      fs.rmSync(dir, { recursive: true, force: true });
      throw error;
    }
    const old = this.db;
    const oldDir = stateDir(this.options.dir, this.generation);
    this.db = db;
    this.generation = generation;
    await this.loadFromDb();
    this.durable = this.applied;
    // Its directory goes next: nothing of it needs flushing.
    await old.close({ discardUnlogged: true }).catch(() => {});
    fs.rmSync(oldDir, { recursive: true, force: true });
  }

  /** Reloads applied index, members and sessions from the current database. */
  private async loadFromDb(): Promise<void> {
    const appliedRecord = this.db.getSync(APPLIED_KEY);
    const { index, term, logTime } = appliedRecord ? decodeApplied(appliedRecord) : { index: 0, term: 0, logTime: 0 };
    this.applied = index;
    this.appliedTerm = term;
    this.logTime = logTime;
    // Callers sync before loading (open) or loaded a synced database (restore).
    this.durable = index;
    this.unsyncedBytes = 0;
    const membersRecord = this.db.getSync(MEMBERS_KEY);
    if (membersRecord) this.members = decodeMembers(membersRecord);
    const keyCountRecord = this.db.getSync(KEY_COUNT_KEY);
    if (keyCountRecord) {
      this.keyCount = decodeKeyCount(keyCountRecord);
    } else {
      // A state written before the key count was kept: count once, and keep it from now on.
      this.keyCount = await countUserKeys(this.db);
      await this.db.write([{ type: "put", key: KEY_COUNT_KEY, value: encodeKeyCount(this.keyCount) }]);
    }
    const historyRecord = this.db.getSync(HISTORY_START_KEY);
    this.historyFloor = historyRecord ? decodeHistoryStart(historyRecord) : index + 1;
    const dropped = this.sessions.load(await loadSessions(this.db));
    if (dropped.length > 0) {
      // A table written under a larger maxSessions: trim it the same way on every replica.
      await this.db.write(dropped.map((s) => ({ type: "del" as const, key: sessionKey(s.clientId) })));
    }
  }
}

/**
 * Refuses a state whose user values were written without revisions (layout 1); marks an empty or
 * new state as layout 2. An older build's state with no keys has nothing to convert.
 */
async function checkLayout(db: DB, dir: string): Promise<void> {
  const record = db.getSync(LAYOUT_KEY);
  if (record !== undefined) {
    const layout = decodeLayout(record);
    if (layout !== VALUE_LAYOUT) {
      throw new KVCorruptionError(`the KV state in ${dir} has value layout ${layout}; this build reads layout ${VALUE_LAYOUT}`);
    }
    return;
  }
  const keys = await countUserKeys(db);
  if (keys > 0) throw new OldLayoutError(dir, keys);
  await db.write([{ type: "put", key: LAYOUT_KEY, value: encodeLayout() }]);
}

function lsmOptions(options: Required<KVStateMachineOptions>): DBOptions {
  return { ...options.lsm, memtableBytes: options.memtableBytes, blockCacheBytes: options.blockCacheBytes };
}
