// Linearizability checker for key-value histories: Wing & Gong's search with Lowe's memoization
// (a cache of (set of linearized ops, model state)), over a KV model partitioned by key (Porcupine).

/**
 * The client-visible operations the KV model knows. Cas is a Txn comparing the key's value (or its
 * absence) and putting a new one; Range reads the keys in [key, end).
 */
export type KvOpName = "Get" | "Put" | "Append" | "Delete" | "Cas" | "Range";

export interface KvInput {
  op: KvOpName;
  key: string;
  /** Put/Append/Cas argument; ignored for Get, Delete and Range. */
  value: string;
  /** Cas: the value the key must have; null (or absent): the key must not exist. */
  expect?: string | null;
  /** Range: the exclusive end of [key, end). */
  end?: string;
}

export interface KvOutput {
  /**
   * "OK" or "ErrNoKey"; Cas: "OK" (swapped), "ErrCasFailed" (value holds the key's value) or
   * "ErrCasFailedNoKey" (the key did not exist). Any other value never matches the model.
   */
  err: string;
  /** Get's result ("" with ErrNoKey). */
  value: string;
  /** Range: every key of the range that exists, with its value. */
  kvs?: [string, string][];
}

export interface Operation {
  clientId: number | bigint;
  input: KvInput;
  /** Ignored when `return` is Infinity (the outcome was never observed). */
  output: KvOutput | null;
  call: number;
  /**
   * When the answer arrived; Infinity for an operation that never answered (timed out or the
   * run ended): it may or may not have taken effect, at any point after its call.
   */
  return: number;
}

export type CheckResult =
  | { result: "ok" }
  | {
      result: "illegal";
      key: string;
      /** The longest order of this key's operations the search could linearize (last few). */
      linearized: Operation[];
      /** Operations none of which could come next after `linearized`. */
      conflicting: Operation[];
      explanation: string;
    }
  | { result: "timeout"; keys: string[]; explanation: string };

export interface CheckOptions {
  /** Wall-clock bound for the whole search; past it the answer is "timeout". Default 10 s. */
  timeoutMs?: number;
}

/** Model state of one key: its value, or null when absent. */
type KeyState = string | null;

/**
 * One sequential step of the KV model. `observed` is false for an operation whose output was
 * never seen: then any output is accepted (the effect still applies).
 */
export function stepKv(
  state: KeyState,
  input: KvInput,
  output: KvOutput | null,
  observed: boolean,
): { ok: boolean; state: KeyState } {
  switch (input.op) {
    case "Get": {
      if (!observed || output === null) return { ok: true, state };
      if (output.err === "OK") return { ok: state !== null && state === output.value, state };
      if (output.err === "ErrNoKey") return { ok: state === null, state };
      return { ok: false, state };
    }
    case "Put":
      return { ok: !observed || output?.err === "OK", state: input.value };
    case "Append":
      return { ok: !observed || output?.err === "OK", state: (state ?? "") + input.value };
    case "Delete": {
      if (!observed) return { ok: true, state: null };
      const err = output?.err;
      return { ok: (err === "OK" && state !== null) || (err === "ErrNoKey" && state === null), state: null };
    }
    case "Cas": {
      const expect = input.expect ?? null;
      const matches = expect === null ? state === null : state === expect;
      if (!observed || output === null) return { ok: true, state: matches ? input.value : state };
      if (output.err === "OK") return { ok: matches, state: input.value };
      if (output.err === "ErrCasFailed") return { ok: !matches && state === output.value, state };
      if (output.err === "ErrCasFailedNoKey") return { ok: !matches && state === null, state };
      return { ok: false, state };
    }
    case "Range":
      // Ranges are checked per key: checkHistory splits each into one Get per key it covers.
      throw new TypeError("a Range reaches the per-key model only as its per-key Gets");
    default: {
      const never: never = input.op;
      throw new TypeError(`unknown KV operation ${String(never)}`);
    }
  }
}

/**
 * Checks a whole history: each key is an independent object, checked on its own. A Range becomes
 * one Get per key of the history it covers (the value it returned, or ErrNoKey): every key's view
 * is checked; that one Range saw all its keys at one instant is not (a per-key projection).
 */
