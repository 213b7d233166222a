// What applying batch entries costs a replica: N fresh-key Puts (16-byte keys, 100-byte values,
// one session each) in batch entries of B commands, applied to a KVStateMachine on a temp dir.
// Usage: bun bench/apply-cost.ts [--puts N] [--batch B] [--no-history] [--cpu-prof via bun --cpu-prof]
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { batchItem, encodeBatchCommand } from "../src/kv/batch-command.ts";
import { KVStateMachine } from "../src/kv/state-machine.ts";
import { EntryType, type Entry } from "../src/raft/index.ts";

const args = process.argv.slice(2);
const flag = (name: string, fallback: number) => (args.includes(name) ? Number(args[args.indexOf(name) + 1]) : fallback);
const puts = flag("--puts", 200_000);
const batch = flag("--batch", 256);
const sessions = flag("--sessions", 2048);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvraft-apply-cost-"));
const machine = await KVStateMachine.open({ dir, members: [0, 1, 2], watchHistory: !args.includes("--no-history"), lsm: { backgroundThread: !args.includes("--no-table-thread") } });
const value = "v".repeat(100);
const entries: Entry[] = [];
let seq = 0;
for (let index = 1; seq < puts; index++) {
  const items = [];
  for (let i = 0; i < batch && seq < puts; i++, seq++) {
    const session = BigInt(1 + (seq % sessions));
    items.push(batchItem({ op: "Put", clientId: session, commandId: BigInt(1 + Math.floor(seq / sessions)), key: "k" + String(seq).padStart(15, "0"), value }));
  }
  entries.push({ index, term: 1, type: EntryType.Normal, data: encodeBatchCommand(items, { nonce: BigInt(index), timestamp: 1000, maxValueBytes: 1 << 20 }) });
}
/** CPU seconds of this process's main thread (the apply itself; table building runs in a worker). */
const mainThreadCpu = (): number => {
  const fields = fs.readFileSync(`/proc/self/task/${process.pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
};
const main0 = mainThreadCpu();
const cpu0 = process.cpuUsage();
const t0 = performance.now();
// As the driver hands them: a few entries per apply. Timed per slice of 20 applies: on a shared
// machine the fastest slices say what the code costs, the total what the machine allowed.
const slices: number[] = [];
for (let i = 0; i < entries.length; i += 80) {
  const s0 = performance.now();
  for (let j = i; j < Math.min(i + 80, entries.length); j += 4) await machine.apply(entries.slice(j, Math.min(j + 4, i + 80)));
  slices.push((performance.now() - s0) / entries.slice(i, i + 80).reduce((n, e) => n + Number(e.data.length > 0) * batch, 0));
}
const ms = performance.now() - t0;
const cpu = process.cpuUsage(cpu0);
const mainCpu = mainThreadCpu() - main0;
slices.sort((a, b) => a - b);
const q = (p: number) => (slices[Math.floor(p * (slices.length - 1))]! * 1000).toFixed(2);
console.log(
  `${puts} puts in entries of ${batch}: ${((ms * 1000) / puts).toFixed(2)} µs/put wall, ${((cpu.user + cpu.system) / puts).toFixed(2)} µs/put CPU (all threads), ${((mainCpu * 1e6) / puts).toFixed(2)} on the main thread, ` +
    `slices of 20 applies: fastest ${q(0)}, p25 ${q(0.25)}, median ${q(0.5)} µs/put; ` +
    `LSM: ${(machine.lsmStats().walBytesWritten / puts).toFixed(0)} WAL bytes/put, ${(machine.lsmStats().userBytesWritten / puts).toFixed(0)} bytes/put written, write amplification ${machine.lsmStats().writeAmplification.toFixed(1)}`,
);
await machine.close();
fs.rmSync(dir, { recursive: true, force: true });
