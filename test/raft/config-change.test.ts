// The configuration as a value: single-server changes and their refusals, and the membership
// record's byte layout (round trip, and damage reported rather than misread).

import { describe, expect, test } from "bun:test";
import { applyConfChange, changeAllowed } from "../../src/raft/core/config-change.ts";
import { decodeMembership, encodeMembership, membershipOfMeta, metaWith } from "../../src/raft/core/membership.ts";
import type { Membership } from "../../src/raft/types.ts";

const three: Membership = { voters: [0, 1, 2], learners: [], addresses: { 0: "a:1", 1: "b:1", 2: "c:1" } };

describe("configuration changes", () => {
  test("add a learner, promote it, remove it again", () => {
    const added = applyConfChange(three, { type: "add-learner", id: 9, address: "n9:7000" }) as Membership;
    expect(added).toEqual({ voters: [0, 1, 2], learners: [9], addresses: { ...three.addresses, 9: "n9:7000" } });
    const promoted = applyConfChange(added, { type: "promote", id: 9 }) as Membership;
    expect(promoted.voters).toEqual([0, 1, 2, 9]);
    expect(promoted.learners).toEqual([]);
    const removed = applyConfChange(promoted, { type: "remove", id: 9 }) as Membership;
    expect(removed).toEqual(three);
  });

  test("nonsense is refused with a sentence", () => {
    expect(applyConfChange(three, { type: "add-learner", id: 1 })).toMatch(/already a voter/);
    expect(applyConfChange(three, { type: "promote", id: 5 })).toMatch(/not a learner/);
    expect(applyConfChange(three, { type: "remove", id: 5 })).toMatch(/not a member/);
    expect(applyConfChange({ voters: [4], learners: [], addresses: {} }, { type: "remove", id: 4 })).toMatch(/last voter/);
    expect(applyConfChange(three, { type: "add-learner", id: -1 })).toMatch(/not an integer/);
  });

  test("one at a time, and only after the leader committed an entry of its term", () => {
    expect(changeAllowed({ lastConfigIndex: 5, commitIndex: 9, committedInCurrentTerm: true })).toBe(true);
    expect(changeAllowed({ lastConfigIndex: 10, commitIndex: 9, committedInCurrentTerm: true })).toBe(false);
    expect(changeAllowed({ lastConfigIndex: 5, commitIndex: 9, committedInCurrentTerm: false })).toBe(false);
  });

  test("the membership record round-trips and rejects damage", () => {
    const m: Membership = { voters: [1, 300, 70000], learners: [2], addresses: { 1: "héllo:1", 2: "[::1]:9" } };
    expect(decodeMembership(encodeMembership(m))).toEqual(m);
    const bytes = encodeMembership(m);
    expect(() => decodeMembership(bytes.subarray(0, bytes.length - 1))).toThrow(/malformed/);
    expect(() => decodeMembership(Uint8Array.of(2, 0, 0, 0))).toThrow(/version/);
    expect(() => decodeMembership(Uint8Array.of(1, 0xff, 0xff, 0xff, 0x7f))).toThrow(/exceeds/);
    // Overlapping voters and learners are not a configuration.
    expect(() => decodeMembership(Uint8Array.of(1, 1, 5, 1, 5, 0))).toThrow(/both a voter and a learner/);
  });

  test("snapshot metas carry the configuration; members are its voters", () => {
    const meta = metaWith(10, 2, { voters: [2, 0], learners: [5], addresses: { 5: "x:1" } });
    expect(meta).toEqual({ index: 10, term: 2, members: [2, 0], learners: [5], addresses: { 5: "x:1" } });
    expect(membershipOfMeta(meta)).toEqual({ voters: [0, 2], learners: [5], addresses: { 5: "x:1" } });
    expect(metaWith(1, 1, { voters: [0], learners: [], addresses: {} })).toEqual({ index: 1, term: 1, members: [0] });
  });
});
