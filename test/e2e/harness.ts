// Real kvserver processes on 127.0.0.1 for end-to-end tests: random free ports, start/kill/restart
// by PID, output kept for failure messages, and the kvclient CLI as a subprocess.
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { createConnectTransport } from "@connectrpc/connect-node";
import { Clerk, type ClerkOptions } from "../../src/kv/client.ts";

const ROOT = path.join(import.meta.dir, "../..");
const KVSERVER = path.join(ROOT, "src/cli/kvserver.ts");
const KVCLIENT = path.join(ROOT, "src/cli/kvclient.ts");

function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.createServer();
    probe.once("error", () => resolve(false));
    probe.listen({ port, host: "127.0.0.1", exclusive: true }, () => probe.close(() => resolve(true)));
  });
}

/** `count` distinct free ports in 20000-40000 (bounded tries). */
export async function freePorts(count: number): Promise<number[]> {
  const ports: number[] = [];
  for (let tries = 0; ports.length < count && tries < 200; tries++) {
    const port = 20000 + Math.floor(Math.random() * 20000);
    if (!ports.includes(port) && (await portIsFree(port))) ports.push(port);
  }
  if (ports.length < count) throw new Error("could not find free ports in 20000-40000");
  return ports;
}

interface NodeProcess {
  proc: Bun.Subprocess<"ignore", "pipe", "pipe">;
  output: string[];
  serving: Promise<void>;
}

export class TestCluster {
  readonly nodes: (NodeProcess | null)[];
  /** Arguments of one node only (its own certificate files, say). */
  nodeArgs: (id: number) => string[] = () => [];
  /** What clerk() starts from (e.g. https addresses and a TLS transport for a TLS cluster). */
  clerkDefaults: Partial<ClerkOptions> = {};
  private constructor(
    readonly addrs: string[],
    readonly root: string,
    readonly extraArgs: string[],
  ) {
    this.nodes = addrs.map(() => null);
  }

  /**
   * `peerArgs` replaces the default peer authentication (a shared secret made in the cluster's
   * directory), e.g. with mTLS flags or ["--insecure-peers"]. `parent`: where the cluster's data
   * directories go (default the OS temp dir), e.g. a small tmpfs.
   */
  static async start(
    options: { size?: number; extraArgs?: string[]; peerArgs?: string[]; nodeArgs?: (id: number) => string[]; clerkDefaults?: Partial<ClerkOptions>; parent?: string } = {},
  ): Promise<TestCluster> {
    const size = options.size ?? 3;
    for (let attempt = 1; ; attempt++) {
      const ports = await freePorts(size);
      const root = fs.mkdtempSync(path.join(options.parent ?? os.tmpdir(), "kvraft-e2e-"));
      let peerArgs = options.peerArgs;
      if (peerArgs === undefined) {
        const secretFile = path.join(root, "peer-secret");
        fs.writeFileSync(secretFile, `${crypto.randomUUID()}\n`, { mode: 0o600 });
        peerArgs = ["--peer-secret-file", secretFile];
      }
      const cluster = new TestCluster(ports.map((p) => `127.0.0.1:${p}`), root, [...peerArgs, ...(options.extraArgs ?? [])]);
      if (options.nodeArgs !== undefined) cluster.nodeArgs = options.nodeArgs;
      if (options.clerkDefaults !== undefined) cluster.clerkDefaults = options.clerkDefaults;
      try {
        for (let i = 0; i < size; i++) cluster.spawn(i);
        await Promise.all(cluster.nodes.map((n) => n!.serving));
        return cluster;
      } catch (error) {
        await cluster.destroy();
        // Another process may have taken a port between the probe and the bind: try new ports.
        if (attempt < 3 && /already in use/.test(String(error))) continue;
        throw error;
      }
    }
  }

  dataDir(id: number): string {
    return path.join(this.root, `node-${id}`);
  }

  /** Starts node `id` (again); its `serving` resolves on the "serving on" line. */
  spawn(id: number, extra: string[] = []): NodeProcess {
    if (this.running(id)) throw new Error(`node ${id} is running`);
    const proc = Bun.spawn(
      ["bun", KVSERVER, "-id", String(id), "-addrs", this.addrs.join(","), "-db", this.dataDir(id), ...this.extraArgs, ...this.nodeArgs(id), ...extra],
      { stdin: "ignore", stdout: "pipe", stderr: "pipe" },
    );
    const output: string[] = [];
    let markServing!: () => void;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const serving = new Promise<void>((resolve, reject) => {
      markServing = () => {
        clearTimeout(timer);
        resolve();
      };
      timer = setTimeout(() => reject(new Error(`node ${id} did not serve within 30 s:\n${output.join("\n")}`)), 30_000);
      void proc.exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`node ${id} exited with code ${code} before serving:\n${output.join("\n")}`));
      });
    });
    serving.catch(() => {});
    const collect = async (stream: ReadableStream<Uint8Array>) => {
      const decoder = new TextDecoder();
      let pending = "";
      for await (const chunk of stream) {
        pending += decoder.decode(chunk, { stream: true });
        const lines = pending.split("\n");
        pending = lines.pop()!;
        for (const line of lines) {
          output.push(line);
          if (output.length > 2000) output.shift();
          if (line.includes("serving on")) markServing();
        }
      }
    };
    void collect(proc.stdout);
    void collect(proc.stderr);
    const node = { proc, output, serving };
    this.nodes[id] = node;
    return node;
  }

  async restart(id: number, extra: string[] = []): Promise<void> {
    await this.spawn(id, extra).serving;
  }

  /** Sends `signal` to node `id` by PID and waits for it to exit; returns the exit code. */
  async kill(id: number, signal: "SIGKILL" | "SIGTERM" | "SIGINT" = "SIGKILL"): Promise<number | null> {
    const node = this.nodes[id];
    if (node === null || node === undefined) return null;
    if (node.proc.exitCode === null && node.proc.signalCode === null) node.proc.kill(signal);
    return node.proc.exited;
  }

  running(id: number): boolean {
    const node = this.nodes[id];
    return node !== null && node !== undefined && node.proc.exitCode === null && node.proc.signalCode === null;
  }

  output(id: number): string {
    return this.nodes[id]?.output.join("\n") ?? "";
  }

  clerk(options: Partial<ClerkOptions> = {}): Clerk {
    return new Clerk({
      addrs: this.addrs,
      transport: (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true }),
      ...this.clerkDefaults,
      ...options,
    });
  }

  /** The id of the node every live node agrees leads (polls status, bounded). */
  async waitForLeader(timeoutMs = 20_000): Promise<number> {
    const clerk = this.clerk({ statusTimeoutMs: 500 });
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const status = await clerk.getStatus();
      const leaders = status.filter((s) => s.online && s.state === "Leader");
      if (leaders.length === 1) return leaders[0]!.id;
      await Bun.sleep(100);
    }
    throw new Error(`no single leader within ${timeoutMs} ms`);
  }

  /** Kills every node by PID and removes the data. */
  async destroy(): Promise<void> {
    for (let id = 0; id < this.nodes.length; id++) await this.kill(id, "SIGKILL");
    fs.rmSync(this.root, { recursive: true, force: true });
  }
}

export async function kvclient(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const proc = Bun.spawn(["bun", KVCLIENT, ...args], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => proc.kill("SIGKILL"), 30_000);
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  clearTimeout(timer);
  return { code, stdout, stderr };
}
