// The manifest: version edits survive reopen, CURRENT names a fresh manifest each open, and a
// torn manifest tail (an edit never acknowledged) is dropped with a warning.
import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { encodeInternalKey, KIND_PUT } from "../../src/lsm/coding.ts";
import { VersionSet } from "../../src/lsm/manifest.ts";
import { emptyEdit, fileMeta } from "../../src/lsm/version.ts";
import { bytes, collectingLogger, removeDir, tempDir } from "./helpers.ts";

let dir = "";
afterEach(() => dir && removeDir(dir));

const meta = (n: number, lo: string, hi: string) =>
  fileMeta(n, 1000 + n, encodeInternalKey(bytes(lo), 10, KIND_PUT), encodeInternalKey(bytes(hi), 9, KIND_PUT));

describe("manifest", () => {
  test("edits replay into the same version after reopen", async () => {
    dir = tempDir("manifest");
    const { logger } = collectingLogger();
    const vs = new VersionSet(dir, logger);
    await vs.recover();
    const e1 = emptyEdit();
    e1.logNumber = 7;
    e1.added.push([0, meta(vs.newFileNumber(), "a", "m")], [0, meta(vs.newFileNumber(), "c", "z")]);
    await vs.logAndApply(e1, 100);
    const e2 = emptyEdit();
    const [f1, f2] = vs.current.levels[0];
    e2.deleted.push([0, f1.number], [0, f2.number]);
    e2.added.push([1, meta(vs.newFileNumber(), "a", "k")], [1, meta(vs.newFileNumber(), "l", "z")]);
    await vs.logAndApply(e2, 200);
    await vs.close();

    const again = new VersionSet(dir, logger);
    await again.recover();
    expect(again.current.levels[0].length).toBe(0);
    expect(again.current.levels[1].map((f) => f.number)).toEqual(vs.current.levels[1].map((f) => f.number));
    expect(again.current.levels[1][0].size).toBe(vs.current.levels[1][0].size);
    expect(again.logNumber).toBe(7);
    expect(again.lastSequence).toBe(200);
    expect(again.nextFileNumber).toBeGreaterThan(vs.current.levels[1][1].number);
    const current = fs.readFileSync(path.join(dir, "CURRENT"), "utf8");
    expect(current).toMatch(/^MANIFEST-\d{6}\n$/);
    expect(fs.readdirSync(dir).filter((n) => n.startsWith("MANIFEST-"))).toEqual([current.trim()]);
    await again.close();
  });

  test("a torn last edit is dropped with a warning", async () => {
    dir = tempDir("manifest");
    const { logger, messages } = collectingLogger();
    const vs = new VersionSet(dir, logger);
    await vs.recover();
    const e1 = emptyEdit();
    e1.logNumber = 3;
    e1.added.push([0, meta(vs.newFileNumber(), "a", "b")]);
    await vs.logAndApply(e1, 5);
    const e2 = emptyEdit();
    e2.added.push([0, meta(vs.newFileNumber(), "c", "d")]);
    await vs.logAndApply(e2, 6);
    await vs.close();
    const name = fs.readFileSync(path.join(dir, "CURRENT"), "utf8").trim();
    const file = path.join(dir, name);
    fs.truncateSync(file, fs.statSync(file).size - 3);
    const again = new VersionSet(dir, logger);
    await again.recover();
    expect(again.current.levels[0].length).toBe(1);
    expect(messages.some((m) => m.includes("torn tail"))).toBe(true);
    await again.close();
  });
});
