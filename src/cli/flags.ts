// Command-line flags in Go's style, as eRaft's tools take them: -name value, -name=value, and the
// same with two dashes. Booleans take no value. Unknown or malformed flags are a UsageError.

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

export interface FlagSpec {
  /** Flag names that take a value, with their defaults (undefined: no default). */
  values: Record<string, string | undefined>;
  /** Flag names that are switches. */
  switches: readonly string[];
}

export interface ParsedFlags {
  values: Record<string, string | undefined>;
  switches: Set<string>;
}

export function parseFlags(argv: readonly string[], spec: FlagSpec): ParsedFlags {
  const values: Record<string, string | undefined> = { ...spec.values };
  const switches = new Set<string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const match = /^--?([A-Za-z][\w-]*)(?:=(.*))?$/s.exec(arg);
    if (match === null) throw new UsageError(`unexpected argument "${arg}" (flags look like -name value)`);
    const name = match[1]!;
    const inline = match[2];
    if (spec.switches.includes(name)) {
      if (inline !== undefined && inline !== "true" && inline !== "false") {
        throw new UsageError(`flag -${name} takes no value (or =true/=false)`);
      }
      if (inline !== "false") switches.add(name);
      continue;
    }
    if (!(name in spec.values)) throw new UsageError(`unknown flag -${name}`);
    if (inline !== undefined) {
      values[name] = inline;
    } else {
      if (i + 1 >= argv.length) throw new UsageError(`flag -${name} needs a value`);
      values[name] = argv[++i]!;
    }
  }
  return { values, switches };
}

/** Parses "host:port,host:port" into a list, checking each entry. */
export function parseAddrs(text: string): string[] {
  const addrs = text.split(",").map((a) => a.trim());
  if (addrs.length === 0 || addrs.some((a) => a === "")) throw new UsageError(`-addrs "${text}" has an empty entry`);
  for (const addr of addrs) splitHostPort(addr);
  if (new Set(addrs).size !== addrs.length) throw new UsageError(`-addrs "${text}" lists an address twice`);
  return addrs;
}

/** "localhost:5001" → { host: "localhost", port: 5001 }; "[::1]:5001" works too. */
export function splitHostPort(addr: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:\s]+)):(\d{1,5})$/.exec(addr);
  const port = match === null ? NaN : Number(match[3]);
  if (match === null || port < 1 || port > 65535) {
    throw new UsageError(`address "${addr}" is not host:port with a port in 1-65535`);
  }
  return { host: (match[1] ?? match[2])!, port };
}
