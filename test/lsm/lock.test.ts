// The directory lock is a flock the kernel drops with the process: kill -9 then reopen works at
// once, a LOCK file naming some live PID blocks nothing, and a second live opener is refused.
import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { DB, LsmError } from "../../src/lsm/index.ts";
import { bytes, removeDir, tempDir, text } from "./helpers.ts";

const LSM = JSON.stringify(path.resolve("src/lsm/index.ts"));

/** A child process that opens `dir`, writes k=v synced, prints "ready" and waits to be killed. */
function holder(dir: string) {
  const script = `import { DB } from ${LSM};
    const db = await DB.open(${JSON.stringify(dir)});
    await db.put(new TextEncoder().encode("k"), new TextEncoder().encode("v"), { sync: true });
    console.log("ready");
    setInterval(() => {}, 1000);`;
  return Bun.spawn(["bun", "-e", script], { stdout: "pipe", stderr: "pipe" });
}

async function waitReady(child: ReturnType<typeof holder>): Promise<void> {
  const reader = child.stdout.getReader();
  let out = "";
  while (!out.includes("ready")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`holder exited before ready: ${out} ${await new Response(child.stderr).text()}`);
    out += new TextDecoder().decode(value);
  }
  reader.releaseLock();
}

describe("directory lock", () => {
  let dir = "";
  const children: ReturnType<typeof holder>[] = [];
  let db: DB | null = null;
  afterEach(async () => {
    for (const c of children.splice(0)) c.kill(9);
    await db?.close();
    db = null;
    removeDir(dir);
  });

  test("kill -9 of the holder, then an immediate reopen succeeds", async () => {
    dir = tempDir("lock");
    const child = holder(dir);
    children.push(child);
    await waitReady(child);
    child.kill(9);
    await child.exited;
    db = await DB.open(dir);
    expect(text(db.getSync(bytes("k")))).toBe("v");
  });

  test("a LOCK file naming a live unrelated process does not block", async () => {
    dir = tempDir("lock");
    const sleeper = Bun.spawn(["sleep", "30"]);
    children.push(sleeper as never);
    fs.writeFileSync(path.join(dir, "LOCK"), `${sleeper.pid}\n`);
    db = await DB.open(dir);
    await db.put(bytes("a"), bytes("b"));
    expect(fs.readFileSync(path.join(dir, "LOCK"), "utf8").trim()).toBe(String(process.pid));
  });

  test("a second live opener is refused with an error naming the directory", async () => {
    dir = tempDir("lock");
    const child = holder(dir);
    children.push(child);
    await waitReady(child);
    let error: unknown = null;
    try {
      db = await DB.open(dir);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(LsmError);
    expect((error as LsmError).code).toBe("LOCKED");
    expect((error as LsmError).message).toContain(dir);
    expect((error as LsmError).message).toContain(`process ${child.pid}`);
    // The refused open left the holder's lock in place: a third try is refused too.
    await expect(DB.open(dir)).rejects.toThrow(/locked by another live process/);
    child.kill(9);
    await child.exited;
    db = await DB.open(dir);
  });
});
