// The main thread's handle on a table worker (table-worker.ts): starts it on first use, sends
// flush and compaction jobs, answers its requests for file numbers, and turns its failures back
// into LsmErrors. Workers are shared by every database of the process (one for flushes, one for
// merges), so threads and their warmed-up code outlive any one database; a worker is
// unreferenced while idle, so it never keeps a process alive.
import { LsmError, type LsmErrorCode } from "./errors.ts";
import { traceSpan, tracing, wallNow } from "../util/trace.ts";
import type { CompactJob, CompactResult, FlushJob, FlushResult, FromWorker, WireError } from "./table-jobs.ts";

type JobBody<T> = T extends { id: number } ? Omit<T, "id"> : never;

interface Pending {
  resolve(result: unknown): void;
  reject(e: unknown): void;
  /** Called when the worker asks for a file number; returns it (the DB marks it pending). */
  newFileNumber(): number;
}

export class TableWorker {
  private worker: Worker | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();

  private start(): Worker {
    if (this.worker !== null) return this.worker;
    const w = new Worker(new URL("./table-worker.ts", import.meta.url).href);
    w.onmessage = (e: MessageEvent<FromWorker>) => this.onMessage(e.data);
    // A dead worker fails its jobs (their databases turn read-only); the next job starts a new one.
    w.onerror = (e: ErrorEvent) => this.fail(new LsmError("BACKGROUND", `table worker failed: ${e.message}`));
    this.worker = w;
    return w;
  }

  private onMessage(m: FromWorker): void {
    const p = this.pending.get(m.id);
    if (p === undefined) return;
    switch (m.type) {
      case "fileNumber":
        this.worker!.postMessage({ type: "fileNumber", id: m.id, number: p.newFileNumber() });
        return;
      case "done":
        this.finish(m.id);
        p.resolve(m.result);
        return;
      case "error":
        this.finish(m.id);
        p.reject(toError(m.error));
        return;
    }
  }

  private finish(id: number): void {
    this.pending.delete(id);
    if (this.pending.size === 0) this.worker?.unref();
  }

  private fail(e: Error): void {
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) p.reject(e);
    this.worker?.terminate();
    this.worker = null;
  }

  private run<T>(job: JobBody<FlushJob> | JobBody<CompactJob>, newFileNumber: () => number): Promise<T> {
    const id = this.nextId++;
    const traced = tracing ? wallNow() : 0;
    return new Promise<T>((resolve, reject) => {
      const done = tracing
        ? (r: unknown) => {
            traceSpan(`lsm-${job.type}`, traced);
            (resolve as (r: unknown) => void)(r);
          }
        : (resolve as (r: unknown) => void);
      this.pending.set(id, { resolve: done, reject, newFileNumber });
      const w = this.start();
      w.ref();
      // A flush's batch buffer is handed over, not copied: the caller built it for this job.
      if (job.type === "flush") {
        const transfer = [job.batches.buffer as ArrayBuffer];
        if (job.order !== undefined) transfer.push(job.order.buffer as ArrayBuffer);
        w.postMessage({ ...job, id }, transfer);
      }
      else w.postMessage({ ...job, id });
    });
  }

  flush(job: JobBody<FlushJob>): Promise<FlushResult> {
    return this.run<FlushResult>(job, () => {
      throw new Error("a flush job never asks for file numbers");
    });
  }

  /** `job.abort` is the database's flag: set to 1, the merge stops (failing with ABORTED). */
  compact(job: JobBody<CompactJob>, newFileNumber: () => number): Promise<CompactResult> {
    return this.run<CompactResult>(job, newFileNumber);
  }

  /** Stops the thread; jobs still pending are rejected. */
  terminate(): void {
    const w = this.worker;
    this.worker = null;
    if (w === null) return;
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) p.reject(new LsmError("CLOSED", "table worker stopped"));
    w.terminate();
  }
}

let shared: { flush: TableWorker; compaction: TableWorker } | null = null;

/**
 * The process's table workers: flushes get a thread of their own so they never queue behind a
 * long merge (writers wait on flushes, not on merges).
 */
export function sharedTableWorkers(): { flush: TableWorker; compaction: TableWorker } {
  return (shared ??= { flush: new TableWorker(), compaction: new TableWorker() });
}

const CODES = new Set<LsmErrorCode>(["CORRUPTION", "INVALID_ARGUMENT", "LIMIT", "CLOSED", "LOCKED", "IO", "BACKGROUND"]);

function toError(e: WireError): Error {
  const code = e.code as LsmErrorCode | undefined;
  if (code !== undefined && CODES.has(code)) return new LsmError(code, e.message, e.file, e.offset);
  return new Error(e.message);
}
