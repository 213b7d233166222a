// The durable Raft log's typed error: a code to branch on, and the file and offset that broke.

export type LogStoreErrorCode = "CORRUPTION" | "RECORD_TOO_LARGE" | "OUT_OF_RANGE" | "INVALID_ARGUMENT" | "CLOSED" | "IO";

export class LogStoreError extends Error {
  constructor(
    readonly code: LogStoreErrorCode,
    message: string,
    readonly file?: string,
    readonly offset?: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "LogStoreError";
  }
}

/** Wraps a failure of the file system (or passes a LogStoreError through) naming the log directory. */
export function ioError(dir: string, err: unknown): LogStoreError {
  if (err instanceof LogStoreError) return err;
  return new LogStoreError("IO", `log store ${dir}: ${(err as Error).message}`, undefined, undefined, {
    cause: err,
  });
}
