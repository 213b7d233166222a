// Reads over the entries a log store holds in memory: the ones after its compaction point, where
// log[0] has index snapshot.index + 1. Shared by FileLogStore and MemoryLogStore.

import { LogStoreError } from "./log-error.ts";
import type { Entry, SnapshotMeta } from "../types.ts";

/** Term at `index`, for snapshot.index <= index <= the last held index; else undefined. */
export function termAt(snapshot: SnapshotMeta, log: readonly Entry[], index: number): number | undefined {
  if (index === snapshot.index) return snapshot.term;
  return log[index - snapshot.index - 1]?.term;
}

/** Entries in [lo, hi), at most `maxBytes` of payload but always at least one when any exist. */
export function entriesIn(snapshot: SnapshotMeta, log: readonly Entry[], lo: number, hi: number, maxBytes: number): Entry[] {
  const first = snapshot.index + 1;
  const end = first + log.length;
  if (lo < first || hi > end || lo > hi) {
    throw new LogStoreError("OUT_OF_RANGE", `entries [${lo}, ${hi}) requested; the log holds [${first}, ${end})`);
  }
  const out: Entry[] = [];
  let bytes = 0;
  for (let i = lo; i < hi; i++) {
    const entry = log[i - first];
    bytes += entry.data.length;
    if (out.length > 0 && bytes > maxBytes) break;
    out.push(entry);
  }
  return out;
}
