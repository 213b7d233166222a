// Shared helpers for LSM tests: temp directories, key/value encoding, a quiet logger.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

export function tempDir(tag: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `lsm-${tag}-`));
}

export function removeDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
}

const enc = new TextEncoder();
const dec = new TextDecoder();
export const bytes = (s: string): Uint8Array => enc.encode(s);
export const text = (b: Uint8Array | undefined): string | undefined => (b === undefined ? undefined : dec.decode(b));
export const key = (i: number): Uint8Array => bytes(`key${String(i).padStart(8, "0")}`);

/** A deterministic PRNG (mulberry32) so failures replay. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function collectingLogger(): { logger: (m: string) => void; messages: string[] } {
  const messages: string[] = [];
  return { logger: (m) => messages.push(m), messages };
}
