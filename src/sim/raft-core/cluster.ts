// A deterministic simulated cluster of Raft cores: one seeded Rng drives the network, the faults
// and every node's election timeouts; time is counted in ticks. Tests and the CLI build on it.

import { Rng } from "../../util/rng.ts";
import { describeConfChange } from "../../raft/core/config-change.ts";
import { decodeMembership, describeMembership, membershipOfMeta } from "../../raft/core/membership.ts";
import type { ConfChange, ConfChangeResult, ProposeResult, RaftConfig, ReadIndexResult } from "../../raft/core/raft.ts";
import { EntryType, NONE, type NodeId, type ReadState } from "../../raft/types.ts";
import { EventRing, InvariantViolation, Oracle, entryDigest } from "./checker.ts";
import { RELIABLE, CoreSimNetwork, type Envelope, type NetworkOptions } from "./network.ts";
import { SimNode, type CrashPoint, type DiskFault, type SimHost } from "./sim-node.ts";

export interface ClusterOptions {
  seed: number;
  nodes: number;
  /** The bootstrap voters (default: every node). The others start empty and wait to be added. */
  members?: NodeId[];
  network?: NetworkOptions;
  electionTicks?: number;
  heartbeatTicks?: number;
  preVote?: boolean;
  checkQuorum?: boolean;
  maxInflight?: number;
  maxBytesPerAppend?: number;
  maxPendingProposals?: number;
  maxLearnerLag?: number;
  /** Compact a node's log after this many applied entries (0 = never). */
  snapshotEvery?: number;
  /**
   * Every node starts recovering, as kvserver starts a node on an empty data directory (it cannot
   * tell a new cluster from a wiped disk). Used with disk faults, where a wiped node must look
   * exactly like a new one.
   */
  startRecovering?: boolean;
  /** The command line that replays this run, printed with every invariant violation. */
  replay?: string;
}

export interface ReadRecord {
  context: number;
  node: NodeId;
  /** Highest commitIndex anywhere when the read was requested: the read must see at least it. */
  required: number;
  /** Filled in when the leader confirmed the read. */
  index?: number;
}

export class CoreSimCluster implements SimHost {
  readonly rng: Rng;
  readonly network: CoreSimNetwork;
  readonly oracle: Oracle;
  readonly events = new EventRing(Number(process.env.SIM_EVENTS ?? 30));
  readonly nodes: SimNode[];
  readonly stats = { snapshotsSent: 0, snapshotsInstalled: 0, compactions: 0, elections: 0, crashes: 0, restarts: 0, partitions: 0, diskFaults: 0 };
  readonly reads = new Map<number, ReadRecord>();
  /** Granted (non-pre) votes sent, by "term:candidate": who may have elected whom. */
  private readonly grants = new Map<string, Set<NodeId>>();
  private time = 0;
  private readonly seed: number;
  private readonly replay: string;

  constructor(options: ClusterOptions) {
    if (!Number.isInteger(options.nodes) || options.nodes < 1 || options.nodes > 15) {
      throw new RangeError(`a simulated cluster needs 1..15 nodes, got ${options.nodes}`);
    }
    this.seed = options.seed;
    this.replay = options.replay ?? `bun run sim --seed ${options.seed} --nodes ${options.nodes}`;
    this.rng = new Rng(options.seed);
    this.network = new CoreSimNetwork(options.nodes, this.rng, options.network ?? RELIABLE);
    this.oracle = new Oracle((invariant, detail) => this.fail(invariant, detail));
    const peers = Array.from({ length: options.nodes }, (_, i) => i);
    const members = options.members ?? peers;
    for (const id of members) {
      if (!peers.includes(id)) throw new RangeError(`bootstrap member ${id} is not one of the ${options.nodes} nodes`);
    }
    const electionTicks = options.electionTicks ?? 10;
    const maxDelay = (options.network ?? RELIABLE).maxDelay;
    this.nodes = peers.map((id) => {
      const config: RaftConfig = {
        id,
        electionTicks,
        heartbeatTicks: options.heartbeatTicks ?? 2,
        random: () => this.rng.next(),
        preVote: options.preVote ?? true,
        checkQuorum: options.checkQuorum ?? true,
        maxInflight: options.maxInflight ?? 8,
        maxBytesPerAppend: options.maxBytesPerAppend ?? 4096,
        ...(options.maxPendingProposals !== undefined ? { maxPendingProposals: options.maxPendingProposals } : {}),
        ...(options.maxLearnerLag !== undefined ? { maxLearnerLag: options.maxLearnerLag } : {}),
      };
      return new SimNode(id, config, members.includes(id) ? members : [], this, options.snapshotEvery ?? 0, 4 * maxDelay + 2 * electionTicks);
    });
    if (options.startRecovering) for (const n of this.nodes) n.disk.recovering = true;
    for (const n of this.nodes) n.start();
  }

