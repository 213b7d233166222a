// kvserver's security flags (etcd's names): TLS of the port, peer authentication (mTLS and/or a
// shared secret), client authorization. Reads and checks the files; bad input is a UsageError.

import * as fs from "node:fs";
import { X509Certificate } from "node:crypto";
import type { PeerSecurity } from "../rpc/peers/peer-auth.ts";
import type { TlsOptions } from "../rpc/server/tls-port.ts";
import { clientGate } from "../rpc/server/client-auth.ts";
import type { CallGate } from "../rpc/server/connection.ts";
import { UsageError, type ParsedFlags } from "./flags.ts";

export const SECURITY_VALUE_FLAGS = {
  "cert-file": undefined,
  "key-file": undefined,
  "trusted-ca-file": undefined,
  "client-token-file": undefined,
  "peer-cert-file": undefined,
  "peer-key-file": undefined,
  "peer-trusted-ca-file": undefined,
  "peer-secret-file": undefined,
  "initial-cluster-token": undefined,
} as const;
export const SECURITY_SWITCHES = ["client-cert-auth", "peer-client-cert-auth", "insecure-peers"] as const;

export const SECURITY_USAGE = `  --cert-file, --key-file   serve TLS only (HTTPS, HTTP/2 by ALPN and HTTP/1.1) with this certificate
  --trusted-ca-file         CA(s) of client certificates; with --client-cert-auth a client needs one
  --client-token-file       clients must send "Authorization: Bearer <the file's token>" (unless they
                            present a certificate under --client-cert-auth); without either the KV API is open
  --peer-cert-file, --peer-key-file   this node's certificate towards peers (also the port's, when
                            --cert-file is not given: the port then speaks TLS only)
  --peer-trusted-ca-file    CA(s) peers' certificates must be issued by
  --peer-client-cert-auth   authenticate peers by certificate: SAN URI kvraft://node/<id>
  --peer-secret-file        authenticate peers by a shared secret (challenge-response, never sent)
  --insecure-peers          run a multi-node cluster without peer authentication (anyone who reaches
                            the port can rewrite the cluster's state)
  --initial-cluster-token   mixed into the cluster id at bootstrap (use one per cluster)`;

export interface NodeSecurity {
  /** TLS of the port; undefined: cleartext. */
  tls?: TlsOptions;
  /** Peer authentication, without the cluster id (that comes from the data directory). */
  peer: Omit<PeerSecurity, "clusterId">;
  /** Scheme of peer URLs: all nodes of a cluster are configured alike. */
  peerScheme: "http" | "https";
  gate?: CallGate;
  initialClusterToken: string | undefined;
  /** One line for the start-up message. */
  summary: string;
}

function readFile(flag: string, file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (error) {
    throw new UsageError(`--${flag} ${file}: ${(error as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (error as Error).message}`);
  }
}

function certificates(flag: string, file: string): { pem: Buffer; parsed: X509Certificate[] } {
  const pem = readFile(flag, file);
  const blocks = pem.toString("utf8").match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new UsageError(`--${flag} ${file} holds no PEM certificate`);
  try {
    return { pem, parsed: blocks.map((block) => new X509Certificate(block)) };
  } catch (error) {
    throw new UsageError(`--${flag} ${file}: not a valid certificate (${(error as Error).message})`);
  }
}

function secretText(flag: string, file: string, minimum: number): string {
  const text = readFile(flag, file).toString("utf8").trim();
  if (text.length < minimum) throw new UsageError(`--${flag} ${file} must hold at least ${minimum} characters (e.g. head -c 32 /dev/urandom | base64 > ${file})`);
  return text;
}

