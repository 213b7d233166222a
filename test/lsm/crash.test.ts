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
