/**
 * The HTTP enqueue API as an express app: metrics, health, Bull Board, then /v1 behind
 * authentication, method and body checks, and the error envelope (see http-errors.ts).
 */
import express, { type Response } from 'express';
import { FleetError, toError } from '../errors.js';
import { silentLogger, type Logger } from '../observability/logger.js';
import type { FleetMetrics } from '../observability/metrics.js';
import type { Producer } from '../producers/producer.js';
import { ProducerAuth, type ProducerIdentity } from './auth.js';
import { mountBullBoard } from './bull-board.js';
import { errorHandler, send, shown } from './http-errors.js';
import { addV1Routes, allowedMethods, type Authed } from './v1-routes.js';

export interface ApiOptions {
  producer: Producer;
  /** Serve `/metrics` from this registry and time every request. */
  metrics?: FleetMetrics;
  /** Who may call the API. @defaultValue config.producers */
  producers?: readonly ProducerIdentity[];
  logger?: Logger;
  /** Bull Board's queues come from this producer (a read-only Redis role) when given. @defaultValue producer */
  boardProducer?: Producer;
  /** Extra routers mounted before the 404 handler (metrics, Bull Board, audit). */
  mount?: (app: express.Express) => void;
}

/**
 * Whether JSON text nests arrays/objects deeper than `max`, read from the raw bytes (brackets
 * inside strings do not count). Linear, no recursion, stops at the first level too deep.
 */
export function exceedsDepth(buf: Uint8Array, max: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < buf.length; i++) {
    const c = buf[i];
    if (inString) {
      if (c === 0x5c)
        i++; // backslash: skip the escaped byte
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > max) return true;
    } else if (c === 0x5d || c === 0x7d) depth--;
  }
  return false;
}

/** 405 with the path's `Allow` list (HTTP semantics), not 404. */
function refuseMethod(res: Response, method: string, path: string, allow: string): void {
  res.setHeader('Allow', allow);
  send(res, 405, 'METHOD_NOT_ALLOWED', `${method} is not allowed on ${shown(path)}; allowed: ${allow}`);
}

/**
 * The HTTP enqueue API (express 5). Every error is `{ error: { code, message, details? } }` with a
 * precise status; a request that fails validation enqueues nothing.
 */
export function createApiApp(options: ApiOptions): express.Express {
  const { producer } = options;
  const log = (options.logger ?? silentLogger).scope({ component: 'api' });
  const auth = new ProducerAuth(options.producers ?? producer.config.producers);
  const cfg = producer.config.api;
  const app = express();
  app.disable('x-powered-by');
  app.set('query parser', 'simple');

  const metrics = options.metrics;
  if (metrics) {
    app.use((req, res, next) => {
      const end = metrics.httpDuration.startTimer();
      res.on('finish', () => {
        // The matched route pattern, never the raw path (ids would make labels unbounded).
        const route = req.route ? `${req.baseUrl}${String(req.route.path)}` : 'unmatched';
        metrics.httpRequests.labels(req.method, route, String(res.statusCode)).inc();
        end({ method: req.method, route });
      });
      next();
    });
    app.get('/metrics', async (_req, res) => {
      const m = await metrics.render();
      res.type(m.contentType).send(m.body);
    });
  }
  if (cfg.bullBoard.enabled)
    mountBullBoard(app, {
      producer: options.boardProducer ?? producer,
      auth,
      path: cfg.bullBoard.path,
      readOnly: cfg.bullBoard.readOnly,
    });

  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  app.get('/readyz', async (_req, res) => {
    try {
      await producer.ping();
      res.json({ status: 'ready', checks: { redis: 'ok' } });
    } catch (err) {
      res.status(503).json({ status: 'unready', checks: { redis: toError(err).message } });
    }
  });
  options.mount?.(app);

  const v1 = express.Router();
  v1.use((req: Authed, _res, next) => {
    req.producer = auth.authenticate(req.get('authorization'));
    next();
  });
  // Methods first: a method a path does not have is 405 with the exact Allow list (OPTIONS
  // answers that list), before any check of the body it would have carried.
  v1.use((req, res, next) => {
    const allow = allowedMethods(producer.config, `${req.baseUrl}${req.path}`);
    if (!allow) return next();
    if (req.method === 'OPTIONS') {
      res.setHeader('Allow', allow);
      res.status(204).end();
      return;
    }
    if (!allow.split(', ').includes(req.method) && !(req.method === 'HEAD' && allow.includes('GET')))
      return refuseMethod(res, req.method, req.path, allow);
    next();
  });
  v1.use((req, _res, next) => {
    if (req.method === 'POST' && !req.is('application/json')) {
      throw new FleetError('UNSUPPORTED_MEDIA_TYPE', 'send the payload as JSON with "Content-Type: application/json"');
    }
    next();
  });
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  v1.use(
    express.json({
      limit: cfg.bodyLimitBytes,
      strict: false,
      type: 'application/json',
      // Invalid UTF-8 is refused, not silently turned into U+FFFD.
      verify: (_req, _res, buf) => {
        try {
          utf8.decode(buf);
        } catch {
          throw new FleetError('INVALID_JSON', 'body is not valid UTF-8');
        }
        // Before JSON.parse: a deeply nested body would otherwise reach validation code that
        // recurses once per level (a stack overflow, answered 5xx).
        if (exceedsDepth(buf, cfg.maxJsonDepth)) {
          throw new FleetError(
            'PAYLOAD_TOO_DEEP',
            `body nests arrays/objects deeper than api.maxJsonDepth=${cfg.maxJsonDepth}`,
          );
        }
      },
    }),
  );

  addV1Routes(v1, { producer, auth });
  app.use('/v1', v1);

  // A known path with a method it does not have: 405 with Allow (HTTP semantics), not 404.
  app.use((req, res) => {
    const allow = allowedMethods(producer.config, req.path);
    if (allow && !allow.split(', ').includes(req.method)) return refuseMethod(res, req.method, req.path, allow);
    send(res, 404, 'NOT_FOUND', `no route ${req.method} ${shown(req.path)}`);
  });
  app.use(errorHandler(log, cfg.bodyLimitBytes));
  return app;
}
