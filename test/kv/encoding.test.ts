// Command encoding, the session table's deterministic expiry, and the snapshot stream's framing
// (round trip, chunk bounds, truncation and corruption detection). No storage involved.
import { describe, expect, test } from "bun:test";
import { commandFingerprint, decodeCommand, encodeCommand, OP_APPEND, OP_PUT } from "../../src/kv/command.ts";
import { KVCorruptionError } from "../../src/kv/errors.ts";
import { decodeApplied, encodeApplied, sessionKey } from "../../src/kv/keys.ts";
import { RESULT_NO_KEY, RESULT_OK, SessionTable, decodeSession, encodeSession, type Session } from "../../src/kv/sessions.ts";
import { CRC32, CRC32C, FRAME_PREFIX_BYTES, FrameReader, sealFrame } from "../../src/kv/snapshot-frames.ts";
import { SNAPSHOT_PAIRS_VERSION, decodeSnapshot, encodeSnapshot, type SnapshotRecord } from "../../src/kv/snapshot-stream.ts";

const text = new TextDecoder();
const bytes = (s: string) => new TextEncoder().encode(s);

describe("command encoding", () => {
  test("round trip keeps every field, including negative and large ids and UTF-8", () => {
    const encoded = encodeCommand({ op: "Append", clientId: -5n, commandId: (1n << 62n) + 3n, key: "ключ", value: "v\u0000ü" });
    const decoded = decodeCommand(encoded, 7);
    expect(decoded.op).toBe(OP_APPEND);
    expect(decoded.clientId).toBe(-5n);
    expect(decoded.commandId).toBe((1n << 62n) + 3n);
    expect(text.decode(decoded.key)).toBe("ключ");
    expect(text.decode(decoded.value)).toBe("v\u0000ü");
    expect(decoded.registered).toBe(false);
    const stamped = decodeCommand(encodeCommand({ op: "Put", clientId: 9n, commandId: 1n, key: "k", value: "v", registered: true, timestamp: 1_700_000_000_123, maxValueBytes: 1 << 20 }), 1);
    expect(stamped).toMatchObject({ registered: true, timestamp: 1_700_000_000_123, maxValueBytes: 1 << 20 });
  });

  test("a version-1 entry (22-byte header, no flags, time or limit) still decodes", () => {
    const v1 = new Uint8Array(22 + 2);
    const view = new DataView(v1.buffer);
    v1[0] = 1;
    v1[1] = OP_PUT;
    view.setBigInt64(2, 77n, true);
    view.setBigInt64(10, 3n, true);
    view.setUint32(18, 1, true);
    v1.set(bytes("kv"), 22);
    const decoded = decodeCommand(v1, 5);
    expect(decoded).toMatchObject({ op: OP_PUT, clientId: 77n, commandId: 3n, registered: false, timestamp: 0, maxValueBytes: 0 });
    expect(text.decode(decoded.key)).toBe("k");
    expect(text.decode(decoded.value)).toBe("v");
  });

  test("the fingerprint tells different commands apart and ignores ids, time and flags", () => {
    const fp = (c: Parameters<typeof encodeCommand>[0]) => commandFingerprint(decodeCommand(encodeCommand(c), 1));
    const base = { op: "Put", clientId: 1n, commandId: 1n, key: "k", value: "v".repeat(500) } as const;
    expect(fp({ ...base, commandId: 2n, timestamp: 5, registered: true })).toBe(fp(base));
    expect(fp({ ...base, key: "j" })).not.toBe(fp(base));
    expect(fp({ ...base, op: "Append" })).not.toBe(fp(base));
    expect(fp({ ...base, value: "v".repeat(499) })).not.toBe(fp(base));
    expect(fp({ ...base, value: "w" + "v".repeat(499) })).not.toBe(fp(base));
  });

  test("byte layout matches FORMAT.md: little-endian ids and key length, ASCII and UTF-8 in place", () => {
    for (const [key, value] of [["k1", "ascii value"], ["ключ", "\ud83d\ude00 emoji"], ["lone\ud800", "x"]] as const) {
      const encoded = encodeCommand({ op: "Put", clientId: -2n, commandId: 0x0102030405060708n, key, value });
      const view = new DataView(encoded.buffer, encoded.byteOffset, encoded.byteLength);
      const keyBytes = bytes(key);
      expect(encoded[0]).toBe(2);
      expect(view.getBigInt64(3, true)).toBe(-2n);
      expect(view.getBigInt64(11, true)).toBe(0x0102030405060708n);
      expect(view.getUint32(31, true)).toBe(keyBytes.length);
      expect([...encoded.subarray(35)]).toEqual([...keyBytes, ...bytes(value)]);
    }
  });

  test("session and applied records keep their layout and round trip up to 2^53", () => {
    const session: Session = { clientId: -7n, commandId: -(1n << 63n), lastIndex: 2 ** 53 - 1, result: RESULT_NO_KEY, lastTime: 1_700_000_000_000, registered: true, fingerprint: 0xdeadbeef };
    const record = encodeSession(session);
    const view = new DataView(record.buffer);
    expect(record.length).toBe(30);
    expect(view.getBigInt64(0, true)).toBe(-(1n << 63n));
    expect(view.getBigUint64(8, true)).toBe(2n ** 53n - 1n);
    expect(view.getBigUint64(17, true)).toBe(1_700_000_000_000n);
    expect(record[25]).toBe(1);
    expect(view.getUint32(26, true)).toBe(0xdeadbeef);
    expect(decodeSession(-7n, record)).toEqual(session);
    // A 17-byte record of an older build: unregistered, no time, no fingerprint.
    expect(decodeSession(-7n, record.subarray(0, 17))).toEqual({ ...session, lastTime: 0, registered: false, fingerprint: 0 });
    const key = sessionKey(-7n);
    expect(new DataView(key.buffer).getBigInt64(2, false)).toBe(-7n);
    const applied = encodeApplied(2 ** 40 + 5, 3, 1234);
    expect(new DataView(applied.buffer).getBigUint64(0, true)).toBe(2n ** 40n + 5n);
    expect(decodeApplied(applied)).toEqual({ index: 2 ** 40 + 5, term: 3, logTime: 1234 });
    expect(decodeApplied(applied.subarray(0, 16))).toEqual({ index: 2 ** 40 + 5, term: 3, logTime: 0 });
    new DataView(applied.buffer).setBigUint64(8, 2n ** 60n, true);
    expect(() => decodeApplied(applied)).toThrow(RangeError);
  });

  test("malformed commands are named corruption with the entry index", () => {
    const good = encodeCommand({ op: "Put", clientId: 1n, commandId: 1n, key: "k", value: "v" });
    expect(() => decodeCommand(good.subarray(0, 10), 42)).toThrow(/log entry 42/);
    const badVersion = good.slice();
    badVersion[0] = 9;
    expect(() => decodeCommand(badVersion, 1)).toThrow(KVCorruptionError);
    const badOp = good.slice();
    badOp[1] = 77;
    expect(() => decodeCommand(badOp, 1)).toThrow(/unknown op code 77/);
    const badLength = good.slice();
    new DataView(badLength.buffer).setUint32(31, 1000, true);
    expect(() => decodeCommand(badLength, 1)).toThrow(/runs past/);
  });
});

