// Command line of `bun bench`: which suites, how big, where results go. Bad input raises
// UsageError (exit status 2) with a message that says what to type instead.

import { CLIENT_PATHS, type ClientPath } from "./native-clients.ts";

export const SUITES = ["lsm", "raft", "cluster", "metrics", "catchup"] as const;
export type SuiteName = (typeof SUITES)[number];

export interface BenchOptions {
  suites: SuiteName[];
  quick: boolean;
  json: string | null;
  vsEtcd: boolean;
  big: boolean;
  /** Key count of the --big fillrandom. */
  bigKeys: number;
  /** Repeated runs per side of every comparison (median and spread reported). */
  runs: number;
  /** LSM key count (db_bench's --num). */
  lsmKeys: number | null;
  /** Seconds per cluster load point. */
  seconds: number | null;
  /** Unmeasured seconds of the same load before each cluster point's window (null: the default). */
  warmupSeconds: number | null;
  resultsDir: string;
  /** cluster: start kvserver with --no-fast-lane (every call through connectNodeAdapter). */
  noFastLane: boolean;
  /** cluster: how the generator reaches each system (null: the default set). */
  paths: ClientPath[] | null;
  /** cluster: concurrent clients per point (null: the default levels). */
  clients: number[] | null;
  /** cluster: workloads to run (null: put, get, mix and the overload point; bulk only when named). */
  workloads: ("put" | "get" | "mix" | "bulk" | "overload")[] | null;
  /** catchup: write a CPU profile of every process started in the last run into this directory. */
  cpuProf: string | null;
  /** catchup: the kvservers' --snapshot-format (null: their default, files). */
  snapshotFormat: "files" | "pairs" | null;
  help: boolean;
}

