// Writes waiting for their answer, from before they are proposed until their entry applies (or a
// deadline, a lost leadership, a snapshot install or close answers them). The apply loop hands
// each apply's per-entry results here; nothing calls back up into the KV server.
import type { Clock } from "../raft/index.ts";
import { DeadlineQueue, type Deadline } from "./deadlines.ts";
import { TIMEOUT, WRONG_LEADER, type CommandReply } from "./replies.ts";
import type { ResultCode } from "./sessions.ts";
import type { TxnResult } from "./txn-types.ts";

/** The outcome of one applied entry (Noop entries carry client 0, command 0). */
export interface AppliedCommand {
  index: number;
  term: number;
  clientId: bigint;
  commandId: bigint;
  result: ResultCode;
  /** A Txn's (or DeleteRange's) answer; absent on a retry whose answer is no longer kept. */
  txn?: TxnResult;
  /** A batch entry's result code of each command, in entry order. */
  batch?: Uint8Array;
}

/** How a proposed write ended: its entry applied (with its result), or a reply without one. */
export type WriteOutcome = AppliedCommand | CommandReply;

export function isApplied(outcome: WriteOutcome): outcome is AppliedCommand {
  return (outcome as AppliedCommand).result !== undefined;
}

/** One proposed write. Its place in the log (index, term) is known once propose returns. */
class WriteWaiter implements Deadline {
  index = 0;
  term = 0;
  settled = false;
  constructor(
    readonly clientId: bigint,
    readonly commandId: bigint,
    readonly deadline: number,
    private readonly owner: PendingWrites,
    readonly resolve: (outcome: WriteOutcome) => void,
  ) {}

  expire(): void {
    this.owner.answer(this, TIMEOUT);
  }
}

export type PendingWrite = WriteWaiter;

/**
 * A waiter is registered before its command is proposed, so no apply can run ahead of it:
 * - before propose returns, an applied entry with the waiter's (clientId, commandId) answers it
 *   (a write without a session and a registration carry a server-chosen nonce as commandId);
 * - once placed at (index, term), the entry applied at that index answers it: the same term means
 *   the same entry (Log Matching), another term means the leader that took it lost it;
 * - an entry applied at its index before it was placed was someone else's: lost as well.
 */
export class PendingWrites {
  /** Registered, not yet placed: propose has not returned (at most a turn of the event loop). */
  private readonly unplaced = new Set<WriteWaiter>();
  private readonly placed = new Map<number, WriteWaiter>();
  /** The highest index whose result (or snapshot) this table has seen. */
  private appliedThrough: number;

  constructor(
    private readonly clock: Clock,
    private readonly deadlines: DeadlineQueue,
    private readonly timeoutMs: number,
    appliedIndex: number,
    /**
     * Batch entries' writes wait on their own queue and timeout (each queue keeps one timeout, so
     * its FIFO stays in deadline order); without it they share the commands' own.
     */
    private readonly batchWait?: { deadlines: DeadlineQueue; timeoutMs: number },
  ) {
    this.appliedThrough = appliedIndex;
  }

  get size(): number {
    return this.unplaced.size + this.placed.size;
  }

  /**
   * Registers a write about to be proposed; `outcome` settles exactly once. `batch`: the write is a
   * batch entry (the Batch RPC's path), which waits the batch timeout.
   */
  open(clientId: bigint, commandId: bigint, batch = false): { waiter: PendingWrite; outcome: Promise<WriteOutcome> } {
    const long = batch && this.batchWait !== undefined;
    const timeoutMs = long ? this.batchWait!.timeoutMs : this.timeoutMs;
    let waiter!: WriteWaiter;
    const outcome = new Promise<WriteOutcome>((resolve) => {
      waiter = new WriteWaiter(clientId, commandId, this.clock.now() + timeoutMs, this, resolve);
    });
    this.unplaced.add(waiter);
    (long ? this.batchWait!.deadlines : this.deadlines).add(waiter);
    return { waiter, outcome };
  }

  /** Propose returned the entry's place in the log. */
  place(waiter: PendingWrite, index: number, term: number): void {
    if (!this.unplaced.delete(waiter) || waiter.settled) return;
    if (index <= this.appliedThrough) {
      // The entry at our index went by without our (clientId, commandId): it was not ours.
      this.settle(waiter, WRONG_LEADER);
      return;
    }
    waiter.index = index;
    waiter.term = term;
    const previous = this.placed.get(index);
    // An older waiter at this index belongs to a term whose entry was overwritten.
    if (previous !== undefined) this.answer(previous, WRONG_LEADER);
    this.placed.set(index, waiter);
  }

  /** Answers a write once (a deadline, an apply, a restore, a failed propose or close may each try). */
  answer(waiter: PendingWrite, outcome: WriteOutcome): void {
    if (waiter.settled) return;
    if (waiter.index === 0) this.unplaced.delete(waiter);
    else if (this.placed.get(waiter.index) === waiter) this.placed.delete(waiter.index);
    this.settle(waiter, outcome);
  }

  /** The per-entry results of one apply, in log order. */
  applied(results: readonly AppliedCommand[]): void {
    if (results.length === 0) return;
    this.appliedThrough = Math.max(this.appliedThrough, results[results.length - 1]!.index);
    if (this.size === 0) return;
    for (const applied of results) {
      const waiter = this.placed.get(applied.index);
      if (waiter !== undefined) this.answer(waiter, applied.term === waiter.term ? applied : WRONG_LEADER);
      if (this.unplaced.size > 0) this.answerUnplaced(applied);
    }
  }

  /**
   * A snapshot replaced the state through `index`: the entries it covers will never be applied
   * here one by one, so the session records it brought answer the writes waiting on them.
   */
  restored(index: number, fromSession: (clientId: bigint, commandId: bigint) => ResultCode | null): void {
    this.appliedThrough = Math.max(this.appliedThrough, index);
    const known = (waiter: WriteWaiter): AppliedCommand | null => {
      const result = fromSession(waiter.clientId, waiter.commandId);
      return result === null ? null : { index: waiter.index, term: waiter.term, clientId: waiter.clientId, commandId: waiter.commandId, result };
    };
    for (const waiter of [...this.placed.values()]) {
      if (waiter.index <= index) this.answer(waiter, known(waiter) ?? WRONG_LEADER);
    }
    // Not placed yet: place() will find its index covered, unless the session shows it applied.
    for (const waiter of [...this.unplaced]) {
      const outcome = known(waiter);
      if (outcome !== null) this.answer(waiter, outcome);
    }
  }

  /** Answers every waiting write with `reply` (the node is closing). */
  close(reply: CommandReply): void {
    for (const waiter of [...this.placed.values(), ...this.unplaced]) this.answer(waiter, reply);
  }

  private answerUnplaced(applied: AppliedCommand): void {
    for (const waiter of this.unplaced) {
      if (waiter.clientId === applied.clientId && waiter.commandId === applied.commandId) this.answer(waiter, applied);
    }
  }

  private settle(waiter: WriteWaiter, outcome: WriteOutcome): void {
    waiter.settled = true;
    waiter.resolve(outcome);
  }
}