export function checkHistory(history: readonly Operation[], options: CheckOptions = {}): CheckResult {
  const deadline = performance.now() + (options.timeoutMs ?? 10_000);
  const byKey = new Map<string, Operation[]>();
  for (const op of projectRanges(history)) {
    if (!(op.call <= op.return)) {
      throw new RangeError(`operation on key ${JSON.stringify(op.input.key)} returns (${op.return}) before its call (${op.call})`);
    }
    let ops = byKey.get(op.input.key);
    if (ops === undefined) byKey.set(op.input.key, (ops = []));
    ops.push(op);
  }
  const timedOut: string[] = [];
  for (const [key, ops] of byKey) {
    const outcome = checkKey(key, ops, deadline);
    if (outcome.result === "illegal") return outcome;
    if (outcome.result === "timeout") timedOut.push(key);
  }
  if (timedOut.length > 0) {
    return {
      result: "timeout",
      keys: timedOut,
      explanation: `search ran out of time on ${timedOut.length} key(s) (first: ${JSON.stringify(timedOut[0])}); no violation found in the rest`,
    };
  }
  return { result: "ok" };
}

/** Replaces each answered Range by a Get per key of the history in [key, end); unanswered ones read nothing. */
function projectRanges(history: readonly Operation[]): readonly Operation[] {
  if (!history.some((op) => op.input.op === "Range")) return history;
  const keys = new Set<string>();
  for (const op of history) {
    if (op.input.op !== "Range") keys.add(op.input.key);
    else for (const [key] of op.output?.kvs ?? []) keys.add(key);
  }
  const out: Operation[] = [];
  for (const op of history) {
    if (op.input.op !== "Range") {
      out.push(op);
      continue;
    }
    if (op.return === Infinity || op.output === null) continue;
    const found = new Map(op.output.kvs ?? []);
    const end = op.input.end ?? "";
    for (const key of keys) {
      if (key < op.input.key || (end !== "" && key >= end)) continue;
      const value = found.get(key);
      out.push({ ...op, input: { op: "Get", key, value: "" }, output: value === undefined ? { err: "ErrNoKey", value: "" } : { err: "OK", value } });
    }
  }
  return out;
}

/** A call or return event in the doubly linked event list of Wing & Gong. */
interface EventNode {
  op: number;
  isCall: boolean;
  /** The call's return event (calls only). */
  match: EventNode | null;
  prev: EventNode | null;
  next: EventNode | null;
}

type KeyOutcome =
  | { result: "ok" }
  | { result: "timeout" }
  | Extract<CheckResult, { result: "illegal" }>;

function checkKey(key: string, all: Operation[], deadline: number): KeyOutcome {
  // An unanswered Get has no effect and no observed output: it never constrains anything.
  const ops = all.filter((op) => !(op.return === Infinity && op.input.op === "Get"));
  const n = ops.length;
  if (n === 0) return { result: "ok" };

  const head = buildEventList(ops);
  const states = new StateTable();
  const linearized = new Uint32Array((n + 31) >>> 5);
  const zobrist = makeZobrist(n);
  // cache: hash → entries of (bitset copy, state id) already explored.
  const cache = new Map<number, { bits: Uint32Array; state: number }[]>();
  const calls: { node: EventNode; state: number }[] = [];
  let hashHi = 0;
  let hashLo = 0;
  let state = 0; // interned null
  let best = { depth: -1, prefix: [] as number[], stuck: [] as number[] };
  let iterations = 0;

  // Pruning by reads: a Get that must precede every Put and Delete not yet linearized (it returns
  // before any of them is called) can only see the current value extended by Appends. So the
  // value after a candidate step must be a prefix of what such a Get observed (or absent, if it
  // observed ErrNoKey); otherwise the branch is dead. Sound, and it keeps append-heavy histories
  // near-linear instead of factorial.
  const resetters = ops
    .map((op, i) => ({ op, i }))
    .filter(({ op }) => isResetter(op))
    .sort((a, b) => a.op.call - b.op.call || a.i - b.i)
    .map(({ i }) => i);
  const reads = ops
    .map((op, i) => ({ op, i }))
    .filter(({ op }) => op.input.op === "Get" && op.return !== Infinity && op.output !== null)
    .sort((a, b) => a.op.return - b.op.return || a.i - b.i)
    .map(({ i }) => i);
  /** The read that last ruled a candidate out by the prune: part of the explanation. */
  let pruneBlocker = -1;

  let entry = head.next;
  while (head.next !== null) {
    if ((++iterations & 1023) === 0 && performance.now() > deadline) return { result: "timeout" };
    const node = entry!;
    if (node.isCall) {
      const op = ops[node.op];
      let next = states.step(state, node.op, op);
      if (next >= 0 && reads.length > 0) {
        const horizon = firstPendingCall(resetters, linearized, node.op, ops);
        const blocker = laterReadBlocking(reads, linearized, node.op, ops, states.value(next), horizon);
        if (blocker >= 0) {
          next = -1;
          pruneBlocker = blocker;
        }
      }
      if (next >= 0) {
        const hi = (hashHi ^ zobrist.hi[node.op]) >>> 0;
        const lo = (hashLo ^ zobrist.lo[node.op]) >>> 0;
        linearized[node.op >>> 5] |= 1 << (node.op & 31);
        // The key mixes in the state: one set of ops reached in many orders has many states.
        const key = ((hi ^ Math.imul(next, 0x9e3779b1)) >>> 0) * 0x200000 + (lo & 0x1fffff);
        if (cacheInsert(cache, key, linearized, next)) {
          calls.push({ node, state });
          state = next;
          hashHi = hi;
          hashLo = lo;
          lift(node);
          entry = head.next;
          continue;
        }
        linearized[node.op >>> 5] &= ~(1 << (node.op & 31));
      }
      entry = node.next;
    } else {
      // A return whose op is not linearized yet: every candidate before it failed; backtrack.
      if (calls.length > best.depth) {
        const stuck = candidatesBefore(head, node);
        if (pruneBlocker >= 0 && !stuck.includes(pruneBlocker)) stuck.push(pruneBlocker);
        best = { depth: calls.length, prefix: calls.map((c) => c.node.op), stuck };
      }
      pruneBlocker = -1;
      const top = calls.pop();
      if (top === undefined) return illegal(key, ops, best);
      state = top.state;
      const id = top.node.op;
      linearized[id >>> 5] &= ~(1 << (id & 31));
      hashHi = (hashHi ^ zobrist.hi[id]) >>> 0;
      hashLo = (hashLo ^ zobrist.lo[id]) >>> 0;
      unlift(top.node);
      entry = top.node.next;
    }
  }
  return { result: "ok" };
}

