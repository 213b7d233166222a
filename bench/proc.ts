// Child processes of a bench run: spawning with a registry so every child is killed by PID at the
// end or on Ctrl-C, CPU time and RSS read from /proc/<pid>, free loopback ports, temp dirs.

import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import type { Subprocess } from "bun";

/** Clock ticks per second for /proc/<pid>/stat utime and stime (USER_HZ, 100 on Linux). */
const CLOCK_TICKS = 100;

const children = new Set<Subprocess>();
const tempDirs = new Set<string>();
let handlersInstalled = false;

function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on("exit", () => {
    killAllChildren();
    removeTempDirs();
  });
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.on(signal, () => {
      process.stderr.write(`\nbench: ${signal}, stopping ${children.size} child process(es)\n`);
      killAllChildren();
      removeTempDirs();
      process.exit(130);
    });
  }
}

export interface SpawnOptions {
  cwd?: string;
  env?: Record<string, string | undefined>;
  /** Where the child's output goes: "ignore", "inherit", or a file path (appended). */
  output?: "ignore" | "inherit" | string;
  stdout?: "pipe";
  /** "pipe": the parent writes the child's stdin (default: none). */
  stdin?: "pipe";
}

/** Spawns a tracked child; it is killed by PID when the bench exits, whatever the reason. */
export function spawnTracked(cmd: string[], options: SpawnOptions = {}): Subprocess {
  installHandlers();
  const target = options.output ?? "ignore";
  const out: "ignore" | "inherit" | number = target === "ignore" || target === "inherit" ? target : fs.openSync(target, "a");
  const child = Bun.spawn(cmd, {
    cwd: options.cwd,
    env: options.env ? { ...process.env, ...options.env } : process.env,
    stdin: options.stdin ?? "ignore",
    stdout: options.stdout ?? out,
    stderr: out,
  });
  if (typeof out === "number") fs.closeSync(out);
  children.add(child);
  void child.exited.then(() => children.delete(child));
  return child;
}

/** SIGTERM, then SIGKILL after `graceMs` if still alive; resolves when the child has exited. */
export async function stopChild(child: Subprocess, graceMs = 3000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGTERM");
  const timer = setTimeout(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  }, graceMs);
  await child.exited;
  clearTimeout(timer);
  children.delete(child);
}

export function killAllChildren(): void {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(child.pid, "SIGKILL");
      } catch {
        // Already gone between the check and the kill.
      }
    }
  }
  children.clear();
}

export function makeTempDir(prefix: string): string {
  installHandlers();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `kvraft-bench-${prefix}-`));
  tempDirs.add(dir);
  return dir;
}

export function removeTempDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
  tempDirs.delete(dir);
}

function removeTempDirs(): void {
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}

/** Total user+system CPU seconds a process has used, or null if it is gone. */
export function cpuSeconds(pid: number): number | null {
  let stat: string;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return null;
  }
  // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // After the name: state is field 3, so utime (14) and stime (15) are at offsets 11 and 12.
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) return null;
  return (utime + stime) / CLOCK_TICKS;
}

/** Resident set size and its peak (VmHWM) in bytes, from /proc/<pid>/status; null if gone. */
export function memoryOf(pid: number): { rss: number; peakRss: number } | null {
  let status: string;
  try {
    status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  } catch {
    return null;
  }
  const kib = (name: string) => {
    const m = status.match(new RegExp(`^${name}:\\s+(\\d+) kB`, "m"));
    return m ? Number(m[1]) * 1024 : 0;
  };
  return { rss: kib("VmRSS"), peakRss: kib("VmHWM") };
}

/** A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      if (address === null || typeof address === "string") {
        server.close();
        reject(new Error("could not read the port of a probe listener"));
        return;
      }
      server.close(() => resolve(address.port));
    });
  });
}

/** Distinct free ports (the OS could hand the same port twice in a row; this never does). */
export async function freePorts(n: number): Promise<number[]> {
  const ports = new Set<number>();
  for (let attempt = 0; ports.size < n && attempt < n * 20; attempt++) ports.add(await freePort());
  if (ports.size < n) throw new Error(`could not find ${n} distinct free ports on 127.0.0.1`);
  return [...ports];
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Polls `check` until it returns a value or `timeoutMs` passes (then throws with `what`). Errors
 * from `check` are retried, except those marked `fatal: true`, which end the wait at once.
 */
export async function waitFor<T>(what: string, timeoutMs: number, check: () => Promise<T | null>): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  let lastError: unknown = null;
  while (performance.now() < deadline) {
    try {
      const v = await check();
      if (v !== null) return v;
    } catch (e) {
      if (e instanceof Error && "fatal" in e && e.fatal === true) throw e;
      lastError = e;
    }
    await sleep(50);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `: ${String(lastError)}` : ""}`);
}
