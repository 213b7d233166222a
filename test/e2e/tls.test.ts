// Real TLS end to end: a 3-node cluster whose peers authenticate by certificate (mTLS, SAN
// kvraft://node/<id>) and whose clients need a bearer token over https. Clients of every kind
// (connect-node on h2 and h1, curl, @grpc/grpc-js, connect-web in headless Chromium) work with the
// CA and the token and are refused without; a peer certificate of another CA, or naming another
// node, is refused; the cluster survives kill -9 of its leader; a single node with
// --client-cert-auth takes only certificates of its CA; TLS/cleartext mismatches fail at once.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { X509Certificate, createHash } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { KVService } from "../../src/gen/kvraftpb/kvraft_pb.ts";
import { MessageBatchSchema, RaftService } from "../../src/gen/raftpb/raft_pb.ts";
import type { Message } from "../../src/raft/types.ts";
import { encodeMessage } from "../../src/rpc/peers/raft-codec.ts";
import { Clerk, ClerkError } from "../../src/kv/client.ts";
import { makeDevCertificates, type DevCertFiles } from "../../src/cli/dev-certs.ts";
import { CLUSTER_ID_FILE } from "../../src/cli/cluster-id.ts";
import { dialPeer } from "../../src/rpc/peers/peer-session.ts";
import type { PeerLinkError } from "../../src/rpc/peers/peer-link.ts";
import { RpcServer } from "../../src/rpc/server/server.ts";
import { CHROMIUM, runBrowserPage } from "./browser.ts";
import { TestCluster, freePorts, kvclient } from "./harness.ts";

setDefaultTimeout(90_000);

const TOKEN = "a-bearer-token-for-the-tests-0123";
let cluster: TestCluster;
let certs: DevCertFiles;
let other: DevCertFiles;
let pagePort: number;
let urls: string[];
let scratch: string;
let tokenFile: string;

const bearer: Interceptor = (next) => (request) => {
  request.header.set("Authorization", `Bearer ${TOKEN}`);
  return next(request);
};

function tlsClerk(ca: Buffer, options: { token?: boolean; httpVersion?: "1.1" | "2"; timeoutMs?: number } = {}): Clerk {
  return new Clerk({
    addrs: urls,
    operationTimeoutMs: options.timeoutMs ?? 15_000,
    transport: (baseUrl) =>
      createConnectTransport({
        baseUrl,
        httpVersion: options.httpVersion ?? "2",
        useBinaryFormat: true,
        nodeOptions: { ca },
        interceptors: options.token === false ? [] : [bearer],
      }),
  });
}

beforeAll(async () => {
  [pagePort] = (await freePorts(1)) as [number];
  scratch = fs.mkdtempSync(path.join(process.env.TMPDIR ?? "/tmp", "kvraft-tls-"));
  certs = await makeDevCertificates(path.join(scratch, "ca"), 3);
  other = await makeDevCertificates(path.join(scratch, "other"), 3, { commonName: "some other CA" });
  tokenFile = path.join(scratch, "token");
  fs.writeFileSync(tokenFile, `${TOKEN}\n`);
  const ca = fs.readFileSync(certs.ca);
  cluster = await TestCluster.start({
    peerArgs: ["--peer-trusted-ca-file", certs.ca, "--peer-client-cert-auth"],
    nodeArgs: (id) => ["--peer-cert-file", certs.nodes[id]!.cert, "--peer-key-file", certs.nodes[id]!.key],
    extraArgs: ["--client-token-file", tokenFile, "--cors-origin", `http://127.0.0.1:${pagePort}`, "--snapshot-threshold", "100"],
  });
  urls = cluster.addrs.map((a) => `https://${a.replace("127.0.0.1", "localhost")}`);
  cluster.clerkDefaults = {
    addrs: urls,
    transport: (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true, nodeOptions: { ca }, interceptors: [bearer] }),
  };
  await cluster.waitForLeader();
});
afterAll(async () => {
  await cluster?.destroy();
  if (scratch !== undefined) fs.rmSync(scratch, { recursive: true, force: true });
});

async function leaderId(): Promise<number> {
  return cluster.waitForLeader();
}

