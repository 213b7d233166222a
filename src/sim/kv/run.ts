// runKvSim, the `sim --kv` entry: the randomized workload under every fault, with its families
// (--sessions, --api, --batch), summed up in one replayable line ending `ok hash=<hex>` or `FAIL …`.
import { runWorkload } from "./workload.ts";

export interface KvSimOptions {
  seed: number;
  nodes: number;
  /** Client operations to run (spread over three crash/restart rounds). */
  steps: number;
  /**
   * Extra flags: `--sessions` runs the session family: every client writes under a registered
   * session, the table holds 3 sessions for 5 clients and sessions expire after 300 ms of log
   * time, so registrations are refused, sessions expire mid-retry and clients register again.
   * `--batch`: clients also send Batch RPCs of 2-6 appends and Gets (batch entries in the log,
   * cut at repeated keys), every command exactly once through its own session slot.
   */
  extra?: string[];
}

/**
 * Randomized client load under every fault (unreliable network, partitions, crashes, snapshots),
 * checked for linearizability. The line ends `ok hash=<hex>` or `FAIL … hash=<hex>`; one seed
 * replays one run, byte for byte (test/kv/sim-determinism.test.ts).
 */
export async function runKvSim(options: KvSimOptions): Promise<{ line: string; ok: boolean }> {
  const iterations = 3;
  const sessions = options.extra?.includes("--sessions") ?? false;
  const apiOps = options.extra?.includes("--api") ?? false;
  const batch = options.extra?.includes("--batch") ?? false;
  const result = await runWorkload({
    seed: options.seed,
    servers: options.nodes,
    clients: 5,
    unreliable: true,
    crash: true,
    partitions: true,
    randomKeys: true,
    iterations,
    iterationMs: 20_000,
    opsPerIteration: Math.max(1, Math.ceil(options.steps / iterations)),
    snapshotThreshold: 50,
    ...(sessions ? { registered: true, state: { sessionTtlMs: 300, maxSessions: 3 }, idle: { chance: 0.2, ms: 400 } } : {}),
    ...(apiOps ? { api: true } : {}),
    ...(batch ? { batch: true } : {}),
  });
  const ok = result.failures.length === 0;
  const summary =
    `kv ${sessions ? "sessions " : ""}${apiOps ? "api " : ""}${batch ? "batch " : ""}${options.nodes} nodes, ${result.operations} ops, ${result.crashes} crashes (${result.laggingLeaderCrashes} of a leader with unsynced applied entries: ${result.appliedThenLost}), ${result.partitions} partitions, ` +
    (sessions
      ? `${result.sessionEvents.registrationsRefused} registrations refused, ${result.sessionEvents.expiredRefusals} writes refused as session-expired ` +
        `(${result.sessionEvents.uncertainWrites} outcomes unknown), `
      : "") +
    `${result.snapshotsInstalled} snapshots installed, ${result.appendsAudited > 0 ? `${result.appendsAudited} appends audited, ` : ""}` +
    `${result.replayBreaks > 0 ? `NOT REPLAYABLE (${result.replayBreaks} waits on real I/O timed out), ` : ""}` +
    `history ${result.check.result === "ok" ? "linearizable" : result.check.result}`;
  const line = ok
    ? `seed ${options.seed}: ${summary} ok hash=${result.hash}`
    : `seed ${options.seed}: ${summary} FAIL ${result.failures[0]} hash=${result.hash}`;
  return { line, ok };
}
