// Invariant checks for the simulator (Figure 3 of the Raft paper, plus durability and ReadIndex),
// an oracle of what has been applied, and a bounded ring of recent events for failure reports.

import type { Entry, Message, NodeId } from "../../raft/types.ts";

export class InvariantViolation extends Error {
  readonly code = "INVARIANT_VIOLATION";
  constructor(
    readonly seed: number,
    readonly invariant: string,
    readonly detail: string,
    readonly events: string[],
    readonly replay: string,
  ) {
    super(
      `seed ${seed}: invariant "${invariant}" violated: ${detail}\n` +
        `last ${events.length} events:\n  ${events.join("\n  ")}\n` +
        `replay: ${replay}`,
    );
    this.name = "InvariantViolation";
  }
}

type Event = { tick: number; text: string } | { tick: number; message: Message; note: string };

/** Keeps the last `capacity` events; messages are formatted only when a report is printed. */
export class EventRing {
  private readonly buffer: (Event | undefined)[];
  private next = 0;
  private count = 0;

  constructor(readonly capacity = 30) {
    this.buffer = new Array<Event | undefined>(capacity);
  }

  add(event: Event): void {
    this.buffer[this.next] = event;
    this.next = (this.next + 1) % this.capacity;
    if (this.count < this.capacity) this.count++;
  }

  lines(): string[] {
    const out: string[] = [];
    for (let i = 0; i < this.count; i++) {
      const e = this.buffer[(this.next - this.count + i + this.capacity) % this.capacity] as Event;
      out.push(`t=${e.tick} ${"text" in e ? e.text : `${e.note} ${describeMessage(e.message)}`}`);
    }
    return out;
  }
}

export function describeMessage(m: Message): string {
  const head = `${m.from}->${m.to} ${m.type} term=${m.term}`;
  switch (m.type) {
    case "RequestVote":
      return `${head} last=${m.lastLogIndex}/${m.lastLogTerm}${m.preVote ? " pre" : ""}${m.transfer ? " transfer" : ""}`;
    case "RequestVoteResponse":
      return `${head} granted=${m.voteGranted}${m.preVote ? " pre" : ""}`;
    case "AppendEntries":
      return `${head} prev=${m.prevLogIndex}/${m.prevLogTerm} entries=${m.entries.length ? `${m.entries[0]!.index}..${m.entries[m.entries.length - 1]!.index}` : "none"} commit=${m.leaderCommit}`;
    case "AppendEntriesResponse":
      return `${head} success=${m.success} match=${m.matchIndex} conflict=${m.conflictIndex}/${m.conflictTerm}`;
    case "Heartbeat":
      return `${head} commit=${m.commitIndex} read=${m.readContext}`;
    case "HeartbeatResponse":
      return `${head} read=${m.readContext}`;
    case "InstallSnapshot":
      return `${head} snapshot=${m.snapshot.index}/${m.snapshot.term}`;
    case "InstallSnapshotResponse":
      return `${head} success=${m.success} match=${m.matchIndex}`;
    case "TimeoutNow":
      return head;
  }
}

/** FNV-1a over bytes, continuing from `h`. */
export function fnv1a(bytes: Uint8Array, h = 0x811c9dc5): number {
  for (let i = 0; i < bytes.length; i++) h = Math.imul(h ^ bytes[i]!, 0x01000193);
  return h >>> 0;
}

/** Mixes 32-bit words into a running hash (for the hash-chain state machine and run digests). */
export function mix(h: number, ...words: number[]): number {
  for (const w of words) {
    h = Math.imul(h ^ (w >>> 0), 0x01000193);
    h = Math.imul(h ^ Math.floor(w / 4294967296), 0x01000193);
    h ^= h >>> 15;
  }
  return h >>> 0;
}

export function entryDigest(e: Entry): number {
  return mix(fnv1a(e.data), e.index, e.term, e.type);
}

interface AppliedRecord {
  term: number;
  digest: number;
  /** State machine state right after applying this entry. */
  state: number;
}

/** What the whole cluster has applied so far: index → the one entry (and state) allowed there. */
export class Oracle {
  private readonly applied: AppliedRecord[] = [];
  /** term → the node that led it. */
  readonly leaders = new Map<number, NodeId>();

  constructor(private readonly fail: (invariant: string, detail: string) => never) {}

  /** Highest index any node has applied. */
  get maxApplied(): number {
    return this.applied.length;
  }

  at(index: number): AppliedRecord | undefined {
    return this.applied[index - 1];
  }

  /** State machine safety: every node applies the same entry, reaching the same state, at each index. */
  onApply(node: NodeId, e: Entry, stateAfter: number): void {
    const digest = entryDigest(e);
    const known = this.applied[e.index - 1];
    if (known === undefined) {
      if (e.index !== this.applied.length + 1) {
        this.fail("state machine safety", `node ${node} applied index ${e.index} but the cluster has applied only up to ${this.applied.length}`);
      }
      this.applied.push({ term: e.term, digest, state: stateAfter });
      return;
    }
    if (known.term !== e.term || known.digest !== digest || known.state !== stateAfter) {
      this.fail(
        "state machine safety",
        `node ${node} applied entry ${e.index} term ${e.term} (digest ${hex(digest)}, state ${hex(stateAfter)}) where another node applied term ${known.term} (digest ${hex(known.digest)}, state ${hex(known.state)})`,
      );
    }
  }

  /** A snapshot restored into a state machine must match the applied history at its index. */
  onRestore(node: NodeId, index: number, term: number, state: number): void {
    if (index === 0) return;
    const known = this.applied[index - 1];
    if (known === undefined) this.fail("state machine safety", `node ${node} restored snapshot ${index} beyond any applied index ${this.applied.length}`);
    if (known.term !== term || known.state !== state) {
      this.fail("state machine safety", `node ${node} restored snapshot ${index}/${term} state ${hex(state)}; applied history says ${known.term} state ${hex(known.state)}`);
    }
  }

  /** Election safety: at most one leader per term. */
  onLeader(node: NodeId, term: number): boolean {
    const existing = this.leaders.get(term);
    if (existing !== undefined && existing !== node) {
      this.fail("election safety", `nodes ${existing} and ${node} both became leader of term ${term}`);
    }
    if (existing === undefined) {
      this.leaders.set(term, node);
      return true;
    }
    return false;
  }

  /** Digest of the applied history, for the run summary. */
  historyHash(): number {
    let h = 0x811c9dc5;
    for (let i = 0; i < this.applied.length; i++) {
      const r = this.applied[i]!;
      h = mix(h, i + 1, r.term, r.digest, r.state);
    }
    return h;
  }
}

export function hex(n: number): string {
  return (n >>> 0).toString(16).padStart(8, "0");
}
