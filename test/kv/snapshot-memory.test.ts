// A snapshot of a state far larger than the memtable and block cache together is streamed to a
// lagging follower with bounded memory: live heap during the install stays well under the data size.
import { expect, test } from "bun:test";
import type { Operation } from "../../src/sim/check/index.ts";
import { KvSimClerk } from "../../src/sim/kv/clerk.ts";
import { KvSimCluster } from "../../src/sim/kv/cluster.ts";
import { TIMEOUT } from "./workload.ts";

const KEYS = 2048;
const VALUE_BYTES = 4096;
const DATA_BYTES = KEYS * VALUE_BYTES; // 8 MiB, against 64 KiB memtable + 64 KiB block cache

function valueOf(i: number): string {
  // Distinct per key, so a mixed-up or missing pair is visible; pseudo-random letters, so block
  // compression cannot make the stored state small (the disk-size check below needs the bytes).
  let x = (i + 1) * 2654435761;
  let out = `${i}:`;
  while (out.length < VALUE_BYTES) {
    x = (x * 1103515245 + 12345) >>> 0;
    out += String.fromCharCode(97 + (x >>> 16) % 26);
  }
  return out;
}

function liveHeap(): number {
  Bun.gc(true);
  return process.memoryUsage().heapUsed;
}

test("install of an 8 MiB state on a lagging follower keeps memory bounded", async () => {
  const cluster = await KvSimCluster.start({
    servers: 3,
    seed: 41,
    snapshotThreshold: 50,
    snapshotChunkBytes: 64 << 10,
    // Memory-mapped table files count in heapUsed although they are page cache, not heap; read
    // tables with pread here so the measure sees only what the install itself allocates.
    state: { memtableBytes: 64 << 10, blockCacheBytes: 64 << 10, lsm: { mmapTables: false, targetFileSize: 256 << 10 } },
  });
  try {
    const history: Operation[] = [];
    cluster.net.disconnect(2);
    const writers = Array.from({ length: 16 }, async (_, w) => {
      const clerk = new KvSimClerk(cluster, BigInt(w + 1), history, 120_000, [0, 1]);
      for (let i = w; i < KEYS; i += 16) await clerk.put(`key-${String(i).padStart(5, "0")}`, valueOf(i));
    });
    await cluster.until(Promise.all(writers), 600_000);
    history.length = 0; // the values in the history are part of the baseline otherwise
    const leaderStatus = await cluster.servers[0]!.getStatus();
    expect(leaderStatus.snapshotIndex).toBeGreaterThan(KEYS / 2); // the log was compacted: only a snapshot can help

    // Let the leaders' background flushes and compactions of the written data settle first.
    await cluster.run(3000);
    const baseline = liveHeap();
    let peak = baseline;
    cluster.net.reconnect(2);
    const follower = cluster.servers[2]!;
    let steps = 0;
    for (;;) {
      const status = await follower.getStatus();
      if (status.snapshotsInstalled > 0 && status.lastApplied >= leaderStatus.snapshotIndex) break;
      if (steps > 120_000) throw new Error(`follower never caught up: ${await cluster.describe()}`);
      await cluster.run(1);
      if (++steps % 40 === 0) peak = Math.max(peak, liveHeap());
    }
    peak = Math.max(peak, liveHeap());
    const growth = peak - baseline;
    console.log(`snapshot install: ${DATA_BYTES} data bytes, live heap growth peak ${growth} bytes over ${steps} simulated ms`);
    // Collecting the stream, or building the state in memory, would cost at least DATA_BYTES.
    expect(growth).toBeLessThan(DATA_BYTES / 2);
    for (const i of [0, 1, 511, 777, KEYS - 1]) {
      expect(follower.readLocal(`key-${String(i).padStart(5, "0")}`)).toBe(valueOf(i));
    }
    expect((await follower.getStatus()).storageSize).toBeGreaterThan(DATA_BYTES / 2);
  } finally {
    await cluster.close();
  }
}, TIMEOUT);
