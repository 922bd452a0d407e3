/**
 * until: the one condition wait of the tests. Polls `condition` (which may be async, e.g. a
 * scrape) until it holds; past `timeoutMs` (a deadline only a real hang reaches) the test fails
 * naming `what`.
 */
import type { ExecutionContext } from 'ava';
import { type Message, message, type NodeId } from '../../src/raft/types.js';

export async function until(t: ExecutionContext, what: string, condition: () => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await condition())) {
    if (performance.now() > deadline) {
      t.fail(`timed out waiting for ${what}`);
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise<void>((resolve) => setTimeout(resolve, 5));
  }
}

/** heartbeat: a Heartbeat of term 1 carrying `index` (the messages the transport tests count). */
export const heartbeat = (from: NodeId, to: NodeId, index: number): Message => message({ type: 'Heartbeat', from, to, term: 1, index });
