// The linearizability checker against brute-force enumeration of every real-time-respecting order,
// on random small histories (legal and corrupted), plus hand-written known-bad histories.
import { describe, expect, test } from "bun:test";
import { checkHistory, stepKv, type KvOpName, type Operation } from "../../src/sim/check/index.ts";

/** Reference answer: some order of all ops, consistent with real time, that the model accepts. */
function bruteForceLinearizable(history: Operation[]): boolean {
  const n = history.length;
  const used = new Array<boolean>(n).fill(false);
  const state = new Map<string, string | null>();
  const search = (placed: number): boolean => {
    if (placed === n) return true;
    for (let i = 0; i < n; i++) {
      if (used[i]) continue;
      // i may go next only if no unplaced op finished strictly before i was called.
      let allowed = true;
      for (let j = 0; j < n && allowed; j++) if (!used[j] && j !== i && history[j].return < history[i].call) allowed = false;
      if (!allowed) continue;
      const op = history[i];
      const before = state.has(op.input.key) ? state.get(op.input.key)! : null;
      const step = stepKv(before, op.input, op.output, op.return !== Infinity);
      if (!step.ok) continue;
      used[i] = true;
      state.set(op.input.key, step.state);
      if (search(placed + 1)) return true;
      state.set(op.input.key, before);
      used[i] = false;
    }
    return false;
  };
  return search(0);
}

/** Small deterministic PRNG so a failing case is reproducible from its seed. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 0x100000000;
  };
}

/**
 * A random history that is linearizable by construction (each op takes effect at a random point
 * inside its interval), then, when `corrupt`, one observed output altered.
 */
function randomHistory(seed: number, corrupt: boolean): Operation[] {
  const r = rng(seed);
  const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)];
  const n = 2 + Math.floor(r() * 7);
  const keys = r() < 0.5 ? ["k"] : ["k", "j"];
  const ops: (Operation & { point: number; takesEffect: boolean })[] = [];
  for (let i = 0; i < n; i++) {
    const call = Math.floor(r() * 12);
    const pending = r() < 0.12;
    const ret = pending ? Infinity : call + Math.floor(r() * 6);
    const opName = pick<KvOpName>(["Get", "Get", "Put", "Append", "Append", "Delete"]);
    const point = call + r() * ((pending ? 8 : ret - call) || 0);
    ops.push({
      clientId: i,
      input: { op: opName, key: pick(keys), value: pick(["a", "b", "xy", ""]) },
      output: null,
      call,
      return: ret,
      point,
      takesEffect: !pending || r() < 0.5,
    });
  }
  const state = new Map<string, string | null>();
  for (const op of [...ops].sort((a, b) => a.point - b.point)) {
    if (!op.takesEffect) continue;
    const before = state.get(op.input.key) ?? null;
    const step = stepKv(before, op.input, null, false);
    state.set(op.input.key, step.state);
    if (op.input.op === "Get") op.output = before === null ? { err: "ErrNoKey", value: "" } : { err: "OK", value: before };
    else if (op.input.op === "Delete") op.output = { err: before === null ? "ErrNoKey" : "OK", value: "" };
    else op.output = { err: "OK", value: "" };
  }
  if (corrupt) {
    const observed = ops.filter((op) => op.return !== Infinity);
    if (observed.length > 0) {
      const victim = pick(observed);
      victim.output = r() < 0.7 ? { err: "OK", value: pick(["a", "b", "axy", "xyxy", ""]) } : { err: pick(["ErrNoKey", "OK"]), value: "" };
    }
  }
  return ops.map(({ point: _p, takesEffect: _t, ...op }) => op);
}

const ok = (key: string, value: string) => ({ err: "OK", value }) as const;
const op = (
  clientId: number,
  name: KvOpName,
  key: string,
  value: string,
  output: { err: string; value: string } | null,
  call: number,
  ret: number,
): Operation => ({ clientId, input: { op: name, key, value }, output, call, return: ret });

