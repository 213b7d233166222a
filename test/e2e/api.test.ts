// Range, DeleteRange, Txn (compare-and-swap) and Watch against three real kvserver processes:
// revisions, pagination, prefixes, exactly-once through the Clerk, and clear Connect errors for
// inverted ranges, huge limits and too many Txn operations.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { KVService } from "../../src/gen/kvraftpb/kvraft_pb.ts";
import { TestCluster, freePorts, kvclient } from "./harness.ts";
import { CHROMIUM, runBrowserPage } from "./browser.ts";
import * as fs from "node:fs";
import * as path from "node:path";
import { WatchCompactedError, type WatchEvent } from "../../src/kv/clerk-watch.ts";
import type { ClerkKV } from "../../src/kv/clerk-txn.ts";
import { ClerkError, type Clerk } from "../../src/kv/client.ts";
import { checkHistory, type Operation } from "../../src/sim/check/index.ts";

setDefaultTimeout(60_000);

let cluster: TestCluster;
let pagePort: number;
const enc = new TextEncoder();

beforeAll(async () => {
  [pagePort] = (await freePorts(1)) as [number];
  // A short log (compacted every ~100 entries) so the watch history is trimmed within one test.
  cluster = await TestCluster.start({
    extraArgs: ["--snapshot-threshold", "100", "--max-watches", "3", "--cors-origin", `http://127.0.0.1:${pagePort}`],
  });
  await cluster.waitForLeader();
});

afterAll(async () => {
  await cluster?.destroy();
});

function rawClient(id: number) {
  return createClient(KVService, createConnectTransport({ baseUrl: `http://${cluster.addrs[id]}`, httpVersion: "2" }));
}

async function refusal(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (error) {
    return ConnectError.from(error);
  }
  throw new Error("the call was not refused");
}

describe("range, delete range, txn", () => {
  test("revisions, prefix scan, pagination, serializable reads on a follower", async () => {
    const clerk = cluster.clerk();
    for (const k of ["app/a", "app/b", "app/c", "other"]) await clerk.put(k, `v-${k}`);
    await clerk.put("app/a", "v2");
    const all = await clerk.range("app/", "app0");
    expect(all.kvs.map((kv) => [kv.key, kv.value, kv.version])).toEqual([
      ["app/a", "v2", 2],
      ["app/b", "v-app/b", 1],
      ["app/c", "v-app/c", 1],
    ]);
    const a = all.kvs[0]!;
    expect(a.modRevision).toBeGreaterThan(a.createRevision);
    expect(all.revision).toBeGreaterThanOrEqual(a.modRevision);
    const page = await clerk.range("app/", "app0", { limit: 2 });
    expect([page.kvs.length, page.more, page.count, page.nextKey]).toEqual([2, true, 3, "app/c"]);
    expect((await clerk.scan("app/", { limit: 1 })).map((kv) => kv.key)).toEqual(["app/a", "app/b", "app/c"]);
    // Every replica applies the same entries: a serializable read anywhere sees the same revisions.
    const leader = await cluster.waitForLeader();
    const follower = (leader + 1) % 3;
    const deadline = Date.now() + 5_000;
    let local = await rawClient(follower).range({ key: enc.encode("app/a"), serializable: true });
    while (local.kvs[0]?.version !== 2n && Date.now() < deadline) {
      await Bun.sleep(50);
      local = await rawClient(follower).range({ key: enc.encode("app/a"), serializable: true });
    }
    expect(Number(local.kvs[0]!.modRevision)).toBe(a.modRevision);
  });

  test("compare-and-swap and delete range through the Clerk", async () => {
    const clerk = cluster.clerk();
    expect((await clerk.cas("lock", null, "alice")).succeeded).toBe(true);
    const lost = await clerk.cas("lock", null, "bob");
    expect([lost.succeeded, lost.previous?.value]).toEqual([false, "alice"]);
    const swapped = await clerk.cas("lock", "alice", "carol");
    expect([swapped.succeeded, swapped.previous?.value]).toEqual([true, "alice"]);
    expect(await clerk.get("lock")).toBe("carol");
    for (const k of ["tmp/1", "tmp/2", "tmp/3"]) await clerk.put(k, "x");
    const removed = await clerk.deleteRange("tmp/", "tmp0", true);
    expect([removed.deleted, removed.prevKvs.map((kv) => kv.key)]).toEqual([3, ["tmp/1", "tmp/2", "tmp/3"]]);
    expect((await clerk.range("tmp/", "tmp0")).count).toBe(0);
  });

  test("plain curl with JSON: Range with base64 keys", async () => {
    await cluster.clerk().put("curl/k", "v");
    const b64 = (s: string) => Buffer.from(s).toString("base64");
    const leader = await cluster.waitForLeader();
    const proc = Bun.spawn(
      ["curl", "-s", "-H", "Content-Type: application/json", "--data-binary", JSON.stringify({ key: b64("curl/"), rangeEnd: b64("curl0") }), `http://${cluster.addrs[leader]}/kvraftpb.KVService/Range`],
      { stdout: "pipe", stderr: "pipe" },
    );
    const json = JSON.parse(await new Response(proc.stdout).text());
    expect(json.kvs).toEqual([expect.objectContaining({ key: b64("curl/k"), value: b64("v"), version: "1" })]);
    expect(json.header.err).toBe("OK");
  });

  test("bad input gets clear Connect errors: inverted range, huge limit, too many Txn ops", async () => {
    const leader = await cluster.waitForLeader();
    const client = rawClient(leader);
    const inverted = await refusal(client.range({ key: enc.encode("z"), rangeEnd: enc.encode("a") }));
    expect(inverted.code).toBe(Code.InvalidArgument);
    expect(inverted.rawMessage).toContain("inverted or empty");
    const huge = await refusal(client.range({ key: enc.encode("a"), rangeEnd: Uint8Array.of(0), limit: 1_000_000_000n }));
    expect(huge.code).toBe(Code.InvalidArgument);
    expect(huge.rawMessage).toContain("above this cluster's maximum");
    const ops = Array.from({ length: 129 }, (_, i) => ({ request: { case: "requestPut" as const, value: { key: enc.encode(`k${i}`), value: enc.encode("v") } } }));
    const many = await refusal(client.txn({ success: ops }));
    expect(many.code).toBe(Code.InvalidArgument);
    expect(many.rawMessage).toContain("129 success operations; at most 128");
    const empty = await refusal(client.deleteRange({}));
    expect(empty.code).toBe(Code.InvalidArgument);
    // The node is still up and answering.
    expect((await cluster.clerk().range("a", "b")).kvs).toBeDefined();
  });
});

