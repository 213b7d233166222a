// The cluster configuration as a value: voters, learners and each member's address. How it is
// written into a ConfChange entry and a snapshot's meta (a small binary layout, log/FORMAT.md).

import type { Membership, NodeId, SnapshotMeta } from "../types.ts";

const LAYOUT_VERSION = 1;
/** Guards decoding against absurd counts in a damaged record. */
const MAX_MEMBERS = 4096;
const MAX_ADDRESS_BYTES = 1024;

/** A membership with sorted, duplicate-free id lists; throws on overlapping or malformed ids. */
export function normalizeMembership(m: Membership): Membership {
  const voters = sortedIds(m.voters, "voter");
  const learners = sortedIds(m.learners, "learner");
  for (const id of learners) {
    if (voters.includes(id)) throw new RangeError(`node ${id} is both a voter and a learner`);
  }
  const addresses: Record<NodeId, string> = {};
  for (const id of [...voters, ...learners]) {
    const address = m.addresses[id];
    if (address !== undefined && address !== "") addresses[id] = address;
  }
  return { voters, learners, addresses };
}

function sortedIds(ids: readonly NodeId[], what: string): NodeId[] {
  const out = [...new Set(ids)].sort((a, b) => a - b);
  if (out.length !== ids.length) throw new RangeError(`duplicate ${what} ids in [${ids.join(", ")}]`);
  for (const id of out) {
    if (!Number.isInteger(id) || id < 0 || id > 0xffff_ffff) throw new RangeError(`${what} ids must be integers in [0, 2^32), got ${id}`);
  }
  return out;
}

/** Every member, voters first. */
export function membersOf(m: Membership): NodeId[] {
  return [...m.voters, ...m.learners];
}

export function isMember(m: Membership, id: NodeId): boolean {
  return m.voters.includes(id) || m.learners.includes(id);
}

export function sameMembership(a: Membership, b: Membership): boolean {
  return (
    sameIds(a.voters, b.voters) &&
    sameIds(a.learners, b.learners) &&
    membersOf(a).every((id) => (a.addresses[id] ?? "") === (b.addresses[id] ?? ""))
  );
}

function sameIds(a: readonly NodeId[], b: readonly NodeId[]): boolean {
  return a.length === b.length && a.every((id, i) => id === b[i]);
}

export function cloneMembership(m: Membership): Membership {
  return { voters: [...m.voters], learners: [...m.learners], addresses: { ...m.addresses } };
}

/** The configuration a snapshot carries ("members" are its voters; learners and addresses optional). */
export function membershipOfMeta(meta: SnapshotMeta): Membership {
  return normalizeMembership({ voters: meta.members, learners: meta.learners ?? [], addresses: meta.addresses ?? {} });
}

/** A snapshot meta for (index, term) carrying `m`; learners and addresses only when there are any. */
export function metaWith(index: number, term: number, m: Membership): SnapshotMeta {
  const meta: SnapshotMeta = { index, term, members: [...m.voters] };
  if (m.learners.length > 0) meta.learners = [...m.learners];
  if (Object.keys(m.addresses).length > 0) meta.addresses = { ...m.addresses };
  return meta;
}

export function cloneSnapshotMeta(meta: SnapshotMeta): SnapshotMeta {
  return metaWith(meta.index, meta.term, membershipOfMeta(meta));
}

export function describeMembership(m: Membership): string {
  const name = (id: NodeId) => (m.addresses[id] ? `${id}@${m.addresses[id]}` : `${id}`);
  const learners = m.learners.length > 0 ? ` learners [${m.learners.map(name).join(", ")}]` : "";
  return `voters [${m.voters.map(name).join(", ")}]${learners}`;
}

// ---- encoding --------------------------------------------------------------------------------
//
// version (u8 = 1), voter count (varint), voters (varint each), learner count (varint), learners
// (varint each), address count (varint), then per address: id (varint), length (varint), UTF-8.

export function encodeMembership(m: Membership): Uint8Array {
  const text = new TextEncoder();
  const addresses = membersOf(m)
    .filter((id) => m.addresses[id] !== undefined && m.addresses[id] !== "")
    .map((id) => [id, text.encode(m.addresses[id])] as const);
  const out: number[] = [LAYOUT_VERSION];
  const varint = (v: number) => {
    while (v >= 0x80) {
      out.push((v % 0x80) | 0x80);
      v = Math.floor(v / 0x80);
    }
    out.push(v);
  };
  varint(m.voters.length);
  for (const id of m.voters) varint(id);
  varint(m.learners.length);
  for (const id of m.learners) varint(id);
  varint(addresses.length);
  for (const [id, bytes] of addresses) {
    varint(id);
    varint(bytes.length);
    for (const b of bytes) out.push(b);
  }
  return Uint8Array.from(out);
}

/** Decodes a membership record; throws a RangeError naming what is wrong. */
export function decodeMembership(buf: Uint8Array): Membership {
  let pos = 0;
  const fail = (what: string): never => {
    throw new RangeError(`membership record (${buf.length} bytes) is malformed at byte ${pos}: ${what}`);
  };
  const varint = (): number => {
    let v = 0;
    let scale = 1;
    for (let i = 0; i < 5; i++) {
      if (pos >= buf.length) fail("truncated varint");
      const b = buf[pos++] as number;
      v += (b & 0x7f) * scale;
      if (b < 0x80) return v;
      scale *= 0x80;
    }
    return fail("varint too long");
  };
  const count = (what: string): number => {
    const n = varint();
    if (n > MAX_MEMBERS) fail(`${what} count ${n} exceeds ${MAX_MEMBERS}`);
    return n;
  };
  if (buf[pos++] !== LAYOUT_VERSION) fail(`unknown layout version ${buf[0]}`);
  const voters = Array.from({ length: count("voter") }, varint);
  const learners = Array.from({ length: count("learner") }, varint);
  const addresses: Record<NodeId, string> = {};
  const n = count("address");
  const text = new TextDecoder("utf-8", { fatal: true });
  for (let i = 0; i < n; i++) {
    const id = varint();
    const length = varint();
    if (length > MAX_ADDRESS_BYTES || pos + length > buf.length) fail(`address of ${length} bytes`);
    addresses[id] = text.decode(buf.subarray(pos, pos + length));
    pos += length;
  }
  if (pos !== buf.length) fail(`${buf.length - pos} trailing bytes`);
  return normalizeMembership({ voters, learners, addresses });
}
