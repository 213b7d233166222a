// kvclient's etcd-style operations: range, scan (a prefix), cas (compare-and-swap) and watch
// (prints events until Ctrl-C). Output: one `key -> value` line per key; a summary on stderr.
import type { Clerk } from "../kv/client.ts";
import type { ClerkKV } from "../kv/clerk-txn.ts";
import { WatchCompactedError } from "../kv/clerk-watch.ts";
import { UsageError } from "./flags.ts";

export const API_OPS = ["range", "scan", "cas", "watch"];

export const API_USAGE = `  -op range  -key A -end Z [-limit N]   keys in [A, Z) ("-end" omitted: just A; -end "\\0": every key >= A)
  -op scan   -key PREFIX [-limit N]     every key starting with PREFIX
  -op cas    -key K -expect OLD -value NEW   set K to NEW if its value is OLD (no -expect: if K does
             not exist); exit 1 when the compare failed
  -op watch  -key K [-prefix] [-end Z] [-rev N]   print changes as they happen, from revision N,
             until Ctrl-C`;

export const API_VALUE_FLAGS = { end: undefined, expect: undefined, rev: undefined, limit: undefined } as const;
export const API_SWITCHES = ["prefix"];

export interface ApiFlags {
  values: Record<string, string | undefined>;
  switches: Set<string>;
}

/** Checks the flags of an etcd-style op; throws UsageError. */
export function checkApiFlags(op: string, flags: ApiFlags): void {
  const int = (name: string): void => {
    const text = flags.values[name];
    if (text !== undefined && !/^\d+$/.test(text)) throw new UsageError(`-${name} must be a non-negative integer`);
  };
  int("rev");
  int("limit");
  if (op === "cas" && flags.values.value === undefined) throw new UsageError("-op cas needs -value");
  if (op === "watch" && flags.switches.has("prefix") && flags.values.end !== undefined) throw new UsageError("-prefix and -end exclude each other");
}

function line(kv: ClerkKV): string {
  return `${kv.key} -> ${kv.value}`;
}

/** Runs one etcd-style op; returns the exit status. */
export async function runApiOp(clerk: Clerk, op: string, key: string, flags: ApiFlags): Promise<number> {
  const limit = Number(flags.values.limit ?? 0);
  switch (op) {
    case "range": {
      const end = flags.values.end === "\\0" ? Uint8Array.of(0) : (flags.values.end ?? "");
      const answer = await clerk.range(key, end, { limit });
      for (const kv of answer.kvs) console.log(line(kv));
      console.error(`(${answer.kvs.length} of ${answer.count} keys at revision ${answer.revision}${answer.more ? `; more from ${JSON.stringify(answer.nextKey)}` : ""})`);
      return 0;
    }
    case "scan": {
      const kvs = await clerk.scan(key, limit > 0 ? { maxKeys: limit } : {});
      for (const kv of kvs) console.log(line(kv));
      console.error(`(${kvs.length} keys with prefix ${JSON.stringify(key)})`);
      return 0;
    }
    case "cas": {
      const expect = flags.values.expect ?? null;
      const value = flags.values.value!;
      const answer = await clerk.cas(key, expect, value);
      if (answer.succeeded) {
        console.log(`CAS(${key}, ${expect ?? "<absent>"} -> ${value}) success at revision ${answer.revision}`);
        return 0;
      }
      console.log(`CAS(${key}, ${expect ?? "<absent>"} -> ${value}) failed: the value is ${answer.previous === null ? "<absent>" : answer.previous.value}`);
      return 1;
    }
    case "watch": {
      const abort = new AbortController();
      const stop = (): void => abort.abort();
      process.once("SIGINT", stop);
      process.once("SIGTERM", stop);
      const end = flags.values.end === "\\0" ? Uint8Array.of(0) : flags.values.end;
      try {
        const stream = clerk.watch(key, { prefix: flags.switches.has("prefix"), end, startRevision: Number(flags.values.rev ?? 0), signal: abort.signal });
        for await (const batch of stream) {
          for (const event of batch.events) {
            console.log(event.type === "put" ? `PUT ${line(event.kv)} (revision ${event.kv.modRevision})` : `DELETE ${event.kv.key} (revision ${event.kv.modRevision})`);
          }
        }
        return 0;
      } catch (error) {
        if (error instanceof WatchCompactedError) {
          console.error(`kvclient: ${error.message}`);
          return 1;
        }
        throw error;
      }
    }
  }
  return 2;
}
