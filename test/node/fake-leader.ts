/**
 * fake-leader: the in-process pieces of one node's write path without raft — a stand-in for the
 * Replica that is always the leader, commits each proposal after `commitDelayMs` and applies it
 * to a real BlockStateMachine (SQLite) in log order, with the core's refusals: BUSY past
 * `uncommittedBytesMax` of unapplied entries (as raft.appendEntries), PROPOSAL_DROPPED while a
 * leadership transfer is "in progress" (as raft.handlePropose). Both are thrown as the core
 * throws them: plain ChardErrors. The real LocalVolumeService, VolumeBackend and NbdServer sit on
 * top, so a test sees what an NBD client of a node sees.
 */

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type ApplyCounts, BlockStateMachine, decodeOutcome, encodeOutcome } from '../../src/blockstore/state-store.js';
import { ChardError, ErrorCode, UsageError } from '../../src/errors.js';
import { NbdServer, type NbdLimits } from '../../src/nbd/server.js';
import { systemClock } from '../../src/node/clock.js';
import type { Replica } from '../../src/node/replica.js';
import { encodeBlockCommand } from '../../src/node/rpc.js';
import { VolumeBackend } from '../../src/node/volume-backend.js';
import { LocalVolumeService, type VolumeServiceLimits } from '../../src/node/volume-service.js';
import { EntryType, emptyConfState } from '../../src/raft/types.js';
import { encodeCommand, type Command } from '../../src/volume/command.js';
import { RawClient } from '../helpers/nbd-raw-client.js';

export class FakeLeader {
  readonly id = 1;
  closing = false;
  uncommittedBytesMax = 64 * 1024 * 1024;
  commitDelayMs = 2;
  /** dropNext: this many next proposals are dropped (a transfer in progress), counted, not timed. */
  dropNext = 0;
  uncommittedBytes = 0;
  maxUncommittedBytes = 0;
  refusals = { busy: 0, dropped: 0 };
  /** applyMs: how long each apply of one entry took (the biggest piece of work per turn). */
  readonly applyMs: number[] = [];
  /** applyCounts: the block rows each apply stored and deleted (BlockStateMachine.lastApplyCounts). */
  readonly applyCounts: ApplyCounts[] = [];
  /** inflightEntries / maxInflightEntries: proposals not yet applied (what one replica's apply batch could hold). */
  inflightEntries = 0;
  maxInflightEntries = 0;
  private nextIndex = 1;
  private applyQueue: Promise<void> = Promise.resolve();
  private releaseCommits: (() => void) | undefined;

  /**
   * holdCommitsUntilBusy: nothing commits until the core has refused once with BUSY, so that a
   * test of the BUSY path reaches the limit however slowly a loaded machine delivers the writes.
   */
  holdCommitsUntilBusy(): void {
    const held = new Promise<void>((resolve) => {
      this.releaseCommits = resolve;
    });
    this.applyQueue = this.applyQueue.then(() => held);
  }

  constructor(readonly state: BlockStateMachine) {}

  isLeader(): boolean {
    return true;
  }
  leaderId(): number {
    return this.id;
  }
  leaderChange(): { promise: Promise<void>; cancel(): void } {
    return { promise: new Promise(() => undefined), cancel: () => undefined };
  }
  readBarrier(): Promise<void> {
    return Promise.resolve();
  }

  propose(data: Uint8Array): Promise<Uint8Array> {
    if (this.dropNext > 0) {
      this.dropNext--;
      this.refusals.dropped++;
      return Promise.reject(new ChardError(ErrorCode.ProposalDropped, 'leadership transfer in progress'));
    }
    if (this.uncommittedBytes > 0 && this.uncommittedBytes + data.length > this.uncommittedBytesMax) {
      this.refusals.busy++;
      this.releaseCommits?.();
      this.releaseCommits = undefined;
      return Promise.reject(new ChardError(ErrorCode.Busy, 'too many uncommitted bytes; retry later'));
    }
    this.uncommittedBytes += data.length;
    this.maxUncommittedBytes = Math.max(this.maxUncommittedBytes, this.uncommittedBytes);
    this.maxInflightEntries = Math.max(this.maxInflightEntries, ++this.inflightEntries);
    const index = this.nextIndex++;
    const applied = this.applyQueue.then(async () => {
      await new Promise((r) => setTimeout(r, this.commitDelayMs));
      const started = performance.now();
      const outcome = this.state.apply([{ index, term: 1, type: EntryType.Normal, data }], () => emptyConfState()).get(index)!;
      this.applyMs.push(performance.now() - started);
      this.applyCounts.push(this.state.lastApplyCounts());
      this.inflightEntries--;
      this.uncommittedBytes -= data.length;
      return outcome;
    });
    this.applyQueue = applied.then(() => undefined);
    return applied.then((outcome) => {
      if (!outcome.ok) throw new UsageError(outcome.code, outcome.message);
      return encodeOutcome(outcome);
    });
  }

  /** run: applies a command outside any session (e.g. createVolume), as an admin would. */
  async run(command: Command): Promise<void> {
    decodeOutcome(await this.propose(encodeCommand(command)));
  }
}

export interface FakeNode {
  leader: FakeLeader;
  service: LocalVolumeService;
  server: NbdServer;
  port: number;
  connect(): Promise<RawClient>;
  close(): Promise<void>;
}

/** startFakeNode: a FakeLeader with volume `v` of `sizeBytes`, its volume service and an NBD server. */
export async function startFakeNode(
  options: { sizeBytes?: number; service?: Partial<VolumeServiceLimits>; nbd?: Partial<NbdLimits>; stateLimits?: Parameters<typeof BlockStateMachine.open>[1] } = {},
): Promise<FakeNode> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chard-fake-node-'));
  const state = BlockStateMachine.open(path.join(dir, 'state.db'), options.stateLimits ?? {});
  const leader = new FakeLeader(state);
  await leader.run({ kind: 'createVolume', name: 'v', sizeBytes: options.sizeBytes ?? 256 * 1024 * 1024 });
  const view = {
    read: (volume: string, offset: number, length: number) => state.read(volume, offset, length),
    blockStatus: (volume: string, offset: number, length: number) => state.blockStatus(volume, offset, length),
    listVolumes: () => state.listVolumes().map((v) => ({ name: v.name, sizeBytes: v.sizeBytes })),
  };
  const forwarder = { submit: () => Promise.reject(new Error('the fake leader never forwards')), readFrom: () => Promise.reject(new Error('no peer reads here')) };
  const service = new LocalVolumeService(leader as unknown as Replica, view, encodeBlockCommand, forwarder, systemClock, 'v', options.service ?? {});
  const server = new NbdServer({ backend: new VolumeBackend(service), limits: options.nbd ?? {} });
  const address = await server.listen({ host: '127.0.0.1', port: 0 });
  if (!('port' in address)) throw new Error('tcp expected');
  return {
    leader,
    service,
    server,
    port: address.port,
    connect: () => RawClient.connect(address.port),
    close: async () => {
      await server.close();
      state.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
