// Runs the official abstract-level compliance suite (tape) against LsmLevel. A plain script, not a
// bun:test file: `bun test/lsm-api/abstract-level-suite.ts` prints TAP; abstract-level.test.ts drives it.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import test from "tape";
import { LsmLevel } from "../../src/lsm/level.ts";

// abstract-level/test ships no type declarations; it is a function taking { test, factory }.
const suite: (options: { test: typeof test; factory: (options?: object) => LsmLevel }) => void =
  require("abstract-level/test");

// Small engine settings keep each of the suite's ~thousand databases cheap to open.
const engine = { memtableBytes: 64 * 1024 };
const root = mkdtempSync(join(tmpdir(), "lsm-level-suite-"));
let databases = 0;

function cleanup(): void {
  rmSync(root, { recursive: true, force: true });
}
process.on("exit", cleanup);
test.onFinish(cleanup);

// Every database gets a fresh location that does not exist yet (createIfMissing tests need that).
suite({
  test,
  factory: (options?: object) => new LsmLevel(join(root, String(databases++)), { ...options, engine }),
});
