// The observability layer's public surface: metrics, health, and the HTTP routes that serve them.
export { NodeMetrics, LATENCY_BOUNDS, type NodeEvent } from "./node-metrics.ts";
export { instrumentKV, instrumentRouter } from "./instrument.ts";
export { liveness, readiness, DEFAULT_MAX_APPLY_LAG, type HealthVerdict } from "./health.ts";
export { obsRoutes, type HttpRoutes, type ExtraRoute } from "./http-routes.ts";
export { registerHealthService, type HealthServiceOptions } from "./health-service.ts";
