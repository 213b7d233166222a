// What crash-writer.ts writes and crash.test.ts checks: key and value of each counter.

export const MAX_COUNTER = 10_000_000_000;
// A small memtable so that kills land during flushes and compactions as well as WAL appends.
export const CRASH_ENGINE_OPTIONS = { memtableBytes: 64 * 1024 };

const encoder = new TextEncoder();

export function crashKey(counter: number): Uint8Array {
  return encoder.encode(`k${String(counter).padStart(10, "0")}`);
}

/** Length and content vary with the counter, so a value from another key is caught. */
export function crashValue(counter: number): Uint8Array {
  const unit = `v${counter};`;
  return encoder.encode(unit.repeat(1 + (counter % 17)));
}

export function counterOfKey(key: Uint8Array): number {
  const text = new TextDecoder().decode(key);
  if (!/^k\d{10}$/.test(text)) return -1;
  return Number(text.slice(1));
}
