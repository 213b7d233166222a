// Typed errors of the LSM engine. Every error carries a code a caller can switch on and,
// where a file is involved, the file name and byte offset so an operator knows what broke.

export type LsmErrorCode =
  | "CORRUPTION" // a checksum or format check failed: the named file is damaged
  | "INVALID_ARGUMENT" // the caller passed something the engine cannot accept
  | "LIMIT" // a configured limit (key, value or batch size) was exceeded
  | "CLOSED" // the database was used after close()
  | "LOCKED" // another DB instance (this process or another) holds the directory
  | "IO" // the operating system refused a read, write or fsync
  | "BACKGROUND"; // an earlier background failure made the database read-only

export class LsmError extends Error {
  override readonly name = "LsmError";
  constructor(
    readonly code: LsmErrorCode,
    message: string,
    readonly file?: string,
    readonly offset?: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export function corruption(file: string, offset: number, what: string): LsmError {
  return new LsmError(
    "CORRUPTION",
    `corruption in ${file} at offset ${offset}: ${what}; the file is damaged, restore it from a replica or backup`,
    file,
    offset,
  );
}

export function ioError(file: string, op: string, cause: unknown): LsmError {
  const msg = cause instanceof Error ? cause.message : String(cause);
  return new LsmError("IO", `${op} failed on ${file}: ${msg}`, file, undefined, { cause });
}
