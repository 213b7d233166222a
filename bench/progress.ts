// Live progress for long bench runs: a redrawn status line with a bar on a TTY, plain lines
// (one per finished step, one every few seconds for long steps) when output is a file or pipe.

export interface ProgressSink {
  write(s: string): void;
  isTTY: boolean;
  columns?: number;
}

const TTY_REDRAW_MS = 150;
const PLAIN_HEARTBEAT_MS = 10_000;

export class Progress {
  private label = "";
  private total = 0;
  private unit = "";
  private startedAt = 0;
  private lastDraw = 0;
  private drawn = false;

  constructor(
    private readonly sink: ProgressSink = {
      write: (s) => process.stderr.write(s),
      isTTY: Boolean(process.stderr.isTTY),
      columns: process.stderr.columns,
    },
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Begins a step; `total` in `unit`s (ops, ms) drives the bar, 0 for an open-ended step. */
  start(label: string, total = 0, unit = "ops"): void {
    this.label = label;
    this.total = total;
    this.unit = unit;
    this.startedAt = this.now();
    this.lastDraw = 0;
    if (this.sink.isTTY) this.draw(0);
  }

  /**
   * Reports `done` units. Reads the clock and redraws at most every 150 ms; callers in hot loops
   * call it every few dozen operations. Benchmarks whose operations resolve as microtasks never
   * yield to timers, so progress is driven from the loop, not from setInterval.
   */
  tick(done: number): void {
    const now = this.now();
    if (this.sink.isTTY) {
      if (now - this.lastDraw >= TTY_REDRAW_MS) this.draw(done);
    } else if (now - (this.lastDraw || this.startedAt) >= PLAIN_HEARTBEAT_MS && !(this.total > 0 && done >= this.total)) {
      this.lastDraw = now;
      this.sink.write(`  … ${this.label}: ${this.describe(done, now)}\n`);
    }
  }

  /** Ends the step with a result line. */
  finish(result: string): void {
    this.clear();
    this.sink.write(`  ${this.label}: ${result}\n`);
    this.label = "";
  }

  /** Prints a line without losing the status line. */
  log(line: string): void {
    this.clear();
    this.sink.write(line + "\n");
  }

  private describe(done: number, now: number): string {
    const elapsed = (now - this.startedAt) / 1000;
    const parts: string[] = [];
    if (this.total > 0) parts.push(`${Math.min(100, Math.floor((100 * done) / this.total))}%`);
    if (this.unit === "ops" && elapsed > 0) parts.push(`${Math.round(done / elapsed).toLocaleString("en-US")} ops/s`);
    parts.push(`${elapsed.toFixed(1)} s`);
    return parts.join("  ");
  }

  private draw(done: number): void {
    const now = this.now();
    this.lastDraw = now;
    const width = 24;
    const fraction = this.total > 0 ? Math.min(1, done / this.total) : 0;
    const filled = Math.round(fraction * width);
    const bar = this.total > 0 ? `[${"#".repeat(filled)}${".".repeat(width - filled)}] ` : "";
    let line = `${this.label} ${bar}${this.describe(done, now)}`;
    const columns = this.sink.columns && this.sink.columns > 20 ? this.sink.columns : 100;
    if (line.length > columns - 1) line = line.slice(0, columns - 1);
    this.sink.write(`\r\x1b[2K${line}`);
    this.drawn = true;
  }

  private clear(): void {
    if (this.sink.isTTY && this.drawn) {
      this.sink.write("\r\x1b[2K");
      this.drawn = false;
    }
  }
}
