// Entry point of the table worker thread (started by background.ts): receives flush and
// compaction jobs, runs them (table-jobs.ts) and posts back results or errors.
import type { LsmError } from "./errors.ts";
import { compactTables, flushBatches, type FromWorker, type ToWorker } from "./table-jobs.ts";

declare const self: {
  postMessage(m: FromWorker, transfer?: ArrayBuffer[]): void;
  onmessage: ((e: MessageEvent<ToWorker>) => void) | null;
};

/**
 * Jobs running in this thread. When the last one ends the thread may stay idle for long (no more
 * writes), and its heap collects only while it allocates: the jobs' garbage (a merge's read
 * chunks and output buffers, several MiB per job) would stay in RSS until the next job. So an
 * idle worker collects once, off the main thread (measured: fills peak ~10 MiB lower, the process
 * after close ~20 MiB lower, CPU per write unchanged; FORMAT.md).
 */
let running = 0;
function jobEnded(): void {
  if (--running === 0) Bun.gc(true);
}

const numberWaiters = new Map<number, (n: number) => void>();
const send = (m: FromWorker): void => self.postMessage(m);

self.onmessage = (e) => {
  const m = e.data;
  if (m.type === "fileNumber") {
    const w = numberWaiters.get(m.id);
    numberWaiters.delete(m.id);
    w?.(m.number);
    return;
  }
  running++;
  const run =
    m.type === "flush"
      ? flushBatches(m)
      : compactTables(m, () =>
          new Promise<number>((resolve) => {
            numberWaiters.set(m.id, resolve);
            send({ type: "fileNumber", id: m.id });
          }),
        );
  run.then(
    (result) => {
      // A flush hands its batches buffer back for the next flush to reuse.
      const batches = "batches" in result ? result.batches : undefined;
      self.postMessage({ type: "done", id: m.id, result }, batches ? [batches.buffer as ArrayBuffer] : []);
      jobEnded();
    },
    (err: unknown) => {
      const x = err as Partial<LsmError> | null;
      send({
        type: "error",
        id: m.id,
        error: { message: x?.message ?? String(err), code: x?.code, file: x?.file, offset: x?.offset },
      });
      jobEnded();
    },
  );
};
