// Membership administration from the command line: `kvclient member list|add|promote|remove` and
// `kvclient transfer-leader`, and the member lookup of `kvserver --join`. Calls go to the leader:
// a follower's refusal names it; a change refused "for now" (another pending, learner catching up)
// is retried until the deadline.

import { Code, ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
import { ClusterService, type Member } from "../gen/kvraftpb/kvraft_pb.ts";
import { clientConnection } from "./client-credentials.ts";
import { UsageError, parseAddrs, parseFlags, splitHostPort } from "./flags.ts";

export const ADMIN_USAGE = `usage: bun run kvclient member list [-addrs host:port,...]
       bun run kvclient member add -id N -address host:port [-addrs ...]
       bun run kvclient member promote -id N [-addrs ...]
       bun run kvclient member remove -id N [-addrs ...]
       bun run kvclient transfer-leader -to N [-addrs ...]

  add        adds node N (started with kvserver -id N -addr host:port --join ...) as a learner:
             it receives the log or a snapshot but does not vote
  promote    makes learner N a voter once it has caught up (waits for it, up to -timeout)
  remove     removes voter or learner N; removing the leader hands leadership over first
  -addrs     any members' addresses; the leader is found from them (default "localhost:5001,localhost:5002,localhost:5003")
  -timeout   give up after this many milliseconds (default 15000)
  --cacert, --cert, --key-file, --token-file   as for the other kvclient operations

Nodes serve these calls only with client authorization (--client-token-file or --client-cert-auth)
or when started with --insecure-admin.`;

export interface AdminConnection {
  addrs: string[];
  /** A Connect transport to a base URL (http:// or https://). */
  transport(baseUrl: string): Transport;
  https: boolean;
  timeoutMs: number;
}

/**
 * Runs `call` against the leader: tries each address, follows a follower's leader hint, and
 * retries refusals that say "not now" (UNAVAILABLE, ABORTED) until the deadline.
 */
export async function callLeader<T>(conn: AdminConnection, call: (client: Client<typeof ClusterService>) => Promise<T>): Promise<T> {
  const deadline = Date.now() + conn.timeoutMs;
  const clients = new Map<string, Client<typeof ClusterService>>();
  const clientFor = (address: string) => {
    let c = clients.get(address);
    if (c === undefined) clients.set(address, (c = createClient(ClusterService, conn.transport(`${conn.https ? "https" : "http"}://${address}`))));
    return c;
  };
  let queue = [...conn.addrs];
  let last: ConnectError | null = null;
  while (Date.now() < deadline) {
    const address = queue.shift()!;
    queue.push(address);
    try {
      return await call(clientFor(address));
    } catch (error) {
      const e = ConnectError.from(error);
      last = e;
      const hint = e.metadata.get("kvraft-leader-address");
      if (e.code === Code.FailedPrecondition && hint !== null) {
        queue = [hint, ...queue.filter((a) => a !== hint)];
        continue;
      }
      if (e.code === Code.FailedPrecondition && e.metadata.get("kvraft-leader-id") !== null) continue;
      // Refusals that will not change by retrying: bad input, no permission, no such method.
      if (![Code.Unavailable, Code.Aborted, Code.DeadlineExceeded, Code.Unknown, Code.Internal].includes(e.code)) throw e;
      await new Promise((resolve) => setTimeout(resolve, e.code === Code.Aborted ? 200 : 50));
    }
  }
  throw last ?? new ConnectError(`no member answered within ${conn.timeoutMs} ms`, Code.DeadlineExceeded);
}

/**
 * Makes a change; if its answer is lost (the leader that took it stepped down or was the member
 * removed, and can no longer see it commit), the member list decides whether it happened.
 */
async function changeOrConfirm(
  conn: AdminConnection,
  change: (client: Client<typeof ClusterService>) => Promise<{ members: Member[] }>,
  done: (members: readonly Member[]) => boolean,
): Promise<Member[]> {
  try {
    return (await callLeader(conn, change)).members;
  } catch (error) {
    const e = ConnectError.from(error);
    if (e.code === Code.PermissionDenied || e.code === Code.Unauthenticated) throw e;
    const list = await callLeader(conn, (c) => c.memberList({})).catch(() => null);
    if (list !== null && done(list.members)) return list.members;
    throw e;
  }
}

export function memberTable(members: readonly Member[], leaderId?: bigint): string {
  const header = ["ID", "Address", "Role"];
  const cells = members.map((m) => [`${m.id}${leaderId === m.id ? " (leader)" : ""}`, m.address || "-", m.role]);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]) => c.map((v, i) => v.padEnd(widths[i]!)).join(" | ").trimEnd();
  return [line(header), "-".repeat(widths.reduce((a, w) => a + w + 3, -3)), ...cells.map(line)].join("\n");
}

