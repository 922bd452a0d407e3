/**
 * faults-file: FaultsFileWatcher, the non-root chaos mode's control channel into a node. The
 * harness writes `{"blocked": [[from, to], ...], "dropProbability": p}` atomically (write + rename)
 * and every node polls it (`pollMs`), applying the set to its FaultyTransport: messages on a
 * blocked directed link are dropped, in either direction of this node. A missing or malformed
 * file means no faults (logged once per change), so a broken harness cannot wedge a node.
 */

import { readFileSync, statSync } from 'node:fs';
import type { Faults } from '../transport/faulty.js';

export const faultsFilePollMs = 100;
/** blockedLinksMax: bound on the links one file may name. */
export const blockedLinksMax = 4096;

export class FaultsFileWatcher {
  private readonly timer: NodeJS.Timeout;
  private lastStamp = '';
  constructor(
    private readonly file: string,
    private readonly faults: Faults,
    private readonly logger: { warn(o: object, m?: string): void; info(o: object, m?: string): void },
    pollMs = faultsFilePollMs,
  ) {
    this.poll();
    this.timer = setInterval(() => this.poll(), pollMs);
    this.timer.unref?.();
  }

  private poll(): void {
    let stamp: string;
    try {
      const st = statSync(this.file);
      stamp = `${st.mtimeMs}:${st.size}:${st.ino}`;
    } catch {
      stamp = 'absent';
    }
    if (stamp === this.lastStamp) return;
    this.lastStamp = stamp;
    this.faults.heal();
    this.faults.set({ dropProbability: 0 });
    if (stamp === 'absent') return;
    try {
      const value = JSON.parse(readFileSync(this.file, 'utf8')) as { blocked?: unknown; dropProbability?: unknown };
      const blocked = Array.isArray(value.blocked) ? value.blocked.slice(0, blockedLinksMax) : [];
      for (const link of blocked) {
        if (Array.isArray(link) && Number.isInteger(link[0]) && Number.isInteger(link[1])) this.faults.block(link[0] as number, link[1] as number);
      }
      const drop = typeof value.dropProbability === 'number' && value.dropProbability >= 0 && value.dropProbability <= 1 ? value.dropProbability : 0;
      this.faults.set({ dropProbability: drop });
      this.logger.info({ blocked: blocked.length, drop }, 'faults file applied');
    } catch (error) {
      this.logger.warn({ err: String(error) }, 'faults file unreadable; no faults applied');
    }
  }

  close(): void {
    clearInterval(this.timer);
  }
}
