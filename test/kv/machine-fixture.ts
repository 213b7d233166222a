// Real KVStateMachines on temp directories for unit tests: opened small, and closed and removed
// after each test.
import { afterEach } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { KVStateMachine } from "../../src/kv/state-machine.ts";

export type MachineOptions = Partial<Parameters<typeof KVStateMachine.open>[0]>;

export function machineFixture(prefix: string) {
  const dirs: string[] = [];
  const machines: KVStateMachine[] = [];
  afterEach(async () => {
    for (const m of machines.splice(0)) await m.close().catch(() => {});
    for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
  });
  const fixture = {
    tempDir(): string {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
      dirs.push(dir);
      return dir;
    },
    async open(dir: string, extra: MachineOptions = {}): Promise<KVStateMachine> {
      const m = await KVStateMachine.open({ dir, members: [0, 1, 2], memtableBytes: 64 << 10, blockCacheBytes: 64 << 10, ...extra });
      machines.push(m);
      return m;
    },
    /** Closes `m` now (a test that reopens its directory). */
    async close(m: KVStateMachine): Promise<void> {
      machines.splice(machines.indexOf(m), 1);
      await m.close();
    },
    /** Closes `m` as a crash would (applies no flush has written are lost). */
    async crash(m: KVStateMachine): Promise<void> {
      machines.splice(machines.indexOf(m), 1);
      await m.close({ asCrash: true });
    },
    async reopen(m: KVStateMachine, dir: string, extra: MachineOptions = {}): Promise<KVStateMachine> {
      await fixture.close(m);
      return fixture.open(dir, extra);
    },
  };
  return fixture;
}
