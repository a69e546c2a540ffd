import http from 'node:http';
import { ConfigError, toError } from '../errors.js';
import type { FleetMetrics } from './metrics.js';

export interface MetricsServer {
  url: string;
  release(): Promise<void>;
}

/**
 * A supervisor's own small HTTP server, so Prometheus scrapes every replica:
 * `/metrics`, `/healthz` (process alive) and `/readyz` (the given checks pass).
 */
export function startMetricsServer(options: {
  metrics: FleetMetrics;
  host: string;
  port: number;
  ready: () => Promise<Record<string, string>>;
}): Promise<MetricsServer> {
  const server = http.createServer((req, res) => {
    const send = (status: number, type: string, body: string): void => {
      res.writeHead(status, { 'content-type': type });
      res.end(body);
    };
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET')
      return send(405, 'application/json', '{"error":{"code":"METHOD_NOT_ALLOWED","message":"GET only"}}');
    if (path === '/metrics') {
      options.metrics.render().then(
        (m) => send(200, m.contentType, m.body),
        (err: unknown) => send(500, 'text/plain', `metrics collection failed: ${toError(err).message}`),
      );
    } else if (path === '/healthz') send(200, 'application/json', '{"status":"ok"}');
    else if (path === '/readyz') {
      options.ready().then(
        (checks) => {
          const ok = Object.values(checks).every((v) => v === 'ok');
          send(ok ? 200 : 503, 'application/json', JSON.stringify({ status: ok ? 'ready' : 'unready', checks }));
        },
        (err: unknown) =>
          send(503, 'application/json', JSON.stringify({ status: 'unready', error: toError(err).message })),
      );
    } else
      send(404, 'application/json', '{"error":{"code":"NOT_FOUND","message":"try /metrics, /healthz or /readyz"}}');
  });
  server.headersTimeout = 10_000;
  return new Promise((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        err.code === 'EADDRINUSE'
          ? new ConfigError(
              `the metrics port ${options.host}:${options.port} is already in use (another supervisor on this host?). Fix: give each supervisor its own port with --metrics-port <n> or FLEET_METRICS_PORT=<n> (0 picks a free one), or set supervisor.metricsPort.`,
              { cause: err },
            )
          : err,
      ),
    );
    server.listen(options.port, options.host, () => {
      const addr = server.address();
      resolve({
        url: `http://${options.host}:${typeof addr === 'object' && addr ? addr.port : options.port}`,
        release: () =>
          new Promise<void>((r) => {
            server.close(() => r());
            server.closeAllConnections();
          }),
      });
    });
  });
}
