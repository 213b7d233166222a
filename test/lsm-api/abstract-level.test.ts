// Runs the official abstract-level suite against LsmLevel in a child Bun process (tape prints TAP,
// which bun:test cannot host) and checks its summary: every assertion passed, and enough ran.
import { expect, test } from "bun:test";
import { join } from "node:path";

const SCRIPT = join(import.meta.dir, "abstract-level-suite.ts");
// classic-level (same manifest: buffer/view/utf8, has, getSync, explicit snapshots, signals) runs
// 5168 assertions; far fewer means whole sections were skipped or the run stopped early.
const MIN_PASSED = 5000;
const TIME_LIMIT_MS = 100_000;

function summaryCount(tap: string, name: "tests" | "pass" | "fail"): number {
  const match = tap.match(new RegExp(`^# ${name}\\s+(\\d+)$`, "m"));
  return match === null ? 0 : Number(match[1]);
}

test("abstract-level compliance suite passes against LsmLevel", async () => {
  const child = Bun.spawn(["bun", SCRIPT], { stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => child.kill("SIGKILL"), TIME_LIMIT_MS);
  const [tap, stderr, exitCode] = await Promise.all([
    new Response(child.stdout).text(),
    new Response(child.stderr).text(),
    child.exited,
  ]);
  clearTimeout(timer);

  const total = summaryCount(tap, "tests");
  const passed = summaryCount(tap, "pass");
  const failed = summaryCount(tap, "fail");
  console.log(`abstract-level suite: tests ${total}, pass ${passed}, fail ${failed} (exit ${exitCode})`);
  if (failed > 0 || exitCode !== 0) {
    // Show each failing assertion with the test it belongs to, then the child's stderr.
    let current = "";
    const failures: string[] = [];
    for (const line of tap.split("\n")) {
      if (line.startsWith("# ")) current = line;
      else if (line.startsWith("not ok")) failures.push(`${current}\n  ${line}`);
    }
    console.log(failures.slice(0, 40).join("\n"));
    console.log(stderr.slice(-4000));
  }

  expect(tap).toContain("# tests");
  expect(failed).toBe(0);
  expect(exitCode).toBe(0);
  expect(passed).toBe(total);
  expect(passed).toBeGreaterThanOrEqual(MIN_PASSED);
}, TIME_LIMIT_MS + 20_000);