function isResetter(op: Operation): boolean {
  // A Cas may set any value: like a Put, it is not an extension of what was there.
  return op.input.op === "Put" || op.input.op === "Delete" || op.input.op === "Cas";
}

/** How many constrained reads `laterReadBlocking` compares against (earliest-returning first). */
const PRUNE_READS = 8;

/** Call time of the earliest-called op in `ids` (sorted by call) not linearized; Infinity if none. */
function firstPendingCall(ids: number[], linearized: Uint32Array, linearizing: number, ops: Operation[]): number {
  for (const id of ids) {
    if (id === linearizing || (linearized[id >>> 5] & (1 << (id & 31))) !== 0) continue;
    return ops[id].call;
  }
  return Infinity;
}

/**
 * Checks that the unlinearized Gets returning before `horizon` (the first call of a pending Put
 * or Delete) can see `value` or an extension of it. `reads` are observed Gets by return time.
 * Returns the index of a Get that cannot (this branch is dead), or -1.
 */
function laterReadBlocking(
  reads: number[],
  linearized: Uint32Array,
  linearizing: number,
  ops: Operation[],
  value: string | null,
  horizon: number,
): number {
  let checked = 0;
  for (let i = 0; i < reads.length && checked < PRUNE_READS; i++) {
    const id = reads[i];
    const op = ops[id];
    if (op.return >= horizon) break;
    if (id === linearizing || (linearized[id >>> 5] & (1 << (id & 31))) !== 0) continue;
    checked++;
    const output = op.output!;
    if (output.err === "ErrNoKey") {
      if (value !== null) return id;
    } else if (output.err === "OK" && value !== null && !output.value.startsWith(value)) {
      return id;
    }
  }
  return -1;
}

function buildEventList(ops: Operation[]): EventNode {
  const events: { time: number; isCall: boolean; op: number }[] = [];
  ops.forEach((op, i) => {
    events.push({ time: op.call, isCall: true, op: i }, { time: op.return, isCall: false, op: i });
  });
  // Calls sort before returns at equal times: operations that touch in time count as concurrent.
  events.sort((a, b) => a.time - b.time || (a.isCall === b.isCall ? a.op - b.op : a.isCall ? -1 : 1) || 0);
  const head: EventNode = { op: -1, isCall: false, match: null, prev: null, next: null };
  const callOf = new Map<number, EventNode>();
  let tail = head;
  for (const ev of events) {
    const node: EventNode = { op: ev.op, isCall: ev.isCall, match: null, prev: tail, next: null };
    if (ev.isCall) callOf.set(ev.op, node);
    else callOf.get(ev.op)!.match = node;
    tail.next = node;
    tail = node;
  }
  return head;
}

