/**
 * volume-backend: VolumeBackend, the NBD BlockBackend of chard. It turns NBD requests into
 * replicated block commands through a VolumeService — implemented by a node (propose on the
 * leader, forward from a follower) and by the attach agent (gRPC to whichever node leads).
 *
 * Each opened export is one client session: every write-like request gets the next sequence
 * number and carries the connection's acknowledged watermark, so a request retried after a
 * failover is applied at most once (src/blockstore/sessions.ts). Reads go through the service's
 * linearizable read path. FLUSH is a barrier only: every write was acknowledged after commit.
 *
 * Session lifetime: when the connection ends (after its last request settled) the handle submits
 * a replicated closeSession, so the table holds live connections only. A live connection never
 * fails because its session was evicted (more than sessionsMax live connections): a command
 * answered SESSION_EXPIRED on its first and only attempt was not applied (SessionRenewable), so
 * the handle opens a new session and sends it again there. After a retry it cannot know whether
 * an earlier attempt was applied before the eviction, and the error stands (EINVAL): re-sending
 * could apply a write twice, over a newer one.
 */

import { ErrorCode, UsageError } from '../errors.js';
import type { BlockBackend, ExportHandle, ExportInfo } from '../nbd/backend.js';
import { type BlockCommand, type Session, type SessionCommand, SessionRenewable } from '../volume/command.js';
import type { Extent, ReadChunk } from '../volume/ranges.js';
import { splitRange } from '../volume/ranges.js';
import { type VolumeInfo, requestLimits, volumeBlockSizes } from '../volume/rules.js';

export type { BlockCommand, VolumeInfo };
/** SessionStamp: the session stamp of a client's command (src/volume/command.ts). */
export type SessionStamp = Session;

/** VolumeService: what the NBD layer needs from a cluster. Errors are ChardErrors (see nbd/backend.ts). */
export interface VolumeService {
  listVolumes(): Promise<VolumeInfo[]>;
  defaultVolume(): string;
  /** read: linearizable read of a volume range (`local`: from this node's own state only, never a peer's). */
  read(volume: string, offset: number, length: number, options?: { local?: boolean }): Promise<ReadChunk[]>;
  blockStatus(volume: string, offset: number, length: number): Promise<Extent[]>;
  /**
   * submit: resolves once the command is committed and applied (retrying across leader changes).
   * Throws SessionRenewable when the session had expired and the command was certainly not applied.
   */
  submit(command: SessionCommand): Promise<void>;
  /** newSessionId: a fresh unique client session id. */
  newSessionId(): string;
}

/**
 * writeChunkBytes: the largest payload of one replicated write command. A larger NBD write is
 * split into pieces proposed concurrently, each with its own session sequence (NBD does not
 * promise that a write is atomic, only that it is complete when acknowledged).
 */
export const writeChunkBytes = requestLimits.writePieceBytes;

function exportInfo(volume: VolumeInfo): ExportInfo {
  return {
    name: volume.name,
    description: `chard volume ${volume.name}`,
    sizeBytes: volume.sizeBytes,
    readOnly: false,
    ...volumeBlockSizes,
  };
}

/** SessionCounter: sequence numbers and the acknowledged watermark of one client session. */
export class SessionCounter {
  private next = 1;
  private readonly outstanding = new Set<number>();
  constructor(readonly id: string) {}

  begin(): SessionStamp {
    const sequence = this.next++;
    this.outstanding.add(sequence);
    let ackedBelow = sequence;
    for (const s of this.outstanding) if (s < ackedBelow) ackedBelow = s;
    return { id: this.id, sequence, ackedBelow };
  }

  end(stamp: SessionStamp): void {
    this.outstanding.delete(stamp.sequence);
  }
}

/**
 * zeroPiecesInflightMax: pieces of one split trim / write-zeroes in flight at once. Each piece is
 * one apply of at most requestLimits.zeroPieceBytes of range on every replica; a few at a time
 * keep a whole-device discard (mkfs) from filling every apply turn with deletes.
 */
export const zeroPiecesInflightMax = 4;

/** sessionRenewalsMax: new sessions one command may open after SESSION_EXPIRED before it fails. */
export const sessionRenewalsMax = 3;

class VolumeHandle implements ExportHandle {
  private current: VolumeInfo;
  private session: SessionCounter;
  private used = false;
  constructor(
    private readonly service: VolumeService,
    volume: VolumeInfo,
  ) {
    this.current = volume;
    this.session = new SessionCounter(service.newSessionId());
  }

  info(): ExportInfo {
    return exportInfo(this.current);
  }

