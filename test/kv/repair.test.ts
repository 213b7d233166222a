// Opening a replica's storage with corruption repaired: a corrupt manifest is discarded (with the
// RECOVERING marker keeping the term and vote) instead of failing every start; a Raft log that ends
// before the state machine starts recovering; the marker survives until removed.
import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { openStorageRepaired, readMarker, removeMarker, RECOVERING_FILE, RelayTransport } from "../../src/kv/repair.ts";
import { EntryType, FileLogStore, type Transport } from "../../src/raft/index.ts";

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), "kv-repair-"));
  dirs.push(d);
  return d;
}

const OPTS = { members: [0, 1, 2] };

/** A replica directory whose log holds term 7, a vote for node 2, and 5 entries applied to the state machine. */
async function replica(dir: string): Promise<void> {
  const { machine, logStore } = await openStorageRepaired(dir, OPTS, undefined, () => {});
  const entries = Array.from({ length: 5 }, (_, i) => ({ index: i + 1, term: 7, type: EntryType.Noop, data: new Uint8Array(0) }));
  await logStore.save({ term: 7, votedFor: 2, commitIndex: 5 }, entries);
  await machine.apply(entries);
  await machine.sync();
  await machine.close();
  await logStore.close();
}

describe("openStorage", () => {
  test("a corrupt manifest is discarded, not fatal: empty, recovering, term and vote kept", async () => {
    const dir = tempDir();
    await replica(dir);
    const live = path.join(dir, "state", fs.readFileSync(path.join(dir, "state", "CURRENT"), "utf8").trim());
    const manifest = fs.readdirSync(live).find((n) => n.startsWith("MANIFEST-"))!;
    const bytes = fs.readFileSync(path.join(live, manifest));
    bytes[12] ^= 0xff;
    fs.writeFileSync(path.join(live, manifest), bytes);
    const lines: string[] = [];
    const opened = await openStorageRepaired(dir, OPTS, undefined, (l) => lines.push(l));
    try {
      expect(opened.recovering).toBe(true);
      expect(opened.machine.lastApplied()).toBe(0);
      expect(opened.logStore.lastIndex()).toBe(0);
      expect(opened.logStore.hardState()).toMatchObject({ term: 7, votedFor: 2 });
      expect(readMarker(dir)).toMatchObject({ term: 7, votedFor: 2 });
      expect(lines.join("\n")).toMatch(/state machine is corrupt.*rebuilding from the leader/);
    } finally {
      await opened.machine.close();
      await opened.logStore.close();
    }
    // A restart before recovery ends is still recovering; removing the marker ends it.
    const again = await openStorageRepaired(dir, OPTS, undefined, () => {});
    expect(again.recovering).toBe(true);
    await again.machine.close();
    await again.logStore.close();
    removeMarker(dir);
    expect(fs.existsSync(path.join(dir, RECOVERING_FILE))).toBe(false);
    const done = await openStorageRepaired(dir, OPTS, undefined, () => {});
    expect(done.recovering).toBe(false);
    await done.machine.close();
    await done.logStore.close();
  });

  test("a Raft log that ends before the state machine's applied index starts recovering", async () => {
    const dir = tempDir();
    await replica(dir);
    fs.rmSync(path.join(dir, "raft"), { recursive: true });
    const store = await FileLogStore.open(path.join(dir, "raft"));
    await store.save({ term: 7, votedFor: 2, commitIndex: 0 }, []);
    await store.close();
    const lines: string[] = [];
    const opened = await openStorageRepaired(dir, OPTS, undefined, (l) => lines.push(l));
    expect(opened.recovering).toBe(true);
    expect(opened.machine.lastApplied()).toBe(5);
    expect(lines.join("\n")).toContain("behind the state machine");
    await opened.machine.close();
    await opened.logStore.close();
  });

  test("a corrupt Raft log segment is discarded with the state machine, not fatal: empty and recovering", async () => {
    const dir = tempDir();
    await replica(dir);
    const raftDir = path.join(dir, "raft");
    const segment = fs.readdirSync(raftDir).find((n) => n.endsWith(".seg"))!;
    const bytes = fs.readFileSync(path.join(raftDir, segment));
    // The third record's CRC (header, hard state, then entries): valid records follow it, so this
    // is corruption, not a torn tail.
    let at = 0;
    for (let record = 0; record < 2; record++) at += 9 + bytes.readUInt32LE(at + 4);
    bytes[at] ^= 0xff;
    fs.writeFileSync(path.join(raftDir, segment), bytes);
    await expect(FileLogStore.open(raftDir)).rejects.toThrow(/corrupt/i);
    const lines: string[] = [];
    const opened = await openStorageRepaired(dir, OPTS, undefined, (l) => lines.push(l));
    expect(opened.recovering).toBe(true);
    expect(opened.machine.lastApplied()).toBe(0);
    expect(opened.logStore.lastIndex()).toBe(0);
    expect(lines.join("\n")).toMatch(/Raft log is corrupt.*rebuilding from the leader/);
    await opened.machine.close();
    await opened.logStore.close();
  });

  test("a healthy replica opens as it was, not recovering", async () => {
    const dir = tempDir();
    await replica(dir);
    const opened = await openStorageRepaired(dir, OPTS, undefined, () => {});
    expect(opened.recovering).toBe(false);
    expect(opened.machine.lastApplied()).toBe(5);
    expect(opened.logStore.lastIndex()).toBe(5);
    await opened.machine.close();
    await opened.logStore.close();
  });
});

describe("RelayTransport", () => {
  test("a rebuilt node takes over the receiving side of the same links", async () => {
    let handler: Parameters<Transport["listen"]>[0] | null = null;
    const inner: Transport = {
      send() {},
      sendSnapshot: () => Promise.reject(new Error("unused")),
      listen: (h) => {
        if (handler !== null) throw new Error("listen called twice");
        handler = h;
      },
      close: async () => {},
    };
    const relay = new RelayTransport(inner);
    relay.attach();
    const got: string[] = [];
    relay.listen({ onMessages: () => got.push("old"), onSnapshot: () => Promise.reject(new Error("x")) });
    handler!.onMessages([]);
    relay.detach();
    handler!.onMessages([]); // between nodes: dropped, as a network could
    await expect(handler!.onSnapshot({} as never, (async function* () {})())).rejects.toThrow(/restarting/);
    relay.listen({ onMessages: () => got.push("new"), onSnapshot: () => Promise.reject(new Error("x")) });
    handler!.onMessages([]);
    expect(got).toEqual(["old", "new"]);
  });
});