  // ---- SimHost ---------------------------------------------------------------------------------

  now(): number {
    return this.time;
  }

  send(envelope: Envelope): void {
    const m = envelope.message;
    if (m.type === "RequestVoteResponse" && m.voteGranted && !m.preVote) {
      const key = `${m.term}:${m.to}`;
      let voters = this.grants.get(key);
      if (voters === undefined) this.grants.set(key, (voters = new Set()));
      voters.add(m.from);
    }
    this.network.send(envelope, this.time);
  }

  /** Election safety across configurations: the winner is a voter and a quorum of its voters granted. */
  onBecameLeader(node: NodeId, term: number, voters: readonly NodeId[]): void {
    if (!voters.includes(node)) this.fail("learners never lead", `node ${node} became leader of term ${term} without being a voter of [${voters.join(", ")}]`);
    const granted = this.grants.get(`${term}:${node}`) ?? new Set<NodeId>();
    const count = voters.filter((v) => v === node || granted.has(v)).length;
    if (count < Math.floor(voters.length / 2) + 1) {
      this.fail("votes from voters only", `node ${node} leads term ${term} with grants from [${[...granted].join(", ")}], not a quorum of voters [${voters.join(", ")}]`);
    }
    for (const key of this.grants.keys()) if (Number(key.slice(0, key.indexOf(":"))) < term - 50) this.grants.delete(key);
  }

  /** Commits count voters only: the committed entry is on the disks of a quorum of the leader's voters. */
  onLeaderCommit(node: NodeId, term: number, index: number, voters: readonly NodeId[]): void {
    let holders = 0;
    // A recovering node abstains from votes, so it protects the entry as a holder would (DESIGN.md).
    for (const v of voters) if (this.nodes[v]!.disk.recovering || this.diskHolds(v, index, term)) holders++;
    if (holders < Math.floor(voters.length / 2) + 1) {
      this.fail("commit by a quorum of voters", `leader ${node} of term ${term} committed ${index}, durable on only ${holders} of its voters [${voters.join(", ")}]`);
    }
  }

  /** Voters of the configuration in force at `index` in node `id`'s durable log (undefined below its compaction point). */
  private diskVoters(id: NodeId, index: number): readonly NodeId[] | undefined {
    const d = this.nodes[id]!.disk;
    if (index < d.logSnapshot.index) return undefined;
    for (let i = Math.min(d.entries.length, index - d.logSnapshot.index) - 1; i >= 0; i--) {
      const e = d.entries[i]!;
      if (e.type === EntryType.ConfChange) return decodeMembership(e.data).voters;
    }
    return membershipOfMeta(d.logSnapshot).voters;
  }

  /** Whether node `id`'s disk holds the entry (index, term), or a snapshot past it. */
  private diskHolds(id: NodeId, index: number, term: number): boolean {
    const d = this.nodes[id]!.disk;
    const held = d.entries[index - d.logSnapshot.index - 1];
    return d.smSnapshot.meta.index >= index || d.logSnapshot.index >= index || (held !== undefined && held.term === term);
  }

  note(text: string): void {
    this.events.add({ tick: this.time, text });
  }

