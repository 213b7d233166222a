// Local 3-node cluster launcher. The serving layer (kvserver processes) is not built yet.
console.error("kvraft: `bun run cluster` needs the serving layer (kvserver), which is not built yet.");
process.exit(1);
