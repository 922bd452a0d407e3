/**
 * process: the body of `chard node start --config FILE` — one node in this OS process, logging
 * JSON lines (pino) to stdout, shutting down gracefully on SIGTERM / SIGINT: leadership is handed
 * to the most caught-up voter first, in-flight requests finish or fail with a retryable error,
 * then the stores are closed. A second signal exits at once.
 */

import { pino } from 'pino';
import { loadNodeConfig } from './config.js';
import { systemScheduler } from './clock.js';
import { ChardNode } from './node.js';

export async function runNodeProcess(configFile: string): Promise<void> {
  const config = loadNodeConfig(configFile);
  const logger = pino({ level: config.logLevel ?? 'info', base: { node: config.id } });
  let node: ChardNode;
  try {
    node = await ChardNode.start({ config, logger, scheduler: systemScheduler });
  } catch (error) {
    logger.error({ err: error instanceof Error ? { message: error.message, code: (error as { code?: string }).code, stack: error.stack } : String(error) }, 'node failed to start');
    throw error;
  }
  await new Promise<void>((resolve) => {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) {
        logger.warn({ signal }, 'second signal: exiting now');
        process.exit(1);
      }
      stopping = true;
      logger.info({ signal }, 'shutting down');
      node
        .stop({ transfer: true })
        .catch((error: unknown) => logger.error({ err: String(error) }, 'error during shutdown'))
        .finally(resolve);
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
  process.exit(0);
}
