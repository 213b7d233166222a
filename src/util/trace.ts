// A debug timeline of what a node spends time on (log writes and fsyncs, zero fills, applies, state
// machine flushes, LSM jobs, event-loop stalls), for matching a slow client call with what every
// node was doing at that moment (bench/put-tail.ts). Off unless KVRAFT_TRACE_DIR is set: then
// `tracing` is true and each event is one JSON line in KVRAFT_TRACE_DIR/trace-<pid>.jsonl.
// Callers test `tracing` before reading a clock, so the off path costs one branch.

import * as fs from "node:fs";
import * as path from "node:path";

const dir = process.env.KVRAFT_TRACE_DIR ?? "";
export const tracing = dir !== "";

/** Events kept between two writes; beyond this they are dropped (and counted). */
const MAX_BUFFERED = 50_000;
const WRITE_EVERY_MS = 500;
/** The stall probe's period and the lateness that counts as a stall. */
const PROBE_MS = 5;
const STALL_MS = 2;

let buffered: string[] = [];
let dropped = 0;
let file = "";

/** Wall-clock ms with sub-ms precision, comparable across processes on one machine. */
export function wallNow(): number {
  return performance.timeOrigin + performance.now();
}

/** Records one event that began at `start` (a wallNow() value) and lasted until now. */
export function traceSpan(kind: string, start: number, detail?: number | string): void {
  if (!tracing) return;
  const now = wallNow();
  push(kind, start, now - start, detail);
}

function push(kind: string, start: number, ms: number, detail?: number | string): void {
  if (buffered.length >= MAX_BUFFERED) {
    dropped++;
    return;
  }
  buffered.push(JSON.stringify({ k: kind, t: Math.round(start * 1000) / 1000, ms: Math.round(ms * 1000) / 1000, d: detail }));
}

function writeOut(): void {
  if (buffered.length === 0 && dropped === 0) return;
  if (dropped > 0) push("dropped", wallNow(), 0, dropped);
  dropped = 0;
  const text = `${buffered.join("\n")}\n`;
  buffered = [];
  try {
    fs.appendFileSync(file, text);
  } catch {
    // A debug aid: a full or missing directory loses the trace, never the node.
  }
}

if (tracing) {
  fs.mkdirSync(dir, { recursive: true });
  file = path.join(dir, `trace-${process.pid}.jsonl`);
  // A timer that fires late measures how long the event loop was held (synchronous work, GC).
  let expected = wallNow() + PROBE_MS;
  const probe = setInterval(() => {
    const now = wallNow();
    const late = now - expected;
    if (late > STALL_MS) push("stall", expected, late);
    expected = now + PROBE_MS;
  }, PROBE_MS);
  probe.unref();
  const writer = setInterval(writeOut, WRITE_EVERY_MS);
  writer.unref();
  process.on("exit", writeOut);
}
