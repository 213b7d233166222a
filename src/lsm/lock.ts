// Exclusive ownership of a database directory: an advisory flock(2) on `LOCK`, held by the open
// file descriptor, so the kernel releases it when the process dies, whatever PIDs are reused.
import * as fs from "node:fs";
import * as path from "node:path";
import { LsmError, ioError } from "./errors.ts";
import { flockExclusive } from "./flock.ts";

// flock conflicts between two descriptors of one process too; the registry only makes the
// message for that case say "this process".
const REGISTRY_KEY = Symbol.for("kvraft.lsm.openDirectories");
const registry: Set<string> = ((globalThis as Record<symbol, unknown>)[REGISTRY_KEY] as Set<string>) ??
  ((globalThis as Record<symbol, unknown>)[REGISTRY_KEY] = new Set<string>());

export class DirLock {
  private released = false;
  private constructor(readonly dir: string, private readonly fd: number) {}

  /**
   * Locks `dir` or throws LsmError("LOCKED") naming the directory. The LOCK file is never deleted
   * (deleting it would let a second opener lock a fresh inode while the first still holds the old
   * one); the PID written into it is for the operator's eyes only and decides nothing.
   */
  static acquire(dir: string): DirLock {
    const real = fs.realpathSync(dir);
    if (registry.has(real)) {
      throw new LsmError("LOCKED", `${dir} is already open in this process; close the other DB first`, "LOCK");
    }
    const lockPath = path.join(real, "LOCK");
    let fd: number;
    try {
      fd = fs.openSync(lockPath, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644);
    } catch (e) {
      throw ioError(lockPath, "open", e);
    }
    let outcome: "locked" | "busy";
    try {
      outcome = flockExclusive(fd);
    } catch (e) {
      fs.closeSync(fd);
      throw ioError(lockPath, "flock", e);
    }
    if (outcome === "busy") {
      let holder = "";
      try {
        const pid = Number.parseInt(fs.readFileSync(lockPath, "utf8"), 10);
        if (Number.isInteger(pid)) holder = ` (its LOCK file names process ${pid})`;
      } catch {}
      fs.closeSync(fd);
      throw new LsmError(
        "LOCKED",
        `${dir} is locked by another live process${holder}; stop that process or open another directory`,
        "LOCK",
      );
    }
    try {
      fs.ftruncateSync(fd, 0);
      fs.writeSync(fd, `${process.pid}\n`, 0);
    } catch {
      // Informational only: the flock is what holds the directory.
    }
    registry.add(real);
    return new DirLock(real, fd);
  }

  /** Closing the descriptor drops the flock. */
  release(): void {
    if (this.released) return;
    this.released = true;
    registry.delete(this.dir);
    try {
      fs.closeSync(this.fd);
    } catch {}
  }
}
