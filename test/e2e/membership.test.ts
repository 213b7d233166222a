// Replacing a dead node with real processes, under a write load: kill -9 node 2 and wipe its
// disk, remove it, start node 3 on a new port with --join, add it as a learner (it catches up by
// InstallSnapshot), promote it. Writes never stop, nothing acknowledged is lost, the history is
// linearizable, and the cluster then survives losing one of its original nodes.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { checkHistory } from "../../src/sim/check/index.ts";
import type { NodeStatus } from "../../src/kv/client.ts";
import { TestCluster, freePorts, kvclient } from "./harness.ts";
import { checkAppends, runWorkload } from "./workload.ts";

setDefaultTimeout(120_000);

const KEYS = ["m0", "m1", "m2", "m3"];
let cluster: TestCluster;
let all: string[];

beforeAll(async () => {
  cluster = await TestCluster.start({ extraArgs: ["--snapshot-threshold", "100", "--insecure-admin"] });
  const [port] = await freePorts(1);
  all = [...cluster.addrs, `127.0.0.1:${port}`];
  await cluster.waitForLeader();
});
afterAll(async () => {
  await cluster?.destroy();
});

async function admin(args: string[]): Promise<string> {
  const r = await kvclient([...args, "-addrs", all.join(","), "-timeout", "30000"]);
  if (r.code !== 0) throw new Error(`kvclient ${args.join(" ")} exited ${r.code}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

async function statusOf(id: number): Promise<NodeStatus> {
  return (await cluster.clerk({ addrs: all, statusTimeoutMs: 1000 }).getStatus())[id]!;
}

describe("membership with real processes", () => {
  test("replace a dead, wiped node by a new one that joins, catches up by snapshot and is promoted, while writes go on", async () => {
    const clerks = [0, 1, 2].map(() => cluster.clerk({ addrs: all, operationTimeoutMs: 20_000 }));
    let finish!: () => void;
    const stop = new Promise<void>((resolve) => (finish = resolve));
    const progress = { acked: 0 };
    // Paced, so the op budget outlasts every phase however slow the machine is (an unpaced
    // workload could spend it before the last phases and leave them waiting for appends).
    const work = runWorkload({ clerks, keys: KEYS, stop, maxOpsPerClient: 2000, pauseMs: 20, progress });
    let workFailed: unknown = null;
    work.catch((error: unknown) => (workFailed = error ?? new Error("workload failed")));
    const waitForAcks = async (more: number, phase: string) => {
      const target = progress.acked + more;
      for (let i = 0; i < 400 && progress.acked < target; i++) {
        if (workFailed !== null) throw workFailed;
        await Bun.sleep(100);
      }
      if (progress.acked < target) throw new Error(`${phase}: only ${progress.acked} of ${target} appends acknowledged within 40 s`);
    };
    try {
      // Enough history for the leader to compact past where a new node starts.
      await waitForAcks(150, "before the failure");
      const leader = await cluster.waitForLeader();
      const victim = leader === 2 ? 1 : 2;
      const survivors = [0, 1, 2].filter((id) => id !== victim);
      expect(await cluster.kill(victim, "SIGKILL")).not.toBe(0);
      fs.rmSync(cluster.dataDir(victim), { recursive: true, force: true });
      await waitForAcks(20, "with a node dead");

      expect(await admin(["member", "remove", "-id", String(victim)])).toContain(`node ${victim} removed`);
      await waitForAcks(20, "after the removal");

      // Node 3 starts empty on a new port and waits; it never campaigns on its own.
      await cluster.restart(3, ["--join", survivors.map((id) => cluster.addrs[id]).join(","), "-addr", all[3]!]);
      for (let i = 0; i < 50 && !cluster.output(3).includes("waits to be added"); i++) await Bun.sleep(50);
      expect(cluster.output(3)).toContain("waits to be added");
      expect(await admin(["member", "add", "-id", "3", "-address", all[3]!])).toContain("added as a learner");
      let caughtUp: NodeStatus | null = null;
      for (let i = 0; i < 300 && caughtUp === null; i++) {
        const s = await statusOf(3);
        if (s.online && s.snapshotIndex > 0n && s.lastApplied > 150n) caughtUp = s;
        else await Bun.sleep(100);
      }
      expect(caughtUp).not.toBeNull(); // by InstallSnapshot: the log it needed was compacted away
      await waitForAcks(20, "with the learner");

      const promoted = await admin(["member", "promote", "-id", "3"]);
      expect(promoted).toContain("node 3 is a voter");
      await waitForAcks(20, "after the promotion");
      const list = await admin(["member", "list"]);
      for (const id of [...survivors, 3]) expect(list).toMatch(new RegExp(`^${id}( \\(leader\\))? +\\| ${all[id]!.replace(/\./g, "\\.")} +\\| voter`, "m"));
      expect(list).not.toMatch(new RegExp(`^${victim} `, "m"));
      // The new voter can lead.
      expect(await admin(["transfer-leader", "-to", "3"])).toContain("leadership transferred to node 3");
      const led = await statusOf(3);
      expect(led.online && led.state).toBe("Leader");
      await waitForAcks(20, "with node 3 leading");
      // A client given one live address (a follower, which it takes for node 0) learns the members'
      // ids and addresses from the configuration and finds the leader on its new port.
      const solo = cluster.clerk({ addrs: [all[survivors[1]!]!], operationTimeoutMs: 20_000 });
      await solo.put("solo", "found");
      expect(await solo.get("solo")).toBe("found");
      expect((await solo.getStatus()).map((n) => `${n.id}@${n.address}`).sort()).toEqual([...survivors, 3].map((id) => `${id}@${all[id]}`).sort());
      // The status page any member serves lists the configuration's members, not the bootstrap list.
      for (const id of [survivors[0]!, 3]) {
        const page = await (await fetch(`http://${all[id]}/`)).text();
        expect(page).toContain(`"url":"http://${all[3]}"`);
        expect(page).not.toContain(`"url":"http://${all[victim]}"`);
      }
      // And the new member's origin may call the others from a browser (CORS follows the members).
      const preflight = await fetch(`http://${all[survivors[0]!]}/kvraftpb.KVService/GetStatus`, {
        method: "OPTIONS",
        headers: { Origin: `http://${all[3]}`, "Access-Control-Request-Method": "POST" },
      });
      expect(preflight.headers.get("access-control-allow-origin")).toBe(`http://${all[3]}`);

      // Three voters again: one of the original survivors may fail and writes go on.
      const down = survivors[0]!;
      await cluster.kill(down, "SIGKILL");
      await waitForAcks(20, "with an original node down");
      await cluster.restart(down);
      await waitForAcks(10, "after its restart");
      // The joined node restarts from its own data (same command line) and takes part again.
      const joinArgs = ["--join", survivors.map((id) => cluster.addrs[id]).join(","), "-addr", all[3]!];
      await cluster.kill(3, "SIGKILL");
      await waitForAcks(10, "with node 3 down");
      await cluster.restart(3, joinArgs);
      await waitForAcks(10, "after node 3's restart");
      const reference = await statusOf(survivors[1]!);
      if (!reference.online) throw new Error(`node ${survivors[1]} went offline: ${reference.error}`);
      let rejoined = false;
      for (let i = 0; i < 100 && !rejoined; i++) {
        const again = await statusOf(3);
        rejoined = again.online && again.lastApplied >= reference.commitIndex;
        if (!rejoined) await Bun.sleep(100);
      }
      expect(rejoined).toBe(true);
    } finally {
      finish();
    }
    const result = await work;
    const reader = cluster.clerk({ addrs: all, operationTimeoutMs: 20_000 });
    const finalValues = new Map<string, string | null>();
    const history = [...result.history];
    for (const key of KEYS) {
      const call = performance.now();
      const value = await reader.get(key);
      history.push({ clientId: -1, input: { op: "Get", key, value: "" }, output: value === null ? { err: "ErrNoKey", value: "" } : { err: "OK", value }, call, return: performance.now() });
      finalValues.set(key, value);
    }
    expect(checkAppends(finalValues, result)).toEqual([]);
    const verdict = checkHistory(history, { timeoutMs: 20_000 });
    expect(verdict.result).toBe("ok");
    // The new node reports the configuration with addresses and roles.
    const s = await statusOf(3);
    expect(s.online).toBe(true);
  });

  test("with a client token: membership calls need it, and a node joins with it (no --insecure-admin)", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvraft-token-"));
    const tokenFile = `${dir}/token`;
    fs.writeFileSync(tokenFile, "membership-token-0123456789\n");
    const c = await TestCluster.start({ size: 2, extraArgs: ["--client-token-file", tokenFile] });
    try {
      await c.waitForLeader().catch(() => undefined);
      const [port] = await freePorts(1);
      const joiner = `127.0.0.1:${port}`;
      const addrs = [...c.addrs, joiner].join(",");
      const without = await kvclient(["member", "list", "-addrs", c.addrs.join(","), "-timeout", "5000"]);
      expect(without.code).toBe(1);
      expect(without.stderr).toContain("Unauthenticated");
      await c.restart(2, ["--join", c.addrs.join(","), "-addr", joiner]);
      const added = await kvclient(["member", "add", "-id", "2", "-address", joiner, "-addrs", addrs, "--token-file", tokenFile, "-timeout", "20000"]);
      expect(added.stdout + added.stderr).toContain("added as a learner");
      const promoted = await kvclient(["member", "promote", "-id", "2", "-addrs", addrs, "--token-file", tokenFile, "-timeout", "20000"]);
      expect(promoted.stdout + promoted.stderr).toContain("node 2 is a voter");
      const listed = await kvclient(["member", "list", "-addrs", addrs, "--token-file", tokenFile]);
      expect(listed.stdout).toMatch(/^2 .*\| voter/m);
    } finally {
      await c.destroy();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("nonsense is refused with the reason; a node without client authorization refuses membership calls", async () => {
    const bad = await kvclient(["member", "promote", "-id", "42", "-addrs", all.join(","), "-timeout", "5000"]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain("not a learner");
    expect((await kvclient(["member", "frobnicate"])).code).toBe(2);
    const closed = await TestCluster.start({ size: 1 });
    try {
      const r = await kvclient(["member", "list", "-addrs", closed.addrs.join(","), "-timeout", "5000"]);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain("PermissionDenied");
      expect(r.stderr).toContain("--insecure-admin");
    } finally {
      await closed.destroy();
    }
  });
});
