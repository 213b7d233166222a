// The cluster id: made once at bootstrap from the member list and --initial-cluster-token (as etcd
// derives its cluster ID), kept in the data directory, and checked on every peer connection.

import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { DataDirError } from "./identity.ts";

export const CLUSTER_ID_FILE = "KVRAFT_CLUSTER_ID";
export const DEFAULT_CLUSTER_TOKEN = "kvraft-cluster";

/** The id a cluster bootstrapped with these addresses and token gets: 16 hex digits. */
export function deriveClusterId(addrs: readonly string[], token: string): string {
  return createHash("sha256").update(`kvraft cluster id v1\0${token}\0${addrs.join(",")}`).digest("hex").slice(0, 16);
}

/**
 * The cluster id of a joining node's data directory: the one it was given (kvserver --join learns
 * it from a member), written durably on the first start; on a restart (null) the stored one.
 */
export function adoptClusterId(dir: string, given: string | null): string {
  const file = path.join(dir, CLUSTER_ID_FILE);
  const stored = fs.existsSync(file) ? clusterIdOf(dir, [], DEFAULT_CLUSTER_TOKEN) : null;
  if (given === null) {
    if (stored === null) throw new DataDirError(`${dir} has no ${CLUSTER_ID_FILE}: this node never joined; start it with --join pointing at a member`);
    return stored;
  }
  if (!/^[0-9a-f]{16}$/.test(given)) throw new DataDirError(`cluster id "${given}" is not 16 hex digits`);
  if (stored !== null && stored !== given) {
    throw new DataDirError(`data directory ${dir} belongs to cluster ${stored}, but the cluster to join is ${given}: use an empty -db to join`);
  }
  if (stored === null) writeClusterId(dir, given);
  return given;
}

/**
 * The cluster id of a claimed data directory: read back, or on the first start derived and
 * written durably. The token matters only then (as etcd's --initial-cluster-token).
 */
export function clusterIdOf(dir: string, addrs: readonly string[], token: string): string {
  const file = path.join(dir, CLUSTER_ID_FILE);
  try {
    const text = fs.readFileSync(file, "utf8").trim();
    if (!/^[0-9a-f]{16}$/.test(text)) throw new DataDirError(`${file} is damaged (not 16 hex digits); restore it from another node's data directory`);
    return text;
  } catch (error) {
    if (error instanceof DataDirError) throw error;
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw new DataDirError(`cannot read ${file}: ${(error as Error).message}`);
  }
  const id = deriveClusterId(addrs, token);
  writeClusterId(dir, id);
  return id;
}

function writeClusterId(dir: string, id: string): void {
  const file = path.join(dir, CLUSTER_ID_FILE);
  const temp = `${file}.tmp`;
  const fd = fs.openSync(temp, "w");
  try {
    fs.writeSync(fd, `${id}\n`);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(temp, file);
  const dirFd = fs.openSync(dir, "r");
  try {
    fs.fsyncSync(dirFd);
  } finally {
    fs.closeSync(dirFd);
  }
}
