// Exclusive ownership of a database directory: a LOCK file holding the owner's PID (another
// live process holding it refuses the open) plus an in-process registry (a second DB.open of the
// same directory in this process refuses too).
import * as fs from "node:fs";
import * as path from "node:path";
import { LsmError, ioError } from "./errors.ts";

const REGISTRY_KEY = Symbol.for("kvraft.lsm.openDirectories");
const registry: Set<string> = ((globalThis as Record<symbol, unknown>)[REGISTRY_KEY] as Set<string>) ??
  ((globalThis as Record<symbol, unknown>)[REGISTRY_KEY] = new Set<string>());

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

export class DirLock {
  private released = false;
  private constructor(readonly dir: string, private readonly lockPath: string) {}

  static acquire(dir: string): DirLock {
    const real = fs.realpathSync(dir);
    if (registry.has(real)) {
      throw new LsmError("LOCKED", `${dir} is already open in this process; close the other DB first`, "LOCK");
    }
    const lockPath = path.join(real, "LOCK");
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fd = fs.openSync(lockPath, "wx");
        try {
          fs.writeSync(fd, `${process.pid}\n`);
        } finally {
          fs.closeSync(fd);
        }
        registry.add(real);
        return new DirLock(real, lockPath);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw ioError("LOCK", "create", e);
      }
      let owner = NaN;
      try {
        owner = Number.parseInt(fs.readFileSync(lockPath, "utf8"), 10);
      } catch {}
      if (Number.isInteger(owner) && owner !== process.pid && alive(owner)) {
        throw new LsmError("LOCKED", `${dir} is locked by process ${owner}; stop it or open another directory`, "LOCK");
      }
      // Left by a process that died (or by this process without close): take it over.
      try {
        fs.unlinkSync(lockPath);
      } catch {}
    }
    throw new LsmError("LOCKED", `${dir}: another process raced for the LOCK file`, "LOCK");
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    registry.delete(this.dir);
    try {
      fs.unlinkSync(this.lockPath);
    } catch {}
  }
}
