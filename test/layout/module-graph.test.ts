// The production entry points must not load the simulators or the history checker: src/sim/ is for
// tests and `bun run sim` only. Walks each entry's static and dynamic relative imports.
import { describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";

const ROOT = path.resolve(import.meta.dir, "../..");
const PRODUCTION_ENTRIES = ["src/cli/kvserver.ts", "src/cli/kvclient.ts", "src/cli/cluster.ts", "src/kv/client.ts"];
const LAYER_INDEXES = ["src/raft/index.ts", "src/kv/index.ts", "src/lsm/index.ts", "src/rpc/index.ts"];

function resolveImport(from: string, spec: string): string | undefined {
  const base = path.resolve(path.dirname(from), spec);
  for (const candidate of [base, `${base}.ts`, path.join(base, "index.ts")]) {
    if (fs.existsSync(candidate) && fs.statSync(candidate).isFile()) return candidate;
  }
  return undefined;
}

/** Every project file reachable from `entry` by relative imports (static or dynamic). */
function moduleGraph(entry: string): string[] {
  const transpiler = new Bun.Transpiler({ loader: "ts" });
  const seen = new Set<string>();
  const stack = [path.resolve(ROOT, entry)];
  while (stack.length > 0) {
    const file = stack.pop()!;
    if (seen.has(file)) continue;
    seen.add(file);
    if (!file.endsWith(".ts")) continue;
    for (const imported of transpiler.scanImports(fs.readFileSync(file, "utf8"))) {
      if (!imported.path.startsWith(".")) continue;
      const target = resolveImport(file, imported.path);
      if (target) stack.push(target);
    }
  }
  return [...seen].map((f) => path.relative(ROOT, f)).sort();
}

const isSimulation = (file: string) => file.startsWith("src/sim/") || file.startsWith("test/");

describe("module graph", () => {
  for (const entry of [...PRODUCTION_ENTRIES, ...LAYER_INDEXES]) {
    test(`${entry} loads no simulator or checker module`, () => {
      const graph = moduleGraph(entry);
      expect(graph.length).toBeGreaterThan(0);
      expect(graph.filter(isSimulation)).toEqual([]);
    });
  }

  test("the walker does find a simulator when one is imported (the check can fail)", () => {
    const graph = moduleGraph("src/cli/sim.ts");
    expect(graph).toContain("src/sim/raft-core/index.ts");
    expect(graph).toContain("src/sim/kv/cluster.ts");
  });

  test("the server's graph reaches all four layers", () => {
    const graph = moduleGraph("src/cli/kvserver.ts");
    for (const layer of ["src/raft/core/raft.ts", "src/raft/log/log-store.ts", "src/lsm/db.ts", "src/kv/server.ts", "src/rpc/server/server.ts"]) {
      expect(graph).toContain(layer);
    }
  });
});
