// Shared by the scenario files: the 6.824 GenericTest run with its checks turned into assertions.
import { expect } from "bun:test";
import { runWorkload, type WorkloadOptions } from "../../src/sim/kv/workload.ts";

/** Per-test limit: scenarios take a few seconds; this only stops a hung one. */
export const TIMEOUT = 60_000;

const base = { seed: 1, servers: 5, clients: 1, unreliable: false, crash: false, partitions: false, randomKeys: false, iterations: 3, iterationMs: 2000, opsPerIteration: 300 };

/** Runs the 6.824 GenericTest workload and asserts it found nothing wrong. */
export async function generic(options: Partial<WorkloadOptions>, minOperations = 20): Promise<void> {
  const result = await runWorkload({ ...base, ...options });
  if (result.failures.length > 0) {
    throw new Error(`seed ${options.seed ?? base.seed}: ${result.failures.length} problem(s):\n${result.failures.slice(0, 10).join("\n")}`);
  }
  expect(result.check.result).toBe("ok");
  expect(result.operations).toBeGreaterThanOrEqual(minOperations);
  if (!(options.randomKeys ?? false)) expect(result.appendsAudited).toBeGreaterThan(0);
}

