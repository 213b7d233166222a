// kvserver's security flags (what starts, what is refused with which advice), the peer
// certificate's node id, the handshake MAC and the client gate, on real files and certificates.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { X509Certificate } from "node:crypto";
import { Code } from "@connectrpc/connect";
import { SECURITY_SWITCHES, SECURITY_VALUE_FLAGS, loadSecurity } from "../../src/cli/security-flags.ts";
import { UsageError, parseFlags } from "../../src/cli/flags.ts";
import { makeDevCertificates, type DevCertFiles } from "../../src/cli/dev-certs.ts";
import { certificateNodeId, handshakeProof } from "../../src/rpc/peers/peer-auth.ts";
import { clientGate } from "../../src/rpc/server/client-auth.ts";
import { deriveClusterId } from "../../src/cli/cluster-id.ts";
import type { ConnectionInfo } from "../../src/rpc/server/connection.ts";

let dir: string;
let certs: DevCertFiles;
let other: DevCertFiles;
let secretFile: string;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvraft-security-"));
  certs = await makeDevCertificates(path.join(dir, "ca"), 2);
  other = await makeDevCertificates(path.join(dir, "other"), 1, { commonName: "another CA" });
  secretFile = path.join(dir, "secret");
  fs.writeFileSync(secretFile, "s3cret-s3cret-s3cret\n");
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function load(args: string[], nodes = 3) {
  return loadSecurity(parseFlags(args, { values: { ...SECURITY_VALUE_FLAGS }, switches: [...SECURITY_SWITCHES] }), nodes);
}

describe("security flags", () => {
  test("a multi-node node without peer authentication is refused with advice; one node needs none", () => {
    expect(() => load([])).toThrow(UsageError);
    expect(() => load([])).toThrow(/--peer-secret-file .*--insecure-peers/);
    expect(load([], 1).summary).toBe("cleartext; clients: open");
    expect(load(["--insecure-peers"]).summary).toBe("cleartext; peers: NOT authenticated (--insecure-peers); clients: open");
  });

  test("a shared secret: cleartext peers over http, the secret read from the file", () => {
    const security = load(["--peer-secret-file", secretFile]);
    expect(security.peerScheme).toBe("http");
    expect(new TextDecoder().decode(security.peer.secret!)).toBe("s3cret-s3cret-s3cret");
    expect(security.summary).toBe("cleartext; peers: shared secret; clients: open");
  });

  test("peer mTLS: the port speaks TLS with the peer certificate, peers dial https", () => {
    const security = load(["--peer-cert-file", certs.nodes[0]!.cert, "--peer-key-file", certs.nodes[0]!.key, "--peer-trusted-ca-file", certs.ca, "--peer-client-cert-auth"]);
    expect(security.peerScheme).toBe("https");
    expect(security.tls?.ca.length).toBe(1);
    expect(security.peer.peerCa?.length).toBe(1);
    expect(security.peer.dial?.cert).toBeDefined();
    expect(security.summary).toBe("TLS; peers: mTLS; clients: open");
  });

  test("bad combinations and files are UsageErrors that say what to give", () => {
    const short = path.join(dir, "short");
    fs.writeFileSync(short, "tiny\n");
    expect(() => load(["--peer-secret-file", short])).toThrow(/at least 16 characters/);
    expect(() => load(["--peer-secret-file", path.join(dir, "absent")])).toThrow(/no such file/);
    expect(() => load(["--peer-client-cert-auth"])).toThrow(/needs --peer-trusted-ca-file/);
    expect(() => load(["--insecure-peers", "--cert-file", certs.nodes[0]!.cert])).toThrow(/--cert-file and --key-file go together/);
    expect(() => load(["--insecure-peers", "--client-cert-auth", "--trusted-ca-file", certs.ca])).toThrow(/needs --trusted-ca-file and TLS/);
    expect(() => load(["--insecure-peers", "--peer-trusted-ca-file", secretFile])).toThrow(/holds no PEM certificate/);
    const token = path.join(dir, "token");
    fs.writeFileSync(token, "two words in the token file\n");
    expect(() => load(["--insecure-peers", "--client-token-file", token])).toThrow(/one word/);
  });
});

