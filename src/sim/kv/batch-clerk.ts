// A simulated client of the Batch RPC: many writes (and Gets) in one call, which the server logs
// as batch entries; each command keeps its own session slot through retries, so the history and
// the exactly-once audit see every command as one operation.
import type { Operation } from "../check/index.ts";
import type { Rng } from "../../util/rng.ts";
import type { CommandArgs, CommandReply, KVOp } from "../../kv/server.ts";
import type { KvSimCluster } from "./cluster.ts";
import { InvalidArgumentError, KVError, SessionExpiredError } from "../../kv/errors.ts";

/** A per-command refusal a retry can cure (overload, unavailable), as the simulated RPC treats a whole call's. */
function retryable(error: Error): boolean {
  return error instanceof KVError && !(error instanceof InvalidArgumentError) && !(error instanceof SessionExpiredError);
}

/** One command of a batch, as the workload asks for it. */
export interface BatchOp {
  op: KVOp;
  key: string;
  value: string;
}

/**
 * Each command of a batch runs under its own slot: a session id of its own (`clientId * 100 +
 * slot`) whose commandIds increase, as the Clerk's bulk writer gives every write its own session.
 * A batch is sent again, with the same ids, for the commands not yet answered OK or ErrNoKey, to the
 * leader the answers point at, until every command is answered or the deadline passes (its
 * outcome then stays unknown in the history).
 */
export class KvSimBatchClerk {
  private leader = 0;
  private readonly nextCommandId: bigint[];
  private readonly rng: Rng;

  constructor(
    private readonly cluster: KvSimCluster,
    readonly clientId: bigint,
    private readonly history: Operation[],
    /** Commands one batch may carry. */
    readonly maxSlots = 8,
    private readonly deadlineMs = 60_000,
  ) {
    this.nextCommandId = Array.from({ length: maxSlots }, () => 0n);
    this.rng = cluster.clientRng(clientId);
  }

  /** Runs one batch to completion; the answers in order (ErrTimeout for an unknown outcome). */
  async batch(ops: readonly BatchOp[]): Promise<CommandReply[]> {
    if (ops.length === 0 || ops.length > this.maxSlots) throw new RangeError(`a batch carries 1..${this.maxSlots} commands, got ${ops.length}`);
    const clock = this.cluster.clock;
    const slots = ops.map((o, slot) => {
      const session = this.clientId * 100n + BigInt(slot);
      const args: CommandArgs = { key: o.key, value: o.value, op: o.op, clientId: session, commandId: ++this.nextCommandId[slot]! };
      const record: Operation = { clientId: session, input: { op: o.op, key: o.key, value: o.value }, output: null, call: clock.now(), return: Infinity };
      this.history.push(record);
      return { args, record, reply: null as CommandReply | null };
    });
    const giveUp = clock.now() + this.deadlineMs;
    let open = slots;
    while (open.length > 0 && clock.now() < giveUp) {
      const answers = await this.cluster.batchCall(this.leader, open.map((s) => s.args), this.clientId, this.rng);
      let hint: number | undefined;
      const still: typeof open = [];
      for (let i = 0; i < open.length; i++) {
        const slot = open[i]!;
        const answer = answers?.[i];
        if (answer instanceof Error && !retryable(answer)) {
          // A refusal a retry cannot cure is a bug of the workload or the server: the run fails.
          throw new Error(`client ${this.clientId}: batched ${slot.args.op} ${JSON.stringify(slot.args.key)} refused: ${answer.message}`);
        }
        if (answer !== undefined && !(answer instanceof Error) && (answer.err === "OK" || answer.err === "ErrNoKey")) {
          slot.reply = answer;
          slot.record.output = { err: answer.err, value: answer.value };
          slot.record.return = clock.now();
        } else {
          if (answer !== undefined && !(answer instanceof Error) && answer.leaderId !== undefined) hint = answer.leaderId;
          still.push(slot);
        }
      }
      open = still;
      if (open.length > 0) this.leader = hint !== undefined && hint >= 0 && hint < this.cluster.size && hint !== this.leader ? hint : (this.leader + 1) % this.cluster.size;
    }
    return slots.map((s) => s.reply ?? { err: "ErrTimeout", value: "" });
  }
}