describe("checker agrees with brute force", () => {
  test("random small histories, legal and corrupted", () => {
    let legal = 0;
    let illegalCount = 0;
    for (let seed = 1; seed <= 1500; seed++) {
      const history = randomHistory(seed, seed % 2 === 0);
      const expected = bruteForceLinearizable(history);
      const got = checkHistory(history, { timeoutMs: 5_000 });
      if ((got.result === "ok") !== expected) {
        throw new Error(`seed ${seed}: checker says ${got.result}, brute force says ${expected}\n${JSON.stringify(history)}`);
      }
      expect(got.result).not.toBe("timeout");
      if (expected) legal++;
      else illegalCount++;
    }
    // Both outcomes must be well represented, or this test proves little.
    expect(legal).toBeGreaterThan(300);
    expect(illegalCount).toBeGreaterThan(200);
  });
});

describe("known-bad histories", () => {
  test("stale read: a Get after a completed Put sees the older value", () => {
    const history = [
      op(1, "Put", "x", "1", ok("x", ""), 0, 1),
      op(1, "Put", "x", "2", ok("x", ""), 2, 3),
      op(2, "Get", "x", "", ok("x", "1"), 4, 5),
    ];
    const result = checkHistory(history);
    expect(result.result).toBe("illegal");
    if (result.result !== "illegal") return;
    expect(result.key).toBe("x");
    expect(result.conflicting.some((o) => o.input.op === "Get")).toBe(true);
    expect(result.explanation).toContain("Get");
  });

  test("lost append: a completed Append missing from a later read", () => {
    const history = [
      op(1, "Append", "x", "a", ok("x", ""), 0, 1),
      op(2, "Append", "x", "b", ok("x", ""), 0, 2),
      op(3, "Get", "x", "", ok("x", "a"), 3, 4),
    ];
    expect(checkHistory(history).result).toBe("illegal");
  });

  test("duplicated append: one Append applied twice", () => {
    const history = [
      op(1, "Append", "x", "a", ok("x", ""), 0, 5),
      op(2, "Append", "x", "b", ok("x", ""), 1, 2),
      op(3, "Get", "x", "", ok("x", "aba"), 6, 7),
    ];
    expect(checkHistory(history).result).toBe("illegal");
  });

  test("a read of a value nobody wrote", () => {
    expect(checkHistory([op(1, "Get", "x", "", ok("x", "ghost"), 0, 1)]).result).toBe("illegal");
  });

  test("a Delete that answers OK on an absent key", () => {
    expect(checkHistory([op(1, "Delete", "x", "", ok("x", ""), 0, 1)]).result).toBe("illegal");
  });

  test("a violation on one key is found among many legal keys", () => {
    const history: Operation[] = [];
    for (let k = 0; k < 20; k++) {
      history.push(op(k, "Put", `k${k}`, "v", ok("", ""), k, k + 1));
      history.push(op(k, "Get", `k${k}`, "", ok("", "v"), k + 2, k + 3));
    }
    history.push(op(99, "Get", "k7", "", { err: "ErrNoKey", value: "" }, 100, 101));
    const result = checkHistory(history);
    expect(result.result).toBe("illegal");
    if (result.result === "illegal") expect(result.key).toBe("k7");
  });
});

