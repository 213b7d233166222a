// How the state machine lays out the LSM key space: user data under 0x01, internal metadata under
// 0x00 (so no user key can collide with it). Byte layouts are in FORMAT.md.

export const USER_PREFIX = 0x01;
export const META_PREFIX = 0x00;

/** 0x00 'a': the applied index and term, written in every apply batch. */
export const APPLIED_KEY = Uint8Array.of(META_PREFIX, 0x61);
/** 0x00 'm': the cluster members this state belongs to. */
export const MEMBERS_KEY = Uint8Array.of(META_PREFIX, 0x6d);
/** 0x00 's' + clientId: one client session. */
export const SESSION_PREFIX = Uint8Array.of(META_PREFIX, 0x73);
/** Just past every session key. */
export const SESSION_END = Uint8Array.of(META_PREFIX, 0x74);
export const USER_START = Uint8Array.of(USER_PREFIX);
export const USER_END = Uint8Array.of(USER_PREFIX + 1);

const encoder = new TextEncoder();

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
  out.set(SESSION_PREFIX, 0);
  new DataView(out.buffer).setBigInt64(SESSION_PREFIX.length, clientId, false);
  return out;
}

export function encodeApplied(index: number, term: number): Uint8Array {
  const out = new Uint8Array(16);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(index), true);
  view.setBigUint64(8, BigInt(term), true);
  return out;
}

export function decodeApplied(value: Uint8Array): { index: number; term: number } {
  if (value.length !== 16) throw new RangeError(`applied-index record is ${value.length} bytes, expected 16`);
  const view = new DataView(value.buffer, value.byteOffset, value.byteLength);
  return { index: Number(view.getBigUint64(0, true)), term: Number(view.getBigUint64(8, true)) };
}

export function encodeMembers(members: readonly number[]): Uint8Array {
  const out = new Uint8Array(4 + 4 * members.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, members.length, true);
  members.forEach((m, i) => view.setUint32(4 + 4 * i, m, true));
  return out;
}

export function decodeMembers(value: Uint8Array): number[] {
  const view = new DataView(value.buffer, value.byteOffset, value.byteLength);
  const count = view.getUint32(0, true);
  if (value.length !== 4 + 4 * count) throw new RangeError(`members record is ${value.length} bytes, expected ${4 + 4 * count}`);
  return Array.from({ length: count }, (_, i) => view.getUint32(4 + 4 * i, true));
}
