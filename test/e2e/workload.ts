// A bounded concurrent workload for e2e tests: several Clerks append unique tokens and read keys,
// recording every operation (call/return times, outcome) for the linearizability checker.
import type { Operation } from "../../src/sim/check/index.ts";
import { ClerkError, type Clerk } from "../../src/kv/client.ts";

export interface WorkloadResult {
  history: Operation[];
  /** Appends that were acknowledged, per key. */
  acked: Map<string, string[]>;
  /** Appends whose outcome is unknown (timed out), per key. */
  unknown: Map<string, string[]>;
  errors: string[];
}

/**
 * Runs `clerks.length` clients until `stop()` resolves or `maxOpsPerClient` is reached. Values are
 * unique tokens like "<c2.17>" so an append applied twice, or lost, is visible in the final value.
 */
export async function runWorkload(options: {
  clerks: Clerk[];
  keys: string[];
  stop: Promise<void>;
  maxOpsPerClient: number;
  /** A pause after each operation: paces a long-running workload so its op budget lasts. */
  pauseMs?: number;
  /** Counts acknowledged appends as they happen, so a test can wait for progress. */
  progress?: { acked: number };
}): Promise<WorkloadResult> {
  const result: WorkloadResult = { history: [], acked: new Map(), unknown: new Map(), errors: [] };
  const progress = options.progress ?? { acked: 0 };
  let stopped = false;
  void options.stop.then(() => (stopped = true));
  const push = (map: Map<string, string[]>, key: string, token: string) => {
    const list = map.get(key);
    if (list === undefined) map.set(key, [token]);
    else list.push(token);
  };
  await Promise.all(
    options.clerks.map(async (clerk, c) => {
      for (let i = 0; i < options.maxOpsPerClient && !stopped; i++) {
        const key = options.keys[(c + i) % options.keys.length]!;
        const isRead = i % 3 === 2;
        const token = `<c${c}.${i}>`;
        const call = performance.now();
        try {
          if (isRead) {
            const value = await clerk.get(key);
            result.history.push({
              clientId: c,
              input: { op: "Get", key, value: "" },
              output: value === null ? { err: "ErrNoKey", value: "" } : { err: "OK", value },
              call,
              return: performance.now(),
            });
          } else {
            await clerk.append(key, token);
            result.history.push({ clientId: c, input: { op: "Append", key, value: token }, output: { err: "OK", value: "" }, call, return: performance.now() });
            push(result.acked, key, token);
            progress.acked++;
          }
        } catch (error) {
          if (!(error instanceof ClerkError) || !error.outcomeUnknown) throw error;
          result.errors.push(error.message);
          result.history.push({
            clientId: c,
            input: { op: isRead ? "Get" : "Append", key, value: isRead ? "" : token },
            output: null,
            call,
            return: Infinity,
          });
          if (!isRead) push(result.unknown, key, token);
        }
        if (options.pauseMs) await Bun.sleep(options.pauseMs);
      }
    }),
  );
  return result;
}

/** Every acknowledged token appears exactly once in the final value; an unknown one at most once. */
export function checkAppends(finalValues: Map<string, string | null>, result: WorkloadResult): string[] {
  const problems: string[] = [];
  for (const [key, value] of finalValues) {
    const text = value ?? "";
    const count = (token: string) => text.split(token).length - 1;
    for (const token of result.acked.get(key) ?? []) {
      if (count(token) !== 1) problems.push(`${key}: acknowledged ${token} appears ${count(token)} times`);
    }
    for (const token of result.unknown.get(key) ?? []) {
      if (count(token) > 1) problems.push(`${key}: ${token} appears ${count(token)} times`);
    }
  }
  return problems;
}