describe("TLS clients with a bearer token", () => {
  test("connect-node over HTTP/2 and HTTP/1.1 with the CA and the token", async () => {
    const h2 = tlsClerk(fs.readFileSync(certs.ca));
    await h2.put("tls", "h2");
    expect(await h2.get("tls")).toBe("h2");
    const h1 = tlsClerk(fs.readFileSync(certs.ca), { httpVersion: "1.1" });
    await h1.append("tls", "+h1");
    expect(await h1.get("tls")).toBe("h2+h1");
  });

  test("without the token: unauthenticated at once; with another CA: the TLS handshake fails", async () => {
    const noToken = tlsClerk(fs.readFileSync(certs.ca), { token: false });
    const refused = await noToken.get("tls").then(() => null, (e: unknown) => e);
    expect(refused).toBeInstanceOf(ClerkError);
    expect((refused as ClerkError).message).toContain("requires an Authorization: Bearer token");
    const client = createClient(KVService, createConnectTransport({ baseUrl: urls[0]!, httpVersion: "2", nodeOptions: { ca: fs.readFileSync(other.ca) }, interceptors: [bearer] }));
    const wrongCa = await client.getStatus({}).then(() => null, (e: unknown) => ConnectError.from(e));
    expect(wrongCa).not.toBeNull();
    expect(wrongCa!.message).toMatch(/certificate|self.signed|verify/i);
  });

  test("kvclient --cacert --token-file; without the CA it cannot verify the node", async () => {
    const addrs = cluster.addrs.join(",");
    const put = await kvclient(["-addrs", addrs, "--cacert", certs.ca, "--token-file", tokenFile, "-op", "put", "-key", "cli", "-value", "over-tls"]);
    expect(put).toMatchObject({ code: 0, stdout: "Put(cli, over-tls) success\n" });
    const got = await kvclient(["-addrs", addrs, "--cacert", certs.ca, "--token-file", tokenFile, "-op", "get", "-key", "cli"]);
    expect(got).toMatchObject({ code: 0, stdout: "Get(cli) -> over-tls\n" });
    const noToken = await kvclient(["-addrs", addrs, "--cacert", certs.ca, "-op", "get", "-key", "tls"]);
    expect(noToken.code).toBe(1);
    expect(noToken.stderr).toContain("requires an Authorization: Bearer token");
    const wrongCa = await kvclient(["-addrs", addrs, "--cacert", other.ca, "--token-file", tokenFile, "-op", "get", "-key", "tls", "-timeout", "3000"]);
    expect(wrongCa.code).toBe(1);
    expect(wrongCa.stderr).toMatch(/certificate|verify/i);
  });

  test("curl --cacert with the token; a wrong CA is refused", async () => {
    const leader = await leaderId();
    const curl = (ca: string, token: boolean) =>
      Bun.spawn(
        [
          "curl", "-sS", "--cacert", ca, "-H", "Content-Type: application/json",
          ...(token ? ["-H", `Authorization: Bearer ${TOKEN}`] : []),
          "-d", JSON.stringify({ key: "tls", op: "GET" }), `${urls[leader]}/kvraftpb.KVService/Command`,
        ],
        { stdout: "pipe", stderr: "pipe" },
      );
    const good = curl(certs.ca, true);
    expect(JSON.parse(await new Response(good.stdout).text())).toEqual({ err: "OK", value: "h2+h1" });
    const noToken = curl(certs.ca, false);
    expect(JSON.parse(await new Response(noToken.stdout).text())).toMatchObject({ code: "unauthenticated" });
    const wrong = curl(other.ca, true);
    expect(await wrong.exited).toBe(60); // curl: peer certificate cannot be authenticated with the known CA
  });

  test("@grpc/grpc-js with SSL credentials and the token as metadata", async () => {
    const leader = await leaderId();
    const definition = protoLoader.loadSync(path.join(import.meta.dir, "../../proto/kvraftpb/kvraft.proto"), { longs: String, enums: String, defaults: true });
    const loaded = grpc.loadPackageDefinition(definition) as any;
    const client = new loaded.kvraftpb.KVService(urls[leader]!.replace("https://", ""), grpc.credentials.createSsl(fs.readFileSync(certs.ca)));
    const call = (request: object, token: boolean) =>
      new Promise<any>((resolve, reject) => {
        const metadata = new grpc.Metadata();
        if (token) metadata.set("authorization", `Bearer ${TOKEN}`);
        client.Command(request, metadata, (e: Error | null, r: any) => (e ? reject(e) : resolve(r)));
      });
    try {
      expect(await call({ key: "tls", op: "GET" }, true)).toMatchObject({ err: "OK", value: "h2+h1" });
      const refused = await call({ key: "tls", op: "GET" }, false).then(() => null, (e: grpc.ServiceError) => e);
      expect(refused?.code).toBe(grpc.status.UNAUTHENTICATED);
    } finally {
      client.close();
    }
  });

  describe("browser", () => {
    const haveChromium = fs.existsSync(CHROMIUM);
    if (!haveChromium) console.log(`SKIP browser tests: ${CHROMIUM} is absent (apt-get install -y chromium)`);
    /** Chromium trusts exactly the node certificates' keys (it has no flag for a CA file). */
    const pinned = () => {
      const hashes = certs.nodes.map((n) => createHash("sha256").update(new X509Certificate(fs.readFileSync(n.cert)).publicKey.export({ type: "spki", format: "der" })).digest("base64"));
      return [`--ignore-certificate-errors-spki-list=${hashes.join(",")}`];
    };
    const page = path.join(import.meta.dir, "browser-tls-page.ts");

    test.skipIf(!haveChromium)("connect-web and gRPC-Web over https with the token, from another origin", async () => {
      const { report } = await runBrowserPage({ urls: urls.join(","), key: "browser-tls", token: TOKEN }, 45_000, pagePort, { page, chromiumArgs: pinned() });
      expect(report.error).toBeUndefined();
      expect(report.result).toEqual({ value: "over-https", grpcWebErr: expect.stringMatching(/^(OK|ErrWrongLeader)$/), origin: `http://127.0.0.1:${pagePort}` });
    });

    test.skipIf(!haveChromium)("without the token the browser gets unauthenticated; an untrusted certificate fails", async () => {
      const { report } = await runBrowserPage({ urls: urls.join(","), key: "x", mode: "probe" }, 45_000, pagePort, { page, chromiumArgs: pinned() });
      expect(report.result).toMatchObject({ code: "Unauthenticated" });
      const untrusted = await runBrowserPage({ urls: urls.join(","), key: "x", mode: "probe" }, 45_000, pagePort, { page });
      expect(untrusted.report.result).toMatchObject({ code: "Unknown", message: expect.stringContaining("Failed to fetch") });
    });
  });
});

