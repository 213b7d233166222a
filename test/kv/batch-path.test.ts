// KVServer.batch on a simulated 3-node cluster with real LSMs: a Batch's writes become batch
// entries cut at a repeated key and at maxBatchEntryBytes (seen in the revisions each key gets),
// each command answered alone (refusals next to answers), and a repeated batch applies nothing.
import { describe, expect, test } from "bun:test";
import { InvalidArgumentError, type CommandArgs, type CommandReply, type KVLimits } from "../../src/kv/index.ts";
import type { BatchAnswer } from "../../src/kv/server.ts";
import { KvSimCluster } from "../../src/sim/kv/cluster.ts";

const TIMEOUT = 60_000;
const bytes = (text: string) => new TextEncoder().encode(text);

async function withLeader(limits: KVLimits | undefined, fn: (cluster: KvSimCluster, leader: number) => Promise<void>): Promise<void> {
  const cluster = await KvSimCluster.start({ servers: 3, seed: 12, limits });
  try {
    for (let attempt = 0; attempt < 500; attempt++) {
      for (const [i, server] of cluster.servers.entries()) {
        if (server !== null && (await server.getStatus()).state === "Leader") return await fn(cluster, i);
      }
      await cluster.run(10);
    }
    throw new Error("no leader");
  } finally {
    await cluster.close();
  }
}

const write = (op: "Put" | "Append", key: string, value: string, clientId: bigint, commandId = 1n): CommandArgs => ({ op, key, value, clientId, commandId });

async function revisions(cluster: KvSimCluster, leader: number, keys: string[]): Promise<Record<string, [number, number]>> {
  const reply = await cluster.untilReal(cluster.servers[leader]!.api.range({ key: bytes("a"), rangeEnd: bytes("z"), limit: 0, keysOnly: true, countOnly: false }, false));
  const out: Record<string, [number, number]> = {};
  for (const kv of reply.result!.kvs) {
    const key = new TextDecoder().decode(kv.key);
    if (keys.includes(key)) out[key] = [kv.modRevision, kv.version];
  }
  return out;
}

describe("KVServer.batch", () => {
  test("writes go in batch entries, cut where a key repeats: one revision per entry, each key changed once per revision", () =>
    withLeader(undefined, async (cluster, leader) => {
      const server = cluster.servers[leader]!;
      const answers: BatchAnswer[] = await cluster.untilReal(
        server.batch([
          write("Put", "a", "1", 1n),
          write("Put", "b", "1", 2n),
          write("Append", "a", "2", 3n), // a again: a second entry starts here
          write("Put", "c", "1", 4n),
          { op: "Put", key: "d", value: "1", clientId: 5n, commandId: -1n }, // refused alone
          { op: "Get", key: "b", value: "", clientId: 0n, commandId: 0n },
        ]),
      );
      expect(answers.slice(0, 4)).toEqual([{ err: "OK", value: "" }, { err: "OK", value: "" }, { err: "OK", value: "" }, { err: "OK", value: "" }]);
      expect(answers[4]).toBeInstanceOf(InvalidArgumentError);
      expect(["OK", "ErrNoKey"]).toContain((answers[5] as CommandReply).err);
      const r = await revisions(cluster, leader, ["a", "b", "c", "d"]);
      expect(r.d).toBeUndefined();
      expect(r.a![1]).toBe(2);
      expect(r.c![0]).toBe(r.a![0]); // c rode with the second a
      expect(r.a![0]).toBe(r.b![0] + 1); // the two entries are consecutive
      expect(cluster.servers[leader]!.readLocal("a")).toBe("12");
    }),
  TIMEOUT);

  test("entries stay under maxBatchEntryBytes; the same batch again is answered from the sessions, not logged", () =>
    withLeader({ maxBatchEntryBytes: 200 }, async (cluster, leader) => {
      const server = cluster.servers[leader]!;
      // Each write takes 26 + 2 + 50 bytes of an entry whose header is 39: two fit in 200, three do not.
      const batch = ["e1", "e2", "e3", "e4", "e5"].map((key, i) => write("Put", key, "v".repeat(50), BigInt(10 + i)));
      expect((await cluster.untilReal(server.batch(batch))).every((a) => (a as CommandReply).err === "OK")).toBe(true);
      const r = await revisions(cluster, leader, ["e1", "e2", "e3", "e4", "e5"]);
      const first = r.e1![0];
      expect(["e1", "e2", "e3", "e4", "e5"].map((k) => r[k]![0] - first)).toEqual([0, 0, 1, 1, 2]);
      const applied = (await server.getStatus()).lastApplied;
      const again = await cluster.untilReal(server.batch([...batch, write("Put", "e1", "other", 10n)]));
      expect(again.slice(0, 5).every((a) => (a as CommandReply).err === "OK")).toBe(true);
      // The same commandId for another command: refused, not OK-but-not-applied.
      expect((again[5] as Error).message).toMatch(/already used for a different command/);
      expect((await server.getStatus()).lastApplied).toBe(applied);
    }),
  TIMEOUT);
});
