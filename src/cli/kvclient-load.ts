// `kvclient load -file F`: a bulk load from a file of "key<TAB>value" lines through the Clerk's
// putMany (Batch RPCs, batch entries), each pair exactly once. The file is checked whole before
// anything is written, then streamed in chunks: memory stays bounded whatever its size.

import * as fs from "node:fs";
import { Clerk, ClerkError } from "../kv/client.ts";
import { clientConnection } from "./client-credentials.ts";
import { UsageError, parseAddrs, parseFlags } from "./flags.ts";

export const LOAD_USAGE = `usage: bun run kvclient load -file F [-addrs host:port,...] [-concurrency N] [-timeout MS]

  -file         pairs to put, one per line: the key, a TAB, the value (the rest of the line);
                empty lines are skipped. UTF-8. Checked whole before the first write.
  -concurrency  writes in flight, 1..4096 (default 2048; one registered session each)
  -addrs, -timeout, --cacert, --cert, --key-file, --token-file   as for the other operations

Prints how many pairs were written and the rate. Exit status: 0 all written, 1 the load stopped
(it says how many were acknowledged; those are written exactly once), 2 bad usage or a bad line.`;

const CHUNK_BYTES = 1 << 20;
/** A line longer than this is refused (a key and a value within the server's request limit). */
const MAX_LINE_BYTES = 4 << 20;

/** The file's lines, read in chunks; each without its end of line (\n or \r\n; a final line may lack it). */
function* lines(file: string): Generator<{ line: string; number: number }> {
  const fd = fs.openSync(file, "r");
  try {
    const chunk = Buffer.allocUnsafe(CHUNK_BYTES);
    let carry = Buffer.alloc(0);
    let number = 0;
    for (;;) {
      const read = fs.readSync(fd, chunk, 0, CHUNK_BYTES, null);
      const data = read === 0 ? carry : Buffer.concat([carry, chunk.subarray(0, read)]);
      let start = 0;
      for (let end = data.indexOf(10, start); end >= 0; end = data.indexOf(10, start)) {
        number++;
        yield { line: data.toString("utf8", start, end > start && data[end - 1] === 13 ? end - 1 : end), number };
        start = end + 1;
      }
      if (read === 0) {
        const end = data.length > start && data[data.length - 1] === 13 ? data.length - 1 : data.length;
        if (start < data.length) yield { line: data.toString("utf8", start, end), number: number + 1 };
        return;
      }
      carry = Buffer.from(data.subarray(start));
      if (carry.length > MAX_LINE_BYTES) throw new UsageError(`${file}: line ${number + 1} is longer than ${MAX_LINE_BYTES} bytes`);
    }
  } finally {
    fs.closeSync(fd);
  }
}

export function* loadPairs(file: string): Generator<[string, string]> {
  for (const { line, number } of lines(file)) {
    if (line === "") continue;
    const tab = line.indexOf("\t");
    if (tab < 0) throw new UsageError(`${file}: line ${number} has no TAB between key and value`);
    yield [line.slice(0, tab), line.slice(tab + 1)];
  }
}

export async function runLoad(argv: readonly string[]): Promise<number> {
  let flags;
  let file: string;
  let concurrency: number;
  let timeoutMs: number;
  let count = 0;
  let connection: ReturnType<typeof clientConnection>;
  let addrs: string[];
  try {
    flags = parseFlags(argv, {
      values: { addrs: "localhost:5001,localhost:5002,localhost:5003", file: undefined, concurrency: "2048", timeout: "15000", cacert: undefined, cert: undefined, "key-file": undefined, "token-file": undefined },
      switches: ["help", "h"],
    });
    if (flags.switches.has("help") || flags.switches.has("h")) {
      console.log(LOAD_USAGE);
      return 0;
    }
    if (flags.values.file === undefined) throw new UsageError("load needs -file");
    file = flags.values.file;
    concurrency = Number(flags.values.concurrency);
    if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 4096) throw new UsageError("-concurrency must be an integer in 1..4096");
    timeoutMs = Number(flags.values.timeout);
    if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) throw new UsageError("-timeout must be a positive number of milliseconds");
    if (!fs.existsSync(file)) throw new UsageError(`${file}: no such file`);
    addrs = parseAddrs(flags.values.addrs!);
    connection = clientConnection(flags.values);
    // The whole file is checked first: a bad line is found before anything is written.
    for (const _ of loadPairs(file)) count++;
  } catch (error) {
    if (error instanceof UsageError) {
      console.error(`kvclient load: ${error.message}\n\n${LOAD_USAGE}`);
      return 2;
    }
    throw error;
  }
  const clerk = new Clerk({
    addrs: connection.https ? addrs.map((a) => `https://${a}`) : addrs,
    transport: connection.transport,
    operationTimeoutMs: timeoutMs,
    maxConcurrency: concurrency,
  });
  const started = performance.now();
  try {
    const written = await clerk.putMany(loadPairs(file), { concurrency });
    const seconds = (performance.now() - started) / 1000;
    console.log(`loaded ${written} of ${count} pairs in ${seconds.toFixed(1)} s (${Math.round(written / Math.max(seconds, 1e-3))} puts/s)`);
    return 0;
  } catch (error) {
    if (error instanceof ClerkError) {
      console.error(`kvclient load: ${error.message}`);
      return 1;
    }
    throw error;
  }
}
