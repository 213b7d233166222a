// The nodes a Clerk talks to, by node id: each one's address, client and coalescer. Seeded from
// the addresses it was given (as nodes 0, 1, …); replaced by the configuration's members, as a
// node's GetStatus reports them, when the Clerk meets a node id it does not know or none answers.
import { createClient, type Client } from "@connectrpc/connect";
import { KVService } from "../gen/kvraftpb/kvraft_pb.ts";
import { CommandBatcher, type BatchOptions } from "./clerk-batch.ts";
import type { ClerkOptions } from "./clerk-options.ts";

export function toBaseUrl(address: string): string {
  return /^https?:\/\//.test(address) ? address.replace(/\/+$/, "") : `http://${address}`;
}

export class ClerkNodes {
  /** Node ids known, ascending; the arrays below are indexed by node id. */
  ids: number[];
  readonly addrs: string[] = [];
  readonly clients: Client<typeof KVService>[] = [];
  /** One coalescer per node, or null when batching is off. */
  readonly batchers: CommandBatcher[] | null;
  /** The scheme given addresses used ("https://" when all did): learned host:port addresses take it. */
  private readonly scheme: string;
  /** When members were last learned (ms since the epoch), 0 never. */
  learnedAt = 0;

  constructor(
    addrs: readonly string[],
    private readonly transport: ClerkOptions["transport"],
    /** Coalescing options, or null for none. */
    private readonly batch: BatchOptions | null,
  ) {
    this.scheme = addrs.every((a) => a.startsWith("https://")) ? "https://" : "http://";
    this.batchers = batch === null ? null : [];
    this.ids = addrs.map((address, id) => (this.add(id, address), id));
  }

  has(id: number): boolean {
    return this.clients[id] !== undefined;
  }

  /** A leader hint naming a node there is no address for. */
  unknown(hint: bigint | undefined): boolean {
    return hint !== undefined && hint >= 0n && hint <= 0xffff_ffffn && !this.has(Number(hint));
  }

  /** The known node after `node` in id order (wrapping). */
  after(node: number): number {
    for (const id of this.ids) if (id > node) return id;
    return this.ids[0]!;
  }

  /**
   * Asks the nodes `from` (in turn) for the configuration and takes its members' ids and
   * addresses: a node on a new port is found, one removed is no longer asked, and an address given
   * by position under a wrong id is put under its real one. Never throws.
   */
  async learn(from: readonly number[], timeoutMs: number): Promise<void> {
    this.learnedAt = Date.now();
    for (const id of from) {
      const client = this.clients[id];
      if (client === undefined) continue;
      let members: { id: bigint; address: string }[];
      try {
        members = (await client.getStatus({}, { timeoutMs })).memberDetails;
      } catch {
        continue;
      }
      const known = members.filter((m) => m.address !== "" && m.id >= 0n && m.id <= 0xffff_ffffn);
      if (known.length === 0) continue;
      const withScheme = (address: string) => (/^https?:\/\//.test(address) || this.scheme === "http://" ? address : this.scheme + address);
      const next = new Map(known.map((m) => [Number(m.id), withScheme(m.address)]));
      for (const old of this.ids) {
        if (next.get(old) === this.addrs[old]) continue;
        delete this.addrs[old];
        delete this.clients[old];
        if (this.batchers !== null) delete this.batchers[old];
      }
      for (const [member, address] of next) if (!this.has(member)) this.add(member, address);
      this.ids = [...next.keys()].sort((a, b) => a - b);
      return;
    }
  }

  private add(id: number, address: string): void {
    const client = createClient(KVService, this.transport(toBaseUrl(address)));
    this.addrs[id] = address;
    this.clients[id] = client;
    if (this.batchers !== null) this.batchers[id] = new CommandBatcher(client, this.batch ?? {});
  }
}