describe("peer identity", () => {
  test("the node id comes from the certificate's SAN URI; a client certificate names none", () => {
    const node1 = new X509Certificate(fs.readFileSync(certs.nodes[1]!.cert));
    expect(certificateNodeId(node1, "any")).toBe(1);
    expect(certificateNodeId(new X509Certificate(fs.readFileSync(certs.client.cert)), "any")).toBeNull();
  });

  test("the handshake MAC binds role, ids, cluster and both nonces", () => {
    const secret = new TextEncoder().encode("a secret");
    const fields = { serverNonce: new Uint8Array(32).fill(1), clientNonce: new Uint8Array(32).fill(2), from: 0, to: 1, clusterId: "c" };
    const base = Buffer.from(handshakeProof(secret, "client", fields)).toString("hex");
    const variants = [
      handshakeProof(secret, "server", fields),
      handshakeProof(secret, "client", { ...fields, from: 2 }),
      handshakeProof(secret, "client", { ...fields, to: 2 }),
      handshakeProof(secret, "client", { ...fields, clusterId: "d" }),
      handshakeProof(secret, "client", { ...fields, serverNonce: new Uint8Array(32).fill(3) }),
      handshakeProof(secret, "client", { ...fields, clientNonce: new Uint8Array(32).fill(3) }),
      handshakeProof(new TextEncoder().encode("another"), "client", fields),
    ].map((mac) => Buffer.from(mac).toString("hex"));
    expect(new Set([base, ...variants]).size).toBe(8);
  });

  test("the cluster id depends on the addresses and the token", () => {
    const a = deriveClusterId(["h:1", "h:2"], "t");
    expect(a).toMatch(/^[0-9a-f]{16}$/);
    expect(deriveClusterId(["h:1", "h:2"], "t")).toBe(a);
    expect(deriveClusterId(["h:1", "h:3"], "t")).not.toBe(a);
    expect(deriveClusterId(["h:1", "h:2"], "u")).not.toBe(a);
  });
});

describe("client gate", () => {
  const none: ConnectionInfo = { session: null, encrypted: false, verifiedCertificate: () => null, remoteAddress: "x" };
  const call = (path: string, authorization: string | null, connection: ConnectionInfo = none) => ({ path, header: (n: string) => (n === "authorization" ? authorization : null), connection });

  test("open without options; the token lets a call through, anything else is unauthenticated", () => {
    expect(clientGate({ trustedCa: null, token: null })).toBeUndefined();
    const gate = clientGate({ trustedCa: null, token: "tok-tok-tok-tok-tok" })!;
    expect(gate(call("/kvraftpb.KVService/Command", "Bearer tok-tok-tok-tok-tok"))).toBeNull();
    expect(gate(call("/kvraftpb.KVService/Command", "Bearer tok-tok-tok-tok-toc"))?.code).toBe(Code.Unauthenticated);
    expect(gate(call("/kvraftpb.KVService/Command", null))?.message).toContain("Authorization: Bearer");
    // The peers' routes have their own gate; the health check stays open.
    expect(gate(call("/raftpb.RaftService/Stream", null))).toBeNull();
    expect(gate(call("/grpc.health.v1.Health/Check", null))).toBeNull();
  });

  test("a certificate issued by the trusted CA lets a call through", () => {
    const ca = new X509Certificate(fs.readFileSync(certs.ca));
    const gate = clientGate({ trustedCa: [ca], token: null })!;
    const withCert = (file: string): ConnectionInfo => ({ ...none, encrypted: true, verifiedCertificate: () => new X509Certificate(fs.readFileSync(file)) });
    expect(gate(call("/kvraftpb.KVService/Command", null, withCert(certs.client.cert)))).toBeNull();
    expect(gate(call("/kvraftpb.KVService/Command", null, withCert(other.client.cert)))?.code).toBe(Code.Unauthenticated);
    expect(gate(call("/kvraftpb.KVService/Command", null))?.message).toContain("client certificate");
  });
});