/** Collects a watch's events until `stop` aborts; `seen` is the highest revision delivered. */
function collect(clerk: Clerk, key: string, options: Parameters<Clerk["watch"]>[1]) {
  const abort = new AbortController();
  const state = { events: [] as WatchEvent[], seen: 0, error: null as unknown };
  const done = (async () => {
    try {
      for await (const batch of clerk.watch(key, { ...options, signal: abort.signal })) {
        state.events.push(...batch.events);
        state.seen = Math.max(state.seen, batch.revision);
      }
    } catch (error) {
      state.error = error;
    }
  })();
  return { state, stop: async () => (abort.abort(), await done) };
}

async function until(what: string, ok: () => boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(25);
  }
}

describe("watch", () => {
  test("a prefix watcher under kill -9 of its node (the leader) and a paused leader sees every event once, in revision order, equal to the final state", async () => {
    const writer = cluster.clerk({ operationTimeoutMs: 20_000 });
    const watcher = cluster.clerk({ operationTimeoutMs: 20_000 });
    // The watcher's Clerk learns the leader, and its watch starts there: that node gets killed.
    await watcher.put("warmup", "x");
    const start = (await writer.range("wf/", "wf0")).revision + 1;
    const watch = collect(watcher, "wf/", { prefix: true, startRevision: start, prevKv: true });
    const leader = await cluster.waitForLeader();
    const ops = async (from: number, to: number) => {
      for (let i = from; i < to; i++) {
        const key = `wf/${i % 7}`;
        if (i % 5 === 4) await writer.deleteRange(key, "");
        else if (i % 5 === 3) await writer.cas(key, null, `c${i}`);
        else await writer.put(key, `v${i}`);
      }
    };
    await ops(0, 30);
    await until("the watcher to see the first writes", () => watch.state.events.length > 0);
    expect(await cluster.kill(leader, "SIGKILL")).not.toBe(0);
    await ops(30, 60);
    await cluster.restart(leader);
    // Pause the leader now in office (SIGSTOP) through an election, then let it go on.
    const paused = await cluster.waitForLeader();
    cluster.nodes[paused]!.proc.kill("SIGSTOP");
    await ops(60, 70);
    cluster.nodes[paused]!.proc.kill("SIGCONT");
    await ops(70, 80);
    const marker = await writer.cas("wf/zz-end", null, "end");
    await until("the marker event", () => watch.state.seen >= marker.revision || watch.state.error !== null);
    await watch.stop();
    expect(watch.state.error).toBeNull();
    const final = await writer.range("wf/", "wf0");
    // Strictly increasing (revision, key): nothing twice, nothing out of order.
    const order = watch.state.events.map((e) => [e.kv.modRevision, e.kv.key] as const);
    for (let i = 1; i < order.length; i++) {
      const [r0, k0] = order[i - 1]!;
      const [r1, k1] = order[i]!;
      expect(r1 > r0 || (r1 === r0 && k1 > k0)).toBe(true);
    }
    expect(order[0]![0]).toBeGreaterThanOrEqual(start);
    // Replaying the events gives exactly the final keys with their revisions and versions.
    const replay = new Map<string, ClerkKV>();
    for (const e of watch.state.events) {
      if (e.type === "delete") {
        expect(replay.has(e.kv.key)).toBe(true);
        replay.delete(e.kv.key);
        continue;
      }
      const before = replay.get(e.kv.key);
      expect(e.kv.version).toBe(before === undefined ? 1 : before.version + 1);
      if (before !== undefined) expect([e.prevKv?.modRevision, e.prevKv?.value]).toEqual([before.modRevision, before.value]);
      replay.set(e.kv.key, e.kv);
    }
    expect([...replay.values()].sort((a, b) => (a.key < b.key ? -1 : 1))).toEqual(final.kvs);
  });

  test("a start revision older than the compacted log is answered compacted with the oldest revision available", async () => {
    const clerk = cluster.clerk();
    for (let i = 0; i < 260; i++) await clerk.put(`fill/${i % 10}`, `${i}`);
    // Every node compacted its log (threshold 100) and trimmed its history with it.
    let compacted = false;
    const statusClerk = cluster.clerk();
    await until(
      "every node to compact its log",
      () => {
        void statusClerk.getStatus().then((all) => (compacted = all.every((s) => s.online && s.snapshotIndex > 100n)));
        return compacted;
      },
      30_000,
    );
    const watch = collect(clerk, "fill/", { prefix: true, startRevision: 1 });
    await until("the watch to end", () => watch.state.error !== null);
    await watch.stop();
    expect(watch.state.error).toBeInstanceOf(WatchCompactedError);
    const error = watch.state.error as WatchCompactedError;
    expect(error.compactRevision).toBeGreaterThan(1);
    expect(error.message).toContain(`the oldest revision available is ${error.compactRevision}`);
    // From the revision it names, the watch is served.
    const again = collect(clerk, "fill/", { prefix: true, startRevision: error.compactRevision });
    await until("replayed events", () => again.state.events.length > 0);
    await again.stop();
    expect(again.state.events[0]!.kv.modRevision).toBeGreaterThanOrEqual(error.compactRevision);
  });

  test("a node stopping with SIGTERM ends its watches with unavailable at once, and exits 0", async () => {
    const id = (await cluster.waitForLeader() + 1) % 3;
    const stream = rawClient(id).watch({ key: enc.encode("term/") })[Symbol.asyncIterator]();
    const created = (await stream.next()).value;
    expect(created?.created).toBe(true);
    expect([created?.header?.memberId, created!.header!.raftTerm > 0n]).toEqual([BigInt(id), true]);
    const ended = stream.next().then(
      () => null,
      (error: unknown) => ConnectError.from(error),
    );
    expect(await cluster.kill(id, "SIGTERM")).toBe(0);
    const error = await ended;
    expect(error?.code).toBe(Code.Unavailable);
    expect(error?.rawMessage).toContain(`node ${id} is closing; resume the watch on another node from revision`);
    await cluster.restart(id);
  });

  test("watches beyond the per-node limit are refused with resource_exhausted", async () => {
    const leader = await cluster.waitForLeader();
    const client = rawClient(leader);
    const aborts: AbortController[] = [];
    const open = async () => {
      const abort = new AbortController();
      aborts.push(abort);
      const stream = client.watch({ key: enc.encode("lim") }, { signal: abort.signal })[Symbol.asyncIterator]();
      return stream.next();
    };
    for (let i = 0; i < 3; i++) expect((await open()).value?.created).toBe(true);
    const refused = await refusal(open());
    expect(refused.code).toBe(Code.ResourceExhausted);
    expect(refused.rawMessage).toContain("already serves 3 watches (limit 3)");
    for (const abort of aborts) abort.abort();
  });
});

