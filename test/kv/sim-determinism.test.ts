// Replay of the KV simulator: one seed gives one byte-identical summary line (hash included), in
// process and through `bun run sim --kv`, although every server does real LSM file I/O.
import { describe, expect, test } from "bun:test";
import { runKvSim } from "../../src/sim/kv/run.ts";
import { runWorkload } from "../../src/sim/kv/workload.ts";
import { type Message } from "../../src/raft/index.ts";
import { SimClock, NodeSimNetwork } from "../../src/sim/raft-node/index.ts";
import { Rng } from "../../src/util/rng.ts";

const TIMEOUT = 60_000;
const ROOT = `${import.meta.dir}/../..`;

function cli(seed: number, steps: number): { code: number; stdout: string; stderr: string } {
  const p = Bun.spawnSync(["bun", "src/cli/sim.ts", "--kv", "--seed", String(seed), "--steps", String(steps)], {
    cwd: ROOT,
    stdout: "pipe",
    stderr: "pipe",
  });
  return { code: p.exitCode ?? -1, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}

const heartbeat = (from: number, to: number, n: number): Message => ({ type: "Heartbeat", from, to, term: 1, commitIndex: 0, readContext: n });
const FAULTS = { minDelayMs: 1, maxDelayMs: 6, lossRate: 0.2, duplicateRate: 0.2 };

/** Nodes 0..2 each send `count` heartbeats to the others per millisecond, nodes in `order`. */
function trace(order: number[], linkSeed: number | undefined, rngSeed = 9): string[] {
  const clock = new SimClock();
  const network = new NodeSimNetwork(clock, new Rng(rngSeed), FAULTS, { linkSeed });
  const seen: string[] = [];
  const transports = [0, 1, 2].map((id) => {
    const t = network.transport(id);
    t.listen({
      onMessages: (ms) => {
        for (const m of ms) seen.push(`${clock.now()} ${m.from}->${m.to} #${(m as Extract<Message, { type: "Heartbeat" }>).readContext}`);
      },
      onSnapshot: () => Promise.reject(new Error("no snapshots here")),
    });
    return t;
  });
  for (let ms = 0; ms < 30; ms++) {
    for (const id of order) transports[id].send([0, 1, 2].filter((to) => to !== id).flatMap((to) => [heartbeat(id, to, 2 * ms), heartbeat(id, to, 2 * ms + 1)]));
    clock.advance(1);
    network.deliverDue();
  }
  for (let ms = 0; ms < 10; ms++) {
    clock.advance(1);
    network.deliverDue();
  }
  expect(network.queuedMessages()).toBe(0);
  return seen;
}

describe("NodeSimNetwork replay mode", () => {
  test("the order nodes send in does not change what arrives, when, or in what order", () => {
    const a = trace([0, 1, 2], 42);
    const b = trace([2, 0, 1], 42);
    expect(a.length).toBeGreaterThan(100);
    expect(b).toEqual(a);
    // The shared Rng ignores linkSeed; another linkSeed gives another schedule.
    expect(trace([0, 1, 2], 42, 1234)).toEqual(a);
    expect(trace([0, 1, 2], 43)).not.toEqual(a);
    // Without replay mode one shared Rng serves every link in send order: the test can tell.
    expect(trace([2, 0, 1], undefined)).not.toEqual(trace([0, 1, 2], undefined));
  });

  test("down() fails a snapshot hop at once, without simulated time", async () => {
    const clock = new SimClock();
    const network = new NodeSimNetwork(clock, new Rng(1), { minDelayMs: 5, maxDelayMs: 5 }, { linkSeed: 7 });
    const sender = network.transport(0);
    network.transport(1).listen({ onMessages: () => {}, onSnapshot: () => Promise.reject(new Error("unreachable")) });
    async function* chunks(): AsyncGenerator<Uint8Array> {
      yield new Uint8Array(4);
    }
    const snapshot = { index: 3, term: 1, members: [0, 1] };
    const sending = sender.sendSnapshot({ type: "InstallSnapshot", from: 0, to: 1, term: 1, snapshot }, chunks());
    await Bun.sleep(1);
    expect(network.isIdle()).toBe(true); // waiting on its header hop: only simulated time moves it
    network.down(1);
    await expect(sending).rejects.toThrow(/went down/);
    expect(clock.now()).toBe(0);
    expect(network.isIdle()).toBe(true);
    expect(network.stats().snapshotsFailed).toBe(1);
  });
});

describe("KV simulator replay", () => {
  test(
    "runKvSim: the same seed twice gives the same line; different seeds differ",
    async () => {
      const lines: string[] = [];
      for (const seed of [3, 8, 21]) {
        const first = await runKvSim({ seed, nodes: 5, steps: 120 });
        const second = await runKvSim({ seed, nodes: 5, steps: 120 });
        expect(first.ok).toBe(true);
        expect(first.line).not.toContain("NOT REPLAYABLE");
        expect(second.line).toBe(first.line);
        expect(first.line).toMatch(new RegExp(`^seed ${seed}: .* ok hash=[0-9a-f]{8}$`));
        lines.push(first.line.replace(/^seed \d+: /, ""));
      }
      // The hash covers the run: three seeds giving one history would mean it covers nothing.
      expect(new Set(lines).size).toBe(3);
    },
    TIMEOUT,
  );

  test(
    "the API family (--api): compare-and-swap and Range under every fault are linearizable and replay",
    async () => {
      for (const seed of [2, 7]) {
        const first = await runKvSim({ seed, nodes: 5, steps: 150, extra: ["--api"] });
        expect(first.ok).toBe(true);
        expect(first.line).toMatch(new RegExp(`^seed ${seed}: kv api 5 nodes, .* history linearizable ok hash=[0-9a-f]{8}$`));
        expect((await runKvSim({ seed, nodes: 5, steps: 150, extra: ["--api"] })).line).toBe(first.line);
      }
    },
    TIMEOUT,
  );

  test(
    "the batch family (--batch): Batch RPCs logged as batch entries under every fault are linearizable, exactly once, and replay",
    async () => {
      for (const seed of [1, 3]) {
        const first = await runKvSim({ seed, nodes: 5, steps: 120, extra: ["--batch"] });
        if (!first.ok) console.error(first.line);
        expect(first.ok).toBe(true);
        expect(first.line).not.toContain("NOT REPLAYABLE");
        // Batched appends were audited (each token at most once), so the family ran what it is for.
        const [, audited] = /(\d+) appends audited/.exec(first.line) ?? [];
        expect(Number(audited)).toBeGreaterThan(20);
        expect((await runKvSim({ seed, nodes: 5, steps: 120, extra: ["--batch"] })).line).toBe(first.line);
      }
    },
    TIMEOUT,
  );

  test(
    "the session family (--sessions): a 3-slot table for 5 registered clients under faults refuses, expires, never applies twice, and replays",
    async () => {
      for (const seed of [1, 4]) {
        const first = await runKvSim({ seed, nodes: 5, steps: 100, extra: ["--sessions"] });
        expect(first.ok).toBe(true);
        expect(first.line).not.toContain("NOT REPLAYABLE");
        // The faults it is meant to cover did happen.
        const [, refused, expired] = /(\d+) registrations refused, (\d+) writes refused as session-expired/.exec(first.line) ?? [];
        expect(Number(refused)).toBeGreaterThan(0);
        expect(Number(expired)).toBeGreaterThan(0);
        expect((await runKvSim({ seed, nodes: 5, steps: 100, extra: ["--sessions"] })).line).toBe(first.line);
      }
    },
    TIMEOUT,
  );

  test(
    "runWorkload: crashes, partitions and snapshots on 3 servers replay the whole history",
    async () => {
      const options = {
        seed: 77,
        servers: 3,
        clients: 3,
        unreliable: true,
        crash: true,
        partitions: true,
        randomKeys: false,
        iterations: 2,
        iterationMs: 5_000,
        opsPerIteration: 60,
        snapshotThreshold: 20,
      };
      const a = await runWorkload(options);
      const b = await runWorkload(options);
      expect(a.failures).toEqual([]);
      expect(b.failures).toEqual([]);
      expect([a.replayBreaks, b.replayBreaks]).toEqual([0, 0]);
      expect(b.hash).toBe(a.hash);
      expect(b.snapshotsInstalled).toBe(a.snapshotsInstalled);
      expect(b.partitions).toBe(a.partitions);
      expect(b.history.map((op) => [op.clientId, op.input, op.output, op.call, op.return])).toEqual(
        a.history.map((op) => [op.clientId, op.input, op.output, op.call, op.return]),
      );
    },
    TIMEOUT,
  );

  test(
    "bun run sim --kv: two processes print the same line as the in-process run",
    async () => {
      const first = cli(5, 90);
      expect(first.stderr).toBe("");
      expect(first.code).toBe(0);
      const second = cli(5, 90);
      expect(second.stdout).toBe(first.stdout);
      const inProcess = await runKvSim({ seed: 5, nodes: 5, steps: 90 });
      expect(first.stdout).toBe(`${inProcess.line}\n`);
    },
    TIMEOUT,
  );
});
