// kvclient: one operation against a kvraft cluster, with eRaft's flags and output.
//   bun run kvclient -addrs localhost:5001,localhost:5002,localhost:5003 -op put -key k -value v
// Exit status: 0 success, 1 the operation failed, 2 bad usage.

import * as fs from "node:fs";
import type { Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { Clerk, ClerkError, type NodeStatus } from "../kv/client.ts";
import { UsageError, parseAddrs, parseFlags } from "./flags.ts";

const USAGE = `usage: bun run kvclient [-addrs host:port,...] -op get|put|append|delete|status [-key K] [-value V]

  -addrs     comma separated node addresses (default "localhost:5001,localhost:5002,localhost:5003")
  -op        get, put, append, delete or status (default "get")
  -key       the key (required except for status)
  -value     the value for put and append (default "")
  -timeout   give up after this many milliseconds (default 15000)
  --cacert   CA file to verify the nodes' certificates: talk https (nodes started with TLS)
  --cert, --key-file  client certificate and its key (nodes started with --client-cert-auth;
             the key flag is not --key: -key is the KV key)
  --token-file    send "Authorization: Bearer <the file's token>" (nodes started with --client-token-file)
  -help      print this message

Flags may also be written --name value or -name=value.`;

function statusTable(rows: NodeStatus[]): string {
  const header = ["ID", "Address", "Role", "Term", "Applied", "Commit", "Storage(B)"];
  const cells = rows.map((row) =>
    !row.online
      ? [String(row.id), row.address, "Offline", "-", "-", "-", "-"]
      : [String(row.id), row.address, row.state, String(row.term), String(row.lastApplied), String(row.commitIndex), String(row.storageSize)],
  );
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]) => c.map((v, i) => v.padEnd(widths[i]!)).join(" | ").trimEnd();
  return [line(header), "-".repeat(widths.reduce((a, w) => a + w + 3, -3)), ...cells.map(line)].join("\n");
}

async function main(argv: string[]): Promise<number> {
  let flags;
  let addrs: string[];
  let timeoutMs: number;
  try {
    flags = parseFlags(argv, {
      values: {
        addrs: "localhost:5001,localhost:5002,localhost:5003",
        op: "get",
        key: undefined,
        value: "",
        timeout: "15000",
        cacert: undefined,
        cert: undefined,
        "key-file": undefined,
        "token-file": undefined,
      },
      switches: ["help", "h"],
    });
    if (flags.switches.has("help") || flags.switches.has("h")) {
      console.log(USAGE);
      return 0;
    }
    addrs = parseAddrs(flags.values.addrs!);
    timeoutMs = Number(flags.values.timeout);
    if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) throw new UsageError(`-timeout must be a positive number of milliseconds`);
    const op = flags.values.op!;
    if (!["get", "put", "append", "delete", "status"].includes(op)) throw new UsageError(`unknown -op "${op}"`);
    if (op !== "status" && flags.values.key === undefined) throw new UsageError(`-op ${op} needs -key`);
  } catch (error) {
    if (error instanceof UsageError) {
      console.error(`kvclient: ${error.message}\n\n${USAGE}`);
      return 2;
    }
    throw error;
  }

  let tls: { ca?: Buffer; cert?: Buffer; key?: Buffer } | null = null;
  const interceptors: Interceptor[] = [];
  try {
    const read = (flag: string) => {
      const file = flags.values[flag];
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
    if (ca !== undefined || cert !== undefined) tls = { ...(ca ? { ca } : {}), ...(cert ? { cert, key } : {}) };
    const token = read("token-file")?.toString("utf8").trim();
    if (token !== undefined) {
      if (token === "" || /\s/.test(token)) throw new UsageError("--token-file must hold one token without spaces");
      interceptors.push((next) => (request) => {
        request.header.set("Authorization", `Bearer ${token}`);
        return next(request);
      });
    }
  } catch (error) {
    if (error instanceof UsageError) {
      console.error(`kvclient: ${error.message}`);
      return 2;
    }
    throw error;
  }
  const clerk = new Clerk({
    // With TLS the same host:port addresses are reached over https.
    addrs: tls === null ? addrs : addrs.map((a) => `https://${a}`),
    transport: (baseUrl) =>
      createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: true, interceptors, ...(tls !== null ? { nodeOptions: tls } : {}) }),
    operationTimeoutMs: timeoutMs,
    // One operation per process: a registered session would cost a log entry and hold a session
    // slot for the whole TTL. An unregistered random id (eRaft's way) still deduplicates this
    // operation's retries.
    clientId: randomClientId(),
  });
  const key = flags.values.key ?? "";
  const value = flags.values.value!;
  try {
    switch (flags.values.op) {
      case "get": {
        const found = await clerk.get(key);
        console.log(`Get(${key}) -> ${found ?? ""}`);
        if (found === null) console.error(`(key ${JSON.stringify(key)} does not exist)`);
        return 0;
      }
      case "put":
        await clerk.put(key, value);
        console.log(`Put(${key}, ${value}) success`);
        return 0;
      case "append":
        await clerk.append(key, value);
        console.log(`Append(${key}, ${value}) success`);
        return 0;
      case "delete": {
        const existed = await clerk.delete(key);
        console.log(`Delete(${key}) success`);
        if (!existed) console.error(`(key ${JSON.stringify(key)} did not exist)`);
        return 0;
      }
      case "status": {
        const rows = await clerk.getStatus();
        console.log(statusTable(rows));
        return rows.some((r) => r.online) ? 0 : 1;
      }
    }
  } catch (error) {
    if (error instanceof ClerkError) {
      console.error(`kvclient: ${error.message}`);
      return 1;
    }
    throw error;
  }
  return 2;
}

// Exit explicitly: pooled keep-alive connections would otherwise hold the process open.
main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    console.error(`kvclient: ${(error as Error).stack ?? error}`);
    process.exit(1);
  },
);

/** A random id in [1, 2^62): fits int64 on the wire and is never the "no session" zero. */
function randomClientId(): bigint {
  const words = crypto.getRandomValues(new Uint32Array(2));
  const id = (BigInt(words[0]! & 0x3fffffff) << 32n) | BigInt(words[1]!);
  return id === 0n ? 1n : id;
}
