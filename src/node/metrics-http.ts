/**
 * metrics-http: the Prometheus scrape endpoint of a node or attach agent — `GET /metrics` on a
 * plain HTTP listener (`metrics` in the node config / cluster.json, `--metrics` for the agent).
 * Only GET and HEAD of /metrics are served; everything else is 404 / 405. The listener is
 * bounded: connections, header and request time, and it reads no request body.
 */

import http from 'node:http';
import { ErrorCode, RemoteError } from '../errors.js';
import { parseHostPort } from './config.js';
import type { Logger } from './node.js';
import type { PromExporter } from './metrics.js';

export interface MetricsHttpLimits {
  /** connectionsMax: concurrent scrape connections; more are refused (counted). */
  connectionsMax: number;
  /** headersTimeoutMs: a client must send its request headers within this. */
  headersTimeoutMs: number;
  /** requestTimeoutMs: a whole request (the scrape included) within this. */
  requestTimeoutMs: number;
  /** keepAliveTimeoutMs: an idle kept-alive connection is closed after this. */
  keepAliveTimeoutMs: number;
}

export const defaultMetricsHttpLimits: MetricsHttpLimits = {
  connectionsMax: 16,
  headersTimeoutMs: 5_000,
  requestTimeoutMs: 10_000,
  keepAliveTimeoutMs: 5_000,
};

export interface MetricsServerHandle {
  /** address: the bound HOST:PORT (the port the OS chose when 0 was asked). */
  address: string;
  close(): Promise<void>;
}

export async function startMetricsServer(options: {
  listen: string;
  exporter: PromExporter;
  logger?: Logger;
  limits?: Partial<MetricsHttpLimits>;
  /** onRefused: counts a connection refused at connectionsMax. */
  onRefused?: () => void;
}): Promise<MetricsServerHandle> {
  const limits = { ...defaultMetricsHttpLimits, ...options.limits };
  const { host, port } = parseHostPort(options.listen, 'metrics');
  const server = http.createServer((request, response) => {
    const url = (request.url ?? '').split('?')[0];
    if (url !== '/metrics') {
      response.writeHead(404, { 'content-type': 'text/plain' }).end('chard serves /metrics only\n');
      return;
    }
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      response.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('GET /metrics\n');
      return;
    }
    options.exporter.text().then(
      (text) => {
        response.writeHead(200, { 'content-type': options.exporter.contentType });
        response.end(request.method === 'HEAD' ? undefined : text);
      },
      (error: unknown) => {
        options.logger?.error({ err: String(error) }, 'metrics collection failed');
        response.writeHead(500, { 'content-type': 'text/plain' }).end('metrics collection failed\n');
      },
    );
  });
  server.maxConnections = limits.connectionsMax;
  server.headersTimeout = limits.headersTimeoutMs;
  server.requestTimeout = limits.requestTimeoutMs;
  server.keepAliveTimeout = limits.keepAliveTimeoutMs;
  server.on('drop', () => options.onRefused?.());
  server.on('clientError', (_error, socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) =>
      reject(new RemoteError(error.code === 'EADDRINUSE' ? ErrorCode.Unavailable : ErrorCode.Internal, `metrics listener ${options.listen}: ${error.code ?? ''} ${error.message}`)),
    );
    server.listen(port, host, () => resolve());
  });
  server.on('error', (error) => options.logger?.error({ err: String(error) }, 'metrics listener error'));
  const bound = server.address();
  const address = typeof bound === 'object' && bound !== null ? `${bound.family === 'IPv6' ? `[${bound.address}]` : bound.address}:${bound.port}` : options.listen;
  return {
    address,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
