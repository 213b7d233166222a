// One apply's LSM batch in the making: the data changes, session changes and key-count change of
// consecutive entries, written with their applied index as one atomic batch. Reads see the
// batch's own earlier writes.
import type { BatchOp, DB } from "../lsm/index.ts";
import { APPLIED_KEY, KEY_COUNT_KEY, encodeApplied, encodeKeyCount, sessionKey } from "./keys.ts";
import { encodeSession, type Session } from "./sessions.ts";

const EMPTY = new Uint8Array(0);

export class ApplyBatch {
  private readonly ops: BatchOp[] = [];
  /** Bytes of data changes so far (a large apply is split into batches of about maxBatchBytes). */
  bytes = 0;
  /** Keys created minus keys deleted by this batch. */
  keyCountDelta = 0;
  /** Values written earlier in this batch, by internal key (latin1 string of its bytes); null = deleted. */
  private readonly written = new Map<string, Uint8Array | null>();
  /** Session changes: the new record, or null for a deletion. */
  private readonly sessionChanges = new Map<bigint, Session | null>();

  constructor(
    private readonly db: DB,
    /** The index and term of the last entry in this batch (the state's applied index once written). */
    public index: number,
    public term: number,
  ) {}

  /** The value of an internal user key as of this point of the batch. */
  current(key: Uint8Array): Uint8Array | null {
    const pending = this.written.get(latin1(key));
    if (pending !== undefined) return pending;
    return this.db.getSync(key) ?? null;
  }

  put(key: Uint8Array, value: Uint8Array): void {
    if (this.current(key) === null) this.keyCountDelta++;
    this.set(key, value);
  }

  append(key: Uint8Array, suffix: Uint8Array): void {
    const old = this.current(key);
    if (old === null) this.keyCountDelta++;
    const base = old ?? EMPTY;
    const value = new Uint8Array(base.length + suffix.length);
    value.set(base, 0);
    value.set(suffix, base.length);
    this.set(key, value);
  }

  /** Deletes `key`; true when it existed. */
  delete(key: Uint8Array): boolean {
    const existed = this.current(key) !== null;
    if (existed) this.keyCountDelta--;
    this.ops.push({ type: "del", key });
    this.written.set(latin1(key), null);
    this.bytes += key.length;
    return existed;
  }

  setSession(clientId: bigint, session: Session | null): void {
    this.sessionChanges.set(clientId, session);
  }

  /** True when no entry was added since `appliedIndex`: nothing to write. */
  isEmptySince(appliedIndex: number): boolean {
    return this.index === appliedIndex;
  }

  /** The batch's LSM operations: data, sessions, then the key count and applied index. */
  finish(keyCount: number): BatchOp[] {
    for (const [clientId, session] of this.sessionChanges) {
      this.ops.push(session === null ? { type: "del", key: sessionKey(clientId) } : { type: "put", key: sessionKey(clientId), value: encodeSession(session) });
    }
    if (this.keyCountDelta !== 0) this.ops.push({ type: "put", key: KEY_COUNT_KEY, value: encodeKeyCount(keyCount) });
    this.ops.push({ type: "put", key: APPLIED_KEY, value: encodeApplied(this.index, this.term) });
    return this.ops;
  }

  private set(key: Uint8Array, value: Uint8Array): void {
    this.ops.push({ type: "put", key, value });
    this.written.set(latin1(key), value);
    this.bytes += key.length + value.length;
  }
}

function latin1(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("latin1");
}
