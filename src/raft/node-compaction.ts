// Log compaction by the driver: the Raft log is the state machine's write-ahead log, so it may be
// compacted only through an applied index the state machine has itself made durable.

import type { Raft } from "./core/raft.ts";
import { metaWith } from "./core/membership.ts";
import type { LogStore, StateMachine } from "./types.ts";

/** When the log is compacted: entries applied past the compaction point, or payload bytes held in memory. */
export interface CompactionLimits {
  entries: number;
  bytes: number;
}

/**
 * Compacts the log through what the state machine has made durable, once that is more than
 * `limits.entries` entries past the compaction point, or as soon as it is past it at all while the
 * log holds more than `limits.bytes` (the durable index moves only with the state machine's
 * flushes, so this compacts at most once a flush). At twice either limit, with applied entries the
 * state machine has not made durable, it forces a sync.
 */
export async function maybeCompact(raft: Raft, log: LogStore, sm: StateMachine, limits: CompactionLimits): Promise<void> {
  const point = log.firstIndex() - 1;
  const applied = raft.appliedIndex;
  const held = raft.raftLog.heldBytes;
  const bytesOver = held > limits.bytes;
  if (applied - point <= limits.entries && !bytesOver) return;
  const worthIt = (through: number) => through - point > limits.entries || (bytesOver && through > point);
  let durable = Math.min(sm.durableAppliedIndex(), applied);
  if (!worthIt(durable)) {
    const urgent = applied - point > 2 * limits.entries || held > 2 * limits.bytes;
    if (!urgent || durable >= applied) return;
    durable = Math.min(await sm.sync(), applied);
    if (durable <= point) return;
  }
  const term = log.term(durable);
  if (term === undefined) return; // not in the durable log (e.g. just reset to a snapshot)
  const membership = raft.raftLog.membershipAt(durable);
  if (membership === undefined) return;
  const meta = metaWith(durable, term, membership);
  await log.compact(meta);
  raft.compact(meta);
}
