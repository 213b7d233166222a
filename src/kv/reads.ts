// Linearizable Gets by ReadIndex, batched: Gets that arrive together share one ReadIndex round
// (one heartbeat round confirms them all), and are read from the applied state once it is reached.
import type { Clock, NodeId } from "../raft/index.ts";
import type { DeadlineQueue, Deadline } from "./deadlines.ts";
import { TIMEOUT, WRONG_LEADER, refusal, type CommandReply } from "./replies.ts";

/** ReadIndex rounds in flight at once; Gets beyond them wait for the next round. */
const MAX_READ_ROUNDS = 2;

/** A Get waiting for a ReadIndex round that started after it arrived. */
class ReadWaiter implements Deadline {
  settled = false;
  constructor(
    readonly key: string,
    readonly deadline: number,
    private readonly owner: ReadBatcher,
    private readonly resolve: (reply: CommandReply) => void,
    private readonly reject: (error: unknown) => void,
    /** Reads something other than one key's value once the round is confirmed (a Range). */
    readonly read?: () => CommandReply,
  ) {}

  expire(): void {
    if (this.settled) return;
    this.settle(TIMEOUT);
    this.owner.expired();
  }

  settle(reply: CommandReply): void {
    this.settled = true;
    this.resolve(reply);
  }

  fail(error: unknown): void {
    this.settled = true;
    this.reject(error);
  }
}

export interface ReadSource {
  /** Resolves once a quorum confirmed leadership and the state machine applied through the read index. */
  readIndex(): Promise<number>;
  /** The applied value of `key` (synchronous: called right after the round resolved). */
  readApplied(key: string): CommandReply;
}

/**
 * Gets are batched much as etcd batches them: at most MAX_READ_ROUNDS ReadIndex rounds in flight,
 * and every Get that arrives meanwhile shares the next round (a round per Get would cost two peer
 * RPCs per Get). Two rounds rather than etcd's one: a Get arriving just after a round left then
 * waits about one round trip, not one and a half.
 */
export class ReadBatcher {
  /** Gets that arrived after the round in flight was asked for: they share the next one. */
  private queue: ReadWaiter[] = [];
  /** Gets each round in flight will answer. */
  private readonly rounds = new Set<ReadWaiter[]>();
  private scheduled = false;
  private closed = false;
  /** ReadIndex rounds asked for since this node started. */
  roundsStarted = 0;

  constructor(
    private readonly nodeId: NodeId,
    private readonly source: ReadSource,
    private readonly clock: Clock,
    private readonly deadlines: DeadlineQueue,
    private readonly timeoutMs: number,
  ) {}

  get(key: string, read?: () => CommandReply): Promise<CommandReply> {
    return new Promise<CommandReply>((resolve, reject) => {
      const waiter = new ReadWaiter(key, this.clock.now() + this.timeoutMs, this, resolve, reject, read);
      this.queue.push(waiter);
      this.deadlines.add(waiter);
      this.schedule();
    });
  }

  /** Answers every waiting Get with ErrWrongLeader: the node is closing. */
  close(): void {
    this.closed = true;
    for (const waiter of [...[...this.rounds].flat(), ...this.queue]) if (!waiter.settled) waiter.settle(WRONG_LEADER);
    this.rounds.clear();
    this.queue = [];
  }

  /** A Get timed out: a round whose Gets all have no longer holds later Gets back. */
  expired(): void {
    for (const round of this.rounds) if (round.every((waiter) => waiter.settled)) this.rounds.delete(round);
    if (this.queue.length > 0 && !this.queue.some((waiter) => !waiter.settled)) this.queue = [];
    if (this.queue.length > 0) this.schedule();
  }

  /** Starts a round at the end of this turn, so Gets that arrive together share it. */
  private schedule(): void {
    if (this.scheduled || this.rounds.size >= MAX_READ_ROUNDS) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      if (this.queue.length > 0 && !this.closed && this.rounds.size < MAX_READ_ROUNDS) this.startRound();
    });
  }

  private startRound(): void {
    const round = this.queue;
    this.queue = [];
    this.rounds.add(round);
    this.roundsStarted++;
    const done = (): void => {
      if (!this.rounds.delete(round)) return; // abandoned after its Gets timed out
      if (this.queue.length > 0) this.schedule();
    };
    this.source.readIndex().then(
      () => {
        for (const waiter of round) {
          if (waiter.settled) continue;
          if (this.closed) waiter.settle(WRONG_LEADER);
          else if (waiter.read === undefined) waiter.settle(this.source.readApplied(waiter.key));
          else {
            try {
              waiter.settle(waiter.read());
            } catch (error) {
              waiter.fail(error);
            }
          }
        }
        done();
      },
      (error: unknown) => {
        let reply: CommandReply | null = null;
        let failure: unknown = null;
        try {
          reply = refusal(error, this.nodeId);
        } catch (typed) {
          failure = typed;
        }
        for (const waiter of round) {
          if (waiter.settled) continue;
          if (reply !== null) waiter.settle(reply);
          else waiter.fail(failure);
        }
        done();
      },
    );
  }
}