describe("watch in a browser", () => {
  const haveChromium = fs.existsSync(CHROMIUM);
  if (!haveChromium) console.log(`SKIP browser watch test: ${CHROMIUM} is absent`);

  test.skipIf(!haveChromium)("a connect-web Clerk in headless Chromium replays past events and receives a live one; gRPC-Web streams too", async () => {
    const clerk = cluster.clerk();
    await clerk.put("bw/0", "zero");
    const first = (await clerk.range("bw/", "bw0")).revision + 1;
    await clerk.put("bw/1", "one");
    await clerk.deleteRange("bw/0", "");
    const { report } = await runBrowserPage(
      { addrs: cluster.addrs.join(","), prefix: "bw/", rev: String(first), count: "2" },
      40_000,
      pagePort,
      { page: path.join(import.meta.dir, "browser-watch-page.ts") },
    );
    expect(report.error).toBeUndefined();
    const seen: string[] = report.result.seen;
    expect(seen.slice(0, 2).map((e) => e.replace(/@\d+$/, ""))).toEqual(["put bw/1=one", "delete bw/0="]);
    expect(seen[2]).toMatch(/^put bw\/live=now@\d+$/);
    expect(report.result.grpcWebCreated).toBe(true);
    expect(report.result.grpcWebEvents).toBeGreaterThanOrEqual(2);
  });
});

