// gRPC server reflection (grpc.reflection.v1 and v1alpha): lists the services registered on the
// router and serves the FileDescriptorProtos they come from (with their imports), taken from the
// generated descriptors, so buf curl, grpcurl and Postman need no .proto files.

import { create, createRegistry, toBinary, type DescFile, type DescMessage, type Registry } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, type ConnectRouter } from "@connectrpc/connect";
import * as v1 from "../../gen/grpc/reflection/v1/reflection_pb.ts";
import * as v1alpha from "../../gen/grpc/reflection/v1alpha/reflection_pb.ts";

/** Requests one reflection stream may make: a client lists, then asks for a few files. */
const MAX_REQUESTS_PER_STREAM = 10_000;
/** Longest symbol or file name accepted. */
const MAX_NAME_LENGTH = 1024;

/** The same shape in v1 and v1alpha (one proto, two packages). */
type Request = v1.ServerReflectionRequest | v1alpha.ServerReflectionRequest;
/** The response's oneof as plain init data, which fills the v1 and the v1alpha schema alike. */
type Answer = { case: string; value: object };

/** Everything reflection serves, built once from the services on the router. */
class ReflectionIndex {
  readonly services: string[];
  private readonly files = new Map<string, DescFile>();
  private readonly registry: Registry;

  constructor(router: ConnectRouter) {
    const services = new Set<string>();
    const roots: DescFile[] = [];
    for (const handler of router.handlers) {
      services.add(handler.service.typeName);
      if (!roots.includes(handler.service.file)) roots.push(handler.service.file);
    }
    this.services = [...services].sort();
    const visit = (file: DescFile) => {
      if (this.files.has(file.proto.name)) return;
      this.files.set(file.proto.name, file);
      for (const dependency of file.dependencies) visit(dependency);
    };
    for (const file of roots) visit(file);
    this.registry = createRegistry(...this.files.values());
  }

  answer(request: Request): Answer {
    const asked = request.messageRequest;
    switch (asked.case) {
      case "listServices":
        return { case: "listServicesResponse", value: { service: this.services.map((name) => ({ name })) } };
      case "fileByFilename": {
        const file = this.files.get(asked.value);
        return file ? this.filesWith(file) : notFound(`no file named "${clip(asked.value)}"; list the services first`);
      }
      case "fileContainingSymbol": {
        const file = this.fileOfSymbol(asked.value);
        return file ? this.filesWith(file) : notFound(`no symbol "${clip(asked.value)}" (fully qualified names, e.g. kvraftpb.KVService)`);
      }
      case "fileContainingExtension":
        return notFound(`no extension ${asked.value.extensionNumber} of "${clip(asked.value.containingType)}": kvraft declares no extensions`);
      case "allExtensionNumbersOfType": {
        const message = this.registry.getMessage(asked.value);
        if (message === undefined) return notFound(`no message type "${clip(asked.value)}"`);
        return { case: "allExtensionNumbersResponse", value: { baseTypeName: asked.value, extensionNumber: [] } };
      }
      case undefined:
        return { case: "errorResponse", value: { errorCode: Code.InvalidArgument, errorMessage: "the request names no question" } };
    }
  }

  /** The file defining a service, method, message, enum, field or enum value. */
  private fileOfSymbol(symbol: string): DescFile | undefined {
    if (symbol.length > MAX_NAME_LENGTH) return undefined;
    const direct = this.registry.get(symbol);
    if (direct !== undefined) return direct.file;
    // A method, field or enum value: its parent is a service, message or enum.
    const dot = symbol.lastIndexOf(".");
    if (dot <= 0) return undefined;
    const parent = this.registry.get(symbol.slice(0, dot));
    if (parent === undefined) return undefined;
    const name = symbol.slice(dot + 1);
    const owns =
      (parent.kind === "service" && parent.methods.some((m) => m.name === name)) ||
      (parent.kind === "message" && parent.fields.some((f) => f.name === name)) ||
      (parent.kind === "enum" && parent.values.some((v) => v.name === name));
    return owns ? parent.file : undefined;
  }

  /** The file and everything it imports, each once, the file first. */
  private filesWith(file: DescFile): Answer {
    const out: Uint8Array[] = [];
    const seen = new Set<string>();
    const add = (f: DescFile) => {
      if (seen.has(f.proto.name)) return;
      seen.add(f.proto.name);
      out.push(toBinary(FileDescriptorProtoSchema, f.proto));
      for (const dependency of f.dependencies) add(dependency);
    };
    add(file);
    return { case: "fileDescriptorResponse", value: { fileDescriptorProto: out } };
  }
}

function notFound(message: string): Answer {
  return { case: "errorResponse", value: { errorCode: Code.NotFound, errorMessage: message } };
}

function clip(text: string): string {
  return text.length > 80 ? `${text.slice(0, 80)}...` : text;
}

/**
 * Registers grpc.reflection.v1 and v1alpha. Call it after every other service: the index is built
 * on the first request from the services the router holds then (reflection included).
 */
export function registerReflection(router: ConnectRouter): void {
  let index: ReflectionIndex | null = null;
  const serve = <Res extends DescMessage>(responseSchema: Res) =>
    async function* (requests: AsyncIterable<Request>) {
      index ??= new ReflectionIndex(router);
      let count = 0;
      for await (const request of requests) {
        if (++count > MAX_REQUESTS_PER_STREAM) return;
        yield create(responseSchema, {
          validHost: request.host,
          originalRequest: request,
          messageResponse: index.answer(request),
        } as never);
      }
    };
  router.service(v1.ServerReflection, { serverReflectionInfo: serve(v1.ServerReflectionResponseSchema) as never });
  router.service(v1alpha.ServerReflection, { serverReflectionInfo: serve(v1alpha.ServerReflectionResponseSchema) as never });
}