describe("session table", () => {
  const s = (clientId: number, lastIndex: number, registered = false): Session => ({
    clientId: BigInt(clientId), commandId: 1n, lastIndex, lastTime: lastIndex * 100, result: RESULT_OK, registered, fingerprint: 0,
  });
  const limits = { ttlMs: 1000, maxSessions: 100, maxUnregisteredSessions: 100 };

  test("a session untouched for longer than ttlMs of log time expires", () => {
    const table = new SessionTable(limits);
    table.record(s(1, 1)); // log time 100
    table.record(s(2, 5, true)); // log time 500
    expect(table.expire(1100).map((x) => x.clientId)).toEqual([]);
    expect(table.expire(1101).map((x) => x.clientId)).toEqual([1n]);
    table.record(s(2, 12, true)); // touched again at 1200: its clock restarts
    expect(table.expire(2000)).toEqual([]);
    expect(table.expire(2201).map((x) => x.clientId)).toEqual([2n]);
    expect(table.size).toBe(0);
  });

  test("unregistered sessions beyond their limit: the least recently touched is evicted", () => {
    const table = new SessionTable({ ...limits, maxUnregisteredSessions: 2 });
    table.record(s(1, 1));
    table.record(s(2, 2));
    table.record(s(1, 3));
    table.record(s(9, 4, true)); // registered sessions do not count against unregistered ones
    expect(table.record(s(3, 5)).map((x) => x.clientId)).toEqual([2n]);
    expect([...table.values()].map((x) => x.clientId).sort()).toEqual([1n, 3n, 9n]);
  });

  test("registered sessions are never evicted: a full table refuses registrations", () => {
    const table = new SessionTable({ ...limits, maxSessions: 2 });
    table.record(s(1, 1, true));
    expect(table.canRegister()).toBe(true);
    table.record(s(2, 2, true));
    expect(table.canRegister()).toBe(false);
    expect(table.expire(1150).map((x) => x.clientId)).toEqual([1n]);
    expect(table.canRegister()).toBe(true);
  });

  test("load restores each kind's order from lastIndex and trims to the limits", () => {
    const table = new SessionTable({ ...limits, maxUnregisteredSessions: 2 });
    const dropped = table.load([s(3, 30), s(1, 10), s(2, 20), s(4, 5, true)]);
    expect(dropped.map((x) => x.clientId)).toEqual([1n]);
    expect([...table.values()].map((x) => x.clientId)).toEqual([4n, 2n, 3n]);
  });

  test("rejects nonsensical limits", () => {
    expect(() => new SessionTable({ ...limits, ttlMs: 0 })).toThrow(RangeError);
    expect(() => new SessionTable({ ...limits, maxSessions: 0 })).toThrow(RangeError);
  });
});

