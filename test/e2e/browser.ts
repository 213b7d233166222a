// Drives headless Chromium: serves a bundled page on its own origin, waits for the page to report.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

export const CHROMIUM = "/usr/bin/chromium";

export interface BrowserReport {
  ok: boolean;
  result?: any;
  error?: string;
}

/** Bundles browser-page.ts, serves it on 127.0.0.1, opens it in Chromium, returns what the page reports. */
export async function runBrowserPage(
  query: Record<string, string>,
  timeoutMs = 30_000,
  port = 0,
  /** Another page script (default browser-page.ts) and extra Chromium flags. */
  options: { page?: string; chromiumArgs?: string[] } = {},
): Promise<{ report: BrowserReport; pageOrigin: string }> {
  const build = await Bun.build({ entrypoints: [options.page ?? path.join(import.meta.dir, "browser-page.ts")], target: "browser", minify: false });
  if (!build.success) throw new Error(`bundling the page failed: ${build.logs.join("\n")}`);
  const script = await build.outputs[0]!.text();
  let report!: (r: BrowserReport) => void;
  const reported = new Promise<BrowserReport>((resolve) => (report = resolve));
  const page = Bun.serve({
    hostname: "127.0.0.1",
    port,
    async fetch(request) {
      const url = new URL(request.url);
      if (url.pathname === "/") return new Response(`<!doctype html><meta charset="utf-8"><title>kvraft</title><script type="module" src="/page.js"></script>`, { headers: { "Content-Type": "text/html" } });
      if (url.pathname === "/page.js") return new Response(script, { headers: { "Content-Type": "text/javascript" } });
      if (url.pathname === "/result" && request.method === "POST") {
        report((await request.json()) as BrowserReport);
        return new Response("ok");
      }
      return new Response("not found", { status: 404 });
    },
  });
  const pageOrigin = `http://127.0.0.1:${page.port}`;
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "kvraft-chromium-"));
  const browser = Bun.spawn(
    [
      CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      `--user-data-dir=${profile}`, ...(options.chromiumArgs ?? []), `${pageOrigin}/?${new URLSearchParams(query)}`,
    ],
    { stdout: "ignore", stderr: "pipe" },
  );
  let stderr = "";
  void (async () => {
    for await (const chunk of browser.stderr) stderr = (stderr + new TextDecoder().decode(chunk)).slice(-4000);
  })();
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`the page did not report within ${timeoutMs} ms; chromium stderr:\n${stderr}`)), timeoutMs);
    });
    const exited = browser.exited.then((code) => {
      throw new Error(`chromium exited with code ${code} before the page reported:\n${stderr}`);
    });
    return { report: await Promise.race([reported, timeout, exited]), pageOrigin };
  } finally {
    clearTimeout(timer);
    browser.kill("SIGKILL");
    await browser.exited;
    page.stop(true);
    fs.rmSync(profile, { recursive: true, force: true });
  }
}
