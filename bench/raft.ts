// placeholder
import type { BenchOptions } from "./args.ts";
import type { Progress } from "./progress.ts";
import type { SuiteResult } from "./report.ts";
export async function runRaftSuite(_o: BenchOptions, _p: Progress): Promise<SuiteResult> {
  return { suite: "raft", title: "raft", tables: [], notes: ["not yet"], charts: [], data: null };
}
