// The Clerk's coalescer: the commands one process sends to one node at the same moment leave as a
// few Batch RPCs instead of one Command RPC each. Bounded: at most `maxCommands` per batch, at
// most `maxInFlight` batches outstanding per node (more wait for one to return, at most
// `maxDelayMs`). A command alone in its turn, and every command to a node without Batch (an
// older server), goes as a plain Command call.

import { Code, ConnectError, type Client } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { CommandRequestSchema, type CommandResponse, type KVService } from "../gen/kvraftpb/kvraft_pb.ts";

export interface BatchOptions {
  /** Commands per Batch RPC (default 1024; the server takes up to 4096). */
  maxCommands?: number;
  /** Batch RPCs outstanding per node before new commands wait for one to return (default 4). */
  maxInFlight?: number;
  /** Longest a command waits for a free slot before it is sent anyway (default 5 ms). */
  maxDelayMs?: number;
}

type CommandInit = MessageInitShape<typeof CommandRequestSchema>;

/** The next macrotask turn: setImmediate where it exists (Bun, Node), a 0 ms timer in browsers. */
const nextTurn: (run: () => void) => void =
  typeof globalThis.setImmediate === "function" ? (run) => globalThis.setImmediate(run) : (run) => setTimeout(run, 0);

interface Waiting {
  request: CommandInit;
  timeoutMs: number;
  resolve(response: CommandResponse): void;
  reject(error: unknown): void;
}

/** Coalesces Command calls to one node into Batch calls. */
export class CommandBatcher {
  private queue: Waiting[] = [];
  private inFlight = 0;
  private scheduled = false;
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** The node answered Batch with unimplemented: it is an older server, send Commands. */
  private unsupported = false;
  private readonly maxCommands: number;
  private readonly maxInFlight: number;
  private readonly maxDelayMs: number;
  private readonly flushNow = () => {
    this.scheduled = false;
    this.flush(false);
  };

  constructor(
    private readonly client: Client<typeof KVService>,
    options: BatchOptions = {},
  ) {
    this.maxCommands = Math.max(1, options.maxCommands ?? 1024);
    this.maxInFlight = Math.max(1, options.maxInFlight ?? 4);
    this.maxDelayMs = Math.max(0, options.maxDelayMs ?? 5);
  }

  /** Sends one command in the next batch to this node: its response, or its own refusal as a ConnectError. */
  command(request: CommandInit, timeoutMs: number): Promise<CommandResponse> {
    if (this.unsupported) return this.client.command(request, { timeoutMs });
    return new Promise<CommandResponse>((resolve, reject) => {
      this.queue.push({ request, timeoutMs, resolve, reject });
      if (this.queue.length >= this.maxCommands && this.inFlight < this.maxInFlight) this.flush(false);
      else if (!this.scheduled) {
        this.scheduled = true;
        // One macrotask turn: every operation the application starts in this turn (and every
        // continuation of the batch that just returned) joins the batch.
        nextTurn(this.flushNow);
      }
    });
  }

  /** Sends what is queued, in batches of maxCommands, while slots are free (or `force`d by the delay bound). */
  private flush(force: boolean): void {
    while (this.queue.length > 0 && (this.inFlight < this.maxInFlight || force)) {
      const batch = this.queue.length <= this.maxCommands ? this.queue : this.queue.slice(0, this.maxCommands);
      this.queue = batch === this.queue ? [] : this.queue.slice(this.maxCommands);
      this.send(batch);
    }
    if (this.queue.length > 0 && this.timer === undefined) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.flush(true);
      }, this.maxDelayMs);
    }
  }

  private send(batch: Waiting[]): void {
    this.inFlight++;
    if (batch.length === 1) {
      // Alone in its turn (a sequential caller): a plain Command call, no batch wrapping.
      const w = batch[0]!;
      this.client
        .command(w.request, { timeoutMs: w.timeoutMs })
        .then(w.resolve, w.reject)
        .finally(() => this.settled());
      return;
    }
    let timeoutMs = 1;
    for (const w of batch) if (w.timeoutMs > timeoutMs) timeoutMs = w.timeoutMs;
    this.client
      .batch({ commands: batch.map((w) => w.request) }, { timeoutMs })
      .then(
        (response) => {
          const results = response.results;
          for (let i = 0; i < batch.length; i++) {
            const w = batch[i]!;
            const result = results[i];
            if (result === undefined) w.reject(new ConnectError(`the batch answer has ${results.length} results for ${batch.length} commands`, Code.Internal));
            else if (result.code !== 0) w.reject(new ConnectError(result.message, result.code as Code));
            else if (result.response === undefined) w.reject(new ConnectError("a batch result with neither an answer nor a code", Code.Internal));
            else w.resolve(result.response);
          }
        },
        (error) => {
          const connectError = ConnectError.from(error);
          if (connectError.code === Code.Unimplemented) {
            // An older server: send this batch's commands, and all later ones, one by one.
            this.unsupported = true;
            for (const w of batch) this.client.command(w.request, { timeoutMs: w.timeoutMs }).then(w.resolve, w.reject);
            return;
          }
          for (const w of batch) w.reject(connectError);
        },
      )
      .finally(() => this.settled());
  }

  /** A call returned: its slot is free for what queued meanwhile. */
  private settled(): void {
    this.inFlight--;
    // Wait a turn: the operations this batch just finished may start their next commands.
    if (this.queue.length > 0 && !this.scheduled) {
      this.scheduled = true;
      nextTurn(this.flushNow);
    }
  }
}
