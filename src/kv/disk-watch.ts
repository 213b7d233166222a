// DiskWatch: notices what no write would notice soon enough. A data directory deleted or replaced
// under the running node (open files keep working, so nothing fails until the next new file), one
// that stopped being writable, and a disk running out of space.
import * as fs from "node:fs";
import { OverloadedError } from "./errors.ts";
import { FatalError, errnoOf } from "./fail-stop.ts";

export interface DiskWatchOptions {
  /** The node's data directory. */
  dir: string;
  /** Writes are refused with resource_exhausted while fewer bytes than this are free. Default 128 MiB. */
  minFreeBytes?: number;
  /** How often the directory is checked. Default 1000 ms. */
  intervalMs?: number;
  /** How long the directory may stay unwritable before the node stops. Default 5000 ms. */
  unwritableGraceMs?: number;
}

export class DiskWatch {
  private timer: ReturnType<typeof setInterval> | null = null;
  private readonly identity: { dev: number; ino: number };
  private readonly minFreeBytes: number;
  private readonly graceMs: number;
  /** Why writes are refused right now ("" when they are not). */
  private lowSpace = "";
  private unwritable = "";
  private unwritableSince = 0;

  constructor(
    private readonly options: DiskWatchOptions,
    private readonly onFatal: (error: FatalError) => void,
  ) {
    const st = fs.statSync(options.dir);
    this.identity = { dev: st.dev, ino: st.ino };
    this.minFreeBytes = options.minFreeBytes ?? 128 << 20;
    this.graceMs = options.unwritableGraceMs ?? 5000;
  }

  start(): void {
    this.check();
    this.timer = setInterval(() => this.check(), this.options.intervalMs ?? 1000);
    this.timer.unref?.();
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  /** A condition an operator should see in GetStatus ("" when the disk is healthy). */
  health(): string {
    return [this.unwritable, this.lowSpace].filter((s) => s !== "").join("; ");
  }

  /** The refusal for a new write while space is short, or null. Reads never ask. */
  writeRefusal(): OverloadedError | null {
    if (this.lowSpace === "") return null;
    return new OverloadedError(`${this.lowSpace}; writes are refused until space is freed (reads go on)`);
  }

  /** One check; public so a test (or a write that failed) can run it at once. */
  check(): void {
    const dir = this.options.dir;
    let st: fs.Stats;
    try {
      st = fs.statSync(dir);
    } catch (error) {
      return this.fatal(`data directory ${dir} is gone (${errnoOf(error) ?? (error as Error).message})`, "restore it, or recreate it empty and restart the node so it catches up from the leader", error);
    }
    if (st.dev !== this.identity.dev || st.ino !== this.identity.ino) {
      return this.fatal(`data directory ${dir} was replaced under the running node (another inode)`, "restart the node on the directory it should use", null);
    }
    try {
      fs.accessSync(dir, fs.constants.W_OK);
      this.unwritable = "";
    } catch (error) {
      const now = Date.now();
      if (this.unwritable === "") this.unwritableSince = now;
      this.unwritable = `data directory ${dir} is not writable (${errnoOf(error) ?? (error as Error).message})`;
      if (now - this.unwritableSince >= this.graceMs) {
        return this.fatal(`${this.unwritable} for ${now - this.unwritableSince} ms`, "make it writable again (permissions, read-only mount), then restart the node", error);
      }
    }
    try {
      const s = fs.statfsSync(dir);
      const free = Number(s.bavail) * Number(s.bsize);
      // Refuse below the floor; accept again only with some room above it, so writes do not flap.
      if (free < this.minFreeBytes) this.lowSpace = `disk of ${dir} is nearly full: ${free} bytes free, ${this.minFreeBytes} kept in reserve`;
      else if (free >= this.minFreeBytes * 1.25) this.lowSpace = "";
    } catch {
      // statfs unsupported here: space is not watched, a real ENOSPC still stops the node loudly.
    }
  }

  private fatal(what: string, advice: string, cause: unknown): void {
    this.stop();
    this.onFatal(new FatalError(`${what}; ${advice}`, this.options.dir, undefined, { cause }));
  }
}