function lift(call: EventNode): void {
  call.prev!.next = call.next;
  call.next!.prev = call.prev;
  const ret = call.match!;
  ret.prev!.next = ret.next;
  if (ret.next !== null) ret.next.prev = ret.prev;
}

function unlift(call: EventNode): void {
  const ret = call.match!;
  ret.prev!.next = ret;
  if (ret.next !== null) ret.next.prev = ret;
  call.prev!.next = call;
  call.next!.prev = call;
}

function candidatesBefore(head: EventNode, stop: EventNode): number[] {
  const ids: number[] = [];
  for (let e = head.next; e !== null && e !== stop; e = e.next) if (e.isCall) ids.push(e.op);
  ids.push(stop.op);
  return [...new Set(ids)];
}

function cacheInsert(
  cache: Map<number, { bits: Uint32Array; state: number }[]>,
  hash: number,
  bits: Uint32Array,
  state: number,
): boolean {
  let bucket = cache.get(hash);
  if (bucket === undefined) cache.set(hash, (bucket = []));
  for (const seen of bucket) {
    if (seen.state === state && equalBits(seen.bits, bits)) return false;
  }
  bucket.push({ bits: bits.slice(), state });
  return true;
}

function equalBits(a: Uint32Array, b: Uint32Array): boolean {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Random per-operation words: the hash of a set is the XOR of its members' words. */
function makeZobrist(n: number): { hi: Uint32Array; lo: Uint32Array } {
  const hi = new Uint32Array(n);
  const lo = new Uint32Array(n);
  let x = 0x9e3779b9;
  const next = (): number => {
    // xorshift32: deterministic, so a slow check is reproducible.
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
  for (let i = 0; i < n; i++) {
    hi[i] = next() & 0xffffffff;
    lo[i] = next();
  }
  return { hi, lo };
}

/**
 * Interned model states (id 0 = absent key) with a memo of transitions, so that long Append
 * values are built and compared once rather than at every step of the search.
 */
class StateTable {
  private readonly values: KeyState[] = [null];
  private readonly ids = new Map<string, number>();
  /** Per operation: from-state id → to-state id (-1 when the op's output contradicts the model). */
  private readonly transitions: Map<number, number>[] = [];

  /** The state after `op` from state `from`, or -1 when the op's output contradicts the model. */
  step(from: number, opIndex: number, op: Operation): number {
    let memo = this.transitions[opIndex];
    if (memo === undefined) this.transitions[opIndex] = memo = new Map();
    const known = memo.get(from);
    if (known !== undefined) return known;
    const observed = op.return !== Infinity;
    const outcome = stepKv(this.values[from], op.input, op.output, observed);
    const to = outcome.ok ? this.intern(outcome.state) : -1;
    memo.set(from, to);
    return to;
  }

  value(id: number): KeyState {
    return this.values[id];
  }

  private intern(value: KeyState): number {
    if (value === null) return 0;
    let id = this.ids.get(value);
    if (id === undefined) {
      id = this.values.length;
      this.values.push(value);
      this.ids.set(value, id);
    }
    return id;
  }
}

function illegal(
  key: string,
  ops: Operation[],
  best: { prefix: number[]; stuck: number[] },
): Extract<CheckResult, { result: "illegal" }> {
  const linearized = best.prefix.slice(-5).map((i) => ops[i]);
  const conflicting = best.stuck.map((i) => ops[i]);
  const show = (op: Operation): string => {
    const out = op.return === Infinity ? "no answer" : `${op.output?.err} ${JSON.stringify(truncate(op.output?.value ?? ""))}`;
    const arg =
      op.input.op === "Put" || op.input.op === "Append"
        ? ` ${JSON.stringify(truncate(op.input.value))}`
        : op.input.op === "Cas"
          ? ` ${op.input.expect === null || op.input.expect === undefined ? "<absent>" : JSON.stringify(truncate(op.input.expect))} -> ${JSON.stringify(truncate(op.input.value))}`
          : "";
    return `client ${op.clientId} ${op.input.op}${arg} [${op.call}, ${op.return}] → ${out}`;
  };
  const explanation =
    `key ${JSON.stringify(key)} is not linearizable: after ${best.prefix.length} operation(s) ` +
    `(last: ${linearized.map(show).join("; ") || "none"}) none of these can come next: ` +
    conflicting.map(show).join("; ");
  return { result: "illegal", key, linearized, conflicting, explanation };
}

function truncate(s: string): string {
  return s.length <= 40 ? s : `${s.slice(0, 18)}…(${s.length} chars)…${s.slice(-18)}`;
}
