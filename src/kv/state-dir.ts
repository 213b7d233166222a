// The state machine's directory: `CURRENT` names the live `state-<n>` LSM directory, so a snapshot
// install builds `state-<n+1>` beside it and switches with one atomic rename (FORMAT.md).
import * as fs from "node:fs";
import * as path from "node:path";
import { KVCorruptionError } from "./errors.ts";

const POINTER_FILE = "CURRENT";
const STATE_DIR = /^state-(\d+)$/;

export function stateDir(dir: string, generation: number): string {
  return path.join(dir, `state-${generation}`);
}

/** The live generation, or null for a directory never used. */
export function readPointer(dir: string): number | null {
  let text: string;
  try {
    text = fs.readFileSync(path.join(dir, POINTER_FILE), "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw error;
  }
  const match = STATE_DIR.exec(text.trim());
  if (match === null) {
    throw new KVCorruptionError(`${path.join(dir, POINTER_FILE)} should name a state-<n> directory but holds ${JSON.stringify(text.slice(0, 40))}`);
  }
  return Number(match[1]);
}

/** Atomically points CURRENT at state-<generation>: write a temp file, fsync, rename, fsync the dir. */
export function writePointer(dir: string, generation: number): void {
  const tmp = path.join(dir, `${POINTER_FILE}.tmp`);
  const fd = fs.openSync(tmp, "w");
  try {
    fs.writeSync(fd, `state-${generation}\n`);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, path.join(dir, POINTER_FILE));
  const dirFd = fs.openSync(dir, "r");
  try {
    fs.fsyncSync(dirFd);
  } finally {
    fs.closeSync(dirFd);
  }
}

/** Removes state directories other than the live one: leftovers of an interrupted install. */
export function removeStaleStates(dir: string, live: number): void {
  for (const name of fs.readdirSync(dir)) {
    const match = STATE_DIR.exec(name);
    if ((match !== null && Number(match[1]) !== live) || name === `${POINTER_FILE}.tmp`) {
      fs.rmSync(path.join(dir, name), { recursive: true, force: true });
    }
  }
}
