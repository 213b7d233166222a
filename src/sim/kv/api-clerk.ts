// A simulated client of the etcd-style API (issue 14): compare-and-swap as a Txn and Range, through
// the KV simulator's network and faults, each operation recorded for the linearizability checker.
import type { Operation } from "../check/index.ts";
import type { Rng } from "../../util/rng.ts";
import type { KvSimCluster } from "./cluster.ts";
import type { ReplyHeader } from "../../kv/txn-server.ts";
import type { KVServer } from "../../kv/server.ts";
import type { TxnRequest } from "../../kv/txn-types.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export class KvSimApiClerk {
  private leader = 0;
  private nextCommandId = 0n;
  private readonly rng: Rng;

  constructor(
    private readonly cluster: KvSimCluster,
    readonly clientId: bigint,
    private readonly history: Operation[],
    private readonly deadlineMs = 60_000,
  ) {
    this.rng = cluster.clientRng(clientId);
  }

  /**
   * Sets `key` to `value` if its value is `expect` (null: if it does not exist). Returns the key's
   * value after it (undefined when no answer came).
   */
  async cas(key: string, expect: string | null, value: string): Promise<string | null | undefined> {
    const k = encoder.encode(key);
    const request: TxnRequest = {
      compare: [{ key: k, target: expect === null ? "create" : "value", result: "equal", value: encoder.encode(expect ?? ""), number: 0 }],
      success: [{ type: "put", key: k, value: encoder.encode(value), prevKv: false }],
      failure: [{ type: "range", range: { key: k, rangeEnd: new Uint8Array(0), limit: 0, keysOnly: false, countOnly: false } }],
    };
    const record = this.open({ op: "Cas", key, value, expect });
    // One commandId for every retry: the session answers a repeat.
    const commandId = ++this.nextCommandId;
    const reply = await this.until((server) => server.api.txn(request, this.clientId, commandId));
    if (reply === null) return undefined;
    const result = reply.result!;
    const read = result.responses[0];
    let now: string | null = value;
    if (result.succeeded) record.output = { err: "OK", value: "" };
    else if (read?.type === "range" && read.range.kvs.length > 0) {
      now = decoder.decode(read.range.kvs[0]!.value);
      record.output = { err: "ErrCasFailed", value: now };
    } else {
      now = null;
      record.output = { err: "ErrCasFailedNoKey", value: "" };
    }
    record.return = this.cluster.clock.now();
    return now;
  }

  /** Reads [key, end) (linearizable). */
  async range(key: string, end: string): Promise<void> {
    const record = this.open({ op: "Range", key, value: "", end });
    const spec = { key: encoder.encode(key), rangeEnd: encoder.encode(end), limit: 0, keysOnly: false, countOnly: false };
    const reply = await this.until((server) => server.api.range(spec, false));
    if (reply === null) return;
    record.output = { err: "OK", value: "", kvs: reply.result!.kvs.map((kv) => [decoder.decode(kv.key), decoder.decode(kv.value)]) };
    record.return = this.cluster.clock.now();
  }

  private open(input: Operation["input"]): Operation {
    const record: Operation = { clientId: this.clientId, input, output: null, call: this.cluster.clock.now(), return: Infinity };
    this.history.push(record);
    return record;
  }

  /** Calls until a node answers OK; null when the deadline passed (the outcome stays unknown). */
  private async until<T extends { header: ReplyHeader }>(fn: (server: KVServer) => Promise<T>): Promise<T | null> {
    const giveUp = this.cluster.clock.now() + this.deadlineMs;
    while (this.cluster.clock.now() < giveUp) {
      const reply = await this.cluster.callServer(this.leader, this.clientId, fn, this.rng);
      if (reply !== null && reply.header.err === "OK") return reply;
      const hint = reply?.header.leaderId;
      this.leader = hint !== undefined && hint >= 0 && hint < this.cluster.size && hint !== this.leader ? hint : (this.leader + 1) % this.cluster.size;
    }
    return null;
  }
}
