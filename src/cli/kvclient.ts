// kvclient: one operation against a kvraft cluster, with eRaft's flags and output.
//   bun run kvclient -addrs localhost:5001,localhost:5002,localhost:5003 -op put -key k -value v
// Exit status: 0 success, 1 the operation failed, 2 bad usage.

import { Clerk, ClerkError, type NodeStatus } from "../kv/client.ts";
import { clientConnection, type ClientConnection } from "./client-credentials.ts";
import { UsageError, parseAddrs, parseFlags } from "./flags.ts";
import { API_OPS, API_SWITCHES, API_USAGE, API_VALUE_FLAGS, checkApiFlags, runApiOp } from "./kvclient-api.ts";
import { runAdmin } from "./cluster-admin.ts";
import { runLoad } from "./kvclient-load.ts";

const USAGE = `usage: bun run kvclient [-addrs host:port,...] -op get|put|append|delete|status|range|scan|cas|watch [-key K] [-value V] [-w table|json]

  -addrs     comma separated node addresses (default "localhost:5001,localhost:5002,localhost:5003")
  -op        get, put, append, delete, status, or one of the etcd-style ops below (default "get")
  -key       the key (required except for status)
  -value     the value for put and append (default "")
  -timeout   give up after this many milliseconds (default 15000)
  -w         status output: table (default) or json, one array of every node's status
             (also --write-out, as etcdctl spells it)
  --cacert   CA file to verify the nodes' certificates: talk https (nodes started with TLS)
  --cert, --key-file  client certificate and its key (nodes started with --client-cert-auth;
             the key flag is not --key: -key is the KV key)
  --token-file    send "Authorization: Bearer <the file's token>" (nodes started with --client-token-file)
  -help      print this message

etcd-style operations (keys with revisions):
${API_USAGE}

Membership: kvclient member list|add|promote|remove, kvclient transfer-leader -to ID
(kvclient member -help for their flags).

Bulk load: kvclient load -file F (lines "key<TAB>value"; kvclient load -help).

Flags may also be written --name value or -name=value.`;

/** Every node's status as one JSON array: numbers for counts and indexes, the error when offline. */
function statusJson(rows: NodeStatus[]): string {
  return JSON.stringify(
    rows.map((row) =>
      !row.online
        ? { id: row.id, address: row.address, online: false, state: row.state, error: row.error }
        : {
            id: row.id,
            address: row.address,
            online: true,
            state: row.state,
            term: Number(row.term),
            leaderId: row.leaderId === undefined ? null : Number(row.leaderId),
            lastApplied: Number(row.lastApplied),
            commitIndex: Number(row.commitIndex),
            snapshotIndex: Number(row.snapshotIndex),
            storageSize: Number(row.storageSize),
            keyCount: Number(row.keyCount),
            members: row.members.map(Number),
          },
    ),
  );
}

function statusTable(rows: NodeStatus[]): string {
  const header = ["ID", "Address", "Role", "Term", "Applied", "Commit", "Storage(B)", "Keys", "Snapshot", "Leader"];
  const cells = rows.map((row) =>
    !row.online
      ? [String(row.id), row.address, "Offline", "-", "-", "-", "-", "-", "-", "-"]
      : [
          String(row.id),
          row.address,
          row.state,
          String(row.term),
          String(row.lastApplied),
          String(row.commitIndex),
          String(row.storageSize),
          String(row.keyCount),
          String(row.snapshotIndex),
          row.leaderId === undefined ? "-" : String(row.leaderId),
        ],
  );
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]) => c.map((v, i) => v.padEnd(widths[i]!)).join(" | ").trimEnd();
  return [line(header), "-".repeat(widths.reduce((a, w) => a + w + 3, -3)), ...cells.map(line)].join("\n");
}

async function main(argv: string[]): Promise<number> {
  if (argv[0] === "member" || argv[0] === "transfer-leader") return runAdmin(argv);
  if (argv[0] === "load") return runLoad(argv.slice(1));
  let flags;
  let addrs: string[];
  let timeoutMs: number;
  let writeOut: string;
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
        w: undefined,
        "write-out": undefined,
        ...API_VALUE_FLAGS,
      },
      switches: ["help", "h", ...API_SWITCHES],
    });
    if (flags.switches.has("help") || flags.switches.has("h")) {
      console.log(USAGE);
      return 0;
    }
    addrs = parseAddrs(flags.values.addrs!);
    timeoutMs = Number(flags.values.timeout);
    if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) throw new UsageError(`-timeout must be a positive number of milliseconds`);
    const op = flags.values.op!;
    if (!["get", "put", "append", "delete", "status", ...API_OPS].includes(op)) throw new UsageError(`unknown -op "${op}"`);
    if (op !== "status" && flags.values.key === undefined) throw new UsageError(`-op ${op} needs -key`);
    writeOut = flags.values.w ?? flags.values["write-out"] ?? "table";
    if (writeOut !== "table" && writeOut !== "json") throw new UsageError(`-w "${writeOut}" is not table or json`);
    if (op !== "status" && (flags.values.w !== undefined || flags.values["write-out"] !== undefined)) throw new UsageError(`-w applies to -op status`);
    if (API_OPS.includes(op)) checkApiFlags(op, { values: { ...flags.values, value: argv.some((a) => /^--?value(=|$)/.test(a)) ? flags.values.value : undefined }, switches: flags.switches });
  } catch (error) {
    if (error instanceof UsageError) {
      console.error(`kvclient: ${error.message}\n\n${USAGE}`);
      return 2;
    }
    throw error;
  }

  let connection: ClientConnection;
  try {
    connection = clientConnection(flags.values);
  } catch (error) {
    if (error instanceof UsageError) {
      console.error(`kvclient: ${error.message}`);
      return 2;
    }
    throw error;
  }
  const clerk = new Clerk({
    // With TLS the same host:port addresses are reached over https.
    addrs: connection.https ? addrs.map((a) => `https://${a}`) : addrs,
    transport: connection.transport,
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
        console.log(writeOut === "json" ? statusJson(rows) : statusTable(rows));
        return rows.some((r) => r.online) ? 0 : 1;
      }
      default:
        if (API_OPS.includes(flags.values.op!)) return await runApiOp(clerk, flags.values.op!, key, flags);
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