describe("peers by certificate", () => {
  test("forged messages over TLS, with or without a client certificate of another CA, are refused and change nothing", async () => {
    const leader = await leaderId();
    const before = (await cluster.clerk().getStatus()).map((n) => (n.online ? `${n.id}:${n.state}:${n.term}` : `${n.id}:offline`));
    const follower = (leader + 1) % 3;
    const forged: Message[] = [
      { type: "TimeoutNow", from: leader, to: follower, term: 1 },
      { type: "RequestVote", from: leader, to: follower, term: 5000, lastLogIndex: 1e9, lastLogTerm: 4999, preVote: false, transfer: true },
    ];
    const ca = fs.readFileSync(certs.ca);
    const strangerCert = { cert: fs.readFileSync(other.nodes[leader]!.cert), key: fs.readFileSync(other.nodes[leader]!.key) };
    for (const nodeOptions of [{ ca }, { ca, ...strangerCert }]) {
      const transports = [
        createConnectTransport({ baseUrl: urls[follower]!, httpVersion: "2", useBinaryFormat: true, nodeOptions }),
        createConnectTransport({ baseUrl: urls[follower]!, httpVersion: "1.1", useBinaryFormat: false, nodeOptions }),
        createGrpcTransport({ baseUrl: urls[follower]!, nodeOptions }),
        createGrpcWebTransport({ baseUrl: urls[follower]!, httpVersion: "2", nodeOptions }),
      ];
      for (const transport of transports) {
        const client = createClient(RaftService, transport);
        async function* batch() {
          yield create(MessageBatchSchema, { messages: forged.map(encodeMessage) });
        }
        const error = await client.stream(batch()).then(() => null, (e: unknown) => ConnectError.from(e));
        expect([Code.Unauthenticated, Code.PermissionDenied]).toContain(error?.code as Code);
      }
    }
    await Bun.sleep(1000);
    expect((await cluster.clerk().getStatus()).map((n) => (n.online ? `${n.id}:${n.state}:${n.term}` : `${n.id}:offline`))).toEqual(before);
  });

  test("a certificate of another CA, or one naming another node, does not get past the handshake", async () => {
    const clusterId = fs.readFileSync(path.join(cluster.dataDir(0), CLUSTER_ID_FILE), "utf8").trim();
    const attempt = async (files: { cert: string; key: string }, self: number) =>
      dialPeer({
        url: urls[1]!,
        self,
        peer: 1,
        security: { clusterId, secret: null, peerCa: null, dial: { ca: fs.readFileSync(certs.ca), cert: fs.readFileSync(files.cert), key: fs.readFileSync(files.key) } },
        timeoutMs: 5000,
      }).then(
        (session) => {
          session.close();
          return "accepted";
        },
        (error: PeerLinkError) => `${error.code}: ${error.message}`,
      );
    expect(await attempt(certs.nodes[0]!, 0)).toBe("accepted");
    expect(await attempt(other.nodes[0]!, 0)).toMatch(/^unauthenticated: .*without a certificate from the peer CA/);
    expect(await attempt(certs.nodes[2]!, 0)).toMatch(/^permission_denied: .*certificate names node 2/);
    expect(await attempt(certs.client, 0)).toMatch(/^permission_denied: .*names no kvraft node/);
    expect(cluster.output(1)).toContain("without a certificate from the peer CA");
  });

  test("kill -9 the leader: a new leader is elected over mTLS, acknowledged writes survive, the old leader rejoins", async () => {
    const clerk = cluster.clerk();
    for (let i = 0; i < 20; i++) await clerk.put(`m${i}`, `v${i}`);
    const leader = await leaderId();
    await cluster.kill(leader, "SIGKILL");
    for (let i = 20; i < 40; i++) await clerk.put(`m${i}`, `v${i}`);
    const next = await leaderId();
    expect(next).not.toBe(leader);
    await cluster.restart(leader);
    for (let i = 0; i < 40; i++) expect(await clerk.get(`m${i}`)).toBe(`v${i}`);
    let caughtUp = false;
    for (let i = 0; i < 100 && !caughtUp; i++) {
      const status = await cluster.clerk({ statusTimeoutMs: 1000 }).getStatus();
      const mine = status[leader]!;
      const theirs = status[next]!;
      caughtUp = mine.online && theirs.online && mine.lastApplied >= theirs.commitIndex;
      if (!caughtUp) await Bun.sleep(100);
    }
    expect(caughtUp).toBe(true);
  });
});

