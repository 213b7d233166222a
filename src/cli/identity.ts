// The data directory's identity record: which node of which cluster owns the directory. A node
// started on another node's directory (or another cluster's) would corrupt both; refuse instead.

import * as fs from "node:fs";
import * as path from "node:path";
import { pack, unpack } from "msgpackr";

/** The identity record, msgpack-encoded: a map { format: 1, nodeId, addrs }. */
export const IDENTITY_FILE = "KVRAFT_NODE";
/**
 * The JSON form of the same record (what builds before the msgpack file wrote). Read for upgrade,
 * and the way an operator states a new identity by hand: when present it wins, is converted to
 * IDENTITY_FILE and removed.
 */
export const LEGACY_IDENTITY_FILE = "KVRAFT_NODE.json";

export interface NodeIdentity {
  format: 1;
  nodeId: number;
  /** The cluster's address list in node-id order: the cluster's identity. */
  addrs: string[];
}

/** The data directory cannot be used by this node; the message says why and what to do. */
export class DataDirError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DataDirError";
  }
}

/**
 * Creates `dir` if needed and checks (or, on first start, writes) its identity record.
 * Throws DataDirError for a directory of another node or cluster, or one that cannot be used.
 * `beforeCreate` runs before a new identity is written (so what it writes survives a crash in
 * between); the files it may leave are named in `allowed`, and do not make the directory foreign.
 */
export function claimDataDir(
  dir: string,
  nodeId: number,
  addrs: readonly string[],
  beforeCreate: { run: () => void; allowed: readonly string[] } | null = null,
): void {
  try {
    fs.mkdirSync(dir, { recursive: true });
    fs.accessSync(dir, fs.constants.R_OK | fs.constants.W_OK | fs.constants.X_OK);
  } catch (error) {
    throw new DataDirError(`cannot use data directory ${dir}: ${(error as Error).message}`);
  }
  if (!fs.statSync(dir).isDirectory()) throw new DataDirError(`data directory ${dir} is not a directory`);
  const file = path.join(dir, IDENTITY_FILE);
  const legacy = path.join(dir, LEGACY_IDENTITY_FILE);
  let identity = readIdentity(legacy, (bytes) => JSON.parse(bytes.toString("utf8")));
  if (identity !== null) {
    writeIdentity(dir, file, identity);
    fs.rmSync(legacy);
    fsyncDir(dir);
  } else {
    identity = readIdentity(file, (bytes) => unpack(bytes));
  }
  if (identity === null) {
    // A leftover temp file is a first start that crashed before its rename: not foreign data.
    fs.rmSync(`${file}.tmp`, { force: true });
    const entries = fs.readdirSync(dir).filter((name) => !(beforeCreate?.allowed.includes(name) ?? false));
    if (entries.length > 0) {
      throw new DataDirError(
        `data directory ${dir} is not empty but has no ${IDENTITY_FILE}: it was not made by kvserver ` +
          `(or belongs to something else); choose another -db or empty it`,
      );
    }
    beforeCreate?.run();
    writeIdentity(dir, file, { format: 1, nodeId, addrs: [...addrs] });
    return;
  }
  if (identity.nodeId !== nodeId) {
    throw new DataDirError(
      `data directory ${dir} belongs to node ${identity.nodeId}, not node ${nodeId}: ` +
        `start node ${nodeId} with its own -db (e.g. -db ${dir}-${nodeId})`,
    );
  }
  if (identity.addrs.join(",") !== addrs.join(",")) {
    throw new DataDirError(
      `data directory ${dir} belongs to the cluster -addrs "${identity.addrs.join(",")}", not "${addrs.join(",")}": ` +
        `pass the same -addrs as before, or if the cluster really moved, write ` +
        `{"format":1,"nodeId":${nodeId},"addrs":[...the new addresses]} to ${legacy} (it replaces ${IDENTITY_FILE} at the next start)`,
    );
  }
}

/** The record in `file`, null when there is none; DataDirError when it cannot be read or is damaged. */
function readIdentity(file: string, decode: (bytes: Buffer) => unknown): NodeIdentity | null {
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(file);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw new DataDirError(`cannot read ${file}: ${(error as Error).message}`);
  }
  try {
    const identity = decode(bytes) as NodeIdentity;
    if (
      typeof identity !== "object" ||
      identity === null ||
      identity.format !== 1 ||
      !Number.isInteger(identity.nodeId) ||
      !Array.isArray(identity.addrs) ||
      !identity.addrs.every((a) => typeof a === "string")
    ) {
      throw new Error("unexpected shape");
    }
    return { format: 1, nodeId: identity.nodeId, addrs: [...identity.addrs] };
  } catch (error) {
    throw new DataDirError(`${file} is damaged (${(error as Error).message}); restore it or choose another -db`);
  }
}

/** Writes the record durably: a temp file, fsync, rename, fsync of the directory. */
function writeIdentity(dir: string, file: string, identity: NodeIdentity): void {
  const temp = `${file}.tmp`;
  const fd = fs.openSync(temp, "w");
  try {
    fs.writeSync(fd, pack({ format: identity.format, nodeId: identity.nodeId, addrs: identity.addrs }));
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(temp, file);
  fsyncDir(dir);
}

function fsyncDir(dir: string): void {
  const dirFd = fs.openSync(dir, "r");
  try {
    fs.fsyncSync(dirFd);
  } finally {
    fs.closeSync(dirFd);
  }
}
