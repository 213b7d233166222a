// kill -9 durability: a child process writes with sync: true and reports each acknowledged key;
// after SIGKILL every acknowledged key is present. Unsynced writes acknowledged to the child
// were handed to the OS, so they survive a process crash too.
import { afterEach, expect, test } from "bun:test";
import * as path from "node:path";
import { DB } from "../../src/lsm/index.ts";
import { key, removeDir, tempDir, text } from "./helpers.ts";

let dir = "";
afterEach(() => dir && removeDir(dir));

const child = (dbDir: string) => `
import { DB } from ${JSON.stringify(path.resolve("src/lsm/index.ts"))};
const enc = new TextEncoder();
const k = (i) => enc.encode("key" + String(i).padStart(8, "0"));
const db = await DB.open(${JSON.stringify(dbDir)}, { memtableBytes: 32 * 1024 });
let i = 0;
for (;;) {
  const batch = [];
  for (let j = 0; j < 16; j++, i++) {
    const n = i;
    const sync = n % 2 === 0;
    batch.push(db.put(k(n), enc.encode("v" + n + "-" + "p".repeat(60)), { sync }).then(() => n));
  }
  const acked = await Promise.all(batch);
  process.stdout.write(acked.join("\\n") + "\\n");
}
`;

test("every acknowledged write survives SIGKILL, across flushes", async () => {
  dir = tempDir("crash");
  for (let round = 0; round < 3; round++) {
    const proc = Bun.spawn(["bun", "-e", child(dir)], { stdout: "pipe", stderr: "inherit" });
    const acked = new Set<number>();
    const reader = proc.stdout.getReader();
    const dec = new TextDecoder();
    let buf = "";
    const deadline = Date.now() + 10_000;
    while (acked.size < 2000 + round * 500 && Date.now() < deadline) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value);
      const lines = buf.split("\n");
      buf = lines.pop()!;
      for (const l of lines) if (l) acked.add(Number(l));
    }
    proc.kill(9);
    await proc.exited;
    expect(acked.size).toBeGreaterThan(100);
    const db = await DB.open(dir);
    for (const n of acked) expect(text(db.getSync(key(n)))).toBe(`v${n}-${"p".repeat(60)}`);
    await db.close();
  }
}, 60_000);

// Writes without the WAL (a replicated state machine whose own log replays them): after SIGKILL
// the database holds a prefix of them that covers every write the child saw reported as flushed.
const unloggedChild = (dbDir: string) => `
import { DB } from ${JSON.stringify(path.resolve("src/lsm/index.ts"))};
const enc = new TextEncoder();
const k = (i) => enc.encode("key" + String(i).padStart(8, "0"));
const db = await DB.open(${JSON.stringify(dbDir)}, { memtableBytes: 32 * 1024 });
let i = 0;
for (;;) {
  const batch = [];
  for (let j = 0; j < 16; j++, i++) batch.push({ type: "put", key: k(i), value: enc.encode("v" + i + "-" + "p".repeat(60)) });
  await db.write(batch, { wal: false });
  process.stdout.write(i + " " + db.lastSequence + " " + db.flushedSequence + "\\n");
  if (i % 1024 === 0) await db.flush();
}
`;

test("writes without the WAL: after SIGKILL a prefix survives, covering everything reported flushed", async () => {
  dir = tempDir("crash-unlogged");
  const proc = Bun.spawn(["bun", "-e", unloggedChild(dir)], { stdout: "pipe", stderr: "inherit" });
  const reader = proc.stdout.getReader();
  const dec = new TextDecoder();
  let buf = "";
  let written = 0;
  let flushedKeys = 0;
  const seqToKeys = new Map<number, number>();
  const deadline = Date.now() + 10_000;
  while (written < 6000 && Date.now() < deadline) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value);
    const lines = buf.split("\n");
    buf = lines.pop()!;
    for (const l of lines) {
      if (!l) continue;
      const [keys, last, flushed] = l.split(" ").map(Number) as [number, number, number];
      written = keys;
      seqToKeys.set(last, keys);
      // Keys written by writes whose sequence numbers are all at or below the flushed one.
      for (const [seq, n] of seqToKeys) if (seq <= flushed) flushedKeys = Math.max(flushedKeys, n);
      for (const seq of [...seqToKeys.keys()]) if (seq <= flushed) seqToKeys.delete(seq);
    }
  }
  proc.kill(9);
  await proc.exited;
  expect(flushedKeys).toBeGreaterThan(1000);
  const db = await DB.open(dir);
  let present = 0;
  while (db.getSync(key(present)) !== undefined) present++;
  expect(present).toBeGreaterThanOrEqual(flushedKeys);
  // A prefix: nothing after the first missing key.
  for (let n = present; n < written + 16; n++) expect(db.getSync(key(n))).toBeUndefined();
  expect(text(db.getSync(key(present - 1)))).toBe(`v${present - 1}-${"p".repeat(60)}`);
  await db.close();
}, 60_000);
