// Wraps what the RPC layer calls so that NodeMetrics sees every KV command and every RPC without
// a hook inside the handlers: a KVServiceBackend that times and counts commands, and a router whose
// registered implementations count calls by method, protocol and code.

import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { ConnectError, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import { KVError } from "../kv/index.ts";
import type { KVServiceBackend } from "../kv/service.ts";
import type { NodeMetrics } from "./node-metrics.ts";
import { traceSpan, tracing, wallNow } from "../util/trace.ts";

/** The same backend, with each command counted by op and result and timed by op. */
export function instrumentKV<B extends KVServiceBackend>(backend: B, metrics: NodeMetrics): B {
  const latency = new Map<string, ReturnType<NodeMetrics["kvLatency"]["with"]>>();
  const histogramOf = (op: string) => {
    let h = latency.get(op);
    if (h === undefined) {
      h = metrics.kvLatency.with(op);
      latency.set(op, h);
    }
    return h;
  };
  const command: KVServiceBackend["command"] = async (args) => {
    const started = performance.now();
    const traced = tracing ? wallNow() : 0;
    const op = String(args.op);
    try {
      const reply = await backend.command(args);
      metrics.kvRequests.inc(op, reply.err);
      return reply;
    } catch (error) {
      metrics.kvRequests.inc(op, errorLabel(error));
      throw error;
    } finally {
      histogramOf(op).observe((performance.now() - started) / 1000);
      if (tracing) traceSpan("kv", traced, op);
    }
  };
  // A batch is timed once; each of its commands is counted and observed with the batch's time.
  const batch: KVServiceBackend["batch"] = async (commands) => {
    const started = performance.now();
    const traced = tracing ? wallNow() : 0;
    const answers = await backend.batch!(commands);
    if (tracing) traceSpan("kv-batch", traced, commands.length);
    const seconds = (performance.now() - started) / 1000;
    for (let i = 0; i < answers.length; i++) {
      const answer = answers[i]!;
      const op = String(commands[i]!.op);
      metrics.kvRequests.inc(op, answer instanceof Error ? errorLabel(answer) : answer.err);
      histogramOf(op).observe(seconds);
    }
    return answers;
  };
  // Every other member is the backend's own, called on the backend itself.
  return new Proxy(backend, {
    get(target, property) {
      if (property === "command") return command;
      if (property === "batch" && backend.batch !== undefined) return batch;
      const value = Reflect.get(target, property, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

function errorLabel(error: unknown): string {
  if (error instanceof KVError) return error.code;
  if (error instanceof ConnectError) return codeToString(error.code);
  return "internal";
}

/**
 * A router that registers instrumented implementations: every call of every method is counted
 * (method, protocol, code), timed and tracked in flight. Other router properties (the frame
 * lane's symbol, handlers) pass through unchanged.
 */
export function instrumentRouter(router: ConnectRouter, metrics: NodeMetrics): ConnectRouter {
  return new Proxy(router, {
    get(target, property, receiver) {
      if (property === "service") {
        return (service: DescService, implementation: Record<string, unknown>, options?: unknown) => {
          (target.service as (...a: unknown[]) => unknown)(service, wrapService(service, implementation, metrics), options);
          return receiver;
        };
      }
      if (property === "rpc") {
        return (method: DescMethod, implementation: unknown, options?: unknown) => {
          const impl = typeof implementation === "function" ? wrapMethod(method, implementation as Impl, undefined, metrics) : implementation;
          (target.rpc as (...a: unknown[]) => unknown)(method, impl, options);
          return receiver;
        };
      }
      return Reflect.get(target, property, target);
    },
  });
}

type Impl = (request: unknown, context: HandlerContext) => unknown;

function wrapService(service: DescService, implementation: Record<string, unknown>, metrics: NodeMetrics): Record<string, unknown> {
  const wrapped: Record<string, unknown> = {};
  for (const method of service.methods) {
    const fn = implementation[method.localName];
    if (typeof fn === "function") wrapped[method.localName] = wrapMethod(method, fn as Impl, implementation, metrics);
  }
  return wrapped;
}

function wrapMethod(method: DescMethod, fn: Impl, self: unknown, metrics: NodeMetrics): Impl {
  const name = `${method.parent.typeName}/${method.name}`;
  const latency = metrics.rpcLatency.with(name);
  const finish = (context: HandlerContext, started: number, error: unknown) => {
    metrics.rpcInFlight--;
    metrics.rpcRequests.inc(name, context.protocolName, error === null ? "ok" : codeOf(error));
    latency.observe((performance.now() - started) / 1000);
  };
  if (method.methodKind === "unary" || method.methodKind === "client_streaming") {
    return async (request, context) => {
      metrics.rpcInFlight++;
      const started = performance.now();
      try {
        const response = await fn.call(self, request, context);
        finish(context, started, null);
        return response;
      } catch (error) {
        finish(context, started, error);
        throw error;
      }
    };
  }
  return async function* (request, context) {
    metrics.rpcInFlight++;
    const started = performance.now();
    let failure: unknown = null;
    try {
      yield* fn.call(self, request, context) as AsyncIterable<unknown>;
    } catch (error) {
      failure = error;
      throw error;
    } finally {
      finish(context, started, failure);
    }
  };
}

function codeOf(error: unknown): string {
  return error instanceof ConnectError ? codeToString(error.code) : "internal";
}
