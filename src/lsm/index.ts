// Public surface of the LSM engine; other layers import only from here.
export { DB } from "./db.ts";
export { Snapshot } from "./snapshot.ts";
export { Checkpoint, type CheckpointFile } from "./checkpoint.ts";
export { TableImporter, type ImportedFile } from "./table-import.ts";
export { TableStreamVerifier } from "./table-verify.ts";
export type { DBIteratorOptions, ReadOptions, WriteOptions } from "./db.ts";
export type { DBStats, LevelStats } from "./stats.ts";
export type { Compression } from "./compression.ts";
export { LsmIterator } from "./db-iterator.ts";
export type { IteratorOptions } from "./db-iterator.ts";
export { LsmError } from "./errors.ts";
export type { LsmErrorCode } from "./errors.ts";
export type { DBOptions } from "./options.ts";
export type { BatchOp } from "./batch.ts";
// The abstract-level adapter (LsmLevel) is a separate entry point, `src/lsm/level.ts`, so the
// engine's users do not load abstract-level unless they want the Level ecosystem.