describe("kvclient", () => {
  test("range, scan, cas and watch from the command line", async () => {
    const a = ["-addrs", cluster.addrs.join(",")];
    const clerk = cluster.clerk();
    for (const k of ["cli/a", "cli/b", "clj"]) await clerk.put(k, `v-${k}`);
    const range = await kvclient([...a, "-op", "range", "-key", "cli/", "-end", "clk"]);
    expect(range).toMatchObject({ code: 0, stdout: "cli/a -> v-cli/a\ncli/b -> v-cli/b\nclj -> v-clj\n" });
    expect(range.stderr).toMatch(/\(3 of 3 keys at revision \d+\)/);
    expect(await kvclient([...a, "-op", "scan", "-key", "cli/"])).toMatchObject({ code: 0, stdout: "cli/a -> v-cli/a\ncli/b -> v-cli/b\n" });
    const swapped = await kvclient([...a, "-op", "cas", "-key", "cli/a", "-expect", "v-cli/a", "-value", "new"]);
    expect(swapped.code).toBe(0);
    expect(swapped.stdout).toMatch(/^CAS\(cli\/a, v-cli\/a -> new\) success at revision \d+\n$/);
    expect(await kvclient([...a, "-op", "cas", "-key", "cli/a", "-expect", "v-cli/a", "-value", "newer"])).toMatchObject({
      code: 1,
      stdout: "CAS(cli/a, v-cli/a -> newer) failed: the value is new\n",
    });
    expect((await kvclient([...a, "-op", "range", "-key", "z", "-end", "a"])).code).toBe(1);
    expect((await kvclient([...a, "-op", "range", "-key", "a", "-limit", "x"])).code).toBe(2);

    const root = path.join(import.meta.dir, "../..");
    const proc = Bun.spawn(["bun", path.join(root, "src/cli/kvclient.ts"), ...a, "-op", "watch", "-key", "cli/", "-prefix"], { stdout: "pipe", stderr: "pipe" });
    const timer = setTimeout(() => proc.kill("SIGKILL"), 30_000);
    const reader = proc.stdout.getReader();
    let out = "";
    const deadline = Date.now() + 20_000;
    // Writes until the watch (which starts at "now") has printed one; then Ctrl-C.
    let pending = reader.read();
    for (let i = 0; !out.includes("PUT cli/w -> ") && Date.now() < deadline; i++) {
      await clerk.put("cli/w", `w${i}`);
      const chunk = await Promise.race([pending, Bun.sleep(300).then(() => null)]);
      if (chunk === null) continue;
      if (chunk.value !== undefined) out += new TextDecoder().decode(chunk.value);
      if (chunk.done) break;
      pending = reader.read();
    }
    proc.kill("SIGINT");
    const code = await proc.exited;
    clearTimeout(timer);
    expect(out).toMatch(/^PUT cli\/w -> w\d+ \(revision \d+\)$/m);
    expect(code).toBe(0);
  });
});