  fail(invariant: string, detail: string): never {
    throw new InvariantViolation(this.seed, invariant, detail, this.events.lines(), this.replay);
  }

  onReadState(node: NodeId, rs: ReadState): void {
    const r = this.reads.get(rs.context);
    if (r === undefined) this.fail("read index", `node ${node} confirmed read ${rs.context}, which nobody asked for`);
    if (r.index !== undefined) return; // confirmed before (a duplicate heartbeat answer)
    if (r.node !== node) this.fail("read index", `read ${rs.context} asked of node ${r.node} was confirmed by node ${node}`);
    if (rs.index < r.required) {
      this.fail("read index", `node ${node} confirmed read ${rs.context} at index ${rs.index}, but index ${r.required} was already committed when it was asked`);
    }
    r.index = rs.index;
    this.note(`n${node} confirmed read ${rs.context} at index ${rs.index}`);
  }

  crash(id: NodeId, why = "killed"): void {
    const n = this.nodes[id]!;
    if (!n.alive) return;
    n.stop();
    this.stats.crashes++;
    this.note(`n${id} crashed (${why})`);
  }

  // ---- Time ------------------------------------------------------------------------------------

  get tickCount(): number {
    return this.time;
  }

  /** One tick: deliver the messages due now, tick every live node, check the invariants. */
  tick(): void {
    this.time++;
    for (const env of this.network.takeDue(this.time)) {
      const node = this.nodes[env.message.to]!;
      if (!node.alive) continue;
      this.events.add({ tick: this.time, message: env.message, note: "deliver" });
      this.guard(() => node.deliver(env));
    }
    for (const node of this.nodes) this.guard(() => node.tick());
    this.checkLogMatching();
    this.checkDurability();
  }

  run(ticks: number): void {
    for (let i = 0; i < ticks; i++) this.tick();
  }

  /** Ticks until `done()` holds (checked before each tick); false if maxTicks pass first. */
  runUntil(done: () => boolean, maxTicks: number): boolean {
    for (let i = 0; i < maxTicks; i++) {
      if (done()) return true;
      this.tick();
    }
    return done();
  }