/** `kvclient member ...` / `kvclient transfer-leader ...`: exit 0 done, 1 failed, 2 bad usage. */
export async function runAdmin(argv: string[]): Promise<number> {
  const [command, sub] = argv;
  if (["-h", "-help", "--help"].includes(sub ?? "")) {
    console.log(ADMIN_USAGE);
    return 0;
  }
  const rest = command === "member" ? argv.slice(2) : argv.slice(1);
  let conn: AdminConnection;
  let flags;
  try {
    if (command === "member" && !["list", "add", "promote", "remove"].includes(sub ?? "")) {
      throw new UsageError(`member needs list, add, promote or remove, got ${JSON.stringify(sub ?? "")}`);
    }
    flags = parseFlags(rest, {
      values: {
        addrs: "localhost:5001,localhost:5002,localhost:5003",
        id: undefined,
        to: undefined,
        address: undefined,
        timeout: "15000",
        cacert: undefined,
        cert: undefined,
        "key-file": undefined,
        "token-file": undefined,
      },
      switches: ["help", "h"],
    });
    if (flags.switches.has("help") || flags.switches.has("h")) {
      console.log(ADMIN_USAGE);
      return 0;
    }
    conn = adminConnection(flags.values);
  } catch (error) {
    if (error instanceof UsageError) {
      console.error(`kvclient: ${error.message}\n\n${ADMIN_USAGE}`);
      return 2;
    }
    throw error;
  }
  const id = (name: "id" | "to"): bigint => {
    const raw = flags.values[name];
    if (raw === undefined || !/^\d+$/.test(raw) || Number(raw) > 0xffff_ffff) throw new UsageError(`-${name} needs a node id (a non-negative integer), got ${raw ?? "nothing"}`);
    return BigInt(raw);
  };
  try {
    if (command === "transfer-leader") {
      const to = id("to");
      const r = await callLeader(conn, (c) => c.transferLeader({ to }));
      console.log(`leadership transferred to node ${r.leaderId}`);
      return 0;
    }
    switch (sub) {
      case "list": {
        const r = await callLeader(conn, (c) => c.memberList({}));
        console.log(memberTable(r.members, r.leaderId));
        console.log(`cluster ${r.clusterId}`);
        return 0;
      }
      case "add": {
        const nodeId = id("id");
        const address = flags.values.address;
        if (address === undefined) throw new UsageError("member add needs -address host:port (where the new node listens)");
        splitHostPort(address);
        const members = await changeOrConfirm(conn, (c) => c.memberAdd({ id: nodeId, address }), (ms) => ms.some((m) => m.id === nodeId && m.role === "learner"));
        console.log(`node ${nodeId} added as a learner\n${memberTable(members)}`);
        return 0;
      }
      case "promote": {
        const nodeId = id("id");
        const members = await changeOrConfirm(conn, (c) => c.memberPromote({ id: nodeId }), (ms) => ms.some((m) => m.id === nodeId && m.role === "voter"));
        console.log(`node ${nodeId} is a voter\n${memberTable(members)}`);
        return 0;
      }
      default: {
        const nodeId = id("id");
        const members = await changeOrConfirm(conn, (c) => c.memberRemove({ id: nodeId }), (ms) => !ms.some((m) => m.id === nodeId));
        console.log(`node ${nodeId} removed\n${memberTable(members)}`);
        return 0;
      }
    }
  } catch (error) {
    if (error instanceof UsageError) {
      console.error(`kvclient: ${error.message}\n\n${ADMIN_USAGE}`);
      return 2;
    }
    const e = ConnectError.from(error);
    console.error(`kvclient: ${Code[e.code] ?? e.code}: ${e.rawMessage}`);
    return 1;
  }
}

/** The connection described by -addrs, -timeout and the TLS / token flags. */
export function adminConnection(values: Record<string, string | undefined>): AdminConnection {
  const addrs = parseAddrs(values.addrs!);
  const timeoutMs = Number(values.timeout ?? "15000");
  if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) throw new UsageError("-timeout must be a positive number of milliseconds");
  return { addrs, timeoutMs, ...clientConnection(values) };
}
