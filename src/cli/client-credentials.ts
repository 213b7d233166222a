// How kvclient (and its member / transfer-leader commands) reaches the nodes: TLS from --cacert,
// a client certificate from --cert/--key-file, a bearer token from --token-file.
import * as fs from "node:fs";
import type { Interceptor, Transport } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { UsageError } from "./flags.ts";

export interface ClientConnection {
  /** True when the nodes are reached over https (a CA or a client certificate was given). */
  https: boolean;
  transport: (baseUrl: string) => Transport;
}

/** Reads the credential flags; a missing or unreadable file, or a malformed token, is a UsageError. */
export function clientConnection(values: Record<string, string | undefined>): ClientConnection {
  const read = (flag: string) => {
    const file = values[flag];
    if (file === undefined) return undefined;
    try {
      return fs.readFileSync(file);
    } catch (error) {
      throw new UsageError(`--${flag} ${file}: ${(error as Error).message}`);
    }
  };
  const ca = read("cacert");
  const cert = read("cert");
  const key = read("key-file");
  if ((cert === undefined) !== (key === undefined)) throw new UsageError("--cert and --key-file go together");
  const tls = ca !== undefined || cert !== undefined ? { ...(ca ? { ca } : {}), ...(cert ? { cert, key } : {}) } : null;
  const interceptors: Interceptor[] = [];
  const token = read("token-file")?.toString("utf8").trim();
  if (token !== undefined) {
    if (token === "" || /\s/.test(token)) throw new UsageError("--token-file must hold one token without spaces");
    interceptors.push((next) => (request) => {
      request.header.set("Authorization", `Bearer ${token}`);
      return next(request);
    });
  }
  return {
    https: tls !== null,
    transport: (baseUrl) =>
      createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: true, interceptors, ...(tls !== null ? { nodeOptions: tls } : {}) }),
  };
}
