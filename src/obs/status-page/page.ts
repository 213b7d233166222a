// The live status page's server side: GET / answers a plain HTML shell naming the cluster's
// members, /status/app.js the browser script (app.ts bundled with Bun.build on first request and
// kept), /status/uplot.css the chart library's stylesheet. The page itself talks to every member.

import * as fs from "node:fs";
import * as path from "node:path";
import type { ExtraRoute } from "../http-routes.ts";
import { send } from "../http-routes.ts";

export interface StatusPageOptions {
  /** This node's id. */
  self: number;
  /** Every member of the current configuration: its id and base URL (e.g. "http://127.0.0.1:5001"). */
  members: () => readonly { id: number; url: string }[];
}

let bundle: Promise<string> | null = null;

/** The browser script, built once per process; a failed build is retried on the next request. */
function appScript(): Promise<string> {
  bundle ??= (async () => {
    const built = await Bun.build({ entrypoints: [path.join(import.meta.dir, "app.ts")], target: "browser", minify: true });
    if (!built.success) throw new Error(`bundling the status page failed: ${built.logs.map(String).join("; ")}`);
    return built.outputs[0]!.text();
  })();
  bundle.catch(() => (bundle = null));
  return bundle;
}

let css: string | null = null;
function uplotCss(): string {
  css ??= fs.readFileSync(Bun.resolveSync("uplot/dist/uPlot.min.css", import.meta.dir), "utf8");
  return css;
}

export function statusPageRoute(options: StatusPageOptions): ExtraRoute {
  return (request, response, url) => {
    const head = request.method === "HEAD";
    switch (url.pathname) {
      case "/": {
        // Built per request: the members are the configuration's now, not the bootstrap list.
        const config = JSON.stringify({ self: options.self, members: options.members() }).replace(/</g, "\\u003c");
        send(response, 200, "text/html; charset=utf-8", pageHtml(config, options.self), head);
        return true;
      }
      case "/status/app.js":
        appScript().then(
          (script) => send(response, 200, "text/javascript; charset=utf-8", script, head),
          (error: Error) => send(response, 500, "text/plain; charset=utf-8", `${error.message}\n`, head),
        );
        return true;
      case "/status/uplot.css":
        send(response, 200, "text/css; charset=utf-8", uplotCss(), head);
        return true;
      default:
        return false;
    }
  };
}

function pageHtml(config: string, self: number): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kvraft · node ${self}</title>
<link rel="stylesheet" href="/status/uplot.css">
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f5f6f8; }
  header { background: #1d2330; color: #fff; padding: 10px 20px; display: flex; gap: 24px; align-items: baseline; }
  header h1 { font-size: 18px; margin: 0; }
  main { padding: 16px 20px; display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 16px; }
  section { background: #fff; border-radius: 6px; padding: 12px 16px; box-shadow: 0 1px 2px #0002; }
  section.wide { grid-column: 1 / -1; }
  h2 { font-size: 15px; margin: 0 0 8px; }
  table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
  th, td { text-align: right; padding: 3px 8px; border-bottom: 1px solid #e4e6eb; white-space: nowrap; }
  th:first-child, td:first-child, td.text, th.text { text-align: left; }
  .Leader { color: #0a7d32; font-weight: 600; } .Candidate { color: #b36b00; } .Offline { color: #b3261e; }
  .bar { background: #e4e6eb; height: 10px; border-radius: 5px; min-width: 160px; }
  .bar > div { background: #2f6fde; height: 10px; border-radius: 5px; }
  .muted { color: #6b7280; } ul { margin: 0; padding-left: 18px; } li { margin: 2px 0; }
  .error { color: #b3261e; }
</style>
</head>
<body>
<header><h1>kvraft</h1><span id="leader">leader: …</span><span id="updated" class="muted"></span></header>
<main>
  <section class="wide"><h2>Members</h2><table id="members"><thead><tr>
    <th class="text">node</th><th class="text">address</th><th class="text">role</th><th>term</th><th>commit</th><th>applied</th>
    <th>snapshot</th><th>keys</th><th>storage</th><th>lag</th><th class="text">ready</th>
  </tr></thead><tbody></tbody></table></section>
  <section><h2>Replication (leader's view)</h2><table id="followers"><thead><tr>
    <th class="text">follower</th><th>match</th><th>behind</th><th class="text">progress</th>
  </tr></thead><tbody></tbody></table></section>
  <section><h2>Storage per level</h2><table id="levels"><thead></thead><tbody></tbody></table></section>
  <section><h2>Throughput (KV commands/s, all members)</h2><div id="throughput"></div></section>
  <section><h2>Latency (ms, all members)</h2><div id="latency"></div></section>
  <section class="wide"><h2>Recent leader changes and errors</h2><ul id="events"><li class="muted">none yet</li></ul></section>
</main>
<script id="kvraft-config" type="application/json">${config}</script>
<script type="module" src="/status/app.js"></script>
</body>
</html>
`;
}
