// Child process of crash.test.ts: writes counter-keyed entries into an LSM directory until it is
// killed, appending each counter to an ack file (a write(2) per ack) only after its put resolved.
// Usage: bun crash-writer.ts <dir> <ackFile> <firstCounter> <sync|nosync> <writers>
import { closeSync, openSync, writeSync } from "node:fs";
import { DB } from "../../src/lsm/index.ts";
import { crashKey, crashValue, CRASH_ENGINE_OPTIONS, MAX_COUNTER } from "./crash-format.ts";

const [dir, ackFile, firstArg, mode, writersArg] = process.argv.slice(2);
if (dir === undefined || ackFile === undefined || firstArg === undefined || (mode !== "sync" && mode !== "nosync")) {
  console.error("usage: bun crash-writer.ts <dir> <ackFile> <firstCounter> <sync|nosync> <writers>");
  process.exit(2);
}
const sync = mode === "sync";
const writers = Number(writersArg ?? "1");

const db = await DB.open(dir, CRASH_ENGINE_OPTIONS);
const ack = openSync(ackFile, "a");
// The parent starts its kill timer when it sees this line.
process.stdout.write("ready\n");

let next = Number(firstArg);
async function writer(): Promise<void> {
  // Each writer takes the next counter synchronously, so counters enter the engine in order;
  // with several writers, their puts share group commits.
  while (next < MAX_COUNTER) {
    const counter = next++;
    await db.put(crashKey(counter), crashValue(counter), { sync });
    writeSync(ack, `${counter}\n`);
  }
}
await Promise.all(Array.from({ length: writers }, writer));
// Only reached if the parent never killed us: the counter space is exhausted.
closeSync(ack);
await db.close();
