// Writes waiting for their answer, from before they are proposed until their entry applies (or a
// deadline, a lost leadership, a snapshot install or close answers them). The apply loop hands
// each apply's per-entry results here; nothing calls back up into the KV server.
import type { Clock } from "../raft/index.ts";
import { DeadlineQueue, type Deadline } from "./deadlines.ts";
import { NO_KEY, OK, TIMEOUT, WRONG_LEADER, type CommandReply } from "./replies.ts";
import { RESULT_NO_KEY, type ResultCode } from "./sessions.ts";

/** The outcome of one applied entry (Noop entries carry client 0, command 0). */
export interface AppliedCommand {
  index: number;
  term: number;
  clientId: bigint;
  commandId: bigint;
  result: ResultCode;
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
    readonly resolve: (reply: CommandReply) => void,
  ) {}

  expire(): void {
    this.owner.answer(this, TIMEOUT);
  }
}

export type PendingWrite = WriteWaiter;

export function replyFor(result: ResultCode): CommandReply {
  return result === RESULT_NO_KEY ? NO_KEY : OK;
}

/**
 * A waiter is registered before its command is proposed, so no apply can run ahead of it:
 * - before propose returns, an applied entry with the waiter's (clientId, commandId) answers it;
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
  ) {
    this.appliedThrough = appliedIndex;
  }

  get size(): number {
    return this.unplaced.size + this.placed.size;
  }

  /** Registers a write about to be proposed; `reply` settles exactly once. */
  open(clientId: bigint, commandId: bigint): { waiter: PendingWrite; reply: Promise<CommandReply> } {
    let waiter!: WriteWaiter;
    const reply = new Promise<CommandReply>((resolve) => {
      waiter = new WriteWaiter(clientId, commandId, this.clock.now() + this.timeoutMs, this, resolve);
    });
    this.unplaced.add(waiter);
    this.deadlines.add(waiter);
    return { waiter, reply };
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
  answer(waiter: PendingWrite, reply: CommandReply): void {
    if (waiter.settled) return;
    if (waiter.index === 0) this.unplaced.delete(waiter);
    else if (this.placed.get(waiter.index) === waiter) this.placed.delete(waiter.index);
    this.settle(waiter, reply);
  }

  /** The per-entry results of one apply, in log order. */
  applied(results: readonly AppliedCommand[]): void {
    if (results.length === 0) return;
    this.appliedThrough = Math.max(this.appliedThrough, results[results.length - 1]!.index);
    if (this.size === 0) return;
    for (const applied of results) {
      const waiter = this.placed.get(applied.index);
      if (waiter !== undefined) this.answer(waiter, applied.term === waiter.term ? replyFor(applied.result) : WRONG_LEADER);
      if (this.unplaced.size > 0) this.answerUnplaced(applied);
    }
  }

  /**
   * A snapshot replaced the state through `index`: the entries it covers will never be applied
   * here one by one, so the session records it brought answer the writes waiting on them.
   */
  restored(index: number, fromSession: (clientId: bigint, commandId: bigint) => CommandReply | null): void {
    this.appliedThrough = Math.max(this.appliedThrough, index);
    for (const waiter of [...this.placed.values()]) {
      if (waiter.index <= index) this.answer(waiter, fromSession(waiter.clientId, waiter.commandId) ?? WRONG_LEADER);
    }
    // Not placed yet: place() will find its index covered, unless the session shows it applied.
    for (const waiter of [...this.unplaced]) {
      const known = fromSession(waiter.clientId, waiter.commandId);
      if (known !== null) this.answer(waiter, known);
    }
  }

  /** Answers every waiting write with `reply` (the node is closing). */
  close(reply: CommandReply): void {
    for (const waiter of [...this.placed.values(), ...this.unplaced]) this.answer(waiter, reply);
  }

  private answerUnplaced(applied: AppliedCommand): void {
    for (const waiter of this.unplaced) {
      if (waiter.clientId === applied.clientId && waiter.commandId === applied.commandId) this.answer(waiter, replyFor(applied.result));
    }
  }

  private settle(waiter: WriteWaiter, reply: CommandReply): void {
    waiter.settled = true;
    waiter.resolve(reply);
  }
}