  private async refresh(): Promise<void> {
    const volumes = await this.service.listVolumes();
    const found = volumes.find((v) => v.name === this.current.name);
    if (found !== undefined) this.current = found;
  }

  private async submit(make: (session: SessionStamp) => BlockCommand): Promise<void> {
    this.used = true;
    for (let renewals = 0; ; renewals++) {
      const counter = this.session;
      const stamp = counter.begin();
      try {
        await this.service.submit(make(stamp));
        return;
      } catch (error) {
        if (error instanceof SessionRenewable && renewals < sessionRenewalsMax) {
          // Evicted while this connection lives: continue in a new session (once per eviction).
          if (this.session === counter) this.session = new SessionCounter(this.service.newSessionId());
          continue;
        }
        if (error instanceof UsageError && error.code === ErrorCode.OutOfRange) await this.refresh();
        throw error;
      } finally {
        counter.end(stamp);
      }
    }
  }

  read(offset: number, length: number): Promise<ReadChunk[]> {
    return this.service.read(this.current.name, offset, length);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    if (data.length <= writeChunkBytes) {
      return this.submit((session) => ({ kind: 'write', volume: this.current.name, offset, data, session }));
    }
    const pieces: Promise<void>[] = [];
    for (let at = 0; at < data.length; at += writeChunkBytes) {
      const piece = data.subarray(at, Math.min(data.length, at + writeChunkBytes));
      pieces.push(this.submit((session) => ({ kind: 'write', volume: this.current.name, offset: offset + at, data: piece, session })));
    }
    const results = await Promise.allSettled(pieces);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
  }

  trim(offset: number, length: number): Promise<void> {
    return this.zeroPieces(offset, length, (piece, session) => ({ kind: 'trim', volume: this.current.name, ...piece, session }));
  }

  /**
   * zeroPieces: a trim / write-zeroes as commands of at most zeroPieceBytes of range each (issue
   * 11 h: a 4 GiB discard was one apply deleting a million rows, stalling every replica at once).
   */
  private async zeroPieces(offset: number, length: number, make: (piece: { offset: number; length: number }, session: SessionStamp) => BlockCommand): Promise<void> {
    const pieces = splitRange(offset, length, requestLimits.zeroPieceBytes);
    let next = 0;
    let failure: unknown;
    const worker = async () => {
      while (next < pieces.length && failure === undefined) {
        const piece = pieces[next++]!;
        await this.submit((session) => make(piece, session)).catch((error: unknown) => {
          failure ??= error;
        });
      }
    };
    await Promise.all(Array.from({ length: Math.min(zeroPiecesInflightMax, pieces.length) }, worker));
    if (failure !== undefined) throw failure;
  }

  writeZeroes(offset: number, length: number, flags: { fua: boolean; noHole: boolean; fastZero: boolean }): Promise<void> {
    // Zeroing is one small log entry per zeroPieceBytes of range, so it is always fast; with NO_HOLE the
    // blocks are still stored sparsely, which reads identically (documented in docs/nbd.md).
    void flags;
    return this.zeroPieces(offset, length, (piece, session) => ({ kind: 'writeZeroes', volume: this.current.name, ...piece, session }));
  }

  async flush(): Promise<void> {
    // Every write was acknowledged only after commit on a quorum: nothing is pending.
  }

  async cache(): Promise<void> {}

  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.service.blockStatus(this.current.name, offset, length);
  }

  /** close: the connection is gone and its requests settled: end its session (replicated). */
  async close(): Promise<void> {
    if (!this.used) return; // a session that never submitted is in no table
    const stamp = this.session.begin();
    try {
      await this.service.submit({ kind: 'closeSession', session: stamp });
    } catch {
      // Not closed (the cluster is unavailable or this node stops): the session ages out by LRU.
    } finally {
      this.session.end(stamp);
    }
  }
}

export class VolumeBackend implements BlockBackend {
  constructor(private readonly service: VolumeService) {}

  async listExports(): Promise<ExportInfo[]> {
    return (await this.service.listVolumes()).map(exportInfo);
  }

  defaultExportName(): string {
    return this.service.defaultVolume();
  }

  async open(name: string): Promise<ExportHandle> {
    const wanted = name === '' ? this.service.defaultVolume() : name;
    const volumes = await this.service.listVolumes();
    const volume = volumes.find((v) => v.name === wanted);
    if (volume === undefined) throw new UsageError(ErrorCode.NotFound, `no volume named "${wanted}"`);
    return new VolumeHandle(this.service, volume);
  }
}
