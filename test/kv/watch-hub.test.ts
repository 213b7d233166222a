// WatchHub over a real KVStateMachine (no Raft): events of whole revisions from the history, a
// range and its filters, progress notifications when quiet, compacted once the history is trimmed
// past the watch, the per-node limit, and a slot freed when the client goes away.
import { afterEach, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { encodeCommand } from "../../src/kv/command.ts";
import { OverloadedError } from "../../src/kv/errors.ts";
import { KVStateMachine } from "../../src/kv/state-machine.ts";
import { WatchHub, type WatchMessage, type WatchSpec } from "../../src/kv/watch-hub.ts";
import { EntryType, type Entry } from "../../src/raft/index.ts";

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0)) await fn();
});

async function setup(limits = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvraft-watch-"));
  const machine = await KVStateMachine.open({ dir, members: [0], memtableBytes: 64 << 10, blockCacheBytes: 64 << 10 });
  let firstIndex = 1;
  const hub = new WatchHub({ id: 0, machine, logFirstIndex: () => firstIndex }, { progressIntervalMs: 50, ...limits });
  cleanup.push(async () => {
    hub.close();
    await machine.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  let index = 0;
  const write = async (op: "Put" | "Delete", key: string, value = "") => {
    index++;
    const entry: Entry = { index, term: 1, type: EntryType.Normal, data: encodeCommand({ op, clientId: 0n, commandId: BigInt(index), key, value }) };
    await machine.apply([entry]);
    hub.applied();
  };
  return { machine, hub, write, compactLogTo: (i: number) => (firstIndex = i) };
}

const spec = (over: Partial<WatchSpec>): WatchSpec => ({
  key: new TextEncoder().encode("a/"),
  rangeEnd: new TextEncoder().encode("a0"),
  startRevision: 0,
  prevKv: false,
  noPut: false,
  noDelete: false,
  progressNotify: false,
  ...over,
});

const describe = (m: WatchMessage): string =>
  m.kind === "events"
    ? `events@${m.revision}: ${m.events.map((e) => `${e.event.type === 0 ? "put" : "del"} ${new TextDecoder().decode(e.event.key)}@${e.revision}`).join(", ")}`
    : m.kind === "canceled"
      ? `canceled compact=${m.compactRevision}`
      : `${m.kind}@${m.revision}`;

test("a range watch from a past revision: replay, then live events, filters applied", async () => {
  const { hub, write } = await setup();
  await write("Put", "a/1", "x"); // 1
  await write("Put", "b", "y"); // 2: outside the range
  await write("Delete", "a/1"); // 3
  const abort = new AbortController();
  const stream = hub.open(spec({ startRevision: 1 }), abort.signal);
  expect(describe((await stream.next()).value!)).toBe("created@3");
  expect(describe((await stream.next()).value!)).toBe("events@3: put a/1@1, del a/1@3");
  const live = stream.next();
  await write("Put", "a/2", "z"); // 4
  expect(describe((await live).value!)).toBe("events@4: put a/2@4");
  const noPuts = hub.open(spec({ startRevision: 1, noPut: true }), abort.signal);
  await noPuts.next();
  expect(describe((await noPuts.next()).value!)).toBe("events@4: del a/1@3");
  abort.abort();
  await stream.return(undefined);
  await noPuts.return(undefined);
});

test("a quiet watch gets progress notifications with the current revision", async () => {
  const { hub, write } = await setup();
  await write("Put", "other", "x");
  const stream = hub.open(spec({ progressNotify: true }), new AbortController().signal);
  expect(describe((await stream.next()).value!)).toBe("created@1");
  await write("Put", "other", "y");
  expect(describe((await stream.next()).value!)).toBe("progress@2");
  await stream.return(undefined);
});

test("compacted: a watch behind the trimmed history is cancelled naming the oldest revision", async () => {
  const { hub, write, machine, compactLogTo } = await setup();
  for (let i = 0; i < 5; i++) await write("Put", "a/k", String(i));
  compactLogTo(4);
  await write("Put", "a/k", "5"); // the apply trims the history to the log's first index (4)
  for (let i = 0; i < 50 && machine.historyStart < 4; i++) await Bun.sleep(10);
  expect(machine.historyStart).toBe(4);
  const stream = hub.open(spec({ startRevision: 2 }), new AbortController().signal);
  const first = (await stream.next()).value!;
  expect(first).toMatchObject({ kind: "canceled", compactRevision: 4 });
  expect(first.kind === "canceled" && first.reason).toContain("required revision 2 has been compacted on node 0; the oldest revision available is 4");
  expect((await stream.next()).done).toBe(true);
});

test("the per-node limit refuses one watch too many; a client going away frees its slot", async () => {
  const { hub } = await setup({ maxWatches: 2 });
  const aborts = [new AbortController(), new AbortController()];
  const streams = aborts.map((a) => hub.open(spec({}), a.signal));
  for (const s of streams) await s.next();
  expect(() => hub.open(spec({}), new AbortController().signal)).toThrow(OverloadedError);
  expect(() => hub.open(spec({}), new AbortController().signal)).toThrow(/already serves 2 watches \(limit 2\)/);
  // The client disconnects while its watch sleeps: the watch ends without any further apply.
  const pending = streams[0]!.next();
  aborts[0]!.abort();
  expect((await pending).done).toBe(true);
  expect(hub.watchCount).toBe(1);
  const again = hub.open(spec({}), new AbortController().signal);
  expect((await again.next()).value?.kind).toBe("created");
  await again.return(undefined);
  await streams[1]!.return(undefined);
});