describe("known-good histories", () => {
  test("concurrent writes may be seen in either order", () => {
    const history = [
      op(1, "Put", "x", "1", ok("", ""), 0, 10),
      op(2, "Put", "x", "2", ok("", ""), 0, 10),
      op(3, "Get", "x", "", ok("", "1"), 1, 2),
      op(3, "Get", "x", "", ok("", "2"), 3, 4),
    ];
    expect(checkHistory(history).result).toBe("ok");
  });

  test("an unanswered write may take effect late, or never", () => {
    const took = [
      op(1, "Append", "x", "a", null, 0, Infinity),
      op(2, "Get", "x", "", { err: "ErrNoKey", value: "" }, 5, 6),
      op(2, "Get", "x", "", ok("", "a"), 7, 8),
    ];
    expect(checkHistory(took).result).toBe("ok");
    const never = [op(1, "Append", "x", "a", null, 0, Infinity), op(2, "Get", "x", "", { err: "ErrNoKey", value: "" }, 5, 6)];
    expect(checkHistory(never).result).toBe("ok");
    // But not undone once seen.
    const undone = [...took, op(2, "Get", "x", "", { err: "ErrNoKey", value: "" }, 9, 10)];
    expect(checkHistory(undone).result).toBe("illegal");
  });

  test("a long sequential history with appends checks quickly", () => {
    const history: Operation[] = [];
    const values = new Map<string, string>();
    let t = 0;
    for (let i = 0; i < 3000; i++) {
      const key = `k${i % 3}`;
      const client = i % 5;
      if (i % 4 === 3) {
        history.push(op(client, "Get", key, "", ok("", values.get(key) ?? ""), t, t + 3));
      } else {
        const token = `x ${client} ${i} y`;
        values.set(key, (values.get(key) ?? "") + token);
        history.push(op(client, "Append", key, token, ok("", ""), t, t + 2));
      }
      t += 2; // overlaps its neighbour: some concurrency
    }
    // The first Get of each key reads "" with OK only if the key existed; fix those up.
    for (const h of history) if (h.input.op === "Get" && h.output!.value === "") h.output = { err: "ErrNoKey", value: "" };
    expect(checkHistory(history, { timeoutMs: 20_000 }).result).toBe("ok");
  });
});

describe("append-heavy histories", () => {
  test("many concurrent appends and one read check in linear time", () => {
    // 6 clients × 12 sequential appends, all clients concurrent: 72!/(12!^6) orders without pruning.
    const history: Operation[] = [];
    let value = "";
    const tokens: string[] = [];
    for (let j = 0; j < 12; j++) for (let c = 0; c < 6; c++) tokens.push(`x ${c} ${j} y`);
    for (const t of tokens) value += t;
    for (let c = 0; c < 6; c++) for (let j = 0; j < 12; j++) history.push(op(c, "Append", "k", `x ${c} ${j} y`, ok("", ""), j * 10 + c, j * 10 + 9));
    history.push(op(99, "Get", "k", "", ok("", value), 500, 501));
    expect(checkHistory(history, { timeoutMs: 5_000 }).result).toBe("ok");
    // The same with one token missing from the read is caught just as fast.
    const lost = [...history.slice(0, -1), op(99, "Get", "k", "", ok("", value.replace("x 3 7 y", "")), 500, 501)];
    const result = checkHistory(lost, { timeoutMs: 5_000 });
    expect(result.result).toBe("illegal");
  });
});

describe("bounded search", () => {
  test("a pathological history ends in timeout, not a hang", () => {
    // 18 mutually concurrent appends, an unanswered Put (so the append-only prune cannot apply)
    // and a read nobody could produce: the search space is factorial.
    const history: Operation[] = [];
    for (let i = 0; i < 18; i++) history.push(op(i, "Append", "x", String.fromCharCode(97 + i), ok("", ""), 0, 100));
    history.push(op(98, "Put", "x", "p", null, 0, Infinity));
    history.push(op(99, "Get", "x", "", ok("", "impossible"), 50, 60));
    const start = performance.now();
    const result = checkHistory(history, { timeoutMs: 200 });
    expect(result.result).toBe("timeout");
    expect(performance.now() - start).toBeLessThan(5_000);
  });

  test("rejects an operation that returns before it is called", () => {
    expect(() => checkHistory([op(1, "Get", "x", "", ok("", ""), 5, 4)])).toThrow(RangeError);
  });
});

