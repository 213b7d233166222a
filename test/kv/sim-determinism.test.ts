// Replay of the KV simulator: one seed gives one byte-identical summary line (hash included), in
// process and through `bun run sim --kv`, although every server does real LSM file I/O.
import { describe, expect, test } from "bun:test";
import { runKvSim, runWorkload } from "../../src/kv/sim.ts";

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

describe("KV simulator replay", () => {
  test(
    "runKvSim: the same seed twice gives the same line; different seeds differ",
    async () => {
      const lines: string[] = [];
      for (const seed of [3, 8, 21]) {
        const first = await runKvSim({ seed, nodes: 5, steps: 120 });
        const second = await runKvSim({ seed, nodes: 5, steps: 120 });
        expect(first.ok).toBe(true);
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
