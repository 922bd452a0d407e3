/**
 * reaper: ReapDriver proposes one empty entry at a time while this node leads and rows wait, the
 * next once the previous is applied; it retries a refused one after reapRetryMs, does nothing on
 * a follower, and stops when closed.
 */

import test from 'ava';
import type { Scheduler, Timer } from '../../src/node/clock.js';
import { ReapDriver, reapRetryMs } from '../../src/node/reaper.js';

/** ManualScheduler: timers run only when the test advances time. */
class ManualScheduler implements Scheduler {
  time = 0;
  private timers: { at: number; fn: () => void; cancelled: boolean }[] = [];
  now(): number {
    return this.time;
  }
  soon(fn: () => void): void {
    this.after(0, fn);
  }
  after(ms: number, fn: () => void): Timer {
    const timer = { at: this.time + ms, fn, cancelled: false };
    this.timers.push(timer);
    return { cancel: () => void (timer.cancelled = true) };
  }
  every(): Timer {
    throw new Error('not used');
  }
  advance(ms: number): void {
    this.time += ms;
    const due = this.timers.filter((x) => !x.cancelled && x.at <= this.time);
    this.timers = this.timers.filter((x) => !due.includes(x));
    for (const x of due) x.fn();
  }
}

function fake() {
  const state = { leader: true, rowsLeft: 3, proposals: [] as { resolve: () => void; reject: (e: Error) => void }[] };
  const replica = {
    isLeader: () => state.leader,
    propose: (data: Uint8Array) => {
      if (data.length !== 0) throw new Error('reap entries are empty');
      return new Promise<Uint8Array>((resolve, reject) => {
        state.proposals.push({
          resolve: () => {
            state.rowsLeft--;
            resolve(new Uint8Array(0));
          },
          reject,
        });
      });
    },
  };
  return { state, replica };
}

const settle = () => new Promise((r) => setImmediate(r));

test('one empty entry at a time until nothing waits; none on a follower', async (t) => {
  const { state, replica } = fake();
  const scheduler = new ManualScheduler();
  let entries = 0;
  const driver = new ReapDriver(replica, () => state.rowsLeft > 0, scheduler, () => entries++);
  driver.kick();
  driver.kick();
  t.is(state.proposals.length, 1, 'one in flight');
  for (let i = 0; i < 3; i++) {
    state.proposals[i]!.resolve();
    await settle();
  }
  t.is(state.proposals.length, 3);
  t.is(entries, 3);
  t.is(state.rowsLeft, 0);
  driver.kick();
  t.is(state.proposals.length, 3, 'nothing waits: no entry');
  state.rowsLeft = 2;
  state.leader = false;
  driver.kick();
  t.is(state.proposals.length, 3, 'a follower proposes nothing');
});

test('a refused entry is retried after reapRetryMs; close stops the driver', async (t) => {
  const { state, replica } = fake();
  const scheduler = new ManualScheduler();
  const driver = new ReapDriver(replica, () => state.rowsLeft > 0, scheduler);
  driver.kick();
  state.proposals[0]!.reject(new Error('BUSY'));
  await settle();
  driver.kick();
  t.is(state.proposals.length, 1, 'waits for the retry timer');
  scheduler.advance(reapRetryMs - 1);
  t.is(state.proposals.length, 1);
  scheduler.advance(1);
  t.is(state.proposals.length, 2, 'retried');
  state.proposals[1]!.reject(new Error('transfer'));
  await settle();
  driver.close();
  scheduler.advance(reapRetryMs);
  t.is(state.proposals.length, 2, 'closed: no more entries');
});
