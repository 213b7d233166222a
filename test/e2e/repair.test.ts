// Lost and corrupt durable state under real kvserver processes. A wiped follower and a truncated
// one come back recovering: no vote (with the leader down, no leader can be elected with it) and
// they catch up without an append loop. Bit flips in an SSTable and in the manifest of a stopped
// follower: it never serves from them and never crash-loops; it rebuilds itself from the leader.
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { KVStateMachine } from "../../src/kv/index.ts";
import type { NodeStatus } from "../../src/kv/client.ts";
import { TestCluster } from "./harness.ts";

setDefaultTimeout(90_000);

const KEYS = 120;
let cluster: TestCluster | null = null;
afterEach(async () => {
  await cluster?.destroy();
  cluster = null;
});

type Online = Extract<NodeStatus, { online: true }>;

async function statusOf(c: TestCluster, id: number): Promise<Online | null> {
  const s = (await c.clerk({ statusTimeoutMs: 500 }).getStatus())[id]!;
  return s.online ? s : null;
}

/** Polls until `done` holds for node `id` (bounded); returns its last status. */
async function waitFor(c: TestCluster, id: number, what: string, done: (s: Online, leader: Online | null) => boolean, ms = 30_000): Promise<Online> {
  const deadline = Date.now() + ms;
  let last: Online | null = null;
  while (Date.now() < deadline) {
    const all = await c.clerk({ statusTimeoutMs: 500 }).getStatus();
    const leader = (all.find((s) => s.online && s.state === "Leader") as Online | undefined) ?? null;
    const s = all[id]!;
    if (s.online) {
      last = s;
      if (done(s, leader)) return s;
    }
    await Bun.sleep(100);
  }
  throw new Error(`node ${id}: ${what} not reached within ${ms} ms; last status ${JSON.stringify(last, (_, v) => (typeof v === "bigint" ? Number(v) : v))}\n${c.output(id)}`);
}

const caughtUp = (s: Online, leader: Online | null) => leader !== null && s.storageHealth === "" && s.lastApplied >= leader.commitIndex;

/**
 * The value fill() writes for key i: 200 bytes of hash hex, so that even compressed the keys span
 * several table blocks (a block read while loading sessions must not hold them all).
 */
const value = (i: number, suffix = ""): string => {
  const hex = (n: number) => new Bun.CryptoHasher("sha256").update(`${i}${suffix}/${n}`).digest("hex");
  return `v${i}${suffix}-${hex(0)}${hex(1)}${hex(2)}${hex(3)}`.slice(0, 200);
};

async function fill(c: TestCluster, suffix = ""): Promise<void> {
  const clerk = c.clerk({ operationTimeoutMs: 20_000 });
  for (let i = 0; i < KEYS; i++) await clerk.put(`k${i}`, value(i, suffix));
}

/** Every key read through the cluster (linearizable, from the leader) is `expected(i)`. */
async function expectValues(c: TestCluster, expected: (i: number) => string): Promise<void> {
  const clerk = c.clerk({ operationTimeoutMs: 20_000 });
  for (let i = 0; i < KEYS; i++) expect(await clerk.get(`k${i}`)).toBe(expected(i));
}

/** Opens a stopped node's state machine in this process and reads every key (what it would serve). */
async function replicaValues(dir: string): Promise<(string | null)[]> {
  const machine = await KVStateMachine.open({ dir: path.join(dir, "state"), members: [0, 1, 2] });
  try {
    return Array.from({ length: KEYS }, (_, i) => {
      const v = machine.read(`k${i}`);
      return v === null ? null : new TextDecoder().decode(v);
    });
  } finally {
    await machine.close();
  }
}

/** CPU seconds (user + system) the process has used, from /proc. */
function cpuSeconds(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

function flipByte(file: string, offset: number): void {
  const fd = fs.openSync(file, "r+");
  try {
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, offset);
    b[0] = b[0]! ^ 0x5a;
    fs.writeSync(fd, b, 0, 1, offset);
  } finally {
    fs.closeSync(fd);
  }
}

function liveStateDir(nodeDir: string): string {
  const current = fs.readFileSync(path.join(nodeDir, "state", "CURRENT"), "utf8").trim();
  return path.join(nodeDir, "state", current);
}

