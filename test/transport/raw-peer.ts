// raw-peer: a hand-driven client of the raft peer wire (framing.ts) for tests: it connects (TCP or
// TLS), can say Hello, writes any bytes or frames, and collects the frames the node answers with
// until the node closes the connection.
import net from 'node:net';
import tls from 'node:tls';
import { type Frame, FrameDecoder, FrameKind, encodeControl } from '../../src/transport/framing.js';
import { splitAddress } from '../../src/transport/stream-transport.js';

export class RawPeer {
  readonly frames: Frame[] = [];
  readonly closed: Promise<void>;
  readonly connected: Promise<void>;
  isClosed = false;
  private readonly decoder = new FrameDecoder({ envelopeBytesMax: 0 });
  private waiters: (() => void)[] = [];

  constructor(
    address: string,
    readonly socket: net.Socket = net.connect(splitAddress(address)),
    secure = false,
  ) {
    this.connected = new Promise((resolve) => socket.once(secure ? 'secureConnect' : 'connect', () => resolve()));
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('error', () => {});
    socket.on('close', () => {
      this.isClosed = true;
      this.wake();
    });
    socket.on('data', (chunk: Buffer) => {
      try {
        this.frames.push(...this.decoder.push(chunk));
      } catch {
        socket.destroy();
      }
      this.wake();
    });
  }

  static tls(address: string, options: tls.ConnectionOptions): RawPeer {
    return new RawPeer(address, tls.connect({ ...splitAddress(address), ...options }), true);
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  /** next: the next answered frame of `kind` after `from` frames, or undefined once closed. */
  async frame(kind: FrameKind, timeoutMs = 10_000): Promise<Frame | undefined> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const found = this.frames.find((f) => f.kind === kind);
      if (found !== undefined) return found;
      if (this.isClosed || performance.now() > deadline) return undefined;
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 50);
      });
    }
  }

  hello(clusterId: string, from: number, to: number, lane: 'regular' | 'snap' = 'regular'): void {
    this.socket.write(encodeControl(FrameKind.Hello, { cluster_id: clusterId, from, to, lane }));
  }

  write(bytes: Uint8Array): boolean {
    return this.socket.write(bytes);
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** json: a control frame's payload. */
export const json = (f: Frame | undefined): Record<string, unknown> => (f === undefined ? {} : (JSON.parse(f.payload.toString('utf8')) as Record<string, unknown>));