describe("compare-and-swap under faults", () => {
  test("a CAS register workload under kill -9 of the leader and a paused node is linearizable", async () => {
    const keys = ["reg0", "reg1"];
    const history: Operation[] = [];
    const progress = { done: 0, swapped: 0 };
    let stop = false;
    const clients = [0, 1, 2, 3].map(async (c) => {
      const clerk = cluster.clerk({ operationTimeoutMs: 10_000 });
      const seen = new Map<string, string | null>();
      // Runs until the fault phases are over (bounded by count), paced so that it cannot finish
      // its budget before the last phase on a fast machine.
      for (let i = 0; i < 400 && !stop; i++) {
        if (i > 0) await Bun.sleep(10);
        const key = keys[(c + i) % keys.length]!;
        const call = performance.now();
        try {
          if (i % 3 === 0) {
            const value = await clerk.get(key);
            seen.set(key, value);
            history.push({ clientId: c, input: { op: "Get", key, value: "" }, output: value === null ? { err: "ErrNoKey", value: "" } : { err: "OK", value }, call, return: performance.now() });
          } else {
            const expect = seen.get(key) ?? null;
            const value = `<${c}.${i}>`;
            const answer = await clerk.cas(key, expect, value);
            const output = answer.succeeded
              ? { err: "OK", value: "" }
              : answer.previous === null
                ? { err: "ErrCasFailedNoKey", value: "" }
                : { err: "ErrCasFailed", value: answer.previous.value };
            history.push({ clientId: c, input: { op: "Cas", key, value, expect }, output, call, return: performance.now() });
            seen.set(key, answer.succeeded ? value : (answer.previous?.value ?? null));
            if (answer.succeeded) progress.swapped++;
          }
        } catch (error) {
          if (!(error instanceof ClerkError) || !error.outcomeUnknown) throw error;
          // May or may not have taken effect: open in the history; the next Get tells.
          const expect = seen.get(key) ?? null;
          history.push({ clientId: c, input: { op: "Cas", key, value: `<${c}.${i}>`, expect }, output: null, call, return: Infinity });
          seen.delete(key);
        }
        progress.done++;
      }
    });
    const all = Promise.all(clients);
    let failed: unknown = null;
    all.catch((error: unknown) => (failed = error));
    const waitFor = async (target: number, phase: string) => {
      for (let i = 0; i < 300 && progress.done < target; i++) {
        if (failed !== null) throw failed;
        await Bun.sleep(100);
      }
      if (progress.done < target) throw new Error(`${phase}: only ${progress.done} of ${target} operations within 30 s`);
    };
    try {
      await waitFor(20, "before the crash");
      const leader = await cluster.waitForLeader();
      expect(await cluster.kill(leader, "SIGKILL")).not.toBe(0);
      await waitFor(progress.done + 20, "with the leader dead");
      await cluster.restart(leader);
      // Pause the current leader (SIGSTOP) long enough for an election, then let it go on.
      const paused = await cluster.waitForLeader();
      cluster.nodes[paused]!.proc.kill("SIGSTOP");
      await Bun.sleep(1500);
      cluster.nodes[paused]!.proc.kill("SIGCONT");
      await waitFor(progress.done + 20, "after the pause");
    } finally {
      stop = true;
    }
    await all;
    expect(progress.swapped).toBeGreaterThan(5);
    const verdict = checkHistory(history, { timeoutMs: 20_000 });
    if (verdict.result !== "ok") console.error(JSON.stringify(verdict, (_, v) => (typeof v === "bigint" ? String(v) : v === Infinity ? "Infinity" : v), 2).slice(0, 3000));
    expect(verdict.result).toBe("ok");
  });
});
