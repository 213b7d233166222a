// Range bounds given twice: gte/lte take precedence over gt/lt (abstract-level's rule).
import { afterAll, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { DB } from "../../src/lsm/index.ts";

const root = fs.mkdtempSync(path.join(os.tmpdir(), "lsm-bounds-"));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);

test("gte wins over gt and lte over lt, forward and reverse", async () => {
  const db = await DB.open(path.join(root, "db"));
  try {
    for (const k of ["3", "5", "6", "7", "8"]) await db.put(enc(k), enc(k));
    const keys = async (opts: Parameters<DB["iterator"]>[0]) => {
      const out: string[] = [];
      for await (const [k] of db.iterator(opts)) out.push(dec(k));
      return out;
    };
    expect(await keys({ gte: enc("5"), gt: enc("7") })).toEqual(["5", "6", "7", "8"]);
    expect(await keys({ lte: enc("5"), lt: enc("3") })).toEqual(["3", "5"]);
    expect(await keys({ gte: enc("5"), gt: enc("7"), reverse: true })).toEqual(["8", "7", "6", "5"]);
    expect(await keys({ gt: enc("5"), lt: enc("8") })).toEqual(["6", "7"]);
  } finally {
    await db.close();
  }
});
