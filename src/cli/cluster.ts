// bun run cluster: a local 3-node kvraft cluster on localhost:5001-5003 (data under ./data/node-<i>),
// three kvserver child processes with their output prefixed; Ctrl-C or SIGTERM stops all three.
// Peers authenticate with a secret made once in ./data/peer-secret; with --tls, by certificates of
// a throwaway CA made once in ./data/tls (the port then speaks TLS to clients too). Other arguments
// are passed to every kvserver (e.g. bun run cluster --cors-origin http://localhost:8080).

import { spawn, type ChildProcessByStdio } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import type { DevCertFiles } from "./dev-certs.ts";
import * as path from "node:path";
import type { Readable } from "node:stream";

const ADDRS = ["localhost:5001", "localhost:5002", "localhost:5003"];
const KVSERVER = path.join(import.meta.dir, "kvserver.ts");
const STOP_GRACE_MS = 10_000;
const DATA = "data";

/** The development CA and node certificates under ./data/tls, made on first use (see dev-certs.ts). */
async function devCertificates(): Promise<DevCertFiles> {
  const dir = path.join(DATA, "tls");
  const files = {
    ca: path.join(dir, "ca.crt"),
    nodes: ADDRS.map((_, id) => ({ cert: path.join(dir, `node-${id}.crt`), key: path.join(dir, `node-${id}.key`) })),
    client: { cert: path.join(dir, "client.crt"), key: path.join(dir, "client.key") },
  };
  if ([files.ca, files.client.cert, ...files.nodes.flatMap((n) => [n.cert, n.key])].every((f) => fs.existsSync(f))) return files;
  console.log(`[cluster] making a throwaway CA and node certificates in ${dir} (for development only)`);
  // Loaded only here: kvserver itself never needs a certificate generator.
  const { makeDevCertificates } = await import("./dev-certs.ts");
  return makeDevCertificates(dir, ADDRS.length);
}

/** A file under ./data made once with random contents (kept: the cluster must find it again). */
function keptRandom(name: string): string {
  const file = path.join(DATA, name);
  fs.mkdirSync(DATA, { recursive: true });
  if (!fs.existsSync(file)) fs.writeFileSync(file, `${randomBytes(32).toString("base64url")}\n`, { mode: 0o600 });
  return file;
}

type Child = { id: number; proc: ChildProcessByStdio<null, Readable, Readable>; exited: Promise<number | null>; serving: boolean; done: boolean };

async function pipeLines(stream: Readable, prefix: string, out: NodeJS.WriteStream, onLine: (line: string) => void) {
  const decoder = new TextDecoder();
  let pending = "";
  for await (const chunk of stream) {
    pending += decoder.decode(chunk, { stream: true });
    let newline: number;
    while ((newline = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, newline);
      pending = pending.slice(newline + 1);
      out.write(`${prefix}${line}\n`);
      onLine(line);
    }
  }
  if (pending !== "") out.write(`${prefix}${pending}\n`);
}

async function main(): Promise<number> {
  const tls = process.argv.includes("--tls");
  const extra = process.argv.slice(2).filter((arg) => arg !== "--tls");
  // The children write to pipes (JSON logs by default); a person at a terminal reads lines.
  if (process.stdout.isTTY && !extra.some((a) => /^--?log-format(=|$)/.test(a))) extra.push("--log-format", "human");
  // Peers are authenticated unless the caller chose how (or chose --insecure-peers) by name.
  const peerChosen = tls || extra.some((arg) => /^--?(peer-|insecure-peers)/.test(arg));
  const common = [
    ...(peerChosen ? [] : ["--peer-secret-file", keptRandom("peer-secret")]),
    "--initial-cluster-token",
    fs.readFileSync(keptRandom("cluster-token"), "utf8").trim(),
  ];
  const certs = tls ? await devCertificates() : null;
  const security = (id: number): string[] =>
    certs === null
      ? common
      : [
          ...common,
          ...["--peer-cert-file", certs.nodes[id]!.cert, "--peer-key-file", certs.nodes[id]!.key],
          ...["--peer-trusted-ca-file", certs.ca, "--peer-client-cert-auth"],
        ];
  const scheme = tls ? "https" : "http";
  const clientTls = certs === null ? "" : ` --cacert ${certs.ca}`;
  const children: Child[] = [];
  let stopping = false;
  let announced = false;

  const stopAll = async (reason: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    console.log(`[cluster] ${reason}: stopping the nodes`);
    for (const child of children) if (!child.done) child.proc.kill("SIGTERM");
    const deadline = setTimeout(() => {
      for (const child of children) {
        if (!child.done) {
          console.log(`[cluster] node ${child.id} (pid ${child.proc.pid}) did not stop in time; killing it`);
          child.proc.kill("SIGKILL");
        }
      }
    }, STOP_GRACE_MS);
    await Promise.all(children.map((c) => c.exited));
    clearTimeout(deadline);
  };

  for (let id = 0; id < ADDRS.length; id++) {
    // Each node in its own process group: a terminal's Ctrl-C reaches only this launcher, which
    // then stops every node once, by PID (a second signal would make a node skip its clean close).
    const proc = spawn(process.execPath, [KVSERVER, "-id", String(id), "-addrs", ADDRS.join(","), "-db", path.join(DATA, `node-${id}`), ...security(id), ...extra], {
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    const exited = new Promise<number | null>((resolve) => proc.once("exit", (code) => resolve(code)));
    const child: Child = { id, proc, exited, serving: false, done: false };
    children.push(child);
    const prefix = `[node ${id}] `;
    const onLine = (line: string) => {
      if (!child.serving && line.includes("serving on")) {
        child.serving = true;
        if (!announced && children.length === ADDRS.length && children.every((c) => c.serving)) {
          announced = true;
          console.log(
            `[cluster] all ${ADDRS.length} nodes serving on ${ADDRS.map((a) => `${scheme}://${a}`).join(", ")}. Try:\n` +
              `  bun run kvclient${clientTls} -op put -key hello -value world\n` +
              `  bun run kvclient${clientTls} -op get -key hello\n` +
              `  bun run kvclient${clientTls} -op status\n` +
              `  curl -s${clientTls} -H 'Content-Type: application/json' -d '{"key":"hello","op":"GET"}' ${scheme}://localhost:5001/kvraftpb.KVService/Command\n` +
              `[cluster] Ctrl-C stops all three.`,
          );
        }
      }
    };
    void pipeLines(proc.stdout, prefix, process.stdout, onLine);
    void pipeLines(proc.stderr, prefix, process.stderr, () => {});
    void exited.then((code) => {
      child.done = true;
      if (stopping) return;
      console.log(`[cluster] node ${id} (pid ${proc.pid}) exited with code ${code}`);
      if (!child.serving) void stopAll(`node ${id} failed to start`);
      else if (children.every((c) => c.done)) void stopAll("every node exited");
    });
  }

  const done = new Promise<void>((resolve) => {
    process.on("SIGINT", () => void stopAll("SIGINT").then(resolve));
    process.on("SIGTERM", () => void stopAll("SIGTERM").then(resolve));
    const poll = setInterval(() => {
      if (children.every((c) => c.done)) {
        clearInterval(poll);
        resolve();
      }
    }, 200);
  });
  await done;
  const clean = children.every((c) => c.proc.exitCode === 0);
  console.log(`[cluster] stopped${clean ? "" : " (some nodes did not exit cleanly)"}`);
  return clean && announced ? 0 : 1;
}

main().then((code) => process.exit(code));
