// The kvraft test Clerk of the KV simulator: retries one operation (same commandId) through the
// simulated network until a server answers, following leader hints; records every call and return.
import type { Operation } from "../check/index.ts";
import type { Rng } from "../../util/rng.ts";
import { SessionExpiredError } from "../../kv/errors.ts";
import type { CommandArgs, CommandReply, KVOp } from "../../kv/server.ts";
import type { KvSimCluster } from "./cluster.ts";

/**
 * The test Clerk: retries one operation with the same commandId until a server answers OK or
 * ErrNoKey, following leader hints and rotating through servers; records call and return times.
 * With `registered`, it writes under a session from RegisterSession, as kvraft's Clerk does.
 */
export class KvSimClerk {
  private leader: number;
  private nextCommandId = 0n;
  private reachable: number[];
  /** This client's own draws (request and reply loss and delay): independent of other clients. */
  private readonly rng: Rng;
  /** The registered session (registered mode), null until registered and after it expired. */
  private session: bigint | null = null;

  constructor(
    private readonly cluster: KvSimCluster,
    readonly clientId: bigint,
    private readonly history: Operation[],
    private readonly deadlineMs = 60_000,
    /** The servers this client can talk to (a client inside a partition); default all. */
    reachable?: number[],
    private readonly registered = false,
  ) {
    this.reachable = reachable ?? Array.from({ length: cluster.size }, (_, i) => i);
    this.leader = this.reachable[0];
    this.rng = cluster.clientRng(clientId);
  }

  /** Changes which servers this client can talk to (all when omitted), e.g. after a heal. */
  reach(servers?: number[]): void {
    this.reachable = servers ?? Array.from({ length: this.cluster.size }, (_, i) => i);
    if (!this.reachable.includes(this.leader)) this.leader = this.reachable[0];
  }

  get(key: string): Promise<CommandReply> {
    return this.op("Get", key, "");
  }
  put(key: string, value: string): Promise<CommandReply> {
    return this.op("Put", key, value);
  }
  append(key: string, value: string): Promise<CommandReply> {
    return this.op("Append", key, value);
  }
  delete(key: string): Promise<CommandReply> {
    return this.op("Delete", key, "");
  }

  /**
   * Runs one operation to completion. In registered mode a write refused as session-expired on
   * its first attempt runs again under a new session; after a retry its outcome is unknown: it
   * stays open in the history (the checker lets it take effect or not) and ErrTimeout is returned.
   */
  async op(op: KVOp, key: string, value: string): Promise<CommandReply> {
    let commandId = ++this.nextCommandId;
    const clock = this.cluster.clock;
    const record: Operation = { clientId: this.clientId, input: { op, key, value }, output: null, call: clock.now(), return: Infinity };
    this.history.push(record);
    const giveUp = clock.now() + this.deadlineMs;
    const withSession = this.registered && op !== "Get";
    let attempts = 0;
    while (clock.now() < giveUp) {
      if (withSession && this.session === null) {
        this.session = await this.register(giveUp);
        commandId = ++this.nextCommandId;
      }
      const args: CommandArgs = withSession
        ? { key, value, op, clientId: this.session!, commandId, registered: true }
        : { key, value, op, clientId: this.clientId, commandId };
      let reply: CommandReply | null;
      try {
        attempts++;
        reply = await this.cluster.call(this.leader, args, this.rng);
      } catch (error) {
        if (!(error instanceof SessionExpiredError)) throw error;
        this.session = null;
        this.cluster.sessionEvents.expiredRefusals++;
        if (attempts > 1) {
          this.cluster.sessionEvents.uncertainWrites++;
          return { err: "ErrTimeout", value: "" };
        }
        continue;
      }
      if (reply !== null && (reply.err === "OK" || reply.err === "ErrNoKey")) {
        record.output = { err: reply.err, value: reply.value };
        record.return = clock.now();
        return reply;
      }
      this.follow(reply?.leaderId);
    }
    throw new Error(`client ${this.clientId}: ${op} ${JSON.stringify(key)} got no answer in ${this.deadlineMs} ms of simulated time`);
  }

  /** RegisterSession until a leader grants one (a full table is refused: retried after a pause). */
  private async register(giveUp: number): Promise<bigint> {
    while (this.cluster.clock.now() < giveUp) {
      const reply = await this.cluster.register(this.leader, this.clientId, this.rng);
      if (reply !== null && reply.err === "OK") return reply.clientId;
      this.follow(reply?.leaderId);
    }
    throw new Error(`client ${this.clientId}: RegisterSession got no session in ${this.deadlineMs} ms of simulated time`);
  }

  private follow(leaderId: number | undefined): void {
    if (leaderId !== undefined && leaderId !== this.leader && this.reachable.includes(leaderId)) {
      this.leader = leaderId;
    } else {
      this.leader = this.reachable[(this.reachable.indexOf(this.leader) + 1) % this.reachable.length];
    }
  }
}
