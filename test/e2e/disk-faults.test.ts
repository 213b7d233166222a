// Disk faults under real kvserver processes: a data directory deleted under the leader, one made
// read-only under a follower (each node exits 3 with its one FATAL line; the cluster keeps
// serving), and a small tmpfs filled up and freed (writes refused, reads go on, writes resume).
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { KVService, Op } from "../../src/gen/kvraftpb/kvraft_pb.ts";
import { TestCluster } from "./harness.ts";

setDefaultTimeout(60_000);

const cleanups: (() => void | Promise<void>)[] = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

function sh(...argv: string[]): { ok: boolean; out: string } {
  const r = Bun.spawnSync(argv, { stdout: "pipe", stderr: "pipe" });
  return { ok: r.exitCode === 0, out: r.stdout.toString() + r.stderr.toString() };
}

async function exitWithin(cluster: TestCluster, id: number, ms: number): Promise<number | null> {
  const node = cluster.nodes[id]!;
  const timeout = Bun.sleep(ms).then(() => "timeout" as const);
  const result = await Promise.race([node.proc.exited, timeout]);
  if (result === "timeout") throw new Error(`node ${id} did not exit within ${ms} ms:\n${cluster.output(id)}`);
  return result;
}

async function startCluster(extraArgs: string[] = [], parent?: string): Promise<TestCluster> {
  const cluster = await TestCluster.start({ extraArgs, parent });
  cleanups.push(() => cluster.destroy());
  await cluster.waitForLeader();
  return cluster;
}

describe("fail-stop on disk faults (real processes)", () => {
  test("the leader's data directory deleted: it exits 3 with one FATAL line; the others keep serving", async () => {
    const cluster = await startCluster();
    const clerk = cluster.clerk({ operationTimeoutMs: 15_000 });
    await clerk.put("a", "1");
    const leader = await cluster.waitForLeader();
    fs.rmSync(cluster.dataDir(leader), { recursive: true, force: true });
    expect(await exitWithin(cluster, leader, 10_000)).toBe(3);
    const fatal = cluster.output(leader).split("\n").filter((l) => l.includes("FATAL"));
    expect(fatal.length).toBe(1);
    expect(fatal[0]).toContain(`data directory ${cluster.dataDir(leader)} is gone (ENOENT)`);
    expect(fatal[0]).toContain("catches up from the leader");
    await clerk.put("b", "2");
    expect(await clerk.get("a")).toBe("1");
    expect(await clerk.get("b")).toBe("2");
  });

  test("a follower's data directory made read-only: it exits 3 after the grace period; writes go on", async () => {
    const cluster = await startCluster();
    const clerk = cluster.clerk({ operationTimeoutMs: 15_000 });
    await clerk.put("a", "1");
    const leader = await cluster.waitForLeader();
    const follower = (leader + 1) % 3;
    const dir = cluster.dataDir(follower);
    // A read-only bind mount over the directory: root ignores permission bits, not a read-only mount.
    const bind = sh("mount", "--bind", dir, dir);
    if (!bind.ok) throw new Error(`this test needs mount (root): ${bind.out}`);
    cleanups.push(() => void sh("umount", "-l", dir));
    expect(sh("mount", "-o", "remount,bind,ro", dir).ok).toBe(true);
    expect(await exitWithin(cluster, follower, 15_000)).toBe(3);
    const fatal = cluster.output(follower).split("\n").filter((l) => l.includes("FATAL"));
    expect(fatal.length).toBe(1);
    expect(fatal[0]).toContain(`data directory ${dir} is not writable (EROFS)`);
    expect(fatal[0]).toContain("make it writable again");
    await clerk.put("b", "2");
    expect(await clerk.get("b")).toBe("2");
  });

  test("a full disk (tmpfs): writes get resource_exhausted, reads go on, writes resume when space returns", async () => {
    const mnt = fs.mkdtempSync(path.join(os.tmpdir(), "kvraft-tmpfs-"));
    const mount = sh("mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", mnt);
    if (!mount.ok) throw new Error(`this test needs to mount a tmpfs (root): ${mount.out}`);
    cleanups.push(() => {
      sh("umount", "-l", mnt);
      fs.rmSync(mnt, { recursive: true, force: true });
    });
    const cluster = await startCluster(["--min-free-disk-mb", "8"], mnt);
    const clerk = cluster.clerk({ operationTimeoutMs: 15_000 });
    await clerk.put("a", "1");
    const leader = await cluster.waitForLeader();
    const client = createClient(KVService, createConnectTransport({ baseUrl: `http://${cluster.addrs[leader]}`, httpVersion: "2" }));
    // Leave about 4 MiB free: below the 8 MiB reserve, above what idle nodes write.
    const free = Number(fs.statfsSync(mnt).bavail) * Number(fs.statfsSync(mnt).bsize);
    const filler = path.join(mnt, "filler");
    fs.writeFileSync(filler, new Uint8Array(free - (4 << 20)));
    let refusal: ConnectError | null = null;
    for (let i = 0; i < 50 && refusal === null; i++) {
      try {
        await client.command({ key: "b", value: "2", op: Op.PUT, clientId: 7n, commandId: BigInt(i + 1) });
        await Bun.sleep(100); // the watch checks once a second
      } catch (error) {
        refusal = ConnectError.from(error);
      }
    }
    expect(refusal?.code).toBe(Code.ResourceExhausted);
    expect(refusal?.rawMessage).toContain("nearly full");
    const status = await client.getStatus({});
    expect(status.storageHealth).toContain("nearly full");
    expect(await clerk.get("a")).toBe("1"); // reads go on
    fs.rmSync(filler);
    // Space is back: within a few checks the same client's writes are accepted again.
    await clerk.put("c", "3");
    expect(await clerk.get("c")).toBe("3");
    expect((await client.getStatus({})).storageHealth).toBe("");
  });
});
