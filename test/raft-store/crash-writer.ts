// Child process for the kill -9 test: appends entries to a FileLogStore with many saves in flight
// and prints "ack <lastIndex> <commitIndex>" once each save is durable, until it is killed.

import { FileLogStore } from "../../src/raft/log/log-store.ts";
import { EntryType } from "../../src/raft/types.ts";

const dir = process.argv[2];
const maxEntries = Number(process.argv[3] ?? 100_000);
const store = await FileLogStore.open(dir, { segmentBytes: 64 * 1024 });
const enc = new TextEncoder();
let next = store.lastIndex() + 1;
const stop = next + maxEntries;
const inFlight = new Set<Promise<void>>();

while (next < stop) {
  while (inFlight.size < 16 && next < stop) {
    const count = 1 + (next % 3);
    const entries = Array.from({ length: count }, (_, i) => ({
      index: next + i,
      term: 1,
      type: EntryType.Normal,
      data: enc.encode(`value-${next + i}`),
    }));
    next += count;
    const last = next - 1;
    const save: Promise<void> = store
      .save({ term: 1, votedFor: 0, commitIndex: last }, entries)
      .then(() => {
        process.stdout.write(`ack ${last} ${last}\n`);
        inFlight.delete(save);
      });
    inFlight.add(save);
  }
  await Promise.race(inFlight);
}
await Promise.all(inFlight);
await store.close();
