// The structured log: JSON lines with level, time, node, term and fields; levels below the
// configured one dropped; a human line when asked; warn and above reported as problems.
import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Logger } from "../../src/obs/log.ts";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvraft-log-"));
const files: number[] = [];
afterEach(() => {
  for (const fd of files.splice(0)) fs.closeSync(fd);
});

function capture(): { out: number; err: number; read: () => { out: string[]; err: string[] } } {
  const outPath = path.join(dir, `out-${files.length}`);
  const errPath = path.join(dir, `err-${files.length}`);
  const out = fs.openSync(outPath, "w+");
  const err = fs.openSync(errPath, "w+");
  files.push(out, err);
  const lines = (p: string) => fs.readFileSync(p, "utf8").split("\n").filter((l) => l !== "");
  return { out, err, read: () => ({ out: lines(outPath), err: lines(errPath) }) };
}

describe("log", () => {
  test("JSON lines carry level, time, node, term, msg and fields; info to out, warn and up to err", () => {
    const sink = capture();
    const problems: string[] = [];
    let term = 3;
    const logger = new Logger();
    logger.configure({ out: sink.out, err: sink.err, format: "json", node: 2, term: () => term, onProblem: (level, msg) => problems.push(`${level}:${msg}`) });
    logger.debug("dropped at info");
    logger.info("serving", { addr: "127.0.0.1:1", big: 2n ** 70n });
    term = 4;
    logger.error("disk failed", { error: new Error("EIO") });
    const { out, err } = sink.read();
    expect(out.length).toBe(1);
    const info = JSON.parse(out[0]!);
    expect(info).toMatchObject({ level: "info", node: 2, term: 3, msg: "serving", addr: "127.0.0.1:1", big: "1180591620717411303424" });
    expect(new Date(info.time).getTime()).toBeGreaterThan(Date.now() - 60_000);
    const error = JSON.parse(err[0]!);
    expect(error).toMatchObject({ level: "error", term: 4, msg: "disk failed", error: { message: "EIO", name: "Error" } });
    expect(problems).toEqual(["error:disk failed"]);
  });

  test("--log-level warn drops info; fatal always passes; the human format is one readable line", () => {
    const sink = capture();
    const logger = new Logger();
    logger.configure({ out: sink.out, err: sink.err, format: "human", level: "warn", node: 0 });
    logger.info("quiet");
    logger.warn("slow fsync", { ms: 120 });
    logger.fatal("storage broken");
    const { out, err } = sink.read();
    expect(out).toEqual([]);
    expect(err[0]).toMatch(/^\d\d:\d\d:\d\d\.\d{3} WARN  node 0  slow fsync ms=120$/);
    expect(err[1]).toMatch(/FATAL node 0  storage broken$/);
    expect(logger.enabled("debug")).toBe(false);
  });
});
