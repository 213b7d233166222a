// LsmLevel beyond the official suite: data survives close/reopen through the adapter, a second
// open of a locked directory reports LEVEL_LOCKED, and the additional methods reach the engine.
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LsmLevel } from "../../src/lsm/level.ts";

const root = mkdtempSync(join(tmpdir(), "lsm-level-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const ENGINE = { memtableBytes: 16 * 1024 };

test("data written through sublevels and encodings survives a reopen", async () => {
  const location = join(root, "reopen");
  const db = new LsmLevel(location, { engine: ENGINE });
  const users = db.sublevel<string, { name: string; age: number }>("users", { valueEncoding: "json" });
  const blobs = db.sublevel<Uint8Array, Uint8Array>("blobs", { keyEncoding: "view", valueEncoding: "view" });
  const batch = [];
  for (let i = 0; i < 2_000; i++) {
    batch.push({ type: "put" as const, key: `user-${String(i).padStart(5, "0")}`, value: { name: `n${i}`, age: i % 90 } });
  }
  await users.batch(batch);
  await blobs.put(new Uint8Array([0x00, 0xff]), new Uint8Array([1, 2, 3]));
  await db.close();

  const reopened = new LsmLevel(location, { engine: ENGINE, createIfMissing: false });
  const users2 = reopened.sublevel<string, { name: string; age: number }>("users", { valueEncoding: "json" });
  const blobs2 = reopened.sublevel<Uint8Array, Uint8Array>("blobs", { keyEncoding: "view", valueEncoding: "view" });
  expect(await users2.get("user-01234")).toEqual({ name: "n1234", age: 1234 % 90 });
  expect(await users2.keys({ gte: "user-01990", limit: 3 }).all()).toEqual(["user-01990", "user-01991", "user-01992"]);
  expect(await users2.values({ reverse: true, limit: 1 }).all()).toEqual([{ name: "n1999", age: 1999 % 90 }]);
  expect([...(await blobs2.get(new Uint8Array([0x00, 0xff])))!]).toEqual([1, 2, 3]);
  expect(users2.getSync("user-00007")).toEqual({ name: "n7", age: 7 });
  await reopened.close();
});

test("a second open of the same directory fails with LEVEL_LOCKED and the first stays usable", async () => {
  const location = join(root, "locked");
  const first = new LsmLevel(location, { engine: ENGINE });
  await first.open();
  const second = new LsmLevel(location, { engine: ENGINE });
  const error = await second.open().then(
    () => null,
    (e: { code?: string; cause?: { code?: string } }) => e,
  );
  expect(error?.code).toBe("LEVEL_DATABASE_NOT_OPEN");
  expect(error?.cause?.code).toBe("LEVEL_LOCKED");
  await first.put("still", "writable");
  expect(await first.get("still")).toBe("writable");
  await first.close();
});

test("approximateSize and compactRange reach the engine", async () => {
  const db = new LsmLevel(join(root, "extras"), { engine: ENGINE });
  expect(db.supports.additionalMethods).toEqual({ approximateSize: true, compactRange: true });
  // Random hex: a block compressor cannot shrink it much, so the sizes below stay meaningful.
  const value = Buffer.from(crypto.getRandomValues(new Uint8Array(250))).toString("hex");
  for (let round = 0; round < 4; round++) {
    const ops = [];
    for (let i = 0; i < 500; i++) ops.push({ type: "put" as const, key: `k${String(i).padStart(4, "0")}`, value: value + round });
    await db.batch(ops);
  }
  await db.compactRange("k0000", "k9999");
  const size = await db.approximateSize("k0000", "k9999");
  // 500 live entries of ~500 bytes each are on disk after the compaction (compressed or not).
  expect(size).toBeGreaterThan(10_000);
  expect(await db.approximateSize("a", "b")).toBe(0);
  expect(await db.get("k0499")).toBe(value + 3);
  await db.close();
});
