// LsmIterator.nextViews: entries in order as views within bounds and snapshots, stopping when the
// visitor says so, at n, and at the end; the iterator moves past exactly what was visited.
import { afterEach, expect, test } from "bun:test";
import { DB } from "../../src/lsm/index.ts";
import { bytes, key, removeDir, tempDir, text } from "./helpers.ts";

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) removeDir(d);
});

test("nextViews visits live entries in order, honours bounds, snapshots, n and a false return", async () => {
  const d = tempDir("views");
  dirs.push(d);
  const db = await DB.open(d, { memtableBytes: 16 * 1024, logger: () => {} });
  try {
    for (let i = 0; i < 2000; i++) await db.put(key(i), bytes(`v${i}`));
    await db.del(key(5));
    const snap = db.snapshot();
    await db.put(key(6), bytes("after-snapshot"));
    const it = db.iterator({ gte: key(3), lt: key(1500), snapshot: snap });
    const seen: string[] = [];
    // Stops after the visit that returns false (that entry counts and is passed).
    expect(it.nextViews(100, (k, v) => (seen.push(`${text(k)}=${text(v)}`), seen.length < 3))).toBe(3);
    expect(seen).toEqual([`${text(key(3))}=v3`, `${text(key(4))}=v4`, `${text(key(6))}=v6`]);
    let total = seen.length;
    for (let n = it.nextViews(250, () => true); n > 0; n = it.nextViews(250, () => true)) {
      expect(n).toBeLessThanOrEqual(250);
      total += n;
    }
    expect(total).toBe(1500 - 3 - 1);
    expect(it.nextViews(10, () => true)).toBe(0);
    it.close();
    snap.release();
  } finally {
    await db.close();
  }
});
