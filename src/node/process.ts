/**
 * process: the body of `chard node start --config FILE` — one node in this OS process, logging
 * JSON lines (pino) to stdout, shutting down gracefully on SIGTERM / SIGINT: leadership is handed
 * to the most caught-up voter first, in-flight requests finish or fail with a retryable error,
 * then the stores are closed. A second signal exits at once.
 */

import { pino } from 'pino';
import { systemScheduler } from './clock.js';
import { loadNodeConfig, nodeReadyMessage, validateLogLevel } from './config.js';
import { ChardNode, type LogContext } from './node.js';

export interface NodeProcessOptions {
  /** logLevel: overrides the config file's `logLevel` (`--log-level`). */
  logLevel?: string;
}

export async function runNodeProcess(configFile: string, options: NodeProcessOptions = {}): Promise<void> {
  const config = loadNodeConfig(configFile);
  const level = options.logLevel !== undefined ? validateLogLevel(options.logLevel, '--log-level') : (config.logLevel ?? 'info');
  // Every line carries the node id and cluster id, and (once the node runs) its current term.
  const logContext: LogContext = {};
  const logger = pino({
    level,
    base: { node: config.id, cluster: config.clusterId, pid: process.pid },
    mixin: () => (logContext.term === undefined ? {} : { term: logContext.term() }),
  });
  let node: ChardNode;
  try {
    node = await ChardNode.start({ config, logger, logContext, scheduler: systemScheduler });
  } catch (error) {
    logger.error({ err: error instanceof Error ? { message: error.message, code: (error as { code?: string }).code, stack: error.stack } : String(error) }, 'node failed to start');
    throw error;
  }
  // `chard node start --dir` spawns the node with an IPC channel and waits for this message:
  // every listener is bound and the replica runs. Then the channel is let go.
  if (process.send !== undefined && process.connected) {
    process.send({ kind: nodeReadyMessage, pid: process.pid }, (error: Error | null) => {
      if (error === null && process.connected) process.disconnect();
    });
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
