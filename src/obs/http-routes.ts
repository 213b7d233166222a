// Plain HTTP GET routes on the node's port, beside the RPCs: /metrics (Prometheus), /livez,
// /readyz and /healthz (Kubernetes-style 200/503 with a short text body), /events (JSON).
// Anything else returns false and goes on to the Connect routes.

import type * as http from "node:http";
import type * as http2 from "node:http2";
import type { KVDiagnostics } from "../kv/index.ts";
import { liveness, readiness, type HealthVerdict } from "./health.ts";
import type { NodeMetrics } from "./node-metrics.ts";

export type NodeRequest = http.IncomingMessage | http2.Http2ServerRequest;
export type NodeResponse = http.ServerResponse | http2.Http2ServerResponse;
/** Answers the request and returns true, or returns false to let the Connect routes have it. */
export type HttpRoutes = (request: NodeRequest, response: NodeResponse) => boolean;

/** An extra page or asset (the status page registers its own). */
export type ExtraRoute = (request: NodeRequest, response: http.ServerResponse, url: URL) => boolean;

export interface ObsRoutesOptions {
  metrics: NodeMetrics;
  state: () => KVDiagnostics | undefined;
  maxApplyLag?: number;
  extra?: ExtraRoute[];
}

export function obsRoutes(options: ObsRoutesOptions): HttpRoutes {
  return (request, nodeResponse) => {
    if (request.method !== "GET" && request.method !== "HEAD") return false;
    // http and http2 responses share the calls used here; TS cannot call through their union.
    const response = nodeResponse as http.ServerResponse;
    const url = new URL(request.url ?? "/", "http://node");
    switch (url.pathname) {
      case "/metrics":
        options.metrics.scrape().then(
          ({ contentType, body }) => send(response, 200, contentType, body, request.method === "HEAD"),
          (error: Error) => send(response, 500, "text/plain; charset=utf-8", `metrics failed: ${error.message}\n`, false),
        );
        return true;
      case "/livez":
        sendVerdict(response, "livez", liveness(options.state()), url, request.method === "HEAD");
        return true;
      case "/readyz":
      case "/healthz":
        sendVerdict(response, "readyz", readiness(options.state(), options.maxApplyLag), url, request.method === "HEAD");
        return true;
      case "/events":
        send(response, 200, "application/json", JSON.stringify({ node: options.metrics.nodeId, events: options.metrics.events }), request.method === "HEAD");
        return true;
    }
    for (const route of options.extra ?? []) if (route(request, response, url)) return true;
    return false;
  };
}

/** 200 "ok" or 503 with the failed checks; ?verbose lists every check, as Kubernetes does. */
function sendVerdict(response: http.ServerResponse, name: string, verdict: HealthVerdict, url: URL, head: boolean): void {
  const verbose = url.searchParams.has("verbose");
  const lines = verbose ? verdict.checks : verdict.checks.filter((c) => !c.endsWith(" ok"));
  const body = `${lines.map((l) => `[${l.endsWith(" ok") ? "+" : "-"}]${l}\n`).join("")}${verdict.ok ? "ok" : `${name} check failed`}\n`;
  send(response, verdict.ok ? 200 : 503, "text/plain; charset=utf-8", body, head);
}

export function send(response: http.ServerResponse, status: number, contentType: string, body: string | Uint8Array, head: boolean): void {
  const bytes = typeof body === "string" ? Buffer.from(body) : body;
  response.writeHead(status, { "Content-Type": contentType, "Content-Length": bytes.byteLength, "Cache-Control": "no-store" });
  response.end(head ? undefined : bytes);
}