describe("InstallSnapshot over mTLS", () => {
  test("a follower behind a compacted log catches up by a streamed snapshot", async () => {
    const leader = await leaderId();
    const follower = (leader + 1) % 3;
    await cluster.kill(follower, "SIGKILL");
    const clerk = cluster.clerk();
    // Well past the snapshot threshold (100): the leader compacts what the follower lacks.
    for (let i = 0; i < 250; i++) await clerk.put(`snap-${i % 10}`, `v${i}`);
    const before = (await cluster.clerk().getStatus())[leader]!;
    if (!before.online) throw new Error("the leader went offline");
    expect(Number(before.snapshotIndex)).toBeGreaterThan(0);
    await cluster.restart(follower);
    let caughtUp = false;
    for (let i = 0; i < 150 && !caughtUp; i++) {
      const mine = (await cluster.clerk({ statusTimeoutMs: 1000 }).getStatus())[follower]!;
      caughtUp = mine.online && mine.lastApplied >= before.commitIndex && mine.snapshotIndex > 0n;
      if (!caughtUp) await Bun.sleep(100);
    }
    expect(caughtUp).toBe(true);
    expect(cluster.output(follower)).not.toContain("refused");
  });
});

describe("client certificates (--client-cert-auth)", () => {
  test("a single node takes calls only with a certificate of its CA", async () => {
    const single = await TestCluster.start({
      size: 1,
      peerArgs: [],
      extraArgs: ["--cert-file", certs.nodes[0]!.cert, "--key-file", certs.nodes[0]!.key, "--trusted-ca-file", certs.ca, "--client-cert-auth"],
    });
    try {
      const url = `https://${single.addrs[0]!.replace("127.0.0.1", "localhost")}`;
      const status = (files: { cert: string; key: string } | null) =>
        createClient(
          KVService,
          createConnectTransport({
            baseUrl: url,
            httpVersion: "2",
            nodeOptions: { ca: fs.readFileSync(certs.ca), ...(files === null ? {} : { cert: fs.readFileSync(files.cert), key: fs.readFileSync(files.key) }) },
          }),
        )
          .getStatus({})
          .then(() => "ok", (e: unknown) => Code[ConnectError.from(e).code]);
      expect(await status(certs.client)).toBe("ok");
      expect(await status(null)).toBe("Unauthenticated");
      expect(await status(other.client)).toBe("Unauthenticated");
    } finally {
      await single.destroy();
    }
  });
});

describe("TLS and cleartext mismatches fail at once", () => {
  test("cleartext to a TLS port: the Clerk reports 'use https' without retrying", async () => {
    const clerk = new Clerk({ addrs: cluster.addrs, transport: (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "1.1" }), operationTimeoutMs: 60_000 });
    const error = await clerk.get("tls").then(() => null, (e: unknown) => e);
    expect(error).toBeInstanceOf(ClerkError);
    expect((error as ClerkError).message).toContain("speaks TLS only");
  });

  test("a TLS handshake to a cleartext port gets an alert, not a 60 s hang", async () => {
    const server = await RpcServer.start({ port: 0, firstBytesTimeoutMs: 60_000, routes: () => {} });
    try {
      const client = createClient(KVService, createConnectTransport({ baseUrl: server.url.replace("http:", "https:"), httpVersion: "1.1" }));
      const outcome = await Promise.race([
        client.getStatus({}).then(() => "answered", (e: unknown) => ConnectError.from(e).message),
        Bun.sleep(30_000).then(() => "hung"),
      ]);
      expect(outcome).toMatch(/alert|protocol version|EPROTO|wrong version|ssl/i);
      expect(server.stats.refusedTls).toBe(1);
    } finally {
      await server.close();
    }
  });
});
