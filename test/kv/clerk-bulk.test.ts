// The bulk writer against fake nodes: a leader hint is a node id, and once the Clerk has learned
// members whose ids are not 0..n-1 (a node removed, another added) the hint still leads to the
// right node, in one hop.
import { describe, expect, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import { MAX_BULK_BATCHES, bulkBatches, runBulk, type BulkHost, type BulkSession } from "../../src/kv/clerk-bulk.ts";
import { BatchResponseSchema, BatchResultSchema, CommandResponseSchema, KVService, Op, type BatchRequest } from "../../src/gen/kvraftpb/kvraft_pb.ts";

/** A node answering every Batch: as the leader (OK each) or as a follower naming `leaderId`. */
/** A BulkHost over the given nodes: fresh sessions on demand, short timeouts. */
function fakeHost(nodes: Pick<BulkHost, "ids" | "clients" | "addrs" | "leader">): BulkHost {
  let next = 1n;
  return {
    ...nodes,
    acquire: async (): Promise<BulkSession> => ({ id: next++, nextCommandId: 1n }),
    release: () => {},
    reregister: async () => {},
    registered: true,
    callTimeoutMs: 1000,
    operationTimeoutMs: 5000,
    backoffMs: 1,
    maxBackoffMs: 5,
    maxRequestBytes: 1 << 20,
  };
}

function fakeNode(calls: number[], slot: number, leaderId: number | null): Client<typeof KVService> {
  return {
    batch: async (request: BatchRequest) => {
      calls[slot]!++;
      const response =
        leaderId === null
          ? create(CommandResponseSchema, { err: "OK" })
          : create(CommandResponseSchema, { err: "ErrWrongLeader", leader: { case: "leaderId", value: BigInt(leaderId) } });
      return create(BatchResponseSchema, { results: request.commands.map(() => create(BatchResultSchema, { response })) });
    },
  } as unknown as Client<typeof KVService>;
}

describe("bulk writer", () => {
  test("follows a leader hint by node id when the known ids are not dense (0, 1, 4)", async () => {
    const ids = [0, 1, 4];
    const calls = [0, 0, 0];
    // Slot 0 (node 0) and slot 1 (node 1) follow node 4, which sits in slot 2.
    const clients = [fakeNode(calls, 0, 4), fakeNode(calls, 1, 4), fakeNode(calls, 2, null)];
    const host = fakeHost({ ids, clients, addrs: ["a:1", "b:2", "e:5"], leader: 0 });
    const pairs: [string, string][] = Array.from({ length: 50 }, (_, i) => [`k${i}`, `v${i}`]);
    const result = await runBulk(host, { op: Op.PUT, concurrency: 10, batchCommands: 10, maxRpcs: 1 }, pairs[Symbol.iterator]());
    expect(result.failure).toBeNull();
    expect(result.written).toBe(50);
    // One refused call at node 0, then straight to node 4's slot: node 1 is never asked.
    expect(calls).toEqual([1, 0, 5]);
    expect(host.leader).toBe(2);
  });

  test("Batch RPCs in flight: by default enough for every write in flight, at least 4, never more than 64", () => {
    expect(bulkBatches(2048, 1024)).toBe(4);
    expect(bulkBatches(4096, 1024)).toBe(4);
    expect(bulkBatches(8192, 1024)).toBe(8);
    expect(bulkBatches(10_000, 1024)).toBe(10);
    expect(bulkBatches(1_000_000, 1024)).toBe(MAX_BULK_BATCHES);
    expect(bulkBatches(4096, 256, 16)).toBe(16);
    expect(bulkBatches(4096, 1024, 1000)).toBe(MAX_BULK_BATCHES);
    expect(bulkBatches(4096, 1024, 0)).toBe(1);
    expect(bulkBatches(4096, 1024, Number.NaN)).toBe(4);
  });

  test("a load of 2,000 writes keeps at most maxRpcs (3) Batch calls of at most batchCommands in flight, each write once", async () => {
    let inFlight = 0;
    let peak = 0;
    let largest = 0;
    const seen = new Set<string>();
    const ids = new Set<string>();
    const slow = {
      batch: async (request: BatchRequest) => {
        inFlight++;
        peak = Math.max(peak, inFlight);
        largest = Math.max(largest, request.commands.length);
        await Bun.sleep(2);
        for (const c of request.commands) {
          expect(seen.has(c.key)).toBe(false);
          seen.add(c.key);
          ids.add(`${c.clientId}/${c.commandId}`);
        }
        inFlight--;
        const response = create(CommandResponseSchema, { err: "OK" });
        return create(BatchResponseSchema, { results: request.commands.map(() => create(BatchResultSchema, { response })) });
      },
    } as unknown as Client<typeof KVService>;
    const host = fakeHost({ ids: [0], clients: [slow], addrs: ["a:1"], leader: 0 });
    const pairs: [string, string][] = Array.from({ length: 2000 }, (_, i) => [`k${i}`, `v${i}`]);
    const result = await runBulk(host, { op: Op.PUT, concurrency: 256, batchCommands: 32, maxRpcs: 3 }, pairs[Symbol.iterator]());
    expect(result.failure).toBeNull();
    expect(result.written).toBe(2000);
    expect(seen.size).toBe(2000);
    expect(ids.size).toBe(2000);
    expect(peak).toBeLessThanOrEqual(3);
    expect(peak).toBeGreaterThan(1);
    expect(largest).toBeLessThanOrEqual(32);
  });
});
