/**
 * reaper: ReapDriver keeps the leader proposing empty entries while the state machine has rows to
 * reap (a deleted volume's blocks, a shrunk volume's tail: BlockStateMachine.reaping()). Every
 * empty entry reaps at most reapBlocksPerEntry rows on every replica (the same rows, so replicas
 * stay equal at each index), so the space comes back in bounded steps instead of one apply that
 * would stall every replica at once. One entry is in flight at a time; the next is proposed when
 * the previous one has been applied here. A new leader takes over: its election no-op is applied,
 * which kicks its own driver.
 */

import type { Scheduler, Timer } from './clock.js';
import type { Replica } from './replica.js';

/** reapRetryMs: after a refused reap entry (no leader yet, BUSY, a transfer), try again this much later. */
export const reapRetryMs = 100;

const empty = new Uint8Array(0);

export class ReapDriver {
  private inFlight = false;
  private closed = false;
  private retry: Timer | undefined;

  constructor(
    private readonly replica: Pick<Replica, 'isLeader' | 'propose'>,
    private readonly reaping: () => boolean,
    private readonly scheduler: Scheduler,
    private readonly onEntry: () => void = () => undefined,
  ) {}

  /** kick: propose the next reap entry if this node leads, rows wait, and none is in flight. */
  kick(): void {
    if (this.closed || this.inFlight || this.retry !== undefined) return;
    if (!this.reaping() || !this.replica.isLeader()) return;
    this.inFlight = true;
    this.onEntry();
    this.replica.propose(empty).then(
      () => {
        this.inFlight = false;
        this.kick();
      },
      () => {
        this.inFlight = false;
        if (this.closed) return;
        this.retry = this.scheduler.after(reapRetryMs, () => {
          this.retry = undefined;
          this.kick();
        });
      },
    );
  }

  close(): void {
    this.closed = true;
    this.retry?.cancel();
    this.retry = undefined;
  }
}
