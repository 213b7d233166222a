// Client authorization for the KV API: a client certificate from --trusted-ca-file, or a bearer
// token (--client-token-file; works from browsers: Authorization is allowed by CORS). Either one
// lets a call through; without both configured the API is open. Peer routes have their own gate.

import { timingSafeEqual, type X509Certificate } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import type { CallGate } from "./connection.ts";

export interface ClientAuthOptions {
  /** CAs a client certificate must be issued by (--client-cert-auth); null: certificates not used. */
  trustedCa: readonly X509Certificate[] | null;
  /** The bearer token (--client-token-file); null: tokens not used. */
  token: string | null;
}

/** Routes that are not the KV API: the peers' (authenticated by PeerGate) and the health check. */
const UNGATED = ["/raftpb.RaftService/", "/grpc.health.v1.Health/"];

/** The gate for RpcServerOptions.gate, or undefined when the KV API is open. */
export function clientGate(options: ClientAuthOptions): CallGate | undefined {
  const { trustedCa, token } = options;
  if (trustedCa === null && token === null) return undefined;
  const expected = token === null ? null : Buffer.from(`Bearer ${token}`);
  const wanted = [trustedCa !== null ? "a client certificate from the trusted CA" : "", token !== null ? "an Authorization: Bearer token" : ""].filter((w) => w !== "").join(" or ");
  return (call) => {
    if (UNGATED.some((prefix) => call.path.startsWith(prefix))) return null;
    if (trustedCa !== null) {
      const certificate = call.connection?.verifiedCertificate() ?? null;
      if (certificate !== null && trustedCa.some((ca) => certificate.checkIssued(ca) && certificate.verify(ca.publicKey))) return null;
    }
    if (expected !== null) {
      const given = Buffer.from(call.header("authorization") ?? "");
      if (given.length === expected.length && timingSafeEqual(given, expected)) return null;
    }
    return new ConnectError(`this node requires ${wanted}`, Code.Unauthenticated);
  };
}
