/**
 * framing: the wire format of the raft peer transport (stream-transport.ts). A connection carries
 * frames, each
 *
 *     u32 big-endian payload length | u8 kind | payload
 *
 * Kinds: hello (client -> server, first frame), hello-ok / refusal (the server's answer),
 * envelope (payload = the protobuf bytes of chard.raft.Envelope), ack (u32 frames delivered),
 * ping / pong (empty; liveness). Control payloads (hello, hello-ok, refusal) are small JSON
 * objects, validated field by field by their readers.
 *
 * FrameDecoder is incremental: bytes arrive in any split, frames leave whole. The announced length
 * is checked against the kind's named limit as soon as the 5 header bytes are there, before one
 * payload byte is buffered, so a peer announcing 4 GiB costs nothing. An unknown kind or an
 * oversize length is a FramingError (a reason for counting); the caller destroys the connection.
 */

import { ByteQueue } from '../byte-queue.js';

/** FrameKind: the one-byte kind of a frame. */
export const FrameKind = {
  Hello: 1,
  HelloOk: 2,
  Refusal: 3,
  Envelope: 4,
  Ack: 5,
  Ping: 6,
  Pong: 7,
} as const;
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];

/** frameHeaderBytes: the length field and the kind byte. */
export const frameHeaderBytes = 5;

/** controlFrameBytesMax: payload bound of hello / hello-ok / refusal (a cluster id and a sentence). */
export const controlFrameBytesMax = 4096;
/** ackFrameBytes: an ack's payload, a u32. */
export const ackFrameBytes = 4;

/** FramingLimits: the payload bound of each kind; envelopes are bounded by the transport's frame limit. */
export interface FramingLimits {
  envelopeBytesMax: number;
}

/** payloadBytesMax: the largest payload a frame of `kind` may announce; undefined for an unknown kind. */
export function payloadBytesMax(kind: number, limits: FramingLimits): number | undefined {
  switch (kind) {
    case FrameKind.Envelope:
      return limits.envelopeBytesMax;
    case FrameKind.Hello:
    case FrameKind.HelloOk:
    case FrameKind.Refusal:
      return controlFrameBytesMax;
    case FrameKind.Ack:
      return ackFrameBytes;
    case FrameKind.Ping:
    case FrameKind.Pong:
      return 0;
    default:
      return undefined;
  }
}

/** FramingError: the byte stream broke the framing rules; the connection cannot go on. */
export class FramingError extends Error {
  constructor(
    readonly reason: 'unknown-kind' | 'oversize',
    detail: string,
  ) {
    super(`bad peer frame (${reason}): ${detail}`);
  }
}

/** frameHeader: the 5 header bytes of a frame of `kind` with `payloadBytes` of payload. */
export function frameHeader(kind: FrameKind, payloadBytes: number): Buffer {
  const header = Buffer.allocUnsafe(frameHeaderBytes);
  header.writeUInt32BE(payloadBytes, 0);
  header[4] = kind;
  return header;
}

/** encodeFrame: one whole frame (header and payload in one buffer). */
export function encodeFrame(kind: FrameKind, payload: Uint8Array = new Uint8Array(0)): Buffer {
  const frame = Buffer.allocUnsafe(frameHeaderBytes + payload.length);
  frame.writeUInt32BE(payload.length, 0);
  frame[4] = kind;
  frame.set(payload, frameHeaderBytes);
  return frame;
}

/** encodeControl: a hello / hello-ok / refusal frame carrying `value` as JSON. */
export function encodeControl(kind: typeof FrameKind.Hello | typeof FrameKind.HelloOk | typeof FrameKind.Refusal, value: object): Buffer {
  const payload = Buffer.from(JSON.stringify(value), 'utf8');
  if (payload.length > controlFrameBytesMax) throw new RangeError(`control frame of ${payload.length} bytes`);
  return encodeFrame(kind, payload);
}

/** encodeAck: an ack frame for `frames` delivered frames (mod 2^32). */
export function encodeAck(frames: number): Buffer {
  const payload = Buffer.allocUnsafe(ackFrameBytes);
  payload.writeUInt32BE(frames >>> 0, 0);
  return encodeFrame(FrameKind.Ack, payload);
}

export interface Frame {
  kind: FrameKind;
  /** payload: a view of the received bytes (not a copy when the frame arrived in one chunk). */
  payload: Buffer;
}

/**
 * FrameDecoder: bytes in (push), whole frames out. Buffers at most one frame's announced length
 * (checked first) plus one header; a FramingError leaves the decoder unusable.
 */
export class FrameDecoder {
  private readonly queue = new ByteQueue();
  /** pending: the header of the frame whose payload is awaited. */
  private pending: { kind: FrameKind; length: number } | undefined;
  private failed = false;

  /** limits: may be raised later (a receiver allows envelopes only after the Hello). */
  constructor(public limits: FramingLimits) {}

  /** bufferedBytes: bytes held, waiting for the rest of their frame. */
  get bufferedBytes(): number {
    return this.queue.length;
  }

  /** push: the frames completed by `chunk`, in order. Throws FramingError on a framing violation. */
  push(chunk: Buffer): Frame[] {
    if (this.failed) throw new Error('push after a framing error');
    this.queue.push(chunk);
    const frames: Frame[] = [];
    for (;;) {
      if (this.pending === undefined) {
        if (this.queue.length < frameHeaderBytes) break;
        const header = this.queue.take(frameHeaderBytes);
        const length = header.readUInt32BE(0);
        const kind = header[4]!;
        const max = payloadBytesMax(kind, this.limits);
        if (max === undefined) {
          this.failed = true;
          throw new FramingError('unknown-kind', `frame kind ${kind}`);
        }
        if (length > max) {
          this.failed = true;
          throw new FramingError('oversize', `frame of kind ${kind} announces ${length} bytes > ${max}`);
        }
        this.pending = { kind: kind as FrameKind, length };
      }
      if (this.queue.length < this.pending.length) break;
      frames.push({ kind: this.pending.kind, payload: this.queue.take(this.pending.length) });
      this.pending = undefined;
    }
    return frames;
  }
}