async function* fromArray<T>(items: T[]): AsyncGenerator<T> {
  for (const item of items) yield item;
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

function samplePairs(n: number): [Uint8Array, Uint8Array][] {
  return Array.from({ length: n }, (_, i) => [bytes(`key-${String(i).padStart(5, "0")}`), bytes("v".repeat(i % 300))]);
}

const header = { version: SNAPSHOT_PAIRS_VERSION, index: 99, term: 7, logTime: 5_000, members: [0, 1, 2] };
const sessions: Session[] = [
  { clientId: -1n, commandId: 5n, lastIndex: 90, lastTime: 4_000, result: RESULT_OK, registered: false, fingerprint: 7 },
  { clientId: 12n, commandId: 1n, lastIndex: 95, lastTime: 4_500, result: RESULT_NO_KEY, registered: true, fingerprint: 0 },
];

describe("snapshot stream", () => {
  test("round trip with chunks never above the chunk size", async () => {
    const pairs = samplePairs(2000);
    const chunks = await collect(encodeSnapshot(header, fromArray(sessions), fromArray(pairs), 4096));
    expect(chunks.length).toBeGreaterThan(10);
    for (const c of chunks) expect(c.length).toBeLessThanOrEqual(4096);
    const records = await collect(decodeSnapshot(fromArray(chunks)));
    expect(records[0]).toEqual({ type: "header", header });
    const gotSessions = records.flatMap((r) => (r.type === "sessions" ? r.sessions : []));
    expect(gotSessions).toEqual(sessions);
    const gotPairs = records.flatMap((r) => (r.type === "pairs" ? r.pairs : []));
    expect(gotPairs.length).toBe(2000);
    expect(gotPairs.map(([k, v]) => [text.decode(k), v.length])).toEqual(pairs.map(([k, v]) => [text.decode(k), v.length]));
    expect(records.at(-1)).toEqual({ type: "trailer", sessions: 2, pairs: 2000, records: 0 });
  });

  test("a value larger than a chunk spans several chunks", async () => {
    const big: [Uint8Array, Uint8Array] = [bytes("big"), new Uint8Array(10_000).fill(7)];
    const chunks = await collect(encodeSnapshot(header, fromArray([]), fromArray([big]), 1024));
    for (const c of chunks) expect(c.length).toBeLessThanOrEqual(1024);
    const pairs = (await collect(decodeSnapshot(fromArray(chunks)))).flatMap((r: SnapshotRecord) => (r.type === "pairs" ? r.pairs : []));
    expect(pairs[0][1]).toEqual(big[1]);
  });

  test("a stream cut at any chunk boundary is detected as truncated", async () => {
    const chunks = await collect(encodeSnapshot(header, fromArray(sessions), fromArray(samplePairs(300)), 512));
    for (let keep = 0; keep < chunks.length; keep++) {
      await expect(collect(decodeSnapshot(fromArray(chunks.slice(0, keep))))).rejects.toThrow(/truncated|starts with/);
    }
  });

  test("a stream cut mid-chunk is detected", async () => {
    const chunks = await collect(encodeSnapshot(header, fromArray(sessions), fromArray(samplePairs(300)), 512));
    const cut = [...chunks.slice(0, 3), chunks[3].subarray(0, 100)];
    await expect(collect(decodeSnapshot(fromArray(cut)))).rejects.toThrow(/truncated/);
  });

  test("a flipped byte anywhere is detected", async () => {
    const chunks = await collect(encodeSnapshot(header, fromArray(sessions), fromArray(samplePairs(100)), 256));
    const flat = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
    let offset = 0;
    for (const c of chunks) {
      flat.set(c, offset);
      offset += c.length;
    }
    for (let position = 0; position < flat.length; position += 37) {
      const damaged = flat.slice();
      damaged[position] ^= 0x10;
      await expect(collect(decodeSnapshot(fromArray([damaged])))).rejects.toThrow(KVCorruptionError);
    }
  });

  test("data after the trailer is rejected", async () => {
    const chunks = await collect(encodeSnapshot(header, fromArray([]), fromArray(samplePairs(3)), 4096));
    await expect(collect(decodeSnapshot(fromArray([...chunks, ...chunks])))).rejects.toThrow(/after its trailer|second header/);
  });
});

describe("snapshot frames", () => {
  test("large frames gathered across chunks come out whole and verified, small ones around them too", () => {
    const sizes = [10, 200_000, 3, 70_000, 65_536, 1];
    const frames = sizes.map((n, i) => {
      const buf = new Uint8Array(FRAME_PREFIX_BYTES + n);
      for (let j = 0; j < n; j++) buf[FRAME_PREFIX_BYTES + j] = (i * 31 + j) & 0xff;
      return sealFrame(buf, n, i % 2 === 0 ? CRC32 : CRC32C);
    });
    const stream = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
    let at = 0;
    for (const f of frames) {
      stream.set(f, at);
      at += f.length;
    }
    for (const piece of [7_000, 1, 300_000]) {
      for (const flip of [-1, FRAME_PREFIX_BYTES + 10 + 150_000]) {
        const data = stream.slice();
        if (flip >= 0) data[flip]! ^= 1;
        const reader = new FrameReader();
        const out: Uint8Array[] = [];
        const read = () => {
          for (let frame = reader.next(); frame !== null; frame = reader.next()) {
            out.push(frame);
            reader.checksum = out.length % 2 === 0 ? CRC32 : CRC32C;
          }
        };
        reader.checksum = CRC32;
        const run = () => {
          for (let i = 0; i < data.length; i += piece) {
            reader.push(data.subarray(i, i + piece));
            read();
          }
        };
        if (flip >= 0) {
          expect(run).toThrow(/checksum mismatch/);
          continue;
        }
        run();
        expect(out.map((f) => f.length)).toEqual(sizes);
        out.forEach((f, i) => expect(Buffer.compare(f, frames[i]!.subarray(FRAME_PREFIX_BYTES))).toBe(0));
        expect(reader.buffered).toBe(0);
      }
    }
  });
});
