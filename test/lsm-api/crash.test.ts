// Crash test of the LSM: a child process writes counter-keyed entries and is killed with SIGKILL at
// random moments, round after round on one directory. After each kill the database must hold
// every acknowledged write, no holes (every counter below the highest present one is present),
// and only the values that were written. Replay the kill schedule with LSM_CRASH_SEED=<seed>.
import { afterAll, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DB } from "../../src/lsm/index.ts";
import { counterOfKey, crashKey, crashValue, CRASH_ENGINE_OPTIONS } from "./crash-format.ts";

const WRITER = join(import.meta.dir, "crash-writer.ts");
const READY_TIMEOUT_MS = 20_000;
const TOTAL_BUDGET_MS = 60_000;

interface Round {
  mode: "sync" | "nosync";
  writers: number;
}
// Synced single writer (the WAL append + fsync path), concurrent synced writers (group commit),
// and unsynced writes: a process crash must not lose them either, as they reached the OS.
const ROUNDS: Round[] = [
  ...Array.from({ length: 7 }, (): Round => ({ mode: "sync", writers: 1 })),
  ...Array.from({ length: 3 }, (): Round => ({ mode: "sync", writers: 8 })),
  ...Array.from({ length: 4 }, (): Round => ({ mode: "nosync", writers: 1 })),
  { mode: "nosync", writers: 8 },
];

const dirs: string[] = [];
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function makeRandom(seed: number): (n: number) => number {
  let state = seed >>> 0 || 1;
  return (n) => {
    // xorshift32
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state % n;
  };
}

/** Resolves once the child printed "ready" (the database is open and writes begin). */
async function waitForReady(stdout: ReadableStream<Uint8Array>): Promise<boolean> {
  const reader = stdout.getReader();
  const decoder = new TextDecoder();
  let seen = "";
  const timeout = new Promise<"timeout">((resolve) => setTimeout(() => resolve("timeout"), READY_TIMEOUT_MS));
  try {
    while (!seen.includes("ready\n")) {
      const chunk = await Promise.race([reader.read(), timeout]);
      if (chunk === "timeout" || chunk.done) return false;
      seen += decoder.decode(chunk.value, { stream: true });
    }
    return true;
  } finally {
    reader.releaseLock();
  }
}

function readAcks(ackFile: string): number[] {
  if (!existsSync(ackFile)) return [];
  const text = readFileSync(ackFile, "utf8");
  // A kill cannot split one write(2) of a few bytes, but keep only complete lines regardless.
  const lines = text.split("\n");
  lines.pop();
  return lines.map(Number);
}

/** Opens the directory and checks it holds exactly counters 0..n-1 with their values; returns n. */
async function verify(dir: string, highestAcked: number, context: string): Promise<number> {
  const db = await DB.open(dir, CRASH_ENGINE_OPTIONS);
  try {
    let expected = 0;
    for await (const [key, value] of db.iterator({})) {
      const counter = counterOfKey(key);
      if (counter !== expected) {
        throw new Error(`${context}: expected counter ${expected} next, found key ${new TextDecoder().decode(key)} (a hole or a stray key)`);
      }
      if (Buffer.compare(value, crashValue(counter)) !== 0) {
        throw new Error(`${context}: counter ${counter} has a wrong value (${value.length} bytes)`);
      }
      expected++;
    }
    if (expected - 1 < highestAcked) {
      throw new Error(`${context}: acknowledged counter ${highestAcked} is missing; only 0..${expected - 1} are present`);
    }
    // The point-read path must agree with the scan at the edge of what survived.
    if (highestAcked >= 0) {
      const value = await db.get(crashKey(highestAcked));
      if (value === undefined || Buffer.compare(value, crashValue(highestAcked)) !== 0) {
        throw new Error(`${context}: get() of acknowledged counter ${highestAcked} disagrees with the scan`);
      }
    }
    if ((await db.get(crashKey(expected))) !== undefined) {
      throw new Error(`${context}: get() finds counter ${expected}, which the scan did not return`);
    }
    return expected;
  } finally {
    await db.close();
  }
}

test("acknowledged writes survive SIGKILL at random moments (sync, group commit, unsynced)", async () => {
  const seed = process.env.LSM_CRASH_SEED !== undefined ? Number(process.env.LSM_CRASH_SEED) : (Math.random() * 2 ** 32) >>> 0;
  const random = makeRandom(seed);
  const dir = mkdtempSync(join(tmpdir(), "lsm-crash-"));
  dirs.push(dir);
  const started = performance.now();
  let present = 0;
  let highestAcked = -1;
  let totalAcked = 0;
  const log: string[] = [];

  try {
    for (let index = 0; index < ROUNDS.length; index++) {
      if (performance.now() - started > TOTAL_BUDGET_MS) {
        log.push(`stopped after ${index} rounds: time budget spent`);
        break;
      }
      const round = ROUNDS[index];
      const context = `seed ${seed}, round ${index} (${round.mode}, ${round.writers} writer(s))`;
      const ackFile = join(dir, `acks-${index}.txt`);
      const child = Bun.spawn(["bun", WRITER, join(dir, "db"), ackFile, String(present), round.mode, String(round.writers)], {
        stdout: "pipe",
        stderr: "pipe",
      });
      const ready = await waitForReady(child.stdout);
      if (ready) await Bun.sleep(20 + random(800));
      child.kill("SIGKILL");
      await child.exited;
      if (!ready || child.signalCode !== "SIGKILL") {
        const stderr = await new Response(child.stderr).text();
        throw new Error(`${context}: writer ${ready ? `exited on its own (code ${child.exitCode})` : "never became ready"}: ${stderr.slice(-2000)}`);
      }

      const acks = readAcks(ackFile);
      for (const counter of acks) highestAcked = Math.max(highestAcked, counter);
      totalAcked += acks.length;
      present = await verify(join(dir, "db"), highestAcked, context);
      log.push(`round ${index} ${round.mode}×${round.writers}: ${acks.length} acked, ${present} present`);
    }
  } catch (error) {
    console.error(`LSM crash test failed: replay the kill schedule with LSM_CRASH_SEED=${seed}\n${log.join("\n")}`);
    throw error;
  }
  console.log(`crash test seed ${seed}: ${totalAcked} acknowledged writes over ${log.length} rounds\n${log.join("\n")}`);
  expect(totalAcked).toBeGreaterThan(0);
  expect(present).toBeGreaterThan(highestAcked);
}, 120_000);
