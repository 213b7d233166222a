// The core's in-memory Raft log: the compaction point (snapshot meta) plus the entries after it,
// which of them are durable ("stable"), the commit and applied cursors, and the configurations
// the log holds (a node uses the latest one in its log, committed or not: §4.1 of the thesis).

import { EntryType, type Entry, type Membership, type SnapshotMeta } from "../types.ts";
import { cloneSnapshotMeta, decodeMembership, membershipOfMeta, metaWith, sameMembership } from "./membership.ts";

interface ConfigEntry {
  index: number;
  membership: Membership;
}

/** What the simulators and the driver may read of the core's log. */
export type RaftLogView = Pick<
  RaftLog,
  "snapshot" | "term" | "entry" | "firstIndex" | "lastIndex" | "commitIndex" | "heldEntries" | "heldBytes" | "membership" | "membershipAt" | "lastConfigIndex" | "membershipVersion"
>;

export class RaftLog {
  /** Entries up to and including snapshot.index are compacted away. */
  snapshot: SnapshotMeta;
  /** entries[i].index === snapshot.index + 1 + i. */
  private entries: Entry[];
  /** Payload bytes of `entries`: what the log holds in memory, bounded by the driver's compaction. */
  heldBytes = 0;
  /** Last index known durable on this node's disk (reported through advance). */
  stableIndex: number;
  commitIndex: number;
  appliedIndex: number;
  /** The configuration in force at snapshot.index. */
  private snapshotMembership: Membership;
  /** The ConfChange entries after snapshot.index, in index order. */
  private configs: ConfigEntry[] = [];
  /** Bumped whenever membership() may have changed (an append, truncation or restore). */
  membershipVersion = 0;