  /** Turns an assertion thrown inside a core into a report with the seed and recent events. */
  private guard(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      if (e instanceof InvariantViolation) throw e;
      this.fail("core assertion", e instanceof Error ? (e.stack ?? e.message) : String(e));
    }
  }

  // ---- Cluster view ----------------------------------------------------------------------------

  alive(id: NodeId): boolean {
    return this.nodes[id]!.alive;
  }

  status(id: NodeId) {
    const raft = this.nodes[id]!.raft;
    if (raft === null) throw new Error(`node ${id} is down`);
    return raft.status();
  }

  /** The live leader with the highest term, or NONE. */
  leader(): NodeId {
    let best = NONE;
    let bestTerm = -1;
    for (const n of this.nodes) {
      if (n.raft === null) continue;
      const s = n.raft.status();
      if (s.role === "Leader" && s.term > bestTerm) {
        best = n.id;
        bestTerm = s.term;
      }
    }
    return best;
  }

  /** Live leaders per term (more than one per term is an invariant violation caught elsewhere). */
  leaders(): { id: NodeId; term: number }[] {
    const out: { id: NodeId; term: number }[] = [];
    for (const n of this.nodes) {
      if (n.raft === null) continue;
      const s = n.raft.status();
      if (s.role === "Leader") out.push({ id: n.id, term: s.term });
    }
    return out;
  }

  maxTerm(): number {
    let t = 0;
    for (const n of this.nodes) if (n.raft !== null) t = Math.max(t, n.raft.status().term);
    return t;
  }

  /** Number of nodes (live or not) whose state machine has applied `index`. */
  appliedCount(index: number): number {
    let count = 0;
    for (const n of this.nodes) if (n.applied >= index) count++;
    return count;
  }

  /** Whether the entry applied at `index` carries exactly `data` (the oracle has the digest). */
  appliedDataIs(index: number, data: Uint8Array): boolean {
    const rec = this.oracle.at(index);
    return rec !== undefined && rec.digest === entryDigest({ index, term: rec.term, type: EntryType.Normal, data });
  }

  // ---- Client operations -----------------------------------------------------------------------

  propose(id: NodeId, data: Uint8Array[]): ProposeResult {
    const n = this.nodes[id]!;
    if (n.raft === null) return { ok: false, leaderId: NONE, reason: "not-leader" };
    const result = n.raft.propose(data);
    if (result.ok) this.note(`n${id} accepted ${data.length} proposal(s) at ${result.index} term ${result.term}`);
    this.guard(() => n.processReady());
    return result;
  }

  readIndex(id: NodeId, context: number): ReadIndexResult {
    return this.readIndexMany(id, [context])[0]!;
  }

  /** Several reads handed to the core before its next Ready (as a busy driver would). */
  readIndexMany(id: NodeId, contexts: number[]): ReadIndexResult[] {
    const n = this.nodes[id]!;
    const raft = n.raft;
    if (raft === null) return contexts.map(() => ({ ok: false, leaderId: NONE, reason: "not-leader" }));
    let required = this.oracle.maxApplied;
    for (const other of this.nodes) if (other.raft !== null) required = Math.max(required, other.raft.status().commitIndex);
    const results = contexts.map((context) => {
      if (this.reads.has(context)) throw new RangeError(`read context ${context} used twice`);
      const result = raft.readIndex(context);
      if (result.ok) this.reads.set(context, { context, node: id, required });
      return result;
    });
    this.guard(() => n.processReady());
    return results;
  }

  /** Proposes a configuration change at node `id` (which must be the leader to accept it). */
  proposeConfChange(id: NodeId, change: ConfChange): ConfChangeResult {
    const n = this.nodes[id]!;
    if (n.raft === null) return { ok: false, leaderId: NONE, reason: "not-leader" };
    const result = n.raft.proposeConfChange(change);
    if (result.ok) this.note(`n${id} accepted "${describeConfChange(change)}" at ${result.index}: ${describeMembership(result.membership)}`);
    else this.note(`n${id} refused "${describeConfChange(change)}": ${result.reason}${result.detail ? ` (${result.detail})` : ""}`);
    this.guard(() => n.processReady());
    return result;
  }

  transferLeadership(from: NodeId, to: NodeId): void {
    const n = this.nodes[from]!;
    if (n.raft === null) return;
    this.note(`n${from} asked to transfer leadership to n${to}`);
    n.raft.transferLeadership(to);
    this.guard(() => n.processReady());
  }

  // ---- Faults ----------------------------------------------------------------------------------

  /** Kills a node now, or arms a crash at a point of its next Ready. */
  crashAt(id: NodeId, point: CrashPoint | "now"): void {
    const n = this.nodes[id]!;
    if (!n.alive) return;
    if (point === "now") this.crash(id);
    else {
      n.armedCrash = point;
      this.note(`n${id} will crash ${point}`);
    }
  }

  restart(id: NodeId): void {
    const n = this.nodes[id]!;
    if (n.alive) return;
    this.guard(() => n.start());
    this.stats.restarts++;
    this.note(`n${id} restarted (term ${n.disk.hardState.term}, log ${n.disk.logSnapshot.index}+${n.disk.entries.length}, state machine at ${n.applied})`);
    this.guard(() => n.processReady());
  }

  /** Damages a down node's disk (see DiskFault); it restarts recovering. */
  loseDisk(id: NodeId, fault: DiskFault, cut = 0): void {
    const n = this.nodes[id]!;
    if (n.alive) throw new RangeError(`node ${id} must be down for a disk fault`);
    n.loseDisk(fault, cut);
    this.stats.diskFaults++;
    this.note(`n${id} disk fault: ${fault}${fault === "truncate" ? ` (${cut} newest entries)` : ""}`);
  }

  /** Nodes recovering lost durable state (down or not). */
  recoveringCount(): number {
    return this.nodes.filter((n) => n.disk.recovering).length;
  }

  isolate(id: NodeId): void {
    this.network.isolate(id);
    this.stats.partitions++;
    this.note(`n${id} disconnected`);
  }

  reconnect(id: NodeId): void {
    this.network.reconnect(id);
    this.note(`n${id} reconnected`);
  }

  partition(groups: NodeId[][]): void {
    this.network.partition(groups);
    this.stats.partitions++;
    this.note(`partition ${groups.map((g) => `[${g.join(",")}]`).join(" | ")}`);
  }

  blockOneWay(from: NodeId, to: NodeId): void {
    this.network.blockOneWay(from, to);
    this.stats.partitions++;
    this.note(`one-way cut n${from} -> n${to}`);
  }

  heal(): void {
    this.network.heal();
    this.note("network healed");
  }

  setNetwork(options: NetworkOptions): void {
    this.network.setOptions(options);
  }

  // ---- Continuous invariants -------------------------------------------------------------------

  /** Log matching: if two logs hold an entry with the same index and term, they agree up to it. */
  private checkLogMatching(): void {
    const live = this.nodes.filter((n) => n.raft !== null);
    for (let a = 0; a < live.length; a++) {
      for (let b = a + 1; b < live.length; b++) {
        const la = live[a]!.raft!.raftLog;
        const lb = live[b]!.raft!.raftLog;
        const lo = Math.max(la.snapshot.index, lb.snapshot.index);
        let i = Math.min(la.lastIndex(), lb.lastIndex());
        while (i >= lo && la.term(i) !== lb.term(i)) i--;
        for (; i > lo; i--) {
          const ea = la.entry(i)!;
          const eb = lb.entry(i)!;
          if (ea.term !== eb.term || ea.type !== eb.type || !sameBytes(ea.data, eb.data)) {
            this.fail("log matching", `nodes ${live[a]!.id} and ${live[b]!.id} agree on a later entry but differ at index ${i} (terms ${ea.term}, ${eb.term})`);
          }
        }
        if (i === lo && lo > 0 && la.term(lo) !== lb.term(lo)) {
          this.fail("log matching", `nodes ${live[a]!.id} and ${live[b]!.id} agree on a later entry but differ at index ${lo}`);
        }
      }
    }
  }

  /**
   * Committed entries are never lost: the newest applied entry is durable on a majority of the
   * voters of a configuration some live node uses: the one in force at that entry, or its latest.
   * A node recovering lost state counts too: it grants no vote, so it cannot help elect a leader
   * that lacks the entry (what this invariant protects).
   */
  private checkDurability(): void {
    const index = this.oracle.maxApplied;
    if (index === 0) return;
    const term = this.oracle.at(index)!.term;
    const configs: (readonly NodeId[])[] = [];
    for (const n of this.nodes) {
      const candidates = [this.diskVoters(n.id, index), this.diskVoters(n.id, Infinity)];
      if (n.raft !== null) candidates.push(n.raft.raftLog.membershipAt(index)?.voters, n.raft.raftLog.membership().voters);
      for (const voters of candidates) if (voters !== undefined && voters.length > 0) configs.push(voters);
    }
    if (configs.length === 0) return; // nobody has used a configuration yet
    let best = { holders: -1, voters: [] as readonly NodeId[] };
    for (const voters of configs) {
      const holders = voters.filter((v) => this.nodes[v]!.disk.recovering || this.diskHolds(v, index, term)).length;
      if (holders >= Math.floor(voters.length / 2) + 1) return;
      if (holders > best.holders) best = { holders, voters };
    }
    this.fail("committed entries durable", `applied entry ${index} (term ${term}) is durable on only ${best.holders} of voters [${best.voters.join(", ")}]`);
  }

  describe(): string {
    return this.nodes
      .map((n) => {
        if (n.raft === null) return `n${n.id}: down`;
        const s = n.raft.status();
        return `n${n.id}: ${s.role} term=${s.term} commit=${s.commitIndex} applied=${s.appliedIndex} log=${s.firstIndex}..${s.lastIndex} ${describeMembership(s.membership)}`;
      })
      .join("; ");
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a === b) return true;
  if (a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}
