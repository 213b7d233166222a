// Metrics of a real one-node KVServer on a temp dir with a small memtable: after enough writes the
// LSM metrics show flushes, tables per level, bytes written into levels and block cache traffic,
// and the Raft metrics show every write proposed, saved and applied.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { KVServer } from "../../src/kv/index.ts";
import { NodeMetrics } from "../../src/obs/node-metrics.ts";
import { parsePromText, sumOf, type PromSample } from "../../src/obs/prom-text.ts";
import type { Transport } from "../../src/raft/index.ts";

/** A one-node cluster sends nothing: any use of the network is a bug in this test. */
const noNetwork: Transport = {
  send: () => {},
  sendSnapshot: () => Promise.reject(new Error("a one-node cluster streams no snapshots")),
  listen: () => {},
  close: async () => {},
};

let dir: string;
let kv: KVServer;
let metrics: NodeMetrics;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvraft-lsm-metrics-"));
  metrics = new NodeMetrics(0, () => kv?.diagnostics());
  kv = await KVServer.open({
    id: 0,
    peers: [0],
    dir,
    transport: noNetwork,
    raft: { observer: metrics.raftObserver, tickMs: 10 },
    state: { memtableBytes: 64 * 1024 },
  });
});

afterAll(async () => {
  await kv?.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function scrape(): Promise<PromSample[]> {
  return parsePromText((await metrics.scrape()).body);
}

describe("LSM and Raft metrics of a real node", () => {
  test("writes past the memtable show as flushes, level-0 tables and bytes written; every write proposed and saved", async () => {
    const deadline = Date.now() + 10_000;
    while ((await kv.getStatus()).state !== "Leader") {
      if (Date.now() > deadline) throw new Error("the one node did not elect itself");
      await Bun.sleep(10);
    }
    const writes = 1_500;
    const value = "v".repeat(200);
    for (let i = 0; i < writes; i += 50) {
      const batch = Array.from({ length: 50 }, (_, j) => kv.command({ key: `key-${String(i + j).padStart(5, "0")}`, value, op: "Put", clientId: 0n, commandId: 0n }));
      for (const reply of await Promise.all(batch)) expect(reply.err).toBe("OK");
    }
    for (let i = 0; i < 20; i++) expect((await kv.command({ key: `key-${String(i).padStart(5, "0")}`, value: "", op: "Get", clientId: 0n, commandId: 0n })).value).toBe(value);
    // Flushes run in the background: wait for the first (bounded).
    let s = await scrape();
    for (let i = 0; i < 100 && sumOf(s, "kvraft_lsm_flushes_total") === 0; i++) {
      await Bun.sleep(50);
      s = await scrape();
    }
    expect(sumOf(s, "kvraft_lsm_flushes_total")).toBeGreaterThan(0);
    expect(sumOf(s, "kvraft_lsm_level_files")).toBeGreaterThan(0);
    expect(sumOf(s, "kvraft_lsm_level_bytes_written_total")).toBeGreaterThan(0); // compressed: the values repeat one byte
    expect(sumOf(s, "kvraft_lsm_table_bytes_written_total")).toBeGreaterThan(0);
    expect(sumOf(s, "kvraft_lsm_user_bytes_written_total")).toBeGreaterThanOrEqual(writes * 200);
    expect(sumOf(s, "kvraft_lsm_block_cache_hits_total") + sumOf(s, "kvraft_lsm_block_cache_misses_total") + sumOf(s, "kvraft_lsm_memtable_bytes")).toBeGreaterThan(0);
    expect(sumOf(s, "kvraft_raft_proposals_total")).toBe(writes);
    expect(sumOf(s, "kvraft_raft_entries_per_save_sum")).toBeGreaterThanOrEqual(writes);
    expect(sumOf(s, "kvraft_raft_bytes_per_save_sum")).toBeGreaterThan(writes * 200);
    // The commit path's fdatasyncs, timed in the log store.
    const syncs = sumOf(s, "kvraft_raft_log_fsync_seconds_count");
    expect(syncs).toBeGreaterThan(0);
    expect(syncs).toBeLessThanOrEqual(sumOf(s, "kvraft_raft_log_fsyncs_total"));
    expect(sumOf(s, "kvraft_raft_log_fsync_seconds_sum")).toBeGreaterThan(0);
    // Group commit: fewer saves than entries.
    expect(sumOf(s, "kvraft_raft_log_save_seconds_count")).toBeLessThan(writes);
    expect(sumOf(s, "kvraft_raft_applied_index")).toBeGreaterThanOrEqual(writes);
    // A one-node cluster has no followers and sends no AppendEntries.
    expect(s.filter((x) => x.name === "kvraft_raft_follower_match_index")).toEqual([]);
    expect(sumOf(s, "kvraft_raft_append_entries_sent_total")).toBe(0);
  });
});