describe("lost durable state (real processes)", () => {
  test("a wiped follower grants no vote until caught up, then catches up without an append loop", async () => {
    cluster = await TestCluster.start();
    const c = cluster;
    await fill(c);
    const leader = await c.waitForLeader();
    const wiped = (leader + 1) % 3;
    const third = (leader + 2) % 3;
    await c.kill(wiped);
    fs.rmSync(c.dataDir(wiped), { recursive: true, force: true });
    // The leader goes down too: only `third` has every entry, and it cannot win alone. A wiped
    // node that voted would let it (or anyone) lead; it must not, so there is no leader.
    await c.kill(leader);
    await c.restart(wiped);
    await Bun.sleep(3000); // several election timeouts
    const statuses = await c.clerk({ statusTimeoutMs: 500 }).getStatus();
    expect(statuses.filter((s) => s.online && s.state === "Leader")).toEqual([]);
    expect((statuses[wiped] as Online).storageHealth).toContain("recovering");
    expect(c.output(wiped)).toContain("not voting until caught up");
    await c.restart(leader);
    await waitFor(c, wiped, "caught up", caughtUp);
    expect(fs.existsSync(path.join(c.dataDir(wiped), "RECOVERING"))).toBe(false);
    // No loop: writes now cost the leader little CPU (the loop burned 80-100% of a core).
    const newLeader = await c.waitForLeader();
    const pid = c.nodes[newLeader]!.proc.pid;
    const before = cpuSeconds(pid);
    const started = Date.now();
    await fill(c, "-2");
    await Bun.sleep(1000);
    const share = (cpuSeconds(pid) - before) / ((Date.now() - started) / 1000);
    expect(share).toBeLessThan(0.6);
    await waitFor(c, wiped, "caught up after writes", caughtUp);
    await c.kill(wiped, "SIGTERM");
    await expectValues(c, (i) => value(i, "-2"));
    const values = await replicaValues(c.dataDir(wiped));
    for (let i = 0; i < KEYS; i++) expect(values[i]).toBe(value(i, "-2"));
  });

  test("a follower whose newest Raft segment was cut short recovers and catches up", async () => {
    cluster = await TestCluster.start();
    const c = cluster;
    await fill(c);
    const leader = await c.waitForLeader();
    const cut = (leader + 1) % 3;
    expect(await c.kill(cut, "SIGTERM")).toBe(0);
    const raftDir = path.join(c.dataDir(cut), "raft");
    const newest = fs.readdirSync(raftDir).filter((n) => n.endsWith(".seg")).sort().at(-1)!;
    const file = path.join(raftDir, newest);
    const bytes = fs.readFileSync(file);
    let end = bytes.length;
    while (end > 0 && bytes[end - 1] === 0) end--;
    fs.truncateSync(file, Math.floor(end / 2)); // mid-record, half the entries gone
    await c.restart(cut);
    expect(c.output(cut)).toContain("behind the state machine");
    await fill(c, "-2");
    await waitFor(c, cut, "caught up", caughtUp);
    expect(fs.existsSync(path.join(c.dataDir(cut), "RECOVERING"))).toBe(false);
    await expectValues(c, (i) => value(i, "-2"));
    await c.kill(cut, "SIGTERM");
    const values = await replicaValues(c.dataDir(cut));
    for (let i = 0; i < KEYS; i++) expect(values[i]).toBe(value(i, "-2"));
  });
});