/** As randomHistory, with compare-and-swap among the operations (issue 14). */
function randomCasHistory(seed: number, corrupt: boolean): Operation[] {
  const r = rng(seed);
  const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)];
  const n = 2 + Math.floor(r() * 7);
  const ops: (Operation & { point: number; takesEffect: boolean })[] = [];
  for (let i = 0; i < n; i++) {
    const call = Math.floor(r() * 12);
    const pending = r() < 0.12;
    const ret = pending ? Infinity : call + Math.floor(r() * 6);
    const name = pick<KvOpName>(["Get", "Cas", "Cas", "Cas", "Put", "Delete"]);
    ops.push({
      clientId: i,
      input: { op: name, key: "k", value: pick(["a", "b", "c"]), expect: pick([null, "a", "b", "c"]) },
      output: null,
      call,
      return: ret,
      point: call + r() * ((pending ? 8 : ret - call) || 0),
      takesEffect: !pending || r() < 0.5,
    });
  }
  let state: string | null = null;
  for (const op of [...ops].sort((a, b) => a.point - b.point)) {
    if (!op.takesEffect) continue;
    const before: string | null = state;
    state = stepKv(before, op.input, null, false).state;
    if (op.input.op === "Get") op.output = before === null ? { err: "ErrNoKey", value: "" } : { err: "OK", value: before };
    else if (op.input.op === "Delete") op.output = { err: before === null ? "ErrNoKey" : "OK", value: "" };
    else if (op.input.op === "Cas") {
      const swapped = before === (op.input.expect ?? null);
      op.output = swapped ? { err: "OK", value: "" } : before === null ? { err: "ErrCasFailedNoKey", value: "" } : { err: "ErrCasFailed", value: before };
    } else op.output = { err: "OK", value: "" };
  }
  if (corrupt) {
    const observed = ops.filter((op) => op.return !== Infinity);
    if (observed.length > 0) {
      const victim = pick(observed);
      victim.output = pick([{ err: "OK", value: "" }, { err: "ErrCasFailed", value: pick(["a", "b"]) }, { err: "ErrCasFailedNoKey", value: "" }, { err: "OK", value: "a" }]);
    }
  }
  return ops.map(({ point: _p, takesEffect: _t, ...op }) => op);
}

describe("compare-and-swap and range (issue 14)", () => {
  test("random Cas histories: the checker agrees with brute force", () => {
    let legal = 0;
    let illegalCount = 0;
    for (let seed = 1; seed <= 1500; seed++) {
      const history = randomCasHistory(seed, seed % 2 === 0);
      const expected = bruteForceLinearizable(history);
      const got = checkHistory(history, { timeoutMs: 5_000 });
      if ((got.result === "ok") !== expected) {
        throw new Error(`seed ${seed}: checker says ${got.result}, brute force says ${expected}\n${JSON.stringify(history)}`);
      }
      if (expected) legal++;
      else illegalCount++;
    }
    expect(legal).toBeGreaterThan(300);
    expect(illegalCount).toBeGreaterThan(200);
  });

  test("two Cas from the same expected value cannot both succeed", () => {
    const cas = (client: number, value: string, call: number, ret: number): Operation => ({
      clientId: client,
      input: { op: "Cas", key: "lock", value, expect: null },
      output: { err: "OK", value: "" },
      call,
      return: ret,
    });
    const result = checkHistory([cas(1, "alice", 0, 5), cas(2, "bob", 1, 6)]);
    expect(result.result).toBe("illegal");
    if (result.result === "illegal") expect(result.explanation).toContain("Cas <absent> -> ");
  });

  test("a Range is checked against every key it covers", () => {
    const put = (key: string, value: string, call: number, ret: number): Operation => ({ clientId: 1, input: { op: "Put", key, value }, output: { err: "OK", value: "" }, call, return: ret });
    const range = (kvs: [string, string][], call: number, ret: number): Operation => ({
      clientId: 2,
      input: { op: "Range", key: "a", value: "", end: "c" },
      output: { err: "OK", value: "", kvs },
      call,
      return: ret,
    });
    const writes = [put("a", "1", 0, 1), put("b", "2", 2, 3), put("c", "3", 4, 5)];
    // After both writes to the range: both keys, and not "c" (outside [a, c)).
    expect(checkHistory([...writes, range([["a", "1"], ["b", "2"]], 6, 7)]).result).toBe("ok");
    // Missing "b", which was written before the Range began: stale.
    expect(checkHistory([...writes, range([["a", "1"]], 6, 7)]).result).toBe("illegal");
    // A value never written.
    expect(checkHistory([...writes, range([["a", "9"], ["b", "2"]], 6, 7)]).result).toBe("illegal");
  });
});
