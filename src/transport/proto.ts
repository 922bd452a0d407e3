/**
 * proto: where the .proto files live and how they are loaded. Both files are loaded at run time
 * by @grpc/proto-loader with one set of options, so every layer sees the same object shapes:
 * field names as written in the .proto (snake_case), 64-bit integers as JavaScript numbers
 * (callers check Number.isSafeInteger), enums as their names, defaults and empty arrays filled in.
 * The peer transport, which is not gRPC, turns chard.raft.Envelope into bytes and back with
 * protobufjs (the library under proto-loader) and the same options: serializeEnvelope /
 * deserializeEnvelope.
 */

import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';

/** protoDir: the repository's proto/ folder (this file runs from dist/src/transport/). */
export const protoDir: string = fileURLToPath(new URL('../../../proto/', import.meta.url));

/** protoLoaderOptions: the one option set; see the module comment for why each is chosen. */
export const protoLoaderOptions: protoLoader.Options = {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  arrays: true,
  oneofs: true,
  includeDirs: [protoDir],
};

const cache = new Map<string, protoLoader.PackageDefinition>();

/** loadProto: the package definition of one file of proto/ (cached per process). */
export function loadProto(file: 'raft.proto' | 'chard.proto'): protoLoader.PackageDefinition {
  let definition = cache.get(file);
  if (definition === undefined) {
    definition = protoLoader.loadSync(file, protoLoaderOptions);
    cache.set(file, definition);
  }
  return definition;
}

/** serviceDefinition: the grpc-js service definition of `name` ("chard.v1.Admin"). */
export function serviceDefinition(file: 'raft.proto' | 'chard.proto', name: string): grpc.ServiceDefinition {
  const definition = loadProto(file)[name];
  if (definition === undefined || 'format' in definition) throw new Error(`proto ${file} has no service ${name}`);
  return definition as unknown as grpc.ServiceDefinition;
}

/** clientConstructor: a generic grpc-js client class for the service `name`. */
export function clientConstructor(file: 'raft.proto' | 'chard.proto', name: string): grpc.ServiceClientConstructor {
  return grpc.makeClientConstructor(serviceDefinition(file, name) as grpc.ServiceDefinition<grpc.UntypedServiceImplementation>, name);
}

/**
 * envelopeType: protobufjs's Type of chard.raft.Envelope, loaded from raft.proto with the options
 * above (snake_case names), for the peer transport, which frames the protobuf bytes itself.
 */
let envelopeTypeCache: protobuf.Type | undefined;
function envelopeType(): protobuf.Type {
  if (envelopeTypeCache === undefined) {
    const root = new protobuf.Root();
    root.resolvePath = (_origin, target) => path.join(protoDir, path.basename(target));
    root.loadSync('raft.proto', { keepCase: true });
    envelopeTypeCache = root.lookupType('chard.raft.Envelope');
  }
  return envelopeTypeCache;
}

/** toObjectOptions: protobufjs's conversion options matching protoLoaderOptions. */
const toObjectOptions: protobuf.IConversionOptions = { longs: Number, enums: String, defaults: true, arrays: true, oneofs: true };

/** serializeEnvelope: the protobuf bytes of an Envelope proto object (enum values as names). */
export function serializeEnvelope(value: object): Uint8Array {
  const type = envelopeType();
  return type.encode(type.fromObject(value)).finish();
}

/**
 * deserializeEnvelope: an Envelope proto object from protobuf bytes, shaped as proto-loader
 * shapes it (see protoLoaderOptions); throws on bytes that are not an Envelope. The result still
 * needs codec.ts decodeEnvelope's validation.
 */
export function deserializeEnvelope(bytes: Uint8Array): unknown {
  const type = envelopeType();
  return type.toObject(type.decode(bytes), toObjectOptions);
}
