// Log compaction by the driver: the Raft log is the state machine's write-ahead log, so it may be
// compacted only through an applied index the state machine has itself made durable.

import type { Raft } from "./core/raft.ts";
import { metaWith } from "./core/membership.ts";
import type { LogStore, StateMachine } from "./types.ts";

/**
 * Compacts the log through what the state machine has made durable, once that is more than
 * `threshold` entries past the compaction point; forces a sync at twice the threshold.
 */
export async function maybeCompact(raft: Raft, log: LogStore, sm: StateMachine, threshold: number): Promise<void> {
  const point = log.firstIndex() - 1;
  const applied = raft.appliedIndex;
  if (applied - point <= threshold) return;
  let durable = Math.min(sm.durableAppliedIndex(), applied);
  if (durable - point <= threshold) {
    if (applied - point <= 2 * threshold) return;
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
