// BulkLoader: a database built from sorted runs straight into bottom-level tables reads back
// exactly, survives reopen, takes later writes over loaded ones, and refuses overlap and misuse.
import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { BulkLoader } from "../../src/lsm/bulk-load.ts";
import { DB, LsmError } from "../../src/lsm/index.ts";
import { bytes, key, removeDir, tempDir, text } from "./helpers.ts";

const dirs: string[] = [];
function dir(): string {
  const d = tempDir("bulk");
  dirs.push(d);
  return path.join(d, "db");
}
afterEach(() => {
  for (const d of dirs.splice(0)) removeDir(d);
});

const small = { targetFileSize: 16 * 1024, blockSize: 1024, logger: () => {} };

describe("BulkLoader", () => {
  test("loads runs into several bottom-level tables that read back and survive reopen", async () => {
    const d = dir();
    const loader = await BulkLoader.create(d, small);
    // Two runs out of order with each other but disjoint: "m..." first, then "a-first" and "key...".
    for (let i = 0; i < 50; i++) loader.add(bytes(`m${String(i).padStart(3, "0")}`), bytes(`meta${i}`));
    loader.add(bytes("a-first"), bytes("alpha"));
    for (let i = 0; i < 5000; i++) loader.add(key(i), bytes(`value-${i}-`.repeat(4)));
    expect(loader.entries).toBe(5051);
    let db = await loader.finish();
    try {
      const stats = db.stats();
      const bottom = stats.levels.at(-1)!;
      expect(bottom.files).toBeGreaterThan(5);
      expect(stats.levels.slice(0, -1).every((l) => l.files === 0)).toBe(true);
      expect(text(db.getSync(key(0)))).toBe(`value-0-`.repeat(4));
      expect(text(db.getSync(key(4999)))).toBe(`value-4999-`.repeat(4));
      expect(db.getSync(key(5000))).toBeUndefined();
      expect(text(db.getSync(bytes("a-first")))).toBe("alpha");
      expect(text(db.getSync(bytes("m049")))).toBe("meta49");
      let n = 0;
      let prev = "";
      for await (const [k] of db.iterator()) {
        const s = text(k)!;
        expect(s > prev).toBe(true);
        prev = s;
        n++;
      }
      expect(n).toBe(5051);
      // Later writes win over loaded entries, and deletes hide them.
      await db.put(key(7), bytes("new"));
      await db.del(key(8));
      expect(text(db.getSync(key(7)))).toBe("new");
      expect(db.getSync(key(8))).toBeUndefined();
    } finally {
      await db.close();
    }
    db = await DB.open(d, small);
    try {
      expect(text(db.getSync(key(7)))).toBe("new");
      expect(db.getSync(key(8))).toBeUndefined();
      expect(text(db.getSync(key(1234)))).toBe(`value-1234-`.repeat(4));
      await db.compactRange(null, null);
      expect(text(db.getSync(key(4321)))).toBe(`value-4321-`.repeat(4));
      expect(db.getSync(key(8))).toBeUndefined();
    } finally {
      await db.close();
    }
  });

  test("an empty load opens as an empty database", async () => {
    const d = dir();
    const db = await (await BulkLoader.create(d, small)).finish();
    try {
      expect(db.getSync(key(1))).toBeUndefined();
      await db.put(key(1), bytes("x"));
      expect(text(db.getSync(key(1)))).toBe("x");
    } finally {
      await db.close();
    }
  });

  test("overlapping runs and duplicate keys are refused", async () => {
    const d = dir();
    const loader = await BulkLoader.create(d, small);
    loader.add(key(1), bytes("a"));
    loader.add(key(5), bytes("b"));
    loader.add(key(3), bytes("c")); // a new run inside the first one's range
    const err = await loader.finish().catch((e) => e);
    expect(err).toBeInstanceOf(LsmError);
    expect((err as LsmError).code).toBe("INVALID_ARGUMENT");
    expect((err as Error).message).toContain("overlap");

    const d2 = dir();
    const dup = await BulkLoader.create(d2, small);
    dup.add(key(1), bytes("a"));
    dup.add(key(1), bytes("b"));
    expect(((await dup.finish().catch((e) => e)) as LsmError).code).toBe("INVALID_ARGUMENT");
  });

  test("refuses a non-empty directory, oversized keys, and use after finish; abort cleans up", async () => {
    const d = dir();
    fs.mkdirSync(d, { recursive: true });
    fs.writeFileSync(path.join(d, "junk"), "x");
    expect(((await BulkLoader.create(d, small).catch((e) => e)) as LsmError).code).toBe("INVALID_ARGUMENT");

    const d2 = dir();
    const loader = await BulkLoader.create(d2, { ...small, maxKeyBytes: 8 });
    expect(() => loader.add(bytes("123456789"), bytes("v"))).toThrow(LsmError);
    loader.add(bytes("k1"), bytes("v"));
    await loader.abort();
    expect(() => loader.add(bytes("k2"), bytes("v"))).toThrow(LsmError);
    expect(fs.readdirSync(d2).some((f) => f.endsWith(".sst"))).toBe(false);

    const d3 = dir();
    const done = await BulkLoader.create(d3, small);
    done.add(bytes("k"), bytes("v"));
    const db = await done.finish();
    await db.close();
    expect(() => done.add(bytes("z"), bytes("v"))).toThrow(LsmError);
  });
});
