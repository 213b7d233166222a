// Typed errors of the KV layer. `KVError` codes map one-to-one onto Connect codes in the RPC
// layer; messages say what was wrong and what the caller can do about it.

export type KVErrorCode = "invalid_argument" | "resource_exhausted" | "unavailable";

export class KVError extends Error {
  override readonly name = "KVError";
  constructor(
    readonly code: KVErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** A snapshot stream or a stored record failed a format, length or checksum check. */
export class KVCorruptionError extends Error {
  override readonly name = "KVCorruptionError";
  readonly code = "CORRUPTION";
  constructor(message: string) {
    super(message);
  }
}
