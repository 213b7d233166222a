// Public surface of the history checkers used by the KV tests and the simulator.
export { checkHistory, stepKv } from "./linearizability.ts";
export type { CheckOptions, CheckResult, KvInput, KvOpName, KvOutput, Operation } from "./linearizability.ts";
