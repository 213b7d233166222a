// How the state machine lays out the LSM key space: user data under 0x01, internal metadata under
// 0x00 (so no user key can collide with it). Byte layouts are in FORMAT.md.

export const USER_PREFIX = 0x01;
export const META_PREFIX = 0x00;

/** 0x00 'a': the applied index and term and the log time, written in every apply batch. */
export const APPLIED_KEY = Uint8Array.of(META_PREFIX, 0x61);
/** 0x00 'k': how many user keys exist (kept in every batch that creates or deletes one). */
export const KEY_COUNT_KEY = Uint8Array.of(META_PREFIX, 0x6b);
/** 0x00 'm': the cluster members this state belongs to. */
export const MEMBERS_KEY = Uint8Array.of(META_PREFIX, 0x6d);
/** 0x00 's' + clientId: one client session. */
export const SESSION_PREFIX = Uint8Array.of(META_PREFIX, 0x73);
/** Just past every session key. */
export const SESSION_END = Uint8Array.of(META_PREFIX, 0x74);
export const USER_START = Uint8Array.of(USER_PREFIX);
export const USER_END = Uint8Array.of(USER_PREFIX + 1);

const encoder = new TextEncoder();

// 64-bit fields go through one shared 8-byte scratch view: `new DataView(out.buffer)` on a fresh
// array makes JSC materialize an ArrayBuffer per call, a measurable share of the apply path.
const scratch = new DataView(new ArrayBuffer(8));
const scratchBytes = new Uint8Array(scratch.buffer);

/** Writes a signed 64-bit integer at `offset`. */
export function writeInt64(out: Uint8Array, offset: number, value: bigint, littleEndian: boolean): void {
  scratch.setBigInt64(0, value, littleEndian);
  for (let i = 0; i < 8; i++) out[offset + i] = scratchBytes[i]!;
}

/** Reads a signed 64-bit integer at `offset` (the caller checked the bounds). */
export function readInt64(bytes: Uint8Array, offset: number, littleEndian: boolean): bigint {
  for (let i = 0; i < 8; i++) scratchBytes[i] = bytes[offset + i]!;
  return scratch.getBigInt64(0, littleEndian);
}

/** Writes a non-negative safe integer as an unsigned 64-bit little-endian field, without BigInt. */
export function writeUint64LE(out: Uint8Array, offset: number, value: number): void {
  const high = Math.floor(value / 0x1_0000_0000);
  writeUint32LE(out, offset, value >>> 0);
  writeUint32LE(out, offset + 4, high >>> 0);
}

/** Reads an unsigned 64-bit little-endian field; a value past 2^53 is corruption (a RangeError). */
export function readUint64LE(bytes: Uint8Array, offset: number): number {
  const high = readUint32LE(bytes, offset + 4);
  if (high > 0x1f_ffff) throw new RangeError(`64-bit field at byte ${offset} exceeds 2^53`);
  return high * 0x1_0000_0000 + readUint32LE(bytes, offset);
}

export function writeUint32LE(out: Uint8Array, offset: number, value: number): void {
  out[offset] = value & 0xff;
  out[offset + 1] = (value >>> 8) & 0xff;
  out[offset + 2] = (value >>> 16) & 0xff;
  out[offset + 3] = value >>> 24;
}

export function readUint32LE(bytes: Uint8Array, offset: number): number {
  return (bytes[offset]! | (bytes[offset + 1]! << 8) | (bytes[offset + 2]! << 16)) + bytes[offset + 3]! * 0x100_0000;
}

export function userKey(key: string): Uint8Array {
  const encoded = encoder.encode(key);
  const out = new Uint8Array(encoded.length + 1);
  out[0] = USER_PREFIX;
  out.set(encoded, 1);
  return out;
}

export function userKeyFromBytes(key: Uint8Array): Uint8Array {
  const out = new Uint8Array(key.length + 1);
  out[0] = USER_PREFIX;
  out.set(key, 1);
  return out;
}

/** Session keys sort by the clientId's two's-complement bits, big-endian. */
export function sessionKey(clientId: bigint): Uint8Array {
  const out = new Uint8Array(SESSION_PREFIX.length + 8);
  out[0] = SESSION_PREFIX[0]!;
  out[1] = SESSION_PREFIX[1]!;
  writeInt64(out, SESSION_PREFIX.length, clientId, false);
  return out;
}

/** The applied index and term, and the log time (ms) reached by the entries applied so far. */
export interface AppliedRecord {
  index: number;
  term: number;
  logTime: number;
}

export function encodeApplied(index: number, term: number, logTime: number): Uint8Array {
  const out = new Uint8Array(24);
  writeUint64LE(out, 0, index);
  writeUint64LE(out, 8, term);
  writeUint64LE(out, 16, logTime);
  return out;
}

/** Reads a 24-byte record, or a 16-byte one from an older build (log time 0). */
export function decodeApplied(value: Uint8Array): AppliedRecord {
  if (value.length !== 24 && value.length !== 16) throw new RangeError(`applied-index record is ${value.length} bytes, expected 24`);
  return { index: readUint64LE(value, 0), term: readUint64LE(value, 8), logTime: value.length === 24 ? readUint64LE(value, 16) : 0 };
}

export function encodeKeyCount(count: number): Uint8Array {
  const out = new Uint8Array(8);
  writeUint64LE(out, 0, count);
  return out;
}

export function decodeKeyCount(value: Uint8Array): number {
  if (value.length !== 8) throw new RangeError(`key-count record is ${value.length} bytes, expected 8`);
  return readUint64LE(value, 0);
}

/**
 * The members record: the voters (count u32, ids u32), then, when the configuration has learners
 * or addresses, the whole configuration in Raft's membership layout (src/raft/log/FORMAT.md).
 */
export function encodeMembers(members: readonly number[], membership?: Uint8Array): Uint8Array {
  const extra = membership?.length ?? 0;
  const out = new Uint8Array(4 + 4 * members.length + extra);
  const view = new DataView(out.buffer);
  view.setUint32(0, members.length, true);
  members.forEach((m, i) => view.setUint32(4 + 4 * i, m, true));
  if (membership !== undefined) out.set(membership, 4 + 4 * members.length);
  return out;
}

export function decodeMembers(value: Uint8Array): number[] {
  const view = new DataView(value.buffer, value.byteOffset, value.byteLength);
  const count = view.getUint32(0, true);
  if (value.length < 4 + 4 * count) throw new RangeError(`members record is ${value.length} bytes, expected at least ${4 + 4 * count}`);
  return Array.from({ length: count }, (_, i) => view.getUint32(4 + 4 * i, true));
}

/** The whole-configuration bytes after the voters, or null when the record has none. */
export function membersRecordMembership(value: Uint8Array): Uint8Array | null {
  const count = new DataView(value.buffer, value.byteOffset, value.byteLength).getUint32(0, true);
  return value.length > 4 + 4 * count ? value.subarray(4 + 4 * count) : null;
}