describe("self-repair of a corrupt state machine (real processes)", () => {
  test("an SSTable of a running follower goes bad: the apply that meets it repairs the replica in place", async () => {
    cluster = await TestCluster.start({ extraArgs: ["--snapshot-threshold", "20"] });
    const c = cluster;
    await fill(c);
    const leader = await c.waitForLeader();
    const victim = (leader + 1) % 3;
    expect(await c.kill(victim, "SIGTERM")).toBe(0);
    await c.restart(victim); // its WAL is now an SSTable, read lazily block by block
    await waitFor(c, victim, "caught up", caughtUp);
    const live = liveStateDir(c.dataDir(victim));
    for (const name of fs.readdirSync(live).filter((n) => n.endsWith(".sst"))) {
      const size = fs.statSync(path.join(live, name)).size;
      for (let offset = 100; offset < size - 200; offset += 1500) flipByte(path.join(live, name), offset);
    }
    const clerk = c.clerk({ operationTimeoutMs: 20_000 });
    for (let i = 0; i < KEYS; i++) await clerk.append(`k${i}`, "+");
    await waitFor(c, victim, "repaired and caught up", (s, l) => caughtUp(s, l) && c.output(victim).includes("rebuilt an empty replica"));
    expect(c.output(victim)).toContain("found corruption");
    expect(c.output(victim)).not.toContain("FATAL");
    expect(c.running(victim)).toBe(true);
    await expectValues(c, (i) => value(i) + "+");
    await c.kill(victim, "SIGTERM");
    const values = await replicaValues(c.dataDir(victim));
    for (let i = 0; i < KEYS; i++) expect(values[i]).toBe(value(i) + "+");
  });

  test("the leader's SSTables go bad: no Get is served from them; it steps down and repairs itself", async () => {
    cluster = await TestCluster.start({ extraArgs: ["--snapshot-threshold", "20"] });
    const c = cluster;
    await fill(c);
    // Restart every node: their data then sits in SSTables read lazily, behind cold caches (a
    // snapshot sent to a restarted follower would read, and cache, every block of the leader).
    for (let id = 0; id < 3; id++) {
      expect(await c.kill(id, "SIGTERM")).toBe(0);
      await c.restart(id);
    }
    const leader = await c.waitForLeader();
    await waitFor(c, leader, "caught up", caughtUp);
    const live = liveStateDir(c.dataDir(leader));
    for (const name of fs.readdirSync(live).filter((n) => n.endsWith(".sst"))) {
      const size = fs.statSync(path.join(live, name)).size;
      for (let offset = 100; offset < size - 200; offset += 1500) flipByte(path.join(live, name), offset);
    }
    // Every Get answers the written value: the bad blocks are never served.
    await expectValues(c, (i) => value(i));
    await waitFor(c, leader, "repaired and caught up", (s, l) => caughtUp(s, l) && c.output(leader).includes("rebuilt an empty replica"));
    expect(c.output(leader)).toContain("state machine read found corruption");
    expect(c.output(leader)).not.toContain("FATAL");
    expect(c.running(leader)).toBe(true);
    await fill(c, "-after");
    await expectValues(c, (i) => value(i, "-after"));
  });

  for (const target of ["sstable", "manifest"] as const) {
    test(`bit flips in the ${target} of a stopped follower: never served, no crash loop, rebuilt from the leader`, async () => {
      cluster = await TestCluster.start({ extraArgs: ["--snapshot-threshold", "20"] });
      const c = cluster;
      await fill(c);
      const leader = await c.waitForLeader();
      const victim = (leader + 1) % 3;
      // A restart replays the LSM's WAL into an SSTable; then stop it again and damage the files.
      expect(await c.kill(victim, "SIGTERM")).toBe(0);
      await c.restart(victim);
      await waitFor(c, victim, "caught up", caughtUp);
      expect(await c.kill(victim, "SIGTERM")).toBe(0);
      const live = liveStateDir(c.dataDir(victim));
      const files = fs.readdirSync(live).filter((n) => (target === "sstable" ? n.endsWith(".sst") : n.startsWith("MANIFEST-")));
      expect(files.length).toBeGreaterThan(0);
      for (const name of files) {
        // Every data block of a table (an old one may hold only versions that newer tables shadow).
        const size = fs.statSync(path.join(live, name)).size;
        if (target === "manifest") flipByte(path.join(live, name), 12);
        else for (let offset = 60; offset < size - 200; offset += 1500) flipByte(path.join(live, name), offset);
      }
      await c.restart(victim);
      // Appends read every old value: an apply that meets the bad block repairs instead of applying it.
      const clerk = c.clerk({ operationTimeoutMs: 20_000 });
      for (let i = 0; i < KEYS; i++) await clerk.append(`k${i}`, "+");
      await waitFor(c, victim, "repaired and caught up", caughtUp);
      expect(c.running(victim)).toBe(true); // repaired in place: no exit, no crash loop
      expect(c.output(victim)).toMatch(/corrupt|found corruption/);
      expect(c.output(victim)).toMatch(/rebuilding from the leader/);
      expect(c.output(victim)).not.toContain("FATAL");
      await expectValues(c, (i) => value(i) + "+");
      await c.kill(victim, "SIGTERM");
      const values = await replicaValues(c.dataDir(victim));
      for (let i = 0; i < KEYS; i++) expect(values[i]).toBe(value(i) + "+");
    });
  }
});
