// `bun run sim --seed S [--nodes N] [--steps K] [--disk-faults] [--kv | --membership]`: one
// deterministic randomized fault schedule; prints one summary line (same seed ⇒ same bytes), or the
// violated invariant and exits 1.

import { InvariantViolation, membershipReplayCommand, replayCommand, runMembershipSchedule, runRandomSchedule } from "../sim/raft-core/index.ts";

const USAGE =
  "usage: bun run sim --seed S [--nodes N (1..15, default 5)] [--steps K (default 2000)] [--disk-faults] [--kv | --membership]\n" +
  "  --disk-faults: the schedule also wipes, truncates or discards the disks of down nodes\n" +
  "  --membership: the schedule also adds learners, promotes and removes members (the leader too);\n" +
  "                N-2 nodes start as voters, the rest wait to be added (N >= 2)\n" +
  "  --kv families: --sessions (a 3-slot session table), --api (compare-and-swap and Range),\n" +
  "                --batch (Batch RPCs logged as batch entries)";

/** The KV simulator's families (flags passed through to it). */
const KV_FAMILIES = ["--sessions", "--api", "--batch"];

export interface SimCliOptions {
  seed: number;
  nodes: number;
  steps: number;
  kv: boolean;
  /** Add disk loss and corruption to the core schedule (a separate family of runs). */
  diskFaults: boolean;
  membership: boolean;
  /** Flags this parser does not know, passed through to the KV simulator. */
  extra: string[];
}

export class UsageError extends Error {
  readonly code = "USAGE";
}

export function parseSimArgs(argv: string[]): SimCliOptions {
  const out: SimCliOptions = { seed: NaN, nodes: 5, steps: 2000, kv: false, membership: false, diskFaults: false, extra: [] };
  const int = (name: string, raw: string | undefined, lo: number, hi: number): number => {
    if (raw === undefined || !/^\d+$/.test(raw)) throw new UsageError(`--${name} needs an integer, got ${raw === undefined ? "nothing" : JSON.stringify(raw)}`);
    const v = Number(raw);
    if (v < lo || v > hi) throw new UsageError(`--${name} must be in ${lo}..${hi}, got ${v}`);
    return v;
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const eq = arg.indexOf("=");
    const flag = eq >= 0 ? arg.slice(0, eq) : arg;
    const value = () => (eq >= 0 ? arg.slice(eq + 1) : argv[++i]);
    switch (flag) {
      case "--seed":
        out.seed = int("seed", value(), 0, Number.MAX_SAFE_INTEGER);
        break;
      case "--nodes":
        out.nodes = int("nodes", value(), 1, 15);
        break;
      case "--steps":
        out.steps = int("steps", value(), 0, 10_000_000);
        break;
      case "--kv":
        out.kv = true;
        break;
      case "--disk-faults":
        out.diskFaults = true;
        break;
      case "--membership":
        out.membership = true;
        break;
      case "-h":
      case "--help":
        throw new UsageError("help");
      default:
        if ((out.kv || argv.includes("--kv")) && KV_FAMILIES.includes(arg)) out.extra.push(arg);
        else throw new UsageError(`unknown flag ${JSON.stringify(arg)}`);
    }
  }
  if (Number.isNaN(out.seed)) throw new UsageError("--seed is required (any non-negative integer; the same seed replays the same run)");
  if (out.membership && out.kv) throw new UsageError("--membership and --kv are separate simulators; give one");
  if (out.diskFaults && (out.kv || out.membership)) throw new UsageError("--disk-faults applies to the default core schedule, not to --kv or --membership (yet)");
  if (out.membership && out.nodes < 2) throw new UsageError("--membership needs --nodes 2 or more (one spare to add)");
  return out;
}

async function runKv(options: SimCliOptions): Promise<number> {
  // Loaded on demand: the core simulator's runs need none of the KV stack.
  const { runKvSim } = await import("../sim/kv/run.ts");
  const { line, ok } = await runKvSim(options);
  if (ok) {
    console.log(line);
    return 0;
  }
  console.error(line);
  console.error(`replay: bun run sim --kv --seed ${options.seed} --nodes ${options.nodes} --steps ${options.steps}${options.extra.map((flag) => ` ${flag}`).join("")}`);
  return 1;
}

export async function main(argv: string[]): Promise<number> {
  let options: SimCliOptions;
  try {
    options = parseSimArgs(argv);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    if (e.message !== "help") console.error(`kvraft sim: ${e.message}`);
    console.error(USAGE);
    return e.message === "help" ? 0 : 2;
  }
  try {
    if (options.kv) return await runKv(options);
    console.log((options.membership ? runMembershipSchedule(options) : runRandomSchedule(options)).line);
    return 0;
  } catch (e) {
    if (e instanceof InvariantViolation || (e instanceof Error && (e as { code?: string }).code === "INVARIANT_VIOLATION")) {
      console.error((e as Error).message);
      return 1;
    }
    console.error(`seed ${options.seed}: the simulation crashed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    console.error(`replay: ${options.membership ? membershipReplayCommand(options) : replayCommand(options)}`);
    return 1;
  }
}

if (import.meta.main) process.exit(await main(process.argv.slice(2)));
