// Headless Chromium driven over the DevTools protocol (a WebSocket): open a page, evaluate
// expressions in it, take a screenshot. Enough to test a page that keeps running, which the
// report-back pages of test/e2e/browser.ts cannot show.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

export const CHROMIUM = "/usr/bin/chromium";

export class BrowserPage {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: any) => void; reject: (e: Error) => void }>();

  private constructor(
    private readonly browser: Bun.Subprocess<"ignore", "ignore", "pipe">,
    private readonly socket: WebSocket,
    private readonly profile: string,
  ) {
    socket.addEventListener("message", (event) => {
      const message = JSON.parse(String(event.data)) as { id?: number; result?: unknown; error?: { message: string } };
      if (message.id === undefined) return;
      const waiter = this.pending.get(message.id);
      if (waiter === undefined) return;
      this.pending.delete(message.id);
      if (message.error) waiter.reject(new Error(message.error.message));
      else waiter.resolve(message.result);
    });
  }

  /** Starts Chromium on `url` (window `width`×`height`) and attaches to its page. */
  static async open(url: string, width = 1400, height = 1100): Promise<BrowserPage> {
    if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} not found: apt-get install chromium (.ci/run does)`);
    const profile = fs.mkdtempSync(path.join(os.tmpdir(), "kvraft-cdp-"));
    const browser = Bun.spawn(
      [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        `--window-size=${width},${height}`, "--remote-debugging-port=0", `--user-data-dir=${profile}`, url,
      ],
      { stdin: "ignore", stdout: "ignore", stderr: "pipe" },
    );
    try {
      const port = await devtoolsPort(browser, profile);
      let target: { webSocketDebuggerUrl: string; type: string } | undefined;
      for (let i = 0; i < 100 && target === undefined; i++) {
        const targets = (await (await fetch(`http://127.0.0.1:${port}/json/list`)).json()) as { webSocketDebuggerUrl: string; type: string }[];
        target = targets.find((t) => t.type === "page");
        if (target === undefined) await Bun.sleep(100);
      }
      if (target === undefined) throw new Error("chromium opened no page");
      const socket = new WebSocket(target.webSocketDebuggerUrl);
      await new Promise<void>((resolve, reject) => {
        socket.addEventListener("open", () => resolve(), { once: true });
        socket.addEventListener("error", () => reject(new Error("could not attach to chromium's page")), { once: true });
      });
      return new BrowserPage(browser, socket, profile);
    } catch (error) {
      browser.kill("SIGKILL");
      await browser.exited;
      fs.rmSync(profile, { recursive: true, force: true });
      throw error;
    }
  }

  private send(method: string, params: object = {}): Promise<any> {
    const id = this.nextId++;
    this.socket.send(JSON.stringify({ id, method, params }));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${method}: no answer from chromium within 10 s`));
      }, 10_000);
      this.pending.set(id, {
        resolve: (v) => (clearTimeout(timer), resolve(v)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      });
    });
  }

  /** The JSON value of `expression` evaluated in the page (promises awaited). */
  async evaluate<T>(expression: string): Promise<T> {
    const answer = await this.send("Runtime.evaluate", { expression, returnByValue: true, awaitPromise: true });
    if (answer.exceptionDetails) throw new Error(`page threw: ${answer.exceptionDetails.exception?.description ?? answer.exceptionDetails.text}`);
    return answer.result.value as T;
  }

  /** Polls `expression` until it is truthy (bounded); returns its value. */
  async waitFor<T>(what: string, expression: string, timeoutMs = 15_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    let last: unknown;
    while (Date.now() < deadline) {
      last = await this.evaluate<T>(expression).catch((e: Error) => e.message);
      if (last) return last as T;
      await Bun.sleep(200);
    }
    throw new Error(`${what}: not within ${timeoutMs} ms (last value ${JSON.stringify(last)})`);
  }

  async screenshot(file: string): Promise<void> {
    const shot = await this.send("Page.captureScreenshot", { format: "png" });
    fs.writeFileSync(file, Buffer.from(shot.data as string, "base64"));
  }

  async close(): Promise<void> {
    this.socket.close();
    this.browser.kill("SIGKILL");
    await this.browser.exited;
    fs.rmSync(this.profile, { recursive: true, force: true });
  }
}

/** Chromium writes DevToolsActivePort into its profile once it listens. */
async function devtoolsPort(browser: Bun.Subprocess<"ignore", "ignore", "pipe">, profile: string): Promise<number> {
  let stderr = "";
  void (async () => {
    for await (const chunk of browser.stderr) stderr = (stderr + new TextDecoder().decode(chunk)).slice(-4000);
  })();
  const file = path.join(profile, "DevToolsActivePort");
  for (let i = 0; i < 150; i++) {
    if (browser.exitCode !== null) throw new Error(`chromium exited with code ${browser.exitCode}:\n${stderr}`);
    if (fs.existsSync(file)) {
      const port = Number(fs.readFileSync(file, "utf8").split("\n")[0]);
      if (port > 0) return port;
    }
    await Bun.sleep(100);
  }
  throw new Error(`chromium did not open its DevTools port within 15 s:\n${stderr}`);
}
