// The write path of a Batch call: its writes leave as a few batch entries (batch-command.ts)
// instead of one entry each, every command still exactly-once through its own session and
// answered on its own (a reply, or the typed refusal a Command call would have failed with).
import { batchEntryBytes, batchItem, batchItemBytes, encodeBatchCommand, type BatchItem } from "./batch-command.ts";
import { isApplied, type WriteOutcome } from "./pending-writes.ts";
import { WRONG_LEADER, refusal, type CommandArgs, type CommandReply } from "./replies.ts";
import { answerFromSession, replyForResult, type WriteReplica } from "./write-path.ts";

/** What one command of a batch came to: its reply, or the error a Command call would have thrown. */
export type BatchAnswer = CommandReply | Error;

export interface BatchEntryLimits {
  /** Bytes of one batch entry at most (a single larger command gets an entry of its own). */
  maxEntryBytes: number;
  /** Commands in one batch entry at most. */
  maxEntryCommands: number;
}

/**
 * Proposes the writes `writes` (validated) as batch entries and resolves with one answer each, in
 * order. An entry never holds one key twice (each key changes at most once per revision), never
 * passes the limits; a retry the session table already answers is not proposed again.
 */
export async function writeBatch(r: WriteReplica, writes: readonly CommandArgs[], limits: BatchEntryLimits): Promise<BatchAnswer[]> {
  const answers = new Array<BatchAnswer>(writes.length);
  const entries: { items: BatchItem[]; positions: number[] }[] = [];
  let items: BatchItem[] = [];
  let positions: number[] = [];
  let keys = new Set<string>();
  let bytes = 0;
  const machine = r.machine;
  for (let i = 0; i < writes.length; i++) {
    const args = writes[i]!;
    const command = { op: args.op as "Put" | "Append" | "Delete", clientId: args.clientId, commandId: args.commandId, key: args.key, value: args.value, registered: args.registered === true };
    const known = answerFromSession(machine, command);
    if (known !== null) {
      answers[i] = settle(() => replyForResult(known, args));
      continue;
    }
    const item = batchItem(command);
    const size = batchItemBytes(item);
    if (items.length > 0 && (keys.has(args.key) || items.length >= limits.maxEntryCommands || batchEntryBytes(bytes + size) > limits.maxEntryBytes)) {
      entries.push({ items, positions });
      items = [];
      positions = [];
      keys = new Set();
      bytes = 0;
    }
    items.push(item);
    positions.push(i);
    keys.add(args.key);
    bytes += size;
  }
  if (items.length > 0) entries.push({ items, positions });
  if (entries.length === 0) return answers;
  const lowSpace = r.writeRefusal();
  if (lowSpace) throw lowSpace;

  const timestamp = r.clock.now();
  const waiting = entries.map((entry) => {
    const nonce = r.nonce();
    const data = encodeBatchCommand(entry.items, { nonce, timestamp, maxValueBytes: r.maxValueBytes });
    return { entry, data, ...r.writes.open(0n, nonce, true) };
  });
  try {
    // One proposal: the entries take consecutive indexes in one append.
    const { index, term } = await r.node.proposeBatch(waiting.map((w) => w.data));
    waiting.forEach((w, i) => r.writes.place(w.waiter, index + i, term));
  } catch (error) {
    let refused: CommandReply;
    try {
      refused = refusal(error, r.id);
    } catch (typed) {
      for (const w of waiting) r.writes.answer(w.waiter, WRONG_LEADER);
      throw typed;
    }
    for (const w of waiting) r.writes.answer(w.waiter, refused);
  }
  const outcomes: WriteOutcome[] = await Promise.all(waiting.map((w) => w.outcome));
  outcomes.forEach((outcome, e) => {
    const { positions } = waiting[e]!.entry;
    const results = isApplied(outcome) ? outcome.batch : undefined;
    for (let j = 0; j < positions.length; j++) {
      const at = positions[j]!;
      if (results !== undefined) {
        const result = results[j] as Parameters<typeof replyForResult>[0];
        answers[at] = settle(() => replyForResult(result, writes[at]!));
      } else {
        // Not applied as this entry (lost with its leader, timed out, or covered by a snapshot):
        // the client retries with the same ids, and the session table answers if it did apply.
        answers[at] = isApplied(outcome) ? WRONG_LEADER : outcome;
      }
    }
  });
  return answers;
}

function settle(reply: () => CommandReply): BatchAnswer {
  try {
    return reply();
  } catch (error) {
    return error as Error;
  }
}