export class UsageError extends Error {
  readonly code = "BENCH_USAGE";
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

export const USAGE = `usage: bun bench [lsm|raft|cluster ...] [options]

Runs throughput benchmarks of kvraft side by side with LevelDB (classic-level) and etcd, alternating
the systems inside one run, and prints medians with min–max spread and ours/theirs ratios. Tables go
to stdout, progress to stderr, SVG charts to the results directory.

suites (default: all)
  lsm        db_bench workloads: our LSM engine vs LevelDB through classic-level, in process
  raft       proposals committed per second on 3 and 5 in-process Raft nodes with real log stores
  cluster    three kvserver processes on 127.0.0.1 under a closed-loop load generator
  metrics    cost of recording one metric on the hot path: our recorders vs prom-client's
  catchup    a follower behind the compacted log catching up by streamed InstallSnapshot: MB/s, RSS

options
  --quick            a small version of every chosen suite (about a minute in all)
  --runs N           runs per side of each comparison (default 3, 1 with --quick)
  --keys N           LSM key count (default 1,000,000; 50,000 with --quick); catchup: keys in the
                     cluster's state (default 300,000; 30,000 with --quick)
  --seconds S        seconds per cluster load point (default 10; 2 with --quick)
  --warmup S         cluster: unmeasured seconds of the same load before each point (default 3;
                     1 with --quick; 0 for none): the JIT's warm-up is not what a point measures
  --no-fast-lane     cluster: kvserver without its fast lanes (HTTP/1.1 unary lane and the
                     HTTP/2 peer frame lane), to measure what they gain against a run without
  --paths LIST       cluster: how the generator reaches the systems, comma-separated from
                     http1 (hand-made HTTP/1.1 JSON, both systems), clerk-h2 and clerk-grpc (kvraft's
                     Clerk over HTTP/2 binary Connect with its lean transport / gRPC, batching
                     concurrent operations), clerk-h2-connect (the Clerk on connect-node's Connect
                     transport), clerk-grpc-lean (the Clerk on its lean transport in gRPC),
                     clerk-h2-unbatched (one RPC per operation), etcd3 (etcd's npm client);
                     default http1,clerk-h2,clerk-grpc,etcd3
  --clients LIST     cluster: concurrent clients per point (default 1,16,64,256; 1,64 with --quick;
                     at most 4096, or 65536 writes in flight for bulk)
  --workloads LIST   cluster: put, get, mix, overload (default these four), and bulk: the Clerk's
                     putMany with --clients writes in flight (Clerk paths only; e.g. --clients 4096,8192:
                     Batch RPCs of 1,024, as many as that takes, at least 4).
                     overload: raw HTTP/2 writers retrying refusals after the node's hint, at 32,
                     128, 512 and 2048 to find the saturating concurrency, then at 4x and 16x it:
                     goodput against the peak, p99, refusals, leader changes (at most 5 s per run)
  --vs-etcd          cluster: also run a 3-member etcd (needs \`etcd\` on PATH) and compare
  --big              lsm: add a 10,000,000-key fillrandom of our engine with peak RSS
  --big-keys N       the same with N keys
  --cpu-prof DIR     catchup: bun --cpu-prof of every kvserver (the follower: its last run), into DIR
  --snapshot-format files|pairs
                     catchup: what the leader sends (kvserver --snapshot-format; default files)
  --json FILE        write every result, the machine and the versions to FILE
  --results-dir DIR  where SVG charts go (default bench/results)
  -h, --help         this text
`;

function positiveInt(flag: string, value: string | undefined, max: number): number {
  if (value === undefined) throw new UsageError(`${flag} needs a value, e.g. ${flag} 3`);
  const n = Number(value.replaceAll("_", "").replaceAll(",", ""));
  if (!Number.isInteger(n) || n < 1 || n > max) {
    throw new UsageError(`${flag} must be a whole number from 1 to ${max}, got "${value}"`);
  }
  return n;
}

export function parseArgs(argv: readonly string[], defaultResultsDir: string): BenchOptions {
  const o: BenchOptions = {
    suites: [],
    quick: false,
    json: null,
    vsEtcd: false,
    big: false,
    bigKeys: 10_000_000,
    runs: 0,
    lsmKeys: null,
    seconds: null,
    warmupSeconds: null,
    resultsDir: defaultResultsDir,
    noFastLane: false,
    paths: null,
    clients: null,
    workloads: null,
    cpuProf: null,
    snapshotFormat: null,
    help: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const [flag, inline] = arg.startsWith("--") && arg.includes("=") ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)] : [arg, undefined];
    const value = () => inline ?? argv[++i];
    switch (flag) {
      case "-h":
      case "--help":
        o.help = true;
        break;
      case "--quick":
        o.quick = true;
        break;
      case "--vs-etcd":
        o.vsEtcd = true;
        break;
      case "--big":
        o.big = true;
        break;
      case "--no-fast-lane":
        o.noFastLane = true;
        break;
      case "--paths": {
        const list = (value() ?? "").split(",").filter(Boolean);
        const bad = list.find((p) => !CLIENT_PATHS.includes(p as ClientPath));
        if (list.length === 0 || bad !== undefined) throw new UsageError(`--paths takes a comma-separated list from ${CLIENT_PATHS.join(", ")}${bad ? `; "${bad}" is not one` : ""}`);
        o.paths = list as ClientPath[];
        break;
      }
      case "--clients": {
        const raw = value();
        o.clients = (raw ?? "").split(",").map((n) => positiveInt("--clients", n, 65536));
        break;
      }
      case "--workloads": {
        const list = (value() ?? "").split(",").filter(Boolean);
        if (list.length === 0 || list.some((w) => !["put", "get", "mix", "bulk", "overload"].includes(w))) throw new UsageError("--workloads takes a comma-separated list from put, get, mix, bulk, overload");
        o.workloads = list as ("put" | "get" | "mix" | "bulk" | "overload")[];
        break;
      }
      case "--json": {
        const file = value();
        if (!file || file.startsWith("-")) throw new UsageError("--json needs a file name, e.g. --json bench/results/run.json");
        o.json = file;
        break;
      }
      case "--snapshot-format": {
        const format = value();
        if (format !== "files" && format !== "pairs") throw new UsageError("--snapshot-format is files or pairs");
        o.snapshotFormat = format;
        break;
      }
      case "--cpu-prof": {
        const dir = value();
        if (!dir || dir.startsWith("-")) throw new UsageError("--cpu-prof needs a directory");
        o.cpuProf = dir;
        break;
      }
      case "--results-dir": {
        const dir = value();
        if (!dir || dir.startsWith("-")) throw new UsageError("--results-dir needs a directory");
        o.resultsDir = dir;
        break;
      }
      case "--big-keys":
        o.bigKeys = positiveInt("--big-keys", value(), 1_000_000_000);
        o.big = true;
        break;
      case "--runs":
        o.runs = positiveInt("--runs", value(), 99);
        break;
      case "--keys":
        o.lsmKeys = positiveInt("--keys", value(), 100_000_000);
        break;
      case "--seconds":
        o.seconds = positiveInt("--seconds", value(), 3600);
        break;
      case "--warmup": {
        const raw = value();
        o.warmupSeconds = raw === "0" ? 0 : positiveInt("--warmup", raw, 600);
        break;
      }
      default:
        if ((SUITES as readonly string[]).includes(arg)) {
          if (!o.suites.includes(arg as SuiteName)) o.suites.push(arg as SuiteName);
        } else if (arg.startsWith("-")) {
          throw new UsageError(`unknown option "${arg}" (see bun bench --help)`);
        } else {
          throw new UsageError(`unknown suite "${arg}": choose from ${SUITES.join(", ")}`);
        }
    }
  }
  if (o.suites.length === 0) o.suites = [...SUITES];
  if (o.runs === 0) o.runs = o.quick ? 1 : 3;
  if (o.vsEtcd && !o.suites.includes("cluster")) throw new UsageError("--vs-etcd applies to the cluster suite; add `cluster`");
  if (o.noFastLane && !o.suites.includes("cluster")) throw new UsageError("--no-fast-lane applies to the cluster suite; add `cluster`");
  if (o.cpuProf && !o.suites.includes("catchup")) throw new UsageError("--cpu-prof applies to the catchup suite; add `catchup`");
  if (o.big && !o.suites.includes("lsm")) throw new UsageError("--big applies to the lsm suite; add `lsm`");
  // Beyond 4,096 only bulk makes sense: its clients are writes in flight through one Clerk, not connections.
  if ((o.clients ?? []).some((n) => n > 4096) && (o.workloads === null || o.workloads.some((w) => w !== "bulk"))) {
    throw new UsageError("--clients above 4096 is for --workloads bulk only (writes in flight through one Clerk)");
  }
  return o;
}
