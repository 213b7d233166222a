// The process's structured log: one JSON object per line (level, time, node, term, msg, fields)
// for collectors, or a short human line when the stream is a terminal. Levels below the
// configured one cost one comparison. Written synchronously so a fail-stop exit loses no line.

import * as fs from "node:fs";
import * as tty from "node:tty";

export const LOG_LEVELS = ["debug", "info", "warn", "error", "fatal"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
export type LogFields = Record<string, unknown>;

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, fatal: 50 };

export interface LoggerOptions {
  /** Lines below this level are dropped (default info). */
  level?: LogLevel;
  /** "json" for collectors, "human" for people, "auto" (default): human when the stream is a TTY. */
  format?: "json" | "human" | "auto";
  /** This node's id, added to every line. */
  node?: number;
  /** Reads the current Raft term for every line (absent: no term field). */
  term?: () => number | undefined;
  /** Called with every warn, error and fatal line (the status page's recent errors). */
  onProblem?: (level: LogLevel, msg: string) => void;
  /** Where lines go: info and debug to `out`, warn and above to `err` (file descriptors; default 1 and 2). */
  out?: number;
  err?: number;
}

export class Logger {
  private rank = RANK.info;
  private options: LoggerOptions = {};
  private human = { out: false, err: false };

  constructor() {
    this.configure({});
  }

  configure(options: LoggerOptions): void {
    this.options = { ...this.options, ...options };
    this.rank = RANK[this.options.level ?? "info"];
    const format = this.options.format ?? "auto";
    const tty = (fd: number) => format === "human" || (format === "auto" && isTty(fd));
    this.human = { out: tty(this.options.out ?? 1), err: tty(this.options.err ?? 2) };
  }

  enabled(level: LogLevel): boolean {
    return RANK[level] >= this.rank;
  }

  debug(msg: string, fields?: LogFields): void {
    if (RANK.debug >= this.rank) this.write("debug", msg, fields);
  }
  info(msg: string, fields?: LogFields): void {
    if (RANK.info >= this.rank) this.write("info", msg, fields);
  }
  warn(msg: string, fields?: LogFields): void {
    if (RANK.warn >= this.rank) this.write("warn", msg, fields);
  }
  error(msg: string, fields?: LogFields): void {
    if (RANK.error >= this.rank) this.write("error", msg, fields);
  }
  fatal(msg: string, fields?: LogFields): void {
    this.write("fatal", msg, fields);
  }

  private write(level: LogLevel, msg: string, fields: LogFields | undefined): void {
    const toErr = RANK[level] >= RANK.warn;
    const { node, term } = this.options;
    const termNow = term?.();
    const line = (toErr ? this.human.err : this.human.out)
      ? humanLine(level, msg, node, termNow, fields)
      : jsonLine(level, msg, node, termNow, fields);
    writeFully(toErr ? (this.options.err ?? 2) : (this.options.out ?? 1), line);
    if (toErr) this.options.onProblem?.(level, msg);
  }
}

/**
 * Writes all of `line`, retrying a full non-blocking pipe a bounded number of times; a closed
 * stream (the reader went away) must not take the node down, so its errors are dropped.
 */
function writeFully(fd: number, line: string): void {
  let bytes = Buffer.from(line);
  for (let attempt = 0; attempt < 1_000 && bytes.length > 0; attempt++) {
    try {
      bytes = bytes.subarray(fs.writeSync(fd, bytes));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EAGAIN") return;
    }
  }
}

function jsonLine(level: LogLevel, msg: string, node: number | undefined, term: number | undefined, fields: LogFields | undefined): string {
  const record: LogFields = { level, time: new Date().toISOString() };
  if (node !== undefined) record.node = node;
  if (term !== undefined) record.term = term;
  record.msg = msg;
  if (fields !== undefined) for (const [k, v] of Object.entries(fields)) if (!(k in record)) record[k] = plain(v);
  return `${JSON.stringify(record)}\n`;
}

function humanLine(level: LogLevel, msg: string, node: number | undefined, term: number | undefined, fields: LogFields | undefined): string {
  const time = new Date().toISOString().slice(11, 23);
  const where = node === undefined ? "" : ` node ${node}${term === undefined ? "" : ` term ${term}`}`;
  const extra = fields === undefined ? "" : Object.entries(fields).map(([k, v]) => ` ${k}=${typeof v === "string" ? v : JSON.stringify(plain(v))}`).join("");
  return `${time} ${level.toUpperCase().padEnd(5)}${where}  ${msg}${extra}\n`;
}

/** Errors become their message and stack; bigints their decimal text (JSON has neither). */
function plain(value: unknown): unknown {
  if (value instanceof Error) return { message: value.message, name: value.name, stack: value.stack };
  if (typeof value === "bigint") return value.toString();
  return value;
}

function isTty(fd: number): boolean {
  try {
    return tty.isatty(fd);
  } catch {
    return false;
  }
}

/** The process-wide logger; kvserver configures it from its flags. */
export const log = new Logger();

export function parseLogLevel(text: string): LogLevel | undefined {
  return (LOG_LEVELS as readonly string[]).includes(text) ? (text as LogLevel) : undefined;
}
