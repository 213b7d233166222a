// The live status page in headless Chromium against three real kvserver processes: it loads from
// a node, shows three members and the leader, its throughput chart rises after writes, and the
// same page hosted on another origin works with --cors-origin, and nodes that require a bearer
// token are read with the token from the URL's fragment. Screenshots go to a temp dir.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { TestCluster, freePorts } from "../e2e/harness.ts";
import { BrowserPage } from "./cdp.ts";

setDefaultTimeout(90_000);

let cluster: TestCluster;
let leader: number;
let otherOrigin: string;
const shots = fs.mkdtempSync(path.join(os.tmpdir(), "kvraft-status-page-"));

beforeAll(async () => {
  const [port] = (await freePorts(1)) as [number];
  otherOrigin = `http://127.0.0.1:${port}`;
  cluster = await TestCluster.start({ extraArgs: ["--cors-origin", otherOrigin] });
  leader = await cluster.waitForLeader();
});

afterAll(async () => {
  await cluster?.destroy();
});

const MEMBER_ROWS = `document.querySelectorAll("#members tbody tr").length`;

describe("status page", () => {
  test("served by a follower: three members, the leader, follower progress, a chart that rises after writes", async () => {
    const follower = (leader + 1) % 3;
    const page = await BrowserPage.open(`http://${cluster.addrs[follower]}/`);
    try {
      await page.waitFor("three members listed", `${MEMBER_ROWS} === 3 && !document.querySelector("#members .Offline")`);
      expect(await page.evaluate<string>(`document.getElementById("leader").textContent`)).toBe(`leader: node ${leader}`);
      const roles = await page.evaluate<string[]>(`[...document.querySelectorAll("#members tbody tr td:nth-child(3)")].map((td) => td.textContent)`);
      expect(roles.sort()).toEqual(["Follower", "Follower", "Leader"]);
      await page.waitFor("two followers in the leader's view", `document.querySelectorAll("#followers tbody tr .bar").length === 2`);

      // Writes while the page watches: the throughput series must show them.
      const before = await page.evaluate<number>(`Math.max(0, ...window.kvraftStatus.throughput.writes)`);
      expect(before).toBe(0);
      const clerk = cluster.clerk();
      const deadline = Date.now() + 4_000;
      for (let i = 0; Date.now() < deadline && i < 2_000; i++) await clerk.put(`page-${i}`, "x".repeat(64));
      const peak = await page.waitFor<number>("writes on the chart", `Math.max(0, ...window.kvraftStatus.throughput.writes)`);
      expect(peak).toBeGreaterThan(0);
      await page.waitFor("a latency point", `window.kvraftStatus.latency.p99.some((v) => v !== null && v > 0)`);
      // uPlot drew its canvases and the event list names the election.
      expect(await page.evaluate<number>(`document.querySelectorAll("#throughput canvas, #latency canvas").length`)).toBe(2);
      await page.waitFor("leader change listed", `document.getElementById("events").textContent.includes("leads in term")`);
      const file = path.join(shots, "status-page.png");
      await page.screenshot(file);
      expect(fs.statSync(file).size).toBeGreaterThan(10_000);
      console.log(`status page screenshot: ${file}`);
    } finally {
      await page.close();
    }
  });

  test("the same page hosted on another origin reaches the cluster through --cors-origin", async () => {
    const html = await (await fetch(`http://${cluster.addrs[0]}/`)).text();
    const script = await (await fetch(`http://${cluster.addrs[0]}/status/app.js`)).text();
    const host = Bun.serve({
      hostname: "127.0.0.1",
      port: Number(new URL(otherOrigin).port),
      fetch(request) {
        const url = new URL(request.url);
        if (url.pathname === "/") return new Response(html, { headers: { "Content-Type": "text/html" } });
        if (url.pathname === "/status/app.js") return new Response(script, { headers: { "Content-Type": "text/javascript" } });
        return new Response("not found", { status: 404 });
      },
    });
    const members = cluster.addrs.join(",");
    const page = await BrowserPage.open(`${otherOrigin}/?members=${members}`);
    try {
      await page.waitFor("three members from another origin", `${MEMBER_ROWS} === 3 && !document.querySelector("#members .Offline") && document.getElementById("leader").textContent.startsWith("leader: node")`);
      await page.screenshot(path.join(shots, "status-page-other-origin.png"));
    } finally {
      await page.close();
      host.stop(true);
    }
  });

  test("nodes started with --client-token-file: the page reads them with #token=..., and says why without it", async () => {
    const token = "page-token-0123456789abcdef";
    const tokenFile = path.join(shots, "token");
    fs.writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
    const guarded = await TestCluster.start({ size: 1, extraArgs: ["--client-token-file", tokenFile] });
    try {
      const withToken = await BrowserPage.open(`http://${guarded.addrs[0]}/#token=${token}`);
      try {
        await withToken.waitFor("the member read with the token", `${MEMBER_ROWS} === 1 && document.querySelector("#members tbody tr td:nth-child(3)").textContent === "Leader"`);
      } finally {
        await withToken.close();
      }
      const without = await BrowserPage.open(`http://${guarded.addrs[0]}/`);
      try {
        const row = await without.waitFor<string>("the refusal shown", `document.querySelector("#members .Offline") && document.querySelector("#members tbody tr").textContent`);
        expect(row).toContain("requires");
      } finally {
        await without.close();
      }
    } finally {
      await guarded.destroy();
    }
  });
});
