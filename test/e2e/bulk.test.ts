// A bulk load through the Clerk's batch API (appendMany: concurrent writes coalesced into Batch
// RPCs, which the leader logs as batch entries) on three real kvserver processes, with the leader
// killed by SIGKILL in the middle: every acknowledged append is there exactly once, none twice.
import { afterAll, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
import { BulkWriteError } from "../../src/kv/client.ts";
import { TestCluster } from "./harness.ts";

setDefaultTimeout(120_000);

const WRITES = 4_000;
const KEYS = 40;

let cluster: TestCluster;
beforeAll(async () => {
  cluster = await TestCluster.start();
  await cluster.waitForLeader();
});
afterAll(async () => {
  await cluster?.destroy();
});

test("a bulk load survives kill -9 of the leader: every acknowledged append exactly once, no append twice", async () => {
  const leader = await cluster.waitForLeader();
  const clerk = cluster.clerk({ maxConcurrency: 512, operationTimeoutMs: 30_000 });
  // Token i goes to key i mod KEYS: many writes per key, so batch entries are cut at repeated keys.
  const pairs = function* (): Generator<[string, string]> {
    for (let i = 0; i < WRITES; i++) yield [`bulk${i % KEYS}`, `${i};`];
  };
  const acked = new Set<string>();
  let failure: unknown = null;
  const load = clerk
    .appendMany(pairs(), { onWritten: (_key, value) => acked.add(value) })
    .catch((error: unknown) => {
      failure = error;
      return -1;
    });
  // Phases advance on progress, not on time: the machine may be slow.
  const waitFor = async (count: number, phase: string) => {
    for (let i = 0; i < 600 && acked.size < count && failure === null; i++) await Bun.sleep(50);
    if (failure === null && acked.size < count) throw new Error(`${phase}: only ${acked.size} of ${count} appends acknowledged within 30 s`);
  };
  await waitFor(WRITES / 4, "before the crash");
  expect(await cluster.kill(leader, "SIGKILL")).not.toBe(0);
  const atCrash = acked.size;
  await waitFor(Math.min(WRITES, atCrash + 200), "with the leader dead");
  await cluster.restart(leader);
  const written = await load;
  // The Clerk rides out a leader change: the load completes. Were it to stop, the check below
  // still holds for what it acknowledged.
  if (failure !== null) expect(failure).toBeInstanceOf(BulkWriteError);
  else expect(written).toBe(WRITES);
  expect(atCrash).toBeLessThan(WRITES);

  const reader = cluster.clerk({ operationTimeoutMs: 30_000 });
  const seen = new Map<string, number>();
  for (let k = 0; k < KEYS; k++) {
    const value = (await reader.get(`bulk${k}`)) ?? "";
    for (const token of value.split(";").filter((t) => t !== "")) {
      expect(Number(token) % KEYS).toBe(k); // only this key's own tokens
      seen.set(`${token};`, (seen.get(`${token};`) ?? 0) + 1);
    }
  }
  const twice = [...seen].filter(([, n]) => n > 1).map(([token]) => token);
  const missing = [...acked].filter((token) => !seen.has(token));
  expect({ twice, missing }).toEqual({ twice: [], missing: [] });
  if (failure === null) expect(seen.size).toBe(WRITES);
});