export function loadSecurity(flags: ParsedFlags, nodeCount: number): NodeSecurity {
  const value = (name: keyof typeof SECURITY_VALUE_FLAGS) => flags.values[name];
  const on = (name: (typeof SECURITY_SWITCHES)[number]) => flags.switches.has(name);
  const pair = (certFlag: "cert-file" | "peer-cert-file", keyFlag: "key-file" | "peer-key-file") => {
    const cert = value(certFlag);
    const key = value(keyFlag);
    if ((cert === undefined) !== (key === undefined)) throw new UsageError(`--${certFlag} and --${keyFlag} go together`);
    return cert === undefined ? null : { cert: readFile(certFlag, cert), key: readFile(keyFlag, key!) };
  };
  const clientPair = pair("cert-file", "key-file");
  const peerPair = pair("peer-cert-file", "peer-key-file");
  const clientCa = value("trusted-ca-file") === undefined ? null : certificates("trusted-ca-file", value("trusted-ca-file")!);
  const peerCa = value("peer-trusted-ca-file") === undefined ? null : certificates("peer-trusted-ca-file", value("peer-trusted-ca-file")!);
  const port = clientPair ?? peerPair;

  if (on("client-cert-auth") && (clientCa === null || port === null)) throw new UsageError("--client-cert-auth needs --trusted-ca-file and TLS (--cert-file/--key-file)");
  if (on("peer-client-cert-auth") && (peerCa === null || peerPair === null)) {
    throw new UsageError("--peer-client-cert-auth needs --peer-trusted-ca-file, --peer-cert-file and --peer-key-file");
  }
  if (peerCa !== null && port === null) throw new UsageError("--peer-trusted-ca-file needs TLS: give --peer-cert-file/--peer-key-file");

  const secret = value("peer-secret-file") === undefined ? null : new TextEncoder().encode(secretText("peer-secret-file", value("peer-secret-file")!, 16));
  const peerMtls = on("peer-client-cert-auth");
  if (nodeCount > 1 && secret === null && !peerMtls && !on("insecure-peers")) {
    throw new UsageError(
      "peers are not authenticated: anyone who reaches this port could rewrite the cluster. Give every node " +
        "--peer-secret-file FILE (one shared secret: head -c 32 /dev/urandom | base64 > FILE), or peer mTLS " +
        "(--peer-cert-file --peer-key-file --peer-trusted-ca-file --peer-client-cert-auth), or --insecure-peers to run without",
    );
  }
  const token = value("client-token-file") === undefined ? null : secretText("client-token-file", value("client-token-file")!, 16);
  if (token !== null && /\s/.test(token)) throw new UsageError(`--client-token-file: the token must be one word without spaces`);

  const caPems = [...(peerMtls ? [peerCa!.pem] : []), ...(on("client-cert-auth") ? [clientCa!.pem] : [])];
  const tls: TlsOptions | undefined = port === null ? undefined : { cert: port.cert, key: port.key, ca: caPems };
  const dial = port === null ? undefined : { ...(peerCa !== null ? { ca: peerCa.pem } : {}), ...(peerPair !== null ? { cert: peerPair.cert, key: peerPair.key } : {}) };
  const gate = clientGate({ trustedCa: on("client-cert-auth") ? clientCa!.parsed : null, token });
  const peerModes = [peerMtls ? "mTLS" : "", secret !== null ? "shared secret" : ""].filter((m) => m !== "");
  const summary = [
    port === null ? "cleartext" : "TLS",
    nodeCount > 1 ? `peers: ${peerModes.length > 0 ? peerModes.join(" + ") : "NOT authenticated (--insecure-peers)"}` : "",
    `clients: ${gate === undefined ? "open" : [on("client-cert-auth") ? "certificate" : "", token !== null ? "token" : ""].filter((m) => m !== "").join(" or ")}`,
  ]
    .filter((part) => part !== "")
    .join("; ");
  return {
    ...(tls !== undefined ? { tls } : {}),
    peer: { secret, peerCa: peerMtls ? peerCa!.parsed : null, ...(dial !== undefined ? { dial } : {}) },
    peerScheme: port === null ? "http" : "https",
    ...(gate !== undefined ? { gate } : {}),
    initialClusterToken: value("initial-cluster-token"),
    summary,
  };
}
