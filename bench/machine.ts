// What a bench result was measured on: cores, memory, CPU model, kernel, load, and the versions of
// Bun, classic-level/LevelDB and etcd, so numbers from different runs can be told apart.

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

export interface MachineInfo {
  cores: number;
  cpuModel: string;
  memoryBytes: number;
  kernel: string;
  loadAverage: number[];
}

export interface Versions {
  bun: string;
  classicLevel: string | null;
  leveldb: string | null;
  etcd: string | null;
  kvraft: string;
  /** The commit measured, with "+dirty" when the working tree has changes. */
  commit: string | null;
}

export function machineInfo(): MachineInfo {
  const cpus = os.cpus();
  return {
    cores: cpus.length,
    cpuModel: cpus[0]?.model?.trim() || "unknown",
    memoryBytes: os.totalmem(),
    kernel: `${os.type()} ${os.release()}`,
    loadAverage: os.loadavg().map((l) => Math.round(l * 100) / 100),
  };
}

const ROOT = path.resolve(import.meta.dir, "..");

function packageVersion(dir: string): string | null {
  try {
    return JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8")).version ?? null;
  } catch {
    return null;
  }
}

/** LevelDB's version from the headers classic-level builds against (kMajorVersion.kMinorVersion). */
function leveldbVersion(): string | null {
  const deps = path.join(ROOT, "node_modules/classic-level/deps/leveldb");
  try {
    for (const entry of fs.readdirSync(deps)) {
      const header = path.join(deps, entry, "include/leveldb/db.h");
      if (!fs.existsSync(header)) continue;
      const text = fs.readFileSync(header, "utf8");
      const major = text.match(/kMajorVersion = (\d+)/)?.[1];
      const minor = text.match(/kMinorVersion = (\d+)/)?.[1];
      if (major && minor) return `${major}.${minor}`;
    }
  } catch {
    // No sources shipped: report unknown rather than guess.
  }
  return null;
}

/** The etcd binary on PATH, or null. */
export function etcdBinary(): string | null {
  return Bun.which("etcd");
}

export function etcdVersion(): string | null {
  const bin = etcdBinary();
  if (!bin) return null;
  const out = Bun.spawnSync([bin, "--version"], { stdout: "pipe", stderr: "ignore" });
  return out.stdout.toString().match(/etcd Version:\s*(\S+)/)?.[1] ?? null;
}

function gitCommit(): string | null {
  const head = Bun.spawnSync(["git", "rev-parse", "--short", "HEAD"], { cwd: ROOT, stdout: "pipe", stderr: "ignore" });
  if (head.exitCode !== 0) return null;
  const dirty = Bun.spawnSync(["git", "status", "--porcelain", "--untracked-files=no"], { cwd: ROOT, stdout: "pipe", stderr: "ignore" });
  return head.stdout.toString().trim() + (dirty.stdout.toString().trim() ? "+dirty" : "");
}

export function versions(): Versions {
  return {
    bun: Bun.version,
    classicLevel: packageVersion(path.join(ROOT, "node_modules/classic-level")),
    leveldb: leveldbVersion(),
    etcd: etcdVersion(),
    kvraft: packageVersion(ROOT) ?? "unknown",
    commit: gitCommit(),
  };
}

export function describeMachine(m: MachineInfo, v: Versions): string {
  const gib = (m.memoryBytes / 1024 ** 3).toFixed(1);
  return [
    `machine: ${m.cores} cores, ${gib} GiB, ${m.cpuModel}, ${m.kernel}, load ${m.loadAverage.join(" ")}`,
    `versions: Bun ${v.bun}, classic-level ${v.classicLevel ?? "absent"} (LevelDB ${v.leveldb ?? "?"}), etcd ${v.etcd ?? "not on PATH"}, kvraft ${v.kvraft} (${v.commit ?? "no git"})`,
  ].join("\n");
}