  constructor(snapshot: SnapshotMeta, entries: Entry[], commitIndex: number, appliedIndex: number) {
    this.snapshotMembership = membershipOfMeta(snapshot);
    this.snapshot = metaWith(snapshot.index, snapshot.term, this.snapshotMembership);
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i] as Entry;
      if (e.index !== snapshot.index + 1 + i) {
        throw new RangeError(
          `initial entries must follow the snapshot (index ${snapshot.index}) contiguously; entry ${i} has index ${e.index}, expected ${snapshot.index + 1 + i}`,
        );
      }
      const prevTerm = i === 0 ? snapshot.term : (entries[i - 1] as Entry).term;
      if (e.term < prevTerm) throw new RangeError(`initial entry ${e.index} has term ${e.term} below its predecessor's ${prevTerm}`);
    }
    this.entries = entries.slice();
    for (const e of this.entries) {
      this.noteConfig(e);
      this.heldBytes += e.data.length;
    }
    this.stableIndex = this.lastIndex();
    if (appliedIndex < snapshot.index) {
      throw new RangeError(`appliedIndex ${appliedIndex} is below the log's compaction point ${snapshot.index}: the state machine must hold at least the snapshot`);
    }
    if (appliedIndex > this.lastIndex()) {
      throw new RangeError(
        `appliedIndex ${appliedIndex} is beyond the log's last index ${this.lastIndex()}: reset the log to the state machine's (lastApplied, lastAppliedTerm) before starting Raft`,
      );
    }
    // A state machine only ever applies committed entries, so its applied index is committed too.
    this.commitIndex = Math.max(commitIndex, appliedIndex, snapshot.index);
    if (this.commitIndex > this.lastIndex()) {
      throw new RangeError(`commitIndex ${this.commitIndex} is beyond the log's last index ${this.lastIndex()}: the durable log lost committed entries`);
    }
    this.appliedIndex = appliedIndex;
  }

  firstIndex(): number {
    return this.snapshot.index + 1;
  }

  lastIndex(): number {
    return this.snapshot.index + this.entries.length;
  }

  lastTerm(): number {
    return this.entries.length === 0 ? this.snapshot.term : (this.entries[this.entries.length - 1] as Entry).term;
  }

  /** Term at `index`, or undefined when it is compacted (below the snapshot) or beyond the end. */
  term(index: number): number | undefined {
    if (index === this.snapshot.index) return this.snapshot.term;
    if (index < this.snapshot.index || index > this.lastIndex()) return undefined;
    return (this.entries[index - this.snapshot.index - 1] as Entry).term;
  }

  entry(index: number): Entry | undefined {
    if (index <= this.snapshot.index || index > this.lastIndex()) return undefined;
    return this.entries[index - this.snapshot.index - 1];
  }

  matchTerm(index: number, term: number): boolean {
    return this.term(index) === term;
  }

  /** Entries in [lo, hi) with at most maxBytes of payload, but at least one entry if the range is non-empty. */
  slice(lo: number, hi: number, maxBytes = Infinity): Entry[] {
    if (lo <= this.snapshot.index) throw new RangeError(`invariant: slice from ${lo} reaches into the compacted prefix (<= ${this.snapshot.index})`);
    hi = Math.min(hi, this.lastIndex() + 1);
    const out: Entry[] = [];
    let bytes = 0;
    for (let i = lo; i < hi; i++) {
      const e = this.entries[i - this.snapshot.index - 1] as Entry;
      bytes += e.data.byteLength;
      if (out.length > 0 && bytes > maxBytes) break;
      out.push(e);
    }
    return out;
  }

  /** Is a log ending at (lastIndex, lastTerm) at least as up to date as ours (§5.4.1)? */
  isUpToDate(lastIndex: number, lastTerm: number): boolean {
    const ourTerm = this.lastTerm();
    return lastTerm > ourTerm || (lastTerm === ourTerm && lastIndex >= this.lastIndex());
  }

  /**
   * The leader's append: new entries at the end. They do not count toward commit yet: the driver
   * may send them to followers before its own write is durable (thesis §10.2.1), so the leader's
   * matchIndex advances only when advance() reports them stable (Replication.leaderPersisted).
   */
  append(entries: Entry[]): void {
    for (const e of entries) {
      if (e.index !== this.lastIndex() + 1) throw new Error(`invariant: appending entry ${e.index} after last index ${this.lastIndex()}`);
      this.entries.push(e);
      this.heldBytes += e.data.length;
      this.noteConfig(e);
    }
  }

  // ---- configurations --------------------------------------------------------------------------

  private noteConfig(e: Entry): void {
    if (e.type !== EntryType.ConfChange) return;
    let membership: Membership;
    try {
      membership = decodeMembership(e.data);
    } catch (err) {
      throw new Error(`invariant: configuration entry ${e.index} (term ${e.term}) cannot be decoded: ${(err as Error).message}`);
    }
    this.configs.push({ index: e.index, membership });
    this.membershipVersion++;
  }

  /** The latest configuration in the log (§4.1: used as soon as it is appended). */
  membership(): Membership {
    const last = this.configs[this.configs.length - 1];
    return last === undefined ? this.snapshotMembership : last.membership;
  }

  /** Index of the latest ConfChange entry held, or the compaction point when none is held after it. */
  lastConfigIndex(): number {
    const last = this.configs[this.configs.length - 1];
    return last === undefined ? this.snapshot.index : last.index;
  }

  /** The configuration in force at `index` (snapshot.index <= index <= lastIndex), else undefined. */
  membershipAt(index: number): Membership | undefined {
    if (index < this.snapshot.index || index > this.lastIndex()) return undefined;
    for (let i = this.configs.length - 1; i >= 0; i--) {
      const c = this.configs[i] as ConfigEntry;
      if (c.index <= index) return c.membership;
    }
    return this.snapshotMembership;
  }

  /** Truncates the held entries to their first `keep`. */
  private dropEntriesFrom(keep: number): void {
    for (let i = keep; i < this.entries.length; i++) this.heldBytes -= (this.entries[i] as Entry).data.length;
    this.entries.length = keep;
  }

  /** Forgets configurations from entries at or after `index` (they were truncated). */
  private dropConfigsFrom(index: number): void {
    let n = this.configs.length;
    while (n > 0 && (this.configs[n - 1] as ConfigEntry).index >= index) n--;
    if (n === this.configs.length) return;
    this.configs.length = n;
    this.membershipVersion++;
  }

  /**
   * A follower's append after (prevIndex, prevTerm) matched: skips entries already held, truncates
   * at the first conflicting entry (never at or below commitIndex) and appends the rest.
   * Returns the index of the last entry the leader's message vouches for.
   */
  appendFromLeader(prevIndex: number, entries: Entry[]): number {
    let i = 0;
    for (; i < entries.length; i++) {
      const e = entries[i] as Entry;
      const ours = this.term(e.index);
      if (ours === undefined) {
        if (e.index <= this.snapshot.index) continue; // compacted here: committed, hence equal
        break;
      }
      if (ours !== e.term) {
        if (e.index <= this.commitIndex) {
          throw new Error(`invariant: leader's entry ${e.index} (term ${e.term}) conflicts with committed entry of term ${ours}`);
        }
        this.dropEntriesFrom(e.index - this.snapshot.index - 1);
        this.dropConfigsFrom(e.index);
        if (this.stableIndex >= e.index) this.stableIndex = e.index - 1;
        break;
      }
    }
    for (; i < entries.length; i++) this.append([entries[i] as Entry]);
    return prevIndex + entries.length;
  }

  /** Entries committed but not yet handed to the state machine, at most maxBytes (at least one). */
  nextCommitted(maxBytes: number): Entry[] {
    if (this.appliedIndex >= this.commitIndex) return [];
    return this.slice(this.appliedIndex + 1, this.commitIndex + 1, maxBytes);
  }

  commitTo(index: number): void {
    if (index <= this.commitIndex) return;
    if (index > this.lastIndex()) throw new Error(`invariant: commitIndex ${index} beyond last index ${this.lastIndex()}`);
    this.commitIndex = index;
  }

  appliedTo(index: number): void {
    if (index < this.appliedIndex || index > this.commitIndex) {
      throw new Error(`invariant: applied index moving from ${this.appliedIndex} to ${index} (commitIndex ${this.commitIndex})`);
    }
    this.appliedIndex = index;
  }

  /** Drops entries up to meta.index, which the driver has compacted on disk (<= applied). */
  compact(meta: SnapshotMeta): void {
    if (meta.index <= this.snapshot.index) return;
    if (meta.index > this.appliedIndex) throw new RangeError(`compact(${meta.index}) beyond appliedIndex ${this.appliedIndex}`);
    if (meta.index > this.stableIndex) throw new RangeError(`compact(${meta.index}) beyond the durable index ${this.stableIndex}`);
    const t = this.term(meta.index);
    if (t !== meta.term) throw new RangeError(`compact: entry ${meta.index} has term ${t}, the snapshot meta says ${meta.term}`);
    const membership = this.membershipAt(meta.index) as Membership;
    if (!sameMembership(membership, membershipOfMeta(meta))) {
      throw new RangeError(`compact: the snapshot meta's configuration differs from the log's at index ${meta.index}`);
    }
    const dropped = meta.index - this.snapshot.index;
    for (let i = 0; i < dropped; i++) this.heldBytes -= (this.entries[i] as Entry).data.length;
    this.entries = this.entries.slice(dropped);
    this.snapshot = metaWith(meta.index, meta.term, membership);
    this.snapshotMembership = membership;
    this.configs = this.configs.filter((c) => c.index > meta.index);
  }

  /** Replaces the whole log with an installed snapshot. */
  restore(meta: SnapshotMeta): void {
    if (meta.index < this.commitIndex) throw new Error(`invariant: restoring snapshot ${meta.index} below commitIndex ${this.commitIndex}`);
    this.entries = [];
    this.heldBytes = 0;
    this.snapshot = cloneSnapshotMeta(meta);
    this.snapshotMembership = membershipOfMeta(meta);
    this.configs = [];
    this.membershipVersion++;
    this.commitIndex = meta.index;
    this.appliedIndex = meta.index;
    this.stableIndex = meta.index;
  }

  /** Entries not yet durable. */
  unstableEntries(): Entry[] {
    if (this.stableIndex >= this.lastIndex()) return [];
    return this.entries.slice(this.stableIndex - this.snapshot.index);
  }

  /** All entries held in memory (for inspection by the simulator's invariant checks). */
  heldEntries(): readonly Entry[] {
    return this.entries;
  }
}
